"""The production stack, really started (``fl_airflow.stack``, what ``make stack`` runs):
Airflow 3 on PostgreSQL with two Celery workers on Redis, the MLflow server (basic auth) on
PostgreSQL with artifacts in S3, moto_server as S3, champion-following serving.

Campaigns are triggered through Airflow's REST API and run by the real scheduler (no
``dag.test``): each round's last task triggers the next round's run. The module runs:

1. an undisturbed 2-round campaign (digits, MLP, 4 clients in 2 mapped batches);
2. the same campaign with faults: kill -9 of the Celery worker running a client batch,
   a scheduler restart and an MLflow server restart between the rounds; the final model
   parameters must equal the undisturbed run's (the project's model hash);
3. the schedules: ``federated_monitoring`` on its cron (every minute in the test's
   params.yaml) finds the champion degraded on shuffled-label evaluation data and triggers
   ``federated_retraining``, whose warm-started campaign runs to a registered version;
4. serving following the champion alias, and refusing a version whose code was altered;
5. a campaign with remote agents: four ``fl client run`` processes, each holding only its own
   partition, enrolled with ``fl clients enroll`` against the stack's registry, talking to the
   stack's coordinator service over its URL; ``wait_for_updates`` defers to the triggerer;
   every stored update carries a signature that verifies with its device's enrolled key.
   Last, because its model may take the champion alias the tests before it rely on.

Wall time on the shared 2-core machine (load average 13-17 from other work): about 25
minutes for the module (stack start 1-3 min; an undisturbed campaign 3.5-5.5 min; the
faulted one 6-8 min, the worker kill adding the 45 s heartbeat timeout; schedules ~4 min;
serving ~1 min).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fl_airflow import stack

from tests.stack.client import AirflowAPI, wait_campaign

pytestmark = pytest.mark.slow

FORM: dict[str, Any] = {
    "dataset": "digits",
    "model": "mlp",
    "rounds": 2,
    "clients_per_round": 4,
    # local_epochs stays at params.yaml's 3: with 1 the model (0.31) fails the deploy gate
    # (deploy.min_accuracy 0.5) and never becomes champion.
    "client_batch_size": 2,
    "codec": "dense_fp32",
    "privacy_level": "off",
}
MODEL_NAME = "fl-digits-mlp"
CAMPAIGN_TIMEOUT_S = 900
RESULTS: dict[str, Any] = {}


@contextmanager
def mlflow_env(cfg: stack.Settings) -> Iterator[Any]:
    """An MlflowClient of the stack's server (basic auth credentials from the env file)."""
    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    saved = {k: os.environ.get(k) for k in keys}
    env = stack.service_env(cfg)
    os.environ.update({k: env[k] for k in keys})
    import mlflow

    # Earlier tests in the same process may have set MLflow's global tracking/registry URIs;
    # point both at the stack's server (models:/ URIs resolve through the registry URI).
    uri = env["MLFLOW_TRACKING_URI"]
    previous = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        from mlflow.tracking import MlflowClient

        yield MlflowClient(tracking_uri=uri, registry_uri=uri)
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def s3(cfg: stack.Settings) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=cfg.url("s3"),
        region_name="us-east-1",
        aws_access_key_id=cfg.secrets["S3_WRITER_KEY"],
        aws_secret_access_key=cfg.secrets["S3_WRITER_SECRET"],
        config=Config(s3={"addressing_style": "path"}),
    )


def campaign_objects(cfg: stack.Settings, cid: str) -> dict[str, bytes]:
    """Every object of a campaign in the round-state bucket (key relative to the campaign)."""
    client = s3(cfg)
    bucket = cfg.secrets["ARTIFACT_BUCKET"]
    prefix = f"campaigns-store/campaigns/{cid}/"
    out: dict[str, bytes] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if key.endswith(".json") or "/models/" in key:
                out[key[len(prefix) :]] = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            else:
                out[key[len(prefix) :]] = b""
    return out


