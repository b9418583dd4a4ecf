"""The DAGs with a real Airflow 3 (SQLite metadata DB in a temporary FL_HOME).

Services: Airflow runs in subprocesses of this test (``python -m fl_airflow.run``: real
``airflow db migrate``, real DAG runs through ``dag.test``); MLflow is the real SQLite
tracking store and registry; ``mlflow models serve`` is started on 127.0.0.1 for the
serving test. The test reads Airflow's metadata DB directly with sqlite3.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def _env(home: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AIRFLOW") and k != "MLFLOW_TRACKING_URI"
    }
    env.update(
        FL_HOME=str(home),
        PYTHONPATH=str(REPO / "plugins"),
        PATH=f"{BIN}:{os.environ['PATH']}",
        GIT_PYTHON_REFRESH="quiet",
    )
    return env


def _run(
    args: list[str], env: dict[str, str], timeout: int = 900
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_every_dag_parses_fast_with_tags_and_retries(tmp_path: Path) -> None:
    code = r"""
import json, sys, time
from fl_airflow import env
env.configure()
from airflow.dag_processing.dagbag import DagBag
t = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
elapsed = time.perf_counter() - t
print(json.dumps({
    "errors": {k: str(v) for k, v in bag.import_errors.items()},
    "dags": {d.dag_id: {"tags": sorted(d.tags), "retries": d.default_args.get("retries"),
                        "catchup": d.catchup,
                        "tz": str(d.start_date.tzinfo) if d.start_date else None}
             for d in bag.dags.values()},
    "heavy": [m for m in ("torch", "mlflow", "great_expectations", "sklearn") if m in sys.modules],
    "seconds": elapsed,
    "monitoring": {
        "decide": sorted(bag.dags["federated_monitoring"].get_task("decide").downstream_task_ids),
        "retrain_after": sorted(
            bag.dags["federated_monitoring"].get_task("trigger_retraining").upstream_task_ids
        ),
        "clients": bag.dags["federated_monitoring"].params.get_param("clients").value,
    },
}))
"""
    out = _run(["-c", code, str(REPO / "dags")], _env(tmp_path), timeout=300)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout.strip().splitlines()[-1])

    assert info["errors"] == {}
    assert "federated_training" in info["dags"]
    for dag_id, dag in info["dags"].items():
        assert dag["tags"], f"{dag_id} has no tags"
        assert dag["retries"] and dag["retries"] >= 1, f"{dag_id} has no retries"
        assert dag["catchup"] is False and dag["tz"] is not None
    assert info["heavy"] == [], f"parsing imported {info['heavy']}"
    # Monitoring: an inconclusive check alerts on its own branch, never into retraining; the
    # mode follows the champion unless a run's conf sets it.
    assert info["monitoring"] == {
        "decide": ["alert", "alert_inconclusive", "alert_suppressed"],
        "retrain_after": ["alert"],
        "clients": "auto",
    }


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 2-round campaign on digits through the federated_training DAG."""
    home = tmp_path_factory.mktemp("fl-home")
    env = _env(home)
    out = _run(
        [
            "-m",
            "fl_airflow.run",
            "--rounds",
            "2",
            "--dataset",
            "digits",
            "--clients-per-round",
            "4",
            "--client-batch-size",
            "2",
            "--json",
        ],
        env,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    status = json.loads(out.stdout.strip().splitlines()[-1])
    return {"home": home, "env": env, "status": status}


def _db(home: Path) -> sqlite3.Connection:
    return sqlite3.connect(home / "airflow" / "airflow.db")


def test_each_round_is_a_successful_dag_run_with_the_right_tasks(campaign: dict[str, Any]) -> None:
    db = _db(campaign["home"])
    runs = db.execute(
        "select run_id, state, conf from dag_run where dag_id='federated_training' order by id"
    ).fetchall()

    assert [r[1] for r in runs] == ["success", "success"]
    first, last = runs[0][0], runs[1][0]
    states = dict(
        db.execute(
            "select task_id || ':' || map_index, state from task_instance where run_id=?", (first,)
        ).fetchall()
    )
    for task in (
        "open_round",
        "select_clients",
        "dispatch",
        "wait_for_updates",
        "collect",
        "validate_updates",
        "aggregate",
        "privatize",
        "server_update",
        "evaluate",
        "register_round",
        "next_round",
    ):
        assert states[f"{task}:-1"] == "success", (task, states)
    assert states["train_clients:0"] == states["train_clients:1"] == "success"
    assert states["register_model:-1"] == "skipped"  # round 1 continues
    last_states = dict(
        db.execute(
            "select task_id, state from task_instance where run_id=? and map_index=-1", (last,)
        ).fetchall()
    )
    assert last_states["register_model"] == last_states["deploy"] == "success"
    assert last_states["trigger_next_round"] == "skipped"
    assert campaign["status"]["reason"] == "rounds done (2)"


def test_mlflow_run_has_two_round_steps_and_a_champion(campaign: dict[str, Any]) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{campaign['home'] / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("federated").experiment_id])

    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["fl.orchestrator"] == "airflow"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "test_accuracy")] == [1, 2]
    version = client.get_model_version_by_alias("fl-digits-mlp", "champion")
    assert version.run_id == run.info.run_id
    assert version.tags["fl.campaign_id"] == campaign["status"]["campaign_id"]
    assert version.tags["fl.dataset"] == "digits"


