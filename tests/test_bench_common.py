"""The benchmarks' shared scaffolding: statistics over seeds and docs generated from the
result files (so no number in docs/benchmarks.md is pasted by hand)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def common() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_common", BENCH / "_common.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_common"] = module
    spec.loader.exec_module(module)
    return module


def test_stat_is_the_mean_and_sample_std_and_refuses_nan(common: ModuleType) -> None:
    s = common.stat([0.90, 0.92, 0.94])

    assert (s.n, round(s.mean, 10), round(s.std, 10)) == (3, 0.92, 0.02)
    assert f"{s:.2f}" == "0.92 ± 0.02"
    assert common.stat([0.5]).std == 0.0
    with pytest.raises(ValueError, match="NaN"):
        common.stat([0.5, float("nan")])
    with pytest.raises(ValueError, match="at least one"):
        common.stat([])


def test_docs_are_rendered_from_result_files_and_quick_runs_are_never_headlines(
    common: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    row = {"configuration": "q8", "final accuracy": common.stat([0.81, 0.83, 0.85])}
    payload = {
        "title": "Compression",
        "command": "python bench/bench_compression.py",
        "seeds": [1, 2, 3],
        "columns": ["configuration", "final accuracy"],
        "rows": [row],
        "goals": [{"goal": "100x at 1 point", "holds": False, "evidence": "16x"}],
    }
    full = common.write_results("compression", payload, quick=False)
    quick = common.write_results("compression", {**payload, "title": "Smoke"}, quick=True)

    out = common.render_docs(tmp_path / "results", tmp_path / "benchmarks.md")
    text = out.read_text()

    assert json.loads(full.read_text())["rows"][0]["final accuracy"]["n"] == 3
    assert quick.name == "compression_quick.json"
    assert "| q8 | 0.83 ± 0.02 |" in text
    assert "**does not hold** (16x)" in text
    assert text.index("## Compression") < text.index("# Quick smoke runs") < text.index("## Smoke")
