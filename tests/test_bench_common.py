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


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_results_must_match_what_was_declared_before_the_runs(
    common: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    configs = {"a": {"x": 1}, "b": {"x": None}}
    declared = common.preregister("demo", configurations=configs, seeds=[1, 2, 3], quick=False)
    first = json.loads(declared.read_text())
    pending = common.render_docs(tmp_path / "results", tmp_path / "benchmarks.md").read_text()

    with pytest.raises(ValueError, match="configurations"):
        common.write_results(
            "demo", {"configurations": {"a": {"x": 1}}, "seeds": [1, 2, 3]}, quick=False
        )
    with pytest.raises(ValueError, match="seeds"):
        common.write_results("demo", {"configurations": configs, "seeds": [1, 2]}, quick=False)
    done = json.loads(
        common.write_results(
            "demo", {"configurations": configs, "seeds": [1, 2, 3]}, quick=False
        ).read_text()
    )

    assert first["status"] == "declared" and first["configurations"] == configs
    assert "Declared, no results yet: demo." in pending
    assert done["status"] == "done" and done["declared"] == first["declared"]


def test_check_runs_refuses_a_missing_or_an_undeclared_run(common: ModuleType) -> None:
    runs: dict[str, dict[int, dict[str, float]]] = {"a": {1: {}, 2: {}}, "b": {1: {}, 2: {}}}
    common.check_runs(["a", "b"], [1, 2], runs)

    with pytest.raises(ValueError, match=r"declared but not run: \[\('b', 3\)\]"):
        common.check_runs(["a", "b"], [1, 2, 3], {**runs, "a": {1: {}, 2: {}, 3: {}}})
    with pytest.raises(ValueError, match=r"run but not declared: \[\('c', 1\)\]"):
        common.check_runs(["a", "b"], [1, 2], {**runs, "c": {1: {}}})


def test_robustness_reports_every_rule_per_attack_and_the_goal_needs_one_rule_for_all() -> None:
    rb = _load("bench_robustness")
    acc = {  # rule/column -> accuracy per seed 1, 2, 3
        "fedavg/clean": (0.90, 0.92, 0.94),
        "fedavg/sign_flip": (0.50, 0.52, 0.54),
        "median/clean": (0.89, 0.91, 0.93),
        "median/sign_flip": (0.91, 0.91, 0.91),
        "krum/clean": (0.80, 0.80, 0.80),
        "krum/sign_flip": (0.80, 0.80, 0.80),
    }
    runs = {
        k: {s: {"final_accuracy": a} for s, a in zip((1, 2, 3), v, strict=True)}
        for k, v in acc.items()
    }
    rules, columns = ("fedavg", "median", "krum"), ("clean", "sign_flip")

    rows = rb.summarize(runs, rules, columns)
    verdict = rb.goals(runs, rules, columns)[0]

    assert [r["rule"] for r in rows] == list(rules)
    assert rows[0]["clean"].n == 3
    assert (round(rows[0]["clean"].mean, 6), round(rows[0]["clean"].std, 6)) == (92.0, 2.0)
    assert verdict["holds"] and verdict["evidence"] == "median"  # krum is 12 points down

    runs["median/clean"] = {s: {"final_accuracy": 0.5} for s in (1, 2, 3)}  # median fails clean
    runs["median/sign_flip"] = {s: {"final_accuracy": 0.5} for s in (1, 2, 3)}
    assert not rb.goals(runs, rules, columns)[0]["holds"]


def test_time_to_accuracy_tunes_on_tuning_scores_and_pairs_speedups_by_seed() -> None:
    tta = _load("bench_time_to_accuracy")
    grid = ({"k": 1}, {"k": 2}, {"k": 3})
    missed = {101: {"time_to_target_s": 10.0}, 102: {"time_to_target_s": None}}
    hit = {101: {"time_to_target_s": 30.0}, 102: {"time_to_target_s": 50.0}}

    scores = [tta.tuning_score(missed), tta.tuning_score(hit), tta.tuning_score(hit)]

    assert scores[0] == float("inf") and scores[1] == 40.0
    assert tta.pick(grid, scores) == 1  # the lowest; a tie goes to the first declared

    def run(t: float | None) -> dict[str, object]:
        return {"reached": t is not None, "time_to_target_s": t, "rounds_to_target": 3,
                "final_accuracy": 0.9}  # fmt: skip

    runs = {
        "sync": {1: run(100.0), 2: run(60.0), 3: run(80.0)},
        "fedbuff": {1: run(25.0), 2: run(30.0), 3: run(None)},
    }
    rows = tta.summarize(runs, {"sync": "s", "fedbuff": "f"})
    fedbuff = rows[1]

    assert fedbuff["reached"] == "2/3"
    assert fedbuff["speed-up vs sync"].n == 2 and fedbuff["speed-up vs sync"].mean == 3.0
    assert not tta.goal(rows)["holds"]  # a seed missed the target


def test_privacy_rows_are_over_seeds_and_noise_draws_paired_with_the_same_seeds_no_dp() -> None:
    pu = _load("bench_privacy_utility")
    runs = {
        "nodp": {1: [{"final_accuracy": 0.90}], 2: [{"final_accuracy": 0.80}]},
        "eps8": {
            1: [{"final_accuracy": a, "epsilon_spent": 8.0, "noise_multiplier": 1.0}
                for a in (0.88, 0.86)],
            2: [{"final_accuracy": a, "epsilon_spent": 8.0, "noise_multiplier": 1.0}
                for a in (0.79, 0.77)],
        },
    }  # fmt: skip

    rows = pu.summarize(runs)
    loss = rows[1]["loss vs no DP (points)"]

    assert rows[1]["runs (seeds x draws)"] == "2 x 2"
    assert loss.n == 4 and round(loss.mean, 6) == 2.5  # (2 + 4 + 1 + 3) / 4, paired by seed
    assert pu.goal(rows)["holds"]
    declared = pu.configurations(pu.BenchSettings())
    assert set(declared) == {"nodp", "eps1", "eps2", "eps4", "eps8"}  # the trade-off curve
    assert declared["nodp"]["noise_draws"] == 1
    assert all(declared[k]["noise_draws"] == pu.NOISE_DRAWS for k in declared if k != "nodp")
