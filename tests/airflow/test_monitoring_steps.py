"""The monitoring DAG's steps (``fl_airflow.monitoring``) on real parts, without Airflow:
a local artifact store, the MLflow registry on SQLite and the coordinator's registry on
SQLite (as ``FL_HOME`` sets them up).

- ``clients: auto`` (the default, or no ``clients`` in the conf) checks the champion the way
  its campaign trained it; an explicit ``clients`` wins.
- A remote check no client reported on by its deadline is inconclusive: not healthy, not
  degraded; it alerts and triggers no retraining (and leaves the cooldown alone).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import tiny_config

MODEL = "fl-mon-steps"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    import os

    home = tmp_path / "home"
    monkeypatch.setenv("FL_HOME", str(home))
    for var in ("FL_COORDINATOR_DB_URL", "FL_ARTIFACT_STORE", "MLFLOW_TRACKING_URI",
                "MLFLOW_REGISTRY_URI"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    yield home
    # the steps leave no MLflow URI in the environment (a later process, e.g. a model
    # server, would otherwise read this test's registry)
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert "MLFLOW_REGISTRY_URI" not in os.environ


def _champion(store: Any, uri: str, name: str, campaign_id: str, root: Path) -> None:
    """Register the campaign's initial model as a version of ``name`` (its ``weights.flw``,
    tagged with its campaign as ``register_model`` does) and make it the champion."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from fl_core.rounds import state

    rec = state.load_campaign(store, campaign_id)
    source = root / "models" / campaign_id
    source.mkdir(parents=True)
    (source / "weights.flw").write_bytes(
        state.encode_model(
            campaign_id, 0, state.model_layout(rec), state.load_model(store, campaign_id, 0)
        )
    )
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    with contextlib.suppress(MlflowException):  # already registered
        client.create_registered_model(name)
    version = client.create_model_version(
        name, source=str(source), tags={"fl.campaign_id": campaign_id}
    )
    client.set_registered_model_alias(name, "champion", version.version)


def test_auto_mode_checks_the_champion_the_way_it_was_trained(
    home: Path, tiny_data: Path, tmp_path: Path
) -> None:
    from fl_airflow.monitoring import publish

    from fl_core import pipeline
    from fl_core.store import LocalStore
    from fl_core.tracking import default_tracking_uri

    store = LocalStore(home / "artifacts")
    remote_cid = pipeline.start_campaign(
        store, tiny_config(campaign={"clients": "remote"}), data_dir=tiny_data,
        campaign_id="trained-remote",
    )  # fmt: skip
    simulated_cid = pipeline.start_campaign(
        store, tiny_config(), data_dir=tiny_data, campaign_id="trained-simulated"
    )
    uri = default_tracking_uri(home)

    _champion(store, uri, MODEL, remote_cid, tmp_path)
    # No conf: the remote-trained champion goes to the devices. The coordinator has no
    # training-data histograms of this campaign (no device trained it here), so publishing
    # stops there, after reading the champion from the registry and asking the coordinator.
    with pytest.raises(ValueError, match="trained-remote has no reference histograms"):
        publish(store, {"registered_model": MODEL}, run_id="scheduled__2026-12-02T17:00:00")
    from fl_airflow.monitoring import clients_mode  # how publish decides

    remote_champion = {
        "unset": clients_mode(store, {"registered_model": MODEL}),
        "auto": clients_mode(store, {"registered_model": MODEL, "clients": "auto"}),
        "explicit": clients_mode(store, {"registered_model": MODEL, "clients": "simulated"}),
    }
    _champion(store, uri, MODEL, simulated_cid, tmp_path)
    simulated_champion = {
        "unset": clients_mode(store, {"registered_model": MODEL}),
        "explicit": clients_mode(store, {"registered_model": MODEL, "clients": "remote"}),
    }
    no_champion = clients_mode(store, {"registered_model": "fl-never-registered"})
    published = publish(store, {"registered_model": MODEL}, run_id="manual__sim")

    assert remote_champion == {"unset": "remote", "auto": "remote", "explicit": "simulated"}
    assert simulated_champion == {"unset": "simulated", "explicit": "remote"}
    assert no_champion == "simulated"
    assert published is None  # simulated: nothing published, check_champion runs centrally
    with pytest.raises(ValueError, match="clients must be one of"):
        clients_mode(store, {"clients": "edge"})


def _silent_check(store: Any, run_id: str, clients: list[str]) -> dict[str, Any]:
    """A published check (record, model, one ``monitor`` task per client) that no client
    answers; returns what ``publish`` returns."""
    import numpy as np

    from fl_core.models import ModelSpec, init_vector
    from fl_core.remote_monitoring import CHECK_ROUND, check_id_for
    from fl_core.rounds import layout as L
    from fl_core.rounds import remote
    from fl_core.rounds.state import encode_model

    spec = ModelSpec(name="mlp", input_shape=(4,), num_classes=3, hidden=(5,))
    _, lay = init_vector(spec, seed=0)
    check_id = check_id_for(run_id)
    store.put_json(
        L.monitoring_check_key(check_id),
        {
            "check_id": check_id, "run_id": run_id, "campaign_id": "trained-remote",
            "model": MODEL, "version": 2, "reference_accuracy": 0.9, "layout": lay.to_json(),
            "model_spec": spec.to_json(), "bins": 2, "edges": [[0.5]] * 4,
            "reference_counts": [[5, 5]] * 4, "reference_num_examples": 10,
            "reference_clients": clients,
        },
    )  # fmt: skip
    store.put_bytes(
        L.monitoring_model_key(check_id),
        encode_model(check_id, 2, lay, np.zeros(lay.num_params, np.float32)),
    )
    status = remote.coordinator(store).publish_round(
        check_id, CHECK_ROUND, base_version=2, tasks={c: {"kind": "monitor"} for c in clients},
        deadline_s=1.0, model_key=L.monitoring_model_key(check_id),
    )  # fmt: skip
    return {"check_id": check_id, "num_tasks": status.num_tasks, "version": 2, "deadline_s": 1.0}


