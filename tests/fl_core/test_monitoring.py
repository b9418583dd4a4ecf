"""Monitoring: drift statistic, health report, cooldown, webhook (against a real HTTP server)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

from fl_core.monitoring import (
    Cooldown,
    HealthReport,
    check_health,
    degrade_features,
    degrade_labels,
    drift_statistic,
    psi_level,
    send_webhook,
)

# --------------------------------------------------------------------------- drift


def test_psi_is_near_zero_for_the_same_distribution() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(4000, 5))
    current = rng.normal(size=(4000, 5))

    drift = drift_statistic(reference, current)

    assert drift["psi_mean"] < 0.02
    assert drift["psi_max"] < 0.03
    assert drift["level"] == "stable"
    assert drift["label_tv"] is None
    assert (drift["num_features"], drift["num_reference"], drift["num_current"]) == (5, 4000, 4000)
    json.dumps(drift)  # JSON-able for XCom


def test_psi_is_large_for_a_shifted_distribution() -> None:
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(3000, 4))
    current = rng.normal(size=(3000, 4))
    current[:, 2] += 1.0  # one feature shifted by one standard deviation

    drift = drift_statistic(reference, current)

    assert drift["psi_max"] > 0.25
    assert drift["psi_max_feature"] == 2
    others_mean = (4 * drift["psi_mean"] - drift["psi_max"]) / 3
    assert others_mean < 0.02  # the unshifted features stay stable
    assert drift["level"] in ("moderate", "major")


def test_psi_detects_degraded_digits_pixels() -> None:
    from fl_core.data.datasets import load_digits

    ds = load_digits()
    half = ds.num_examples // 2
    rng = np.random.default_rng(2)

    same = drift_statistic(ds.x[:half], ds.x[half:])
    shifted = drift_statistic(
        ds.x[:half], degrade_features(ds.x[half:], shift=0.3, scale=0.1, rng=rng)
    )

    assert same["psi_mean"] < 0.1
    assert shifted["psi_mean"] > 0.25 and shifted["level"] == "major"


def test_constant_reference_feature_still_detects_a_shift() -> None:
    reference = np.zeros((500, 1))
    current = np.full((500, 1), 0.5)

    assert drift_statistic(reference, current)["psi_max"] > 1.0
    assert drift_statistic(reference, reference.copy())["psi_max"] == pytest.approx(0.0)


def test_label_total_variation() -> None:
    x = np.random.default_rng(3).normal(size=(100, 2))
    balanced = np.repeat(np.arange(4), 25)
    skewed = np.array([0] * 70 + [1] * 10 + [2] * 10 + [3] * 10)
    unseen = np.array([5] * 100)

    same = drift_statistic(x, x, reference_y=balanced, current_y=balanced)["label_tv"]
    moved = drift_statistic(x, x, reference_y=balanced, current_y=skewed)["label_tv"]
    disjoint = drift_statistic(x, x, reference_y=balanced, current_y=unseen)["label_tv"]

    assert same == 0.0
    assert moved == pytest.approx(0.45)
    assert disjoint == pytest.approx(1.0)


def test_psi_level_thresholds() -> None:
    assert [psi_level(v) for v in (0.0, 0.099, 0.1, 0.25, 0.2501)] == [
        "stable",
        "stable",
        "moderate",
        "moderate",
        "major",
    ]


@pytest.mark.parametrize(
    ("args", "kwargs", "argument"),
    [
        ((np.zeros((0, 2)), np.zeros((3, 2))), {}, "reference_x"),
        ((np.zeros((3, 2)), np.full((3, 2), np.nan)), {}, "current_x"),
        ((np.zeros((3, 2)), np.zeros((3, 3))), {}, "current_x"),
        ((np.zeros((3, 2)), np.zeros((3, 2))), {"bins": 1}, "bins"),
        ((np.zeros((3, 2)), np.zeros((3, 2))), {"reference_y": np.zeros(3, int)}, "current_y"),
        (
            (np.zeros((3, 2)), np.zeros((3, 2))),
            {"reference_y": np.zeros(2, int), "current_y": np.zeros(3, int)},
            "reference_y",
        ),
    ],
)
def test_drift_statistic_rejects_bad_input(
    args: tuple[np.ndarray, np.ndarray], kwargs: dict[str, Any], argument: str
) -> None:
    with pytest.raises(ValueError, match=argument):
        drift_statistic(*args, **kwargs)


# --------------------------------------------------------------------------- health


def _health(**overrides: Any) -> HealthReport:
    args: dict[str, Any] = {
        "accuracy": 0.95,
        "reference_accuracy": 0.96,
        "drift": 0.05,
        "max_accuracy_drop": 0.05,
        "max_drift": 0.25,
        **overrides,
    }
    return check_health(**args)


def test_health_is_healthy_within_thresholds() -> None:
    report = _health()

    assert report.healthy
    assert report.reasons == []
    assert report.metrics["accuracy_drop"] == pytest.approx(0.01)
    assert report.to_dict()["healthy"] is True


def test_health_flags_an_accuracy_drop() -> None:
    report = _health(accuracy=0.80)

    assert not report.healthy
    assert len(report.reasons) == 1
    assert "accuracy_drop 0.1600" in report.reasons[0]
    assert "max_accuracy_drop 0.0500" in report.reasons[0]


def test_health_flags_drift() -> None:
    report = _health(drift=0.4)

    assert not report.healthy
    assert report.reasons == ["drift 0.4000 > max_drift 0.2500"]


def test_health_reports_every_failed_check() -> None:
    report = _health(accuracy=0.5, drift=1.0)

    assert not report.healthy
    assert [r.split()[0] for r in report.reasons] == ["accuracy_drop", "drift"]


def test_health_thresholds_are_inclusive_and_checks_optional() -> None:
    at_threshold = _health(accuracy=0.91, reference_accuracy=0.96, drift=0.25)
    no_baseline = _health(accuracy=0.1, reference_accuracy=None, drift=None)

    assert at_threshold.healthy, at_threshold.reasons
    assert no_baseline.healthy
    assert no_baseline.metrics["accuracy_drop"] is None


def test_health_flags_a_failed_evaluation() -> None:
    report = _health(accuracy=float("nan"))

    assert not report.healthy
    assert "accuracy" in report.reasons[0] and "not finite" in report.reasons[0]


@pytest.mark.parametrize("argument", ["max_accuracy_drop", "max_drift"])
def test_health_rejects_negative_thresholds(argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        _health(**{argument: -0.1})


# --------------------------------------------------------------------------- cooldown


def test_cooldown_blocks_inside_the_window_and_allows_after() -> None:
    cooldown = Cooldown(cooldown_s=3600)

    first = cooldown.allow(1000.0)
    cooldown.record(1000.0)
    inside = cooldown.allow(1000.0 + 3599)
    remaining = cooldown.remaining(1000.0 + 3000)
    after = cooldown.allow(1000.0 + 3600)

    assert first is True
    assert inside is False
    assert remaining == pytest.approx(600.0)
    assert after is True


def test_cooldown_treats_time_before_last_trigger_as_inside() -> None:
    cooldown = Cooldown(cooldown_s=0)
    cooldown.record(100.0)

    assert not cooldown.allow(99.0)
    assert cooldown.allow(100.0)


def test_cooldown_state_round_trip() -> None:
    cooldown = Cooldown(cooldown_s=60)
    cooldown.record(10.0)
    state = json.loads(json.dumps(cooldown.state_dict()))

    resumed = Cooldown(cooldown_s=60)
    resumed.load_state_dict(state)

    assert resumed.state_dict() == {"last_s": 10.0, "num_triggers": 1}
    assert not resumed.allow(69.0)
    assert resumed.allow(70.0)


def test_cooldown_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="cooldown_s"):
        Cooldown(cooldown_s=-1)
    with pytest.raises(ValueError, match="now_s"):
        Cooldown(cooldown_s=1).allow(float("nan"))
    with pytest.raises(ValueError, match="last_s"):
        Cooldown(cooldown_s=1).load_state_dict({"last_s": "yesterday"})


# --------------------------------------------------------------------------- webhook


class _Receiver(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []
    status = 200

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.received.append(
            {
                "path": self.path,
                "content_type": self.headers["Content-Type"],
                "body": json.loads(self.rfile.read(length)),
            }
        )
        self.send_response(self.status)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # silence stderr
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[_Receiver]]]:
    """A real HTTP server on 127.0.0.1 (free port) in a background thread."""
    handler = type("Receiver", (_Receiver,), {"received": [], "status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_send_webhook_posts_the_json_payload(receiver: tuple[str, type[_Receiver]]) -> None:
    url, handler = receiver
    payload = {"event": "model_degraded", "reasons": ["drift 0.4 > max_drift 0.25"], "n": 3}

    ok = send_webhook(f"{url}/hooks/fl?token=secret", payload)

    assert ok is True
    assert handler.received == [
        {"path": "/hooks/fl?token=secret", "content_type": "application/json", "body": payload}
    ]


def test_send_webhook_returns_false_on_error_status(
    receiver: tuple[str, type[_Receiver]], caplog: pytest.LogCaptureFixture
) -> None:
    url, handler = receiver
    handler.status = 500

    with caplog.at_level("WARNING", logger="fl_core.monitoring"):
        ok = send_webhook(f"{url}/hook/SECRET-TOKEN", {"a": 1})

    assert ok is False
    assert "HTTP 500" in caplog.text
    assert "SECRET-TOKEN" not in caplog.text  # the path may hold a token: never logged


def test_send_webhook_returns_false_for_a_closed_port(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again when the block ends

    with caplog.at_level("WARNING", logger="fl_core.monitoring"):
        ok = send_webhook(f"http://127.0.0.1:{port}/hook", {"a": 1}, timeout=2.0)

    assert ok is False
    assert "webhook" in caplog.text


@pytest.mark.parametrize(
    ("url", "payload"),
    [
        ("file:///etc/passwd", {"a": 1}),
        ("ftp://127.0.0.1/x", {"a": 1}),
        ("not a url", {"a": 1}),
        ("http://127.0.0.1:1/x", {"a": object()}),  # not JSON-serialisable
        ("http://127.0.0.1:1/x", {"a": float("nan")}),  # NaN is not valid JSON
    ],
)
def test_send_webhook_never_raises(url: str, payload: Any) -> None:
    assert send_webhook(url, payload) is False


# --------------------------------------------------------------------------- degradation


def test_degrade_features_shifts_and_adds_noise() -> None:
    x = np.zeros((2000, 3), dtype=np.float32)

    out = degrade_features(x, shift=0.5, scale=0.1, rng=np.random.default_rng(0))
    pure = degrade_features(x, shift=0.5, scale=0.0, rng=np.random.default_rng(0))

    assert out.dtype == np.float32 and out.shape == x.shape
    assert out.mean() == pytest.approx(0.5, abs=0.01)
    assert out.std() == pytest.approx(0.1, abs=0.01)
    assert np.all(pure == np.float32(0.5))
    assert np.all(x == 0)  # input untouched


def test_degrade_labels_flips_exactly_the_fraction() -> None:
    y = np.repeat(np.arange(10), 30).astype(np.int64)

    out = degrade_labels(y, fraction=0.2, num_classes=10, rng=np.random.default_rng(0))

    assert out.dtype == y.dtype
    assert int((out != y).sum()) == 60
    assert out.min() >= 0 and out.max() <= 9
    assert np.array_equal(
        degrade_labels(y, fraction=0.0, num_classes=10, rng=np.random.default_rng(0)), y
    )


def test_degraded_labels_cost_accuracy_in_the_health_check() -> None:
    y = np.repeat(np.arange(10), 50)
    predictions = y.copy()  # a perfect model on clean labels
    noisy = degrade_labels(y, fraction=0.3, num_classes=10, rng=np.random.default_rng(1))

    report = check_health(
        accuracy=float((predictions == noisy).mean()),
        reference_accuracy=1.0,
        drift=None,
        max_accuracy_drop=0.05,
        max_drift=0.25,
    )

    assert not report.healthy
    assert report.metrics["accuracy_drop"] == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"fraction": 1.5}, "fraction"),
        ({"num_classes": 1}, "num_classes"),
        ({"num_classes": 3}, "y"),
    ],
)
def test_degrade_labels_rejects_bad_arguments(kwargs: dict[str, Any], argument: str) -> None:
    args: dict[str, Any] = {"fraction": 0.1, "num_classes": 10, **kwargs}

    with pytest.raises(ValueError, match=argument):
        degrade_labels(np.arange(10), rng=np.random.default_rng(0), **args)


def test_degrade_features_rejects_negative_scale() -> None:
    with pytest.raises(ValueError, match="scale"):
        degrade_features(np.zeros(3), shift=0.0, scale=-1.0, rng=np.random.default_rng(0))
