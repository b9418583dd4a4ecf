"""Serving follows the champion alias, outside the full stack (no PostgreSQL, no Airflow).

Starts the real ``python -m fl_airflow.stack serve-champion`` watcher (which runs the real
``mlflow models serve`` on 127.0.0.1) against a real MLflow registry in a SQLite file, moves
the ``champion`` alias between registered versions, and calls the endpoint the moment the
watcher says the new version is ready. The full stack test (tests/stack/test_stack.py) does
the same once behind the MLflow server; this one switches several times in under a minute,
so a switch that leaves the old server holding the port (the readiness probe answered by the
dying old uvicorn, then "connection refused") shows here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.s3 import free_port

REPO = Path(__file__).resolve().parents[2]
MODEL = "fl-serving-test"
pytestmark = pytest.mark.slow


def _log_version(uri: str, vector: np.ndarray, spec: Any, tmp: Path, code: Path) -> str:
    import mlflow

    from fl_core.models import build_model, layout_of
    from fl_core.rounds.state import encode_model

    lay = layout_of(build_model(spec))
    weights = tmp / "weights.flw"
    weights.write_bytes(encode_model("serving-test", 1, lay, vector))
    spec_file = tmp / "spec.json"
    spec_file.write_text(json.dumps(spec.to_json()))
    from fl_core.tracking import _fluent_uri

    # _fluent_uri restores MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI afterwards: left set,
    # they were inherited by the next test's stack services (its serving then read this
    # SQLite registry and never found a champion).
    with _fluent_uri(uri), mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(REPO / "fl_core" / "mlflow_model_code.py"),
            artifacts={"weights": str(weights), "spec": str(spec_file)},
            code_paths=[str(code)],
            pip_requirements=["numpy"],
            registered_model_name=MODEL,
        )
    return str(info.registered_model_version)


def _status(home: Path) -> dict[str, Any]:
    path = home / "stack" / "serving.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _wait_status(home: Path, ok: Any, what: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"serve-champion exited ({proc.returncode}) waiting for {what}"
        if ok(_status(home)):
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}: {_status(home)}")


def _invoke(port: int, rows: list[list[float]]) -> list[int]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps({"inputs": rows}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback
        return list(json.loads(resp.read())["predictions"]["label"])


def _die_with_parent() -> None:
    """The watcher gets SIGTERM when this test process dies (killed by a timeout, say), so
    it never outlives the test with its server."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def test_serving_switches_versions_and_refuses_foreign_code(tmp_path: Path) -> None:
    """Each alias move is answered by the new version as soon as serving.json says ready;
    a version whose bundled code differs from this project's is refused and the previous
    version keeps answering; stopping the watcher stops every server process it started."""
    from fl_core.models import ModelSpec, build_model, get_flat

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    os.environ.pop("MLFLOW_RUN_ID", None)
    spec = ModelSpec(name="mlp", input_shape=(4,), num_classes=3, hidden=(8,))
    size = get_flat(build_model(spec)).size
    rows = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    vectors = [np.random.default_rng(s).normal(size=size).astype(np.float32) for s in (1, 2)]
    versions = []
    for i, v in enumerate(vectors):
        (tmp_path / f"v{i}").mkdir()
        versions.append(_log_version(uri, v, spec, tmp_path / f"v{i}", REPO / "fl_core"))
    # What each version must answer, computed here with the same weights.
    expected = []
    for v in vectors:
        import torch

        from fl_core.models import set_flat

        model = build_model(spec)
        set_flat(model, v)
        with torch.no_grad():
            expected.append(model(torch.from_numpy(rows)).argmax(1).tolist())
    assert expected[0] != expected[1]  # the two versions are told apart by their answers

    # A third version whose bundled fl_core has one line changed.
    foreign = tmp_path / "foreign" / "fl_core"
    shutil.copytree(REPO / "fl_core", foreign, ignore=shutil.ignore_patterns("__pycache__"))
    serving_py = foreign / "serving.py"
    serving_py.write_text(serving_py.read_text() + "\n# changed\n")
    (tmp_path / "v2").mkdir()
    bad = _log_version(uri, vectors[0], spec, tmp_path / "v2", foreign)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.set_registered_model_alias(MODEL, "champion", versions[0])
    home = tmp_path / "home"
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
        "MLFLOW_TRACKING_URI": uri,
        "FL_HOME": str(home),
        "PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), str(REPO)]),
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }
    log = (tmp_path / "serve-champion.log").open("wb")
    watcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fl_airflow.stack",
            "serve-champion",
            "--model",
            MODEL,
            "--port",
            str(port),
            "--poll",
            "0.5",
        ],
        env=env,
        cwd=tmp_path,
        start_new_session=True,
        preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads started before this
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        answers = []
        for version, want in [(0, 0), (1, 1), (0, 0)]:
            client.set_registered_model_alias(MODEL, "champion", versions[version])
            _wait_status(
                home,
                lambda s, v=versions[version]: s.get("version") == v and s.get("ready"),
                f"version {versions[version]} ready",
                watcher,
            )
            # The moment it says ready, the new version answers (no retry here on purpose).
            answers.append(_invoke(port, rows.tolist()) == expected[want])
        assert answers == [True, True, True]

        client.set_registered_model_alias(MODEL, "champion", bad)
        _wait_status(home, lambda s: bad in s.get("refused", {}), f"version {bad} refused", watcher)
        status = _status(home)
        assert any("serving.py differs" in p for p in status["refused"][bad]), status
        assert status["version"] == versions[0] and status["ready"]
        assert _invoke(port, rows.tolist()) == expected[0]  # the previous version still answers
        server_pid = int(status["pid"])
    finally:
        watcher.send_signal(signal.SIGTERM)
        watcher.wait(timeout=60)
    # The server it started (the mlflow CLI and its uvicorn) is gone with it, port freed.
    from fl_airflow.stack import _group_alive

    assert not _group_alive(server_pid)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)  # noqa: S310