def test_a_check_no_client_reported_on_is_inconclusive_and_alerts_without_retraining(
    home: Path,
) -> None:
    from fl_airflow.monitoring import check

    from fl_core.operations import COOLDOWN_KEY, alert_payload, decide_retraining
    from fl_core.remote_monitoring import check_progress
    from fl_core.store import LocalStore

    store = LocalStore(home / "artifacts")
    run_id = "scheduled__2026-12-02T17:00:00+00:00"
    published = _silent_check(store, run_id, ["edge-a", "edge-b"])
    deadline = time.monotonic() + 30
    while not (progress := check_progress(store, published["check_id"]))["done"]:
        assert time.monotonic() < deadline, progress
        time.sleep(0.2)

    params = {"registered_model": MODEL, "clients": "remote"}
    report = check(store, params, run_id=run_id, published=published)
    decision = decide_retraining(store, report, now_s=time.time(), cooldown_hours=24)
    payload = alert_payload(report, decision)
    from fl_airflow.monitoring import next_task  # the decide task's branch

    assert progress["received"] == 0 and progress["deadline_passed"]
    assert report["verdict"] == "inconclusive" and report["healthy"] is None
    assert report["accuracy"] is None and report["drift"] is None
    [reason] = report["reasons"]
    assert reason.startswith("no_evidence: no client reported") and "2 tasks" in reason
    assert report["federated"]["missing"] == ["edge-a", "edge-b"]
    assert store.get_json(report["report_key"])["verdict"] == "inconclusive"
    assert decision["trigger"] is False and decision["inconclusive"] is True
    assert not store.exists(COOLDOWN_KEY)  # a later real degradation still triggers at once
    assert next_task(report, decision) == "alert_inconclusive"
    assert payload["event"] == "federated_monitoring_inconclusive"
    assert payload["retraining_triggered"] is False and payload["reasons"] == [reason]


def test_a_check_with_no_live_client_is_inconclusive_at_once(home: Path) -> None:
    from fl_airflow.monitoring import check

    from fl_core.remote_monitoring import check_progress
    from fl_core.store import LocalStore

    store = LocalStore(home / "artifacts")
    run_id = "scheduled__2026-12-02T18:00:00+00:00"
    published = _silent_check(store, run_id, [])  # publish found no live client
    progress = check_progress(store, published["check_id"])
    assert progress["done"] and progress["received"] == 0  # nothing to wait for

    report = check(store, {"registered_model": MODEL, "clients": "remote"}, run_id=run_id,
                   published=published)  # fmt: skip

    assert report["verdict"] == "inconclusive" and report["healthy"] is None
    [reason] = report["reasons"]
    assert reason.startswith("no_evidence: no live client")


def test_a_run_of_inconclusive_checks_alerts_once_per_cooldown_and_anew_after_evidence(
    tmp_path: Path,
) -> None:
    """An offline fleet makes every scheduled check inconclusive: the first alerts, the
    next ones within the cooldown do not (the decide branch skips the alert), one after
    the cooldown alerts again, and after a conclusive check the next outage alerts at once.
    A malformed record alerts rather than silences."""
    from fl_airflow.monitoring import next_task

    from fl_core.operations import INCONCLUSIVE_KEY, decide_retraining
    from fl_core.store import LocalStore

    store = LocalStore(tmp_path / "artifacts")
    silent = {"healthy": None, "reasons": ["no_evidence: no client reported"]}
    healthy = {"healthy": True, "reasons": []}
    hour = 3600.0
    t0 = 1_800_000_000.0

    def decide(report: dict[str, Any], at: float) -> tuple[dict[str, Any], str | None]:
        decision = decide_retraining(store, report, now_s=at, cooldown_hours=24)
        return decision, next_task(report, decision)

    first, branch = decide(silent, t0)
    assert first["alert"] is True and branch == "alert_inconclusive"
    again, branch = decide(silent, t0 + 1 * hour)
    assert again["alert"] is False and branch is None and again["trigger"] is False
    assert "alerted 3600 s ago" in again["reason"] and "every 24 h" in again["reason"]
    assert decide(silent, t0 + 23.9 * hour)[1] is None
    later, branch = decide(silent, t0 + 24 * hour)
    assert later["alert"] is True and branch == "alert_inconclusive"
    assert "no evidence for" not in later["reason"]
    assert decide(silent, t0 + 25 * hour)[0]["reason"].count("no evidence for 90000 s") == 1

    assert decide(healthy, t0 + 26 * hour)[0] == {"trigger": False, "reason": "healthy"}
    anew, branch = decide(silent, t0 + 26.5 * hour)
    assert anew["alert"] is True and branch == "alert_inconclusive"

    store.put_bytes(INCONCLUSIVE_KEY, b'{"since_s": "yesterday"')  # broken JSON
    assert decide(silent, t0 + 26.7 * hour)[0]["alert"] is True
    store.put_json(INCONCLUSIVE_KEY, {"since_s": t0, "last_s": "now", "num_triggers": 1})
    assert decide(silent, t0 + 27 * hour)[0]["alert"] is True
    store.put_json(INCONCLUSIVE_KEY, {"since_s": float("nan"), "last_s": 1.0, "num_triggers": 1})
    assert decide(silent, t0 + 28 * hour)[0]["alert"] is True