def final_model_sha256(objects: dict[str, bytes]) -> str:
    """The project's model hash (sha256 of the float32 parameter vector) of the last global
    model ``models/vNNNN.flw``; checked against what ``server_update`` recorded. (The file's
    own bytes also carry the campaign id in their header, so they differ across campaigns.)"""
    from fl_core import wire
    from fl_core.models import vector_sha256

    last = max(k for k in objects if k.startswith("models/") and k.endswith(".flw"))
    _, vector = wire.decode(objects[last])
    sha = vector_sha256(vector)
    rnd = int(last.removeprefix("models/v").removesuffix(".flw"))
    recorded = json.loads(objects[f"rounds/{rnd:04d}/server_update.json"])
    assert recorded["model_sha256"] == sha, (recorded, sha)
    return sha


def metadata_rows(cfg: stack.Settings, sql: str, args: tuple[Any, ...]) -> list[dict[str, Any]]:
    """Rows of Airflow's metadata DB (PostgreSQL)."""
    import psycopg2
    import psycopg2.extras

    url = cfg.pg_url(cfg.secrets["AIRFLOW_DB"], driver="postgresql")
    with (
        psycopg2.connect(url) as conn,
        conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur,
    ):
        cur.execute(sql, args)
        return [dict(r) for r in cur.fetchall()]


def round_seconds(runs: list[dict[str, Any]]) -> list[float]:
    from datetime import datetime

    def ts(value: str) -> float:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()

    return [round(ts(r["end_date"]) - ts(r["start_date"]), 1) for r in runs]


@pytest.fixture(scope="module")
def api(running_stack: stack.Settings) -> AirflowAPI:
    client = AirflowAPI(running_stack)
    for dag_id in ("federated_training",):
        client.wait_for_dag(dag_id)
        client.unpause(dag_id)
    return client


def test_campaign_runs_under_the_scheduler_on_celery_workers(
    running_stack: stack.Settings, api: AirflowAPI
) -> None:
    cfg = running_stack
    started = time.perf_counter()
    cid = "stack-undisturbed"

    api.trigger("federated_training", {**FORM, "campaign_id": cid})
    runs = wait_campaign(api, cid, FORM["rounds"], CAMPAIGN_TIMEOUT_S)

    # Both rounds ran as DAG runs; round 2 was triggered by round 1's task, not by us.
    assert [r["state"] for r in runs] == ["success", "success"], runs
    assert runs[0]["triggered_by"] == "rest_api"
    assert runs[1]["triggered_by"] == "operator"
    assert int(runs[1]["conf"]["round"]) == 2
    # Mapped client batches (and every other task) ran on the Celery workers.
    rows = metadata_rows(
        cfg,
        "SELECT task_id, map_index, hostname, queue, external_executor_id, state "
        "FROM task_instance WHERE dag_id = 'federated_training' AND run_id = ANY(%s)",
        ([r["dag_run_id"] for r in runs],),
    )
    ran = [r for r in rows if r["state"] == "success"]
    batches = [r for r in ran if r["task_id"] == "train_clients"]
    assert len(batches) == 4  # 2 rounds x 2 batches of 2 clients
    assert all(r["map_index"] >= 0 for r in batches)
    workers = {
        r["hostname"].rsplit("-", 2)[-2] + "-" + r["hostname"].rsplit("-", 1)[-1] for r in ran
    }
    assert workers <= set(stack.WORKERS), workers
    assert all(r["queue"] == "default" and r["external_executor_id"] for r in ran)
    # Round state lives in S3.
    objects = campaign_objects(cfg, cid)
    for rnd in (1, 2):
        assert f"rounds/{rnd:04d}/metrics.json" in objects
    assert json.loads(objects["status.json"])["last_round"] == 2
    # Registration went to the MLflow server; the champion alias points at the new version.
    campaign = json.loads(objects["campaign.json"])
    with mlflow_env(cfg) as client:
        assert campaign["tracking"]["uri"] == cfg.url("mlflow")
        champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
        assert champion.tags.get("fl.campaign_id") == cid
        history = client.get_metric_history(campaign["tracking"]["run_id"], "test_accuracy")
        assert sorted(m.step for m in history) == [1, 2]
    RESULTS["undisturbed"] = {
        "campaign_id": cid,
        "sha256": final_model_sha256(objects),
        "round_seconds": round_seconds(runs),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "champion_version": champion.version,
    }
    print(f"\nundisturbed campaign: {RESULTS['undisturbed']}")