def test_artifact_store_layout(campaign: dict[str, Any]) -> None:
    root = campaign["home"] / "artifacts" / "campaigns" / campaign["status"]["campaign_id"]

    assert (root / "campaign.json").exists() and (root / "status.json").exists()
    assert sorted(p.name for p in (root / "models").iterdir()) == [
        "v0000.flw",
        "v0001.flw",
        "v0002.flw",
    ]
    for rnd in ("0001", "0002"):
        files = {p.name for p in (root / "rounds" / rnd).iterdir()}
        assert {
            "cohort.json",
            "manifest.json",
            "collected.json",
            "validation.json",
            "aggregate.npz",
            "metrics.json",
            "updates",
        } <= files
        assert len(list((root / "rounds" / rnd / "updates").glob("*.flw"))) == 4


def test_clearing_and_rerunning_aggregate_leaves_model_bytes_identical(
    campaign: dict[str, Any],
) -> None:
    cid = campaign["status"]["campaign_id"]
    root = campaign["home"] / "artifacts" / "campaigns" / cid
    model = root / "models" / "v0002.flw"
    before = model.read_bytes()
    # "Clear" aggregate and everything downstream of it in round 2, then rerun the round.
    for name in (
        "aggregate.npz",
        "aggregate.json",
        "privatized.npz",
        "privacy.json",
        "server_update.json",
        "server_opt.npz",
        "metrics.json",
    ):
        (root / "rounds" / "0002" / name).unlink()
    model.unlink()
    updates_before = sorted(p.stat().st_mtime_ns for p in (root / "rounds/0002/updates").iterdir())

    out = _run(
        ["-m", "fl_airflow.run", "--rerun-round", "2", "--campaign-id", cid], campaign["env"]
    )

    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert model.read_bytes() == before
    # No client was asked to train again: the updates were counted once.
    assert sorted(p.stat().st_mtime_ns for p in (root / "rounds/0002/updates").iterdir()) == (
        updates_before
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_served_champion_answers_invocations(campaign: dict[str, Any]) -> None:
    import numpy as np

    from fl_core.data.io import read_table

    home = campaign["home"]
    env = {**campaign["env"], "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}
    port = _free_port()
    proc = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "models",
            "serve",
            "-m",
            "models:/fl-digits-mlp@champion",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 600  # the server imports mlflow + torch: slow under load
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                time.sleep(1)
        data_dirs = list((home / "datasets").glob("*/data/prepared/test.parquet"))
        x, y = read_table(data_dirs[0])
        body = json.dumps({"inputs": x.tolist()}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            preds = np.asarray(json.loads(resp.read())["predictions"]["label"]).reshape(-1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    assert preds.shape == y.shape
    assert set(preds.tolist()) <= set(range(10))
    # The served model is the deployed one: same accuracy as deploy measured on this test set.
    deployed = campaign["status"]["deployed"]
    assert (preds == y).mean() == pytest.approx(deployed["accuracy"], abs=1e-9)
    assert deployed["accuracy"] > 0.2  # far above chance (0.1) after 2 rounds


def _dag_runs(home: Path, dag_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    db = _db(home)
    rows = db.execute(
        "select run_id, state, conf from dag_run where dag_id=? order by id", (dag_id,)
    ).fetchall()
    return [(r[0], r[1], _conf(r[2])) for r in rows]


def _conf(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if isinstance(raw, bytes):
        raw = raw.decode()
    try:
        out: dict[str, Any] = json.loads(raw)
        return out
    except (TypeError, ValueError):
        return {"raw": str(raw)}


def _tasks(home: Path, dag_id: str) -> dict[str, str]:
    db = _db(home)
    run_id = db.execute(
        "select run_id from dag_run where dag_id=? order by id desc limit 1", (dag_id,)
    ).fetchone()[0]
    return dict(
        db.execute(
            "select task_id, state from task_instance where run_id=? and dag_id=?", (run_id, dag_id)
        ).fetchall()
    )


def _monitor(campaign: dict[str, Any], conf: dict[str, Any], **env: str) -> None:
    out = _run(
        ["-m", "fl_airflow.run", "--dag", "federated_monitoring", "--conf", json.dumps(conf)],
        {**campaign["env"], **env},
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


def test_monitoring_triggers_nothing_when_healthy(campaign: dict[str, Any]) -> None:
    _monitor(campaign, {"registered_model": "fl-digits-mlp"})

    states = _tasks(campaign["home"], "federated_monitoring")
    assert states["check_champion"] == states["decide"] == "success"
    assert states["alert"] == states["trigger_retraining"] == "skipped"
    assert _dag_runs(campaign["home"], "federated_retraining") == []


def test_degradation_alerts_and_triggers_retraining_once(
    campaign: dict[str, Any], tmp_path: Path
) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import numpy as np

    from fl_core.data.io import read_table, write_table
    from fl_core.monitoring import degrade_labels

    received: list[dict[str, Any]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    home = campaign["home"]
    test_file = next((home / "datasets").glob("*/data/prepared/test.parquet"))
    x, y = read_table(test_file)
    degraded = tmp_path / "degraded.parquet"  # the labels of the new data moved under the model
    write_table(
        degraded, x, degrade_labels(y, fraction=0.6, num_classes=10, rng=np.random.default_rng(0))
    )
    url = f"http://127.0.0.1:{server.server_port}/alert"
    conf = {"eval_path": str(degraded), "registered_model": "fl-digits-mlp"}
    try:
        _monitor(campaign, conf, FL_ALERT_WEBHOOK_URL=url)
        first = _tasks(home, "federated_monitoring")
        _monitor(campaign, conf, FL_ALERT_WEBHOOK_URL=url)
        second = _tasks(home, "federated_monitoring")
    finally:
        server.shutdown()

    assert first["alert"] == first["trigger_retraining"] == "success"
    runs = _dag_runs(home, "federated_retraining")
    assert len(runs) == 1, "the cooldown must stop the second trigger"
    assert "accuracy" in runs[0][2]["reason"]
    assert second["alert_suppressed"] == "success" and second["trigger_retraining"] == "skipped"
    assert len(received) == 1
    assert received[0]["event"] == "federated_model_degraded"
    assert received[0]["retraining_triggered"] is True


def test_retraining_warm_starts_from_the_champion(campaign: dict[str, Any]) -> None:
    from fl_core import pipeline, wire
    from fl_core.store import LocalStore

    home = campaign["home"]
    out = _run(
        [
            "-m",
            "fl_airflow.run",
            "--dag",
            "federated_retraining",
            "--conf",
            json.dumps({"reason": "test", "rounds": 1, "registered_model": "fl-digits-mlp"}),
        ],
        campaign["env"],
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    store = LocalStore(home / "artifacts")
    champion_cid = campaign["status"]["campaign_id"]
    new = [
        r
        for r in _dag_runs(home, "federated_training")
        if r[2].get("round") == 1
        and str(r[2].get("campaign_id", "")).startswith("digits-mlp-retrain")
    ]
    assert len(new) == 1 and new[0][1] == "queued"  # handed to the scheduler
    cid = new[0][2]["campaign_id"]
    assert pipeline.load_campaign(store, cid)["warm_start"] is True
    _, start = wire.decode(store.get_bytes(pipeline.model_key(cid, 0)))
    _, champion = wire.decode(store.get_bytes(pipeline.model_key(champion_cid, 2)))
    np.testing.assert_array_equal(start, champion)
