"""Federated monitoring over real HTTPS: training-data histograms and champion-check reports
are accepted only as counts that fit the task's bins, only from clients with that task;
each bad input gets its status."""

from __future__ import annotations

import numpy as np
import pytest

from fl_core.agent.transport import Refused
from fl_core.coordinator.api import Coordinator
from fl_core.histograms import grid_edges
from fl_core.rounds.layout import monitoring_check_key, monitoring_model_key
from fl_core.rounds.state import encode_model
from tests.fl_core.coordinator.harness import SPEC, ServerThread, TLSFiles, task_dict
from tests.fl_core.coordinator.test_http import CID, enroll
from tests.fl_core.coordinator.test_http import layout as layout  # noqa: F401 - fixture

GRID = {"low": 0.0, "high": 1.0, "bins": 4, "num_features": 8}
CHECK = "mon-run-1-0123abcd"
EDGES = [[0.25, 0.5]] * 7 + [[0.5]]  # 3 bins for seven features, 2 for the last


def _status(exc: pytest.ExceptionInfo[Refused]) -> int:
    return exc.value.status


def test_training_histogram_must_fit_the_tasks_grid(
    coord: Coordinator,
    server: ServerThread,
    tls: TLSFiles,
    layout,  # noqa: F811
) -> None:
    a = enroll(coord, server, tls, "a")
    b = enroll(coord, server, tls, "b")
    coord.publish_round(
        CID, 1, base_version=0, tasks={"a": task_dict(histogram=GRID)}, deadline_s=60
    )
    x = np.random.default_rng(0).random((10, 8))
    edges = grid_edges(GRID)
    counts = [
        np.bincount(np.searchsorted(edges[j], x[:, j]), minlength=4).tolist() for j in range(8)
    ]

    a.report_histogram(CID, 1, {"num_examples": 10, "counts": counts})
    bad = {
        "wrong bins": {"num_examples": 10, "counts": [row[:3] for row in counts]},
        "wrong features": {"num_examples": 10, "counts": counts[:7]},
        "wrong total": {"num_examples": 11, "counts": counts},
        "negative": {"num_examples": 10, "counts": [[-1, 11, 0, 0]] * 8},
    }
    statuses = {}
    for name, body in bad.items():
        with pytest.raises(Refused) as exc:
            a.report_histogram(CID, 1, body)
        statuses[name] = _status(exc)
    with pytest.raises(Refused) as outsider:
        b.report_histogram(CID, 1, {"num_examples": 10, "counts": counts})

    assert statuses == dict.fromkeys(bad, 400)
    assert _status(outsider) == 403
    stored = coord.histograms(CID)
    assert list(stored) == ["a"] and stored["a"].counts == counts


def _publish_check(coord: Coordinator, layout, clients: list[str]) -> None:  # noqa: F811
    coord.store.put_json(
        monitoring_check_key(CHECK),
        {"layout": layout.to_json(), "model_spec": SPEC.to_json(), "edges": EDGES},
    )
    coord.store.put_bytes(
        monitoring_model_key(CHECK),
        encode_model(CHECK, 3, layout, np.zeros(layout.num_params, np.float32)),
    )
    coord.publish_round(
        CHECK,
        1,
        base_version=3,
        tasks={c: {"kind": "monitor"} for c in clients},
        deadline_s=60,
        model_key=monitoring_model_key(CHECK),
    )


def test_monitoring_task_carries_edges_and_reports_are_checked(
    coord: Coordinator,
    server: ServerThread,
    tls: TLSFiles,
    layout,  # noqa: F811
) -> None:
    a = enroll(coord, server, tls, "a")
    b = enroll(coord, server, tls, "b")
    _publish_check(coord, layout, ["a"])

    task = a.next_task(wait_s=0)
    assert task is not None
    assert task["kind"] == "monitor" and task["base_version"] == 3 and task["edges"] == EDGES
    good = {
        "model_version": 3,
        "num_examples": 5,
        "metrics": {"accuracy": 0.6, "loss": 1.0},
        "counts": [[1, 2, 2]] * 7 + [[5, 0]],
    }
    bad = {
        "old model": {**good, "model_version": 2},
        "wrong bins": {**good, "counts": [[1, 2, 2]] * 8},
        "no accuracy": {**good, "metrics": {"loss": 1.0}},
        "no counts": {**good, "counts": None},
    }
    statuses = {}
    for name, body in bad.items():
        with pytest.raises(Refused) as exc:
            a.report_monitoring(CHECK, 1, body)
        statuses[name] = _status(exc)
    with pytest.raises(Refused) as outsider:
        b.report_monitoring(CHECK, 1, good)
    a.report_monitoring(CHECK, 1, good)
    after_report = a.next_task(wait_s=0)
    coord.close_round(CHECK, 1)
    with pytest.raises(Refused) as late:
        a.report_monitoring(CHECK, 1, good)

    assert statuses == dict.fromkeys(bad, 400)
    assert _status(outsider) == 403 and _status(late) == 410
    assert after_report is None  # reported: no further task for this check
    [report] = coord.monitoring_reports(CHECK, 1)
    assert (report.client_id, report.num_examples, report.counts) == ("a", 5, good["counts"])


def test_invalid_fresh_data_is_reported_without_numbers(
    coord: Coordinator,
    server: ServerThread,
    tls: TLSFiles,
    layout,  # noqa: F811
) -> None:
    a = enroll(coord, server, tls, "a")
    _publish_check(coord, layout, ["a"])

    a.report_monitoring(CHECK, 1, {"model_version": 3, "num_examples": 0, "data_valid": False})

    [report] = coord.monitoring_reports(CHECK, 1)
    assert not report.data_valid and report.counts is None and report.metrics == {}