def _kill_worker_running_a_batch(cfg: stack.Settings, run_id: str) -> dict[str, Any]:
    """Wait until a client batch runs, kill -9 its Celery worker (the whole process group:
    the worker, its pool and the task processes, as a crashed machine would lose them)."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        rows = metadata_rows(
            cfg,
            "SELECT map_index, hostname, try_number FROM task_instance WHERE dag_id = "
            "'federated_training' AND run_id = %s AND task_id = 'train_clients' "
            "AND state = 'running' AND hostname <> ''",
            (run_id,),
        )
        if rows:
            victim = rows[0]
            worker = next(w for w in stack.WORKERS if victim["hostname"].endswith(w))
            record = next(r for r in stack.read_pids(cfg) if r["name"] == worker)
            os.killpg(int(record["pid"]), signal.SIGKILL)
            return {**victim, "worker": worker}
        time.sleep(0.2)
    raise AssertionError("no client batch ran within 600 s")


def test_faults_kill_worker_restart_scheduler_and_mlflow_same_model(
    running_stack: stack.Settings, api: AirflowAPI
) -> None:
    if "undisturbed" not in RESULTS:
        pytest.fail("needs the undisturbed campaign of the previous test")
    cfg = running_stack
    cid = "stack-faults"
    started = time.perf_counter()

    first = api.trigger("federated_training", {**FORM, "campaign_id": cid})
    killed = _kill_worker_running_a_batch(cfg, first)
    stack.restart_service(cfg, killed["worker"])  # back to two workers
    round1 = api.wait_run("federated_training", first, CAMPAIGN_TIMEOUT_S)
    assert round1["state"] == "success"
    stack.restart_service(cfg, "scheduler")
    stack.restart_service(cfg, "mlflow")
    runs = wait_campaign(api, cid, FORM["rounds"], CAMPAIGN_TIMEOUT_S)

    assert [r["state"] for r in runs] == ["success", "success"], runs
    assert runs[1]["triggered_by"] == "operator"
    # The killed batch was retried (a second try) and succeeded.
    rows = metadata_rows(
        cfg,
        "SELECT try_number, state, hostname FROM task_instance WHERE dag_id = "
        "'federated_training' AND run_id = %s AND task_id = 'train_clients' "
        "AND map_index = %s",
        (first, killed["map_index"]),
    )
    assert rows[0]["state"] == "success"
    assert rows[0]["try_number"] > killed["try_number"], (killed, rows)
    # The next round's logging after the MLflow restart reached the server: no lost metric.
    objects = campaign_objects(cfg, cid)
    campaign = json.loads(objects["campaign.json"])
    with mlflow_env(cfg) as client:
        history = client.get_metric_history(campaign["tracking"]["run_id"], "test_accuracy")
        assert sorted(m.step for m in history) == [1, 2]
    # Same model bytes as the undisturbed campaign (same config and seed).
    sha = final_model_sha256(objects)
    RESULTS["faults"] = {
        "campaign_id": cid,
        "sha256": sha,
        "killed": killed,
        "retried_try": rows[0]["try_number"],
        "round_seconds": round_seconds(runs),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    print(f"\ncampaign with faults: {RESULTS['faults']}")
    assert sha == RESULTS["undisturbed"]["sha256"]


def _degrade_eval_data(cfg: stack.Settings, source_campaign: str) -> None:
    """The "latest evaluation data" of the test's params.yaml: the champion's test set with
    its labels shuffled (a real-world label shift the champion cannot follow)."""
    import numpy as np
    import pandas as pd

    campaign = json.loads(campaign_objects(cfg, source_campaign)["campaign.json"])
    table = pd.read_parquet(Path(campaign["data_dir"]) / "prepared" / "test.parquet")
    labels = table["label"].to_numpy().copy()
    np.random.default_rng(0).shuffle(labels)
    table["label"] = labels
    table.to_parquet(cfg.params_root / "degraded.parquet")


def _wait(predicate: Any, timeout_s: float, what: str, every_s: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(every_s)
    raise AssertionError(f"{what}: not within {timeout_s} s")


def test_monitoring_cron_finds_degradation_and_retraining_registers_a_model(
    running_stack: stack.Settings, api: AirflowAPI
) -> None:
    if "undisturbed" not in RESULTS:
        pytest.fail("needs the champion of the undisturbed campaign")
    cfg = running_stack
    started = time.perf_counter()
    _degrade_eval_data(cfg, RESULTS["undisturbed"]["campaign_id"])
    for dag_id in ("federated_retraining", "federated_monitoring"):
        api.wait_for_dag(dag_id)
        api.unpause(dag_id)

    # The scheduler starts federated_monitoring on its cron (every minute here).
    def scheduled_run_done() -> dict[str, Any] | None:
        runs = [r for r in api.runs("federated_monitoring") if r["run_type"] == "scheduled"]
        return next((r for r in runs if r["state"] in ("success", "failed")), None)

    monitoring = _wait(scheduled_run_done, 420, "a scheduled federated_monitoring run")
    api._request("PATCH", "/api/v2/dags/federated_monitoring", {"is_paused": True})
    assert monitoring["state"] == "success", monitoring
    states = {
        t["task_id"]: t["state"]
        for t in api.task_instances("federated_monitoring", monitoring["dag_run_id"])
    }
    assert states["trigger_retraining"] == "success", states
    # ... which triggered federated_retraining, which opened a warm-started campaign ...
    retraining = _wait(
        lambda: next(
            (r for r in api.runs("federated_retraining") if r["triggered_by"] == "operator"),
            None,
        ),
        120,
        "federated_retraining run triggered by monitoring",
    )
    retraining = api.wait_run("federated_retraining", retraining["dag_run_id"], 600)
    assert retraining["state"] == "success"
    assert retraining["conf"].get("reason"), retraining["conf"]  # the degradation, named
    opened = api.xcom("federated_retraining", retraining["dag_run_id"], "open_campaign")
    cid = opened["campaign_id"]
    assert opened["warm_start"] is True  # from the champion
    runs = wait_campaign(api, cid, FORM["rounds"], CAMPAIGN_TIMEOUT_S)
    assert [r["state"] for r in runs] == ["success"] * FORM["rounds"], runs
    # ... which ran to a registered model version.
    with mlflow_env(cfg) as client:
        versions = client.search_model_versions(f"name = '{MODEL_NAME}'")
        mine = [v for v in versions if v.tags.get("fl.campaign_id") == cid]
    assert len(mine) == 1
    RESULTS["retraining"] = {
        "campaign_id": cid,
        "version": mine[0].version,
        "reason": retraining["conf"].get("reason"),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    print(f"\nmonitoring -> retraining: {RESULTS['retraining']}")


def _serving_status(cfg: stack.Settings) -> dict[str, Any]:
    path = cfg.state / "serving.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _invoke(cfg: stack.Settings, rows: list[list[float]]) -> list[Any]:
    import urllib.request

    req = urllib.request.Request(
        cfg.url("serving") + "/invocations",
        data=json.dumps({"inputs": rows}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - loopback
            out = json.loads(resp.read())["predictions"]
    except OSError as exc:  # say what serving was doing, not only "connection refused"
        log = cfg.state / "logs" / "serving.log"
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
        raise AssertionError(
            f"serving did not answer ({exc}); serving.json: {_serving_status(cfg)}\n{tail}"
        ) from exc
    # The served model answers {"label": [...], "probabilities": [...]}.
    return list(out["label"]) if isinstance(out, dict) else list(out)


def test_serving_follows_the_champion_alias(running_stack: stack.Settings) -> None:
    if "retraining" not in RESULTS:
        pytest.fail("needs the retraining campaign's model version")
    import numpy as np
    import pandas as pd

    cfg = running_stack
    campaign = json.loads(
        campaign_objects(cfg, RESULTS["undisturbed"]["campaign_id"])["campaign.json"]
    )
    table = pd.read_parquet(Path(campaign["data_dir"]) / "prepared" / "test.parquet")
    rows = table.drop(columns=["label"]).to_numpy(dtype=np.float32)[:50].tolist()
    new = RESULTS["retraining"]["version"]
    with mlflow_env(cfg) as client:
        current = client.get_model_version_by_alias(MODEL_NAME, "champion").version
        old = current if current != new else RESULTS["undisturbed"]["champion_version"]
        client.set_registered_model_alias(MODEL_NAME, "champion", old)
        _wait(
            lambda: (
                _serving_status(cfg).get("version") == old and _serving_status(cfg).get("ready")
            ),
            300,
            f"serving version {old}",
        )
        before = _invoke(cfg, rows)

        promoted = time.monotonic()
        client.set_registered_model_alias(MODEL_NAME, "champion", new)
        _wait(
            lambda: (
                _serving_status(cfg).get("version") == new and _serving_status(cfg).get("ready")
            ),
            300,
            f"serving version {new}",
            1.0,
        )
        after = _invoke(cfg, rows)
        switch_s = round(time.monotonic() - promoted, 1)

        import mlflow.pyfunc

        expected = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{new}").predict(
            np.asarray(rows, dtype=np.float32)
        )
    if isinstance(expected, dict):
        expected = expected["label"]
    assert np.asarray(after).tolist() == np.asarray(expected).tolist()
    assert before != after  # a different model answers now
    RESULTS["serving"] = {"from": old, "to": new, "switch_seconds": switch_s}
    print(f"\nserving followed the champion: {RESULTS['serving']}")


def test_serving_refuses_a_version_whose_code_is_not_this_project(
    running_stack: stack.Settings, tmp_path: Path
) -> None:
    if "serving" not in RESULTS:
        pytest.fail("needs the serving test's champion")
    import mlflow.artifacts
    import numpy as np
    import pandas as pd

    cfg = running_stack
    served = RESULTS["serving"]["to"]
    campaign = json.loads(
        campaign_objects(cfg, RESULTS["undisturbed"]["campaign_id"])["campaign.json"]
    )
    table = pd.read_parquet(Path(campaign["data_dir"]) / "prepared" / "test.parquet")
    rows = table.drop(columns=["label"]).to_numpy(dtype=np.float32)[:20].tolist()
    with mlflow_env(cfg) as client:
        # Someone with registry access registers the champion with one code file changed.
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{MODEL_NAME}/{served}", dst_path=str(tmp_path)
            )
        )
        target = local / "code" / "fl_core" / "serving.py"
        target.write_text(target.read_text() + "\nimport os  # anything at all\n")
        experiment = client.get_experiment_by_name("tampering") or client.get_experiment(
            client.create_experiment("tampering")
        )
        run = client.create_run(experiment.experiment_id)
        client.log_artifacts(run.info.run_id, str(local), "model")
        client.set_terminated(run.info.run_id)
        tampered = client.create_model_version(
            MODEL_NAME, f"{run.info.artifact_uri}/model", run_id=run.info.run_id
        ).version
        before = _invoke(cfg, rows)

        client.set_registered_model_alias(MODEL_NAME, "champion", tampered)
        status = _wait(
            lambda: (
                tampered in (_serving_status(cfg).get("refused") or {}) and _serving_status(cfg)
            ),
            300,
            f"serving's verdict on version {tampered}",
            1.0,
        )
        after = _invoke(cfg, rows)
        client.set_registered_model_alias(MODEL_NAME, "champion", served)

    assert status["version"] == served  # the checked version keeps answering
    assert any("serving.py differs" in r for r in status["refused"][tampered])
    assert after == before


# --------------------------------------------------------------------------- remote agents
# Last in the module: its campaign registers into the same model and may take the champion
# alias, which the monitoring/retraining and serving tests above must not see.

REMOTE_FORM: dict[str, Any] = {**FORM, "clients": "remote", "client_batch_size": 4}
NUM_AGENTS = 4


def _enroll(cfg: stack.Settings, client: str) -> str:
    """``fl clients enroll CLIENT`` as the operator runs it: registry access only."""
    env = stack.service_env(cfg)
    out = subprocess.run(
        [sys.executable, "-m", "fl_core.cli", "clients", "enroll", client, "--ttl", "900"],
        env={
            "PATH": os.environ["PATH"],
            "PYTHONPATH": env["PYTHONPATH"],
            "FL_HOME": env["FL_HOME"],
            "FL_COORDINATOR_DB_URL": env["FL_COORDINATOR_DB_URL"],
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def _start_agent(
    cfg: stack.Settings, device: Path, token: str, log: Path
) -> subprocess.Popen[bytes]:
    """``fl client run`` in its own folder with its own partition and held-out rows; its
    environment holds no store, registry or MLflow credentials."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(device),
        "PYTHONPATH": stack.service_env(cfg)["PYTHONPATH"],
        "FL_HOME": str(device / ".fl"),
        "GIT_PYTHON_REFRESH": "quiet",
        "NO_PROXY": "*",
    }
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "fl_core.cli", "client", "run",
             "--coordinator", cfg.url("coordinator"), "--enroll-token", token,
             "--data", str(device / "local.parquet"),
             "--eval-data", str(device / "heldout.parquet"), "--holdout", "0",
             "--home", str(device / "home"), "--wait", "5"],
            env=env, cwd=device, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def _stop_agents(procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop the agents this test started (their own process groups), killing stragglers."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_campaign_with_remote_agents_completes_on_the_stack(
    running_stack: stack.Settings, api: AirflowAPI, tmp_path: Path
) -> None:
    import numpy as np
    import sqlalchemy as sa

    from fl_core import wire
    from fl_core.campaigns import config_from_form, ensure_data
    from fl_core.config import load_params
    from fl_core.coordinator import protocol
    from fl_core.coordinator.api import Coordinator
    from fl_core.coordinator.db import ClientRow
    from fl_core.coordinator.settings import CoordinatorSettings
    from fl_core.data.io import read_json, read_table, write_table

    cfg = running_stack
    env = stack.service_env(cfg)
    started = time.perf_counter()
    cid = "stack-remote"
    # The partitions the campaign's open_round prepares (same params, same FL_HOME); each
    # device gets only its own file, copied out, and a shard of held-out rows.
    campaign_cfg = config_from_form(load_params(cfg.params_root / "params.yaml"), REMOTE_FORM)
    data_dir = ensure_data(campaign_cfg, project_root=cfg.params_root, home=cfg.home)
    entries = read_json(data_dir / "clients" / "manifest.json")["clients"][:NUM_AGENTS]
    clients = [e["client_id"] for e in entries]
    x_test, y_test = read_table(data_dir / "prepared" / "test.parquet")
    registry = Coordinator(
        CoordinatorSettings(db_url=env["FL_COORDINATOR_DB_URL"], store_url=env["FL_ARTIFACT_STORE"])
    )
    procs: list[subprocess.Popen[bytes]] = []
    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        for i, entry in enumerate(entries):
            device = tmp_path / "devices" / entry["client_id"]
            device.mkdir(parents=True)
            x, y = read_table(data_dir / "clients" / entry["file"])
            write_table(device / "local.parquet", x, y)
            rows = np.arange(i, len(y_test), NUM_AGENTS)
            write_table(device / "heldout.parquet", x_test[rows], y_test[rows])
            token = _enroll(cfg, entry["client_id"])
            procs.append(_start_agent(cfg, device, token, logs / f"{entry['client_id']}.log"))

        def all_live() -> bool:
            dead = [c for c, p in zip(clients, procs, strict=True) if p.poll() is not None]
            assert not dead, "agents exited early:\n" + "\n".join(
                (logs / f"{c}.log").read_text()[-2000:] for c in dead
            )
            return sorted(c.client_id for c in registry.live_clients()) == clients

        _wait(all_live, 300, f"{NUM_AGENTS} agents enrolled and heartbeating", 1.0)
        agents_ready_s = round(time.perf_counter() - started, 1)

        api.trigger("federated_training", {**REMOTE_FORM, "campaign_id": cid})
        runs = wait_campaign(api, cid, REMOTE_FORM["rounds"], CAMPAIGN_TIMEOUT_S)
        alive_to_the_end = [p.poll() is None for p in procs]
    finally:
        _stop_agents(procs)
    # The public key each client enrolled with, as the stack's registry holds it.
    with registry.session() as session:
        enrolled = session.scalars(sa.select(ClientRow).where(ClientRow.client_id.in_(clients)))
        keys = {row.client_id: row.public_key for row in enrolled}
    registry.close()

    assert [r["state"] for r in runs] == ["success", "success"], runs
    assert runs[1]["triggered_by"] == "operator"  # round 2 chained under the scheduler
    assert all(alive_to_the_end), "an agent died during the campaign"
    # wait_for_updates deferred: its result is the RemoteUpdatesTrigger's event, which only
    # the triggerer produces (a poking sensor returns nothing).
    for run in runs:
        event = api.xcom("federated_training", run["dag_run_id"], "wait_for_updates")
        assert event["received"] == event["tasks"] == NUM_AGENTS, event
    objects = campaign_objects(cfg, cid)
    campaign = json.loads(objects["campaign.json"])
    assert campaign["config"]["campaign"]["clients"] == "remote"
    assert json.loads(objects["status.json"])["last_round"] == 2
    # Every round counted exactly the enrolled agents' updates, each signed with the key the
    # device generated and enrolled: the stored signature verifies over the stored bytes.
    client = s3(cfg)
    bucket = cfg.secrets["ARTIFACT_BUCKET"]
    prefix = f"campaigns-store/campaigns/{cid}/"
    for rnd in (1, 2):
        collected = json.loads(objects[f"rounds/{rnd:04d}/collected.json"])
        assert sorted(collected["received"]) == clients and collected["missing"] == []
        validation = json.loads(objects[f"rounds/{rnd:04d}/validation.json"])
        assert sorted(a["client"] for a in validation["accepted"]) == clients
        metrics = json.loads(objects[f"rounds/{rnd:04d}/metrics.json"])
        assert metrics["fed_num_clients"] == NUM_AGENTS  # the devices' own evaluation
        for name in clients:
            key = f"rounds/{rnd:04d}/updates/{name}.flw"
            data = client.get_object(Bucket=bucket, Key=prefix + key)["Body"].read()
            record = json.loads(objects[key + ".sig.json"])
            identity = json.loads(
                (tmp_path / "devices" / name / "home" / "identity.json").read_text()
            )
            assert record["client"] == name
            assert record["public_key"] == identity["public_key"] == keys[name]
            assert record["sha256"] == hashlib.sha256(data).hexdigest()
            signed = protocol.update_message(
                campaign=cid, rnd=rnd, client_id=name, message_sha256=record["sha256"]
            )
            assert protocol.verify(record["public_key"], signed, record["signature"])
            header, _ = wire.decode(data)
            assert (header.client, header.campaign, header.round) == (name, cid, rnd)
    # The final model version is registered in the stack's MLflow server.
    with mlflow_env(cfg) as mlflow_client:
        versions = mlflow_client.search_model_versions(f"name = '{MODEL_NAME}'")
        mine = [v for v in versions if v.tags.get("fl.campaign_id") == cid]
        assert campaign["tracking"]["uri"] == cfg.url("mlflow")
        history = mlflow_client.get_metric_history(campaign["tracking"]["run_id"], "test_accuracy")
    assert len(mine) == 1
    assert sorted(m.step for m in history) == [1, 2]
    RESULTS["remote"] = {
        "campaign_id": cid,
        "agents": NUM_AGENTS,
        "version": mine[0].version,
        "agents_ready_seconds": agents_ready_s,
        "round_seconds": round_seconds(runs),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    print(f"\ncampaign with remote agents: {RESULTS['remote']}")
