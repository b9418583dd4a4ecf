"""Model monitoring: data drift, health checks, alert cooldown and webhooks.

The library behind the ``federated_monitoring`` DAG: evaluate the champion on the latest
evaluation data, measure drift against the reference (training-time) data, decide whether
the deployed model is healthy, and if not alert and trigger retraining -- at most once per
cooldown window. Everything here is pure or takes its inputs explicitly (the current time,
the random generator) so a monitoring run is reproducible and testable.

Drift is measured with the population stability index (PSI) per feature over quantile bins
of the reference data (Yurdakul, "Statistical Properties of Population Stability Index",
2018; Siddiqi, "Credit Risk Scorecards", 2006), aggregated as mean and max over features, and
with the total-variation distance between label distributions when labels are given. The
usual reading of a PSI value (a rule of thumb from credit scoring, not a statistical test):

==============  =============================================
PSI             reading
==============  =============================================
< 0.1           stable: no significant shift
0.1 -- 0.25     moderate shift: investigate
> 0.25          major shift: act (retrain, check the pipeline)
==============  =============================================

PSI has a small positive bias with finite samples (about ``(bins - 1) * (1/n_ref + 1/n_cur)``
for identical distributions), so a few hundred rows per side are needed for the thresholds to
be meaningful.
"""

from __future__ import annotations

import json
import logging
import math
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "PSI_MAJOR",
    "PSI_MODERATE",
    "Cooldown",
    "HealthReport",
    "check_health",
    "degrade_features",
    "degrade_labels",
    "drift_statistic",
    "psi_from_counts",
    "psi_level",
    "send_webhook",
]

PSI_MODERATE = 0.1
"""PSI at or above which a shift is usually called moderate."""
PSI_MAJOR = 0.25
"""PSI above which a shift is usually called major."""

_PSI_EPS = 1e-4


def psi_level(psi: float) -> str:
    """Conventional reading of a PSI value: ``"stable"``, ``"moderate"`` or ``"major"``.

    Parameters
    ----------
    psi : float
        A population stability index.

    Returns
    -------
    str
        ``"stable"`` below 0.1, ``"moderate"`` from 0.1 to 0.25, ``"major"`` above 0.25.
    """
    if psi > PSI_MAJOR:
        return "major"
    if psi >= PSI_MODERATE:
        return "moderate"
    return "stable"


def _as_2d(name: str, x: np.ndarray) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must have shape (n >= 1, d >= 1), got {np.shape(x)}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must contain only finite values")
    return arr


def _psi_per_feature(reference: np.ndarray, current: np.ndarray, bins: int) -> np.ndarray:
    """PSI of each column over the reference's quantile bins.

    Bins are ``(-inf, e_1], (e_1, e_2], ..., (e_k, +inf)`` with ``e_j`` the distinct interior
    quantiles of the reference column, so a column that is constant in the reference (e.g. an
    always-blank pixel) still has two bins, "at most the constant" and "above it". Empty bins
    are floored at ``1e-4`` of the mass so the logarithm stays finite.
    """
    levels = np.arange(1, bins) / bins
    edges_all = np.quantile(reference, levels, axis=0)  # (bins - 1, d)
    out = np.empty(reference.shape[1])
    for j in range(reference.shape[1]):
        edges = np.unique(edges_all[:, j])
        ref_counts = np.bincount(
            np.searchsorted(edges, reference[:, j], side="left"), minlength=len(edges) + 1
        )
        cur_counts = np.bincount(
            np.searchsorted(edges, current[:, j], side="left"), minlength=len(edges) + 1
        )
        out[j] = psi_from_counts(ref_counts, cur_counts)
    return out


def psi_from_counts(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    """PSI of one feature from its bin counts over the same bins (reference, current).

    This is all PSI needs, so it can be computed from histograms alone (e.g. counts that
    federated clients computed locally, see :mod:`fl_core.histograms`). Empty bins are
    floored at ``1e-4`` of the mass so the logarithm stays finite.

    Parameters
    ----------
    reference_counts, current_counts : np.ndarray
        Non-negative counts, same length (>= 1), each summing to more than 0.

    Returns
    -------
    float
        ``sum_k (q_k - p_k) * ln(q_k / p_k)`` over the floored proportions.
    """
    ref = np.asarray(reference_counts, dtype=np.float64)
    cur = np.asarray(current_counts, dtype=np.float64)
    if ref.ndim != 1 or ref.shape != cur.shape or ref.size == 0:
        raise ValueError(
            f"counts must be two 1-d arrays of one length, got {ref.shape}, {cur.shape}"
        )
    if (ref < 0).any() or (cur < 0).any() or ref.sum() <= 0 or cur.sum() <= 0:
        raise ValueError("counts must be non-negative with a positive total")
    p = np.maximum(ref / ref.sum(), _PSI_EPS)
    q = np.maximum(cur / cur.sum(), _PSI_EPS)
    return float(np.sum((q - p) * np.log(q / p)))


def drift_statistic(
    reference_x: np.ndarray,
    current_x: np.ndarray,
    *,
    bins: int = 10,
    reference_y: np.ndarray | None = None,
    current_y: np.ndarray | None = None,
) -> dict[str, Any]:
    """Distribution shift of ``current_x`` (and labels) relative to ``reference_x``.

    Parameters
    ----------
    reference_x : np.ndarray
        Reference features (e.g. the training data of the champion), shape ``(n, d)``; a 1-d
        array is one feature.
    current_x : np.ndarray
        Current features (the latest evaluation data), shape ``(m, d)``.
    bins : int, optional
        Number of quantile bins of the reference per feature (>= 2). Ties in the reference
        merge bins, so a feature may use fewer.
    reference_y, current_y : np.ndarray or None, optional
        Integer labels of both sets; when both are given, ``label_tv`` is their total
        variation distance ``0.5 * sum_k |p_k - q_k|`` in ``[0, 1]``.

    Returns
    -------
    dict
        ``psi_mean`` and ``psi_max`` (over features), ``psi_max_feature`` (index of the most
        shifted feature), ``level`` (:func:`psi_level` of ``psi_mean``), ``label_tv`` (or
        ``None``), ``num_features``, ``num_reference``, ``num_current``, ``bins``. All values
        are plain JSON-able Python numbers.
    """
    if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or bins < 2:
        raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
    ref = _as_2d("reference_x", reference_x)
    cur = _as_2d("current_x", current_x)
    if ref.shape[1] != cur.shape[1]:
        raise ValueError(f"current_x has {cur.shape[1]} features, reference_x has {ref.shape[1]}")
    if (reference_y is None) != (current_y is None):
        raise ValueError("reference_y and current_y must be given together")
    psi = _psi_per_feature(ref, cur, int(bins))
    label_tv = None
    if reference_y is not None and current_y is not None:
        label_tv = _label_tv(reference_y, current_y, n_ref=len(ref), n_cur=len(cur))
    psi_mean = float(psi.mean())
    return {
        "psi_mean": psi_mean,
        "psi_max": float(psi.max()),
        "psi_max_feature": int(psi.argmax()),
        "level": psi_level(psi_mean),
        "label_tv": label_tv,
        "num_features": int(ref.shape[1]),
        "num_reference": int(len(ref)),
        "num_current": int(len(cur)),
        "bins": int(bins),
    }


def _label_tv(reference_y: np.ndarray, current_y: np.ndarray, *, n_ref: int, n_cur: int) -> float:
    ry = np.asarray(reference_y)
    cy = np.asarray(current_y)
    for name, labels, n in (("reference_y", ry, n_ref), ("current_y", cy, n_cur)):
        if labels.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},), got {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
            raise ValueError(f"{name} must hold non-negative integer labels")
    k = int(max(ry.max(), cy.max())) + 1
    p = np.bincount(ry, minlength=k) / n_ref
    q = np.bincount(cy, minlength=k) / n_cur
    return float(0.5 * np.abs(p - q).sum())


@dataclass
class HealthReport:
    """Outcome of a health check of the deployed model.

    Parameters
    ----------
    healthy : bool
        ``True`` when no check failed.
    reasons : list of str
        One line per failed check, naming the metric, its value and the threshold.
    metrics : dict
        The inputs and derived values (``accuracy``, ``reference_accuracy``,
        ``accuracy_drop``, ``drift``, ``max_accuracy_drop``, ``max_drift``).
    """

    healthy: bool
    reasons: list[str] = field(default_factory=list)
    metrics: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (for XCom, the webhook payload and the retraining trigger)."""
        return asdict(self)


def check_health(
    *,
    accuracy: float,
    reference_accuracy: float | None,
    drift: float | None,
    max_accuracy_drop: float,
    max_drift: float,
) -> HealthReport:
    """Decide whether the deployed model is healthy.

    Unhealthy when the accuracy is not finite, when it dropped by more than
    ``max_accuracy_drop`` below ``reference_accuracy``, or when ``drift`` exceeds
    ``max_drift``. A value equal to its threshold is healthy.

    Parameters
    ----------
    accuracy : float
        Accuracy of the deployed model on the latest evaluation data.
    reference_accuracy : float or None
        Accuracy it had when deployed (e.g. the ``fl.deploy_eval_accuracy`` tag); ``None``
        skips the accuracy-drop check.
    drift : float or None
        A drift statistic, e.g. ``drift_statistic(...)["psi_mean"]``; ``None`` skips the
        drift check.
    max_accuracy_drop : float
        Largest tolerated drop, in accuracy units (0.05 = 5 points), >= 0.
    max_drift : float
        Largest tolerated drift (for PSI, 0.1 to 0.25 is the usual range), >= 0.

    Returns
    -------
    HealthReport
    """
    for name, value in (("max_accuracy_drop", max_accuracy_drop), ("max_drift", max_drift)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    reasons: list[str] = []
    drop: float | None = None
    if not math.isfinite(accuracy):
        reasons.append(f"accuracy is {accuracy} (not finite): the evaluation failed")
    elif reference_accuracy is not None:
        drop = reference_accuracy - accuracy
        if drop > max_accuracy_drop:
            reasons.append(
                f"accuracy_drop {drop:.4f} > max_accuracy_drop {max_accuracy_drop:.4f} "
                f"(accuracy {accuracy:.4f}, reference_accuracy {reference_accuracy:.4f})"
            )
    if drift is not None:
        if not math.isfinite(drift):
            reasons.append(f"drift is {drift} (not finite)")
        elif drift > max_drift:
            reasons.append(f"drift {drift:.4f} > max_drift {max_drift:.4f}")
    metrics: dict[str, float | None] = {
        "accuracy": float(accuracy),
        "reference_accuracy": None if reference_accuracy is None else float(reference_accuracy),
        "accuracy_drop": drop,
        "drift": None if drift is None else float(drift),
        "max_accuracy_drop": float(max_accuracy_drop),
        "max_drift": float(max_drift),
    }
    return HealthReport(healthy=not reasons, reasons=reasons, metrics=metrics)


class Cooldown:
    """At most one trigger per ``cooldown_s`` seconds (alert / retraining flood guard).

    The caller passes the time in (e.g. the DAG run's logical date as a Unix timestamp), so
    the decision is reproducible and a retried task decides the same way. Persist
    :meth:`state_dict` between runs (e.g. in the artifact store).

    Parameters
    ----------
    cooldown_s : float
        Minimum seconds between two triggers, >= 0.

    Notes
    -----
    A time earlier than the last trigger (clock skew, replayed run) is treated as inside the
    window: when in doubt, do not trigger again.
    """

    def __init__(self, *, cooldown_s: float) -> None:
        if not math.isfinite(cooldown_s) or cooldown_s < 0:
            raise ValueError(f"cooldown_s must be a finite number >= 0, got {cooldown_s!r}")
        self.cooldown_s = float(cooldown_s)
        self.last_s: float | None = None
        self.num_triggers = 0

    def allow(self, now_s: float) -> bool:
        """Whether a trigger at ``now_s`` is allowed (does not record it)."""
        _check_time(now_s)
        if self.last_s is None:
            return True
        return now_s >= self.last_s and now_s - self.last_s >= self.cooldown_s

    def remaining(self, now_s: float) -> float:
        """Seconds until a trigger is allowed again (0 when allowed now)."""
        _check_time(now_s)
        if self.last_s is None:
            return 0.0
        return max(0.0, self.last_s + self.cooldown_s - now_s)

    def record(self, now_s: float) -> None:
        """Record a trigger at ``now_s``."""
        _check_time(now_s)
        self.last_s = float(now_s)
        self.num_triggers += 1

    def state_dict(self) -> dict[str, Any]:
        """The mutable state (the configuration ``cooldown_s`` comes from the constructor)."""
        return {"last_s": self.last_s, "num_triggers": self.num_triggers}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        last = state.get("last_s")
        count = state.get("num_triggers", 0)
        if last is not None:
            _check_time(last, name="state['last_s']")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"state['num_triggers'] must be an integer >= 0, got {count!r}")
        self.last_s = None if last is None else float(last)
        self.num_triggers = count


def _check_time(value: Any, *, name: str = "now_s") -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of seconds, got {value!r}")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Webhook POSTs are not followed through redirects (a 3xx counts as a failure)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _redact(url: str) -> str:
    """``scheme://host[:port]`` only: webhook paths and queries often carry secret tokens."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname or '?'}{port}"
    except ValueError:
        return "<unparsable url>"


def send_webhook(url: str, payload: Any, *, timeout: float = 5.0) -> bool:
    """POST ``payload`` as JSON to an http(s) webhook; never raises.

    Parameters
    ----------
    url : str
        ``http://`` or ``https://`` endpoint (Slack/Teams/Alertmanager-style receiver). Any
        other scheme is refused.
    payload : Any
        JSON-serialisable body.
    timeout : float, optional
        Seconds for connecting and for the response.

    Returns
    -------
    bool
        ``True`` when the receiver answered 2xx; ``False`` (and a logged warning naming only
        the scheme, host and port of ``url``, never its path or query, which often hold
        tokens) on any failure: bad URL or payload, connection refused, timeout, non-2xx
        status or redirect.
    """
    target = _redact(url) if isinstance(url, str) else repr(type(url))
    try:
        scheme = urlsplit(url).scheme.lower() if isinstance(url, str) else ""
        if scheme not in ("http", "https"):
            logger.warning("webhook not sent: url scheme %r is not http or https", scheme)
            return False
        if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
            logger.warning("webhook to %s not sent: timeout %r must be > 0", target, timeout)
            return False
        body = json.dumps(payload, sort_keys=True, allow_nan=False).encode()
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "fl-core-monitoring"},
        )
        opener = urllib.request.build_opener(_NoRedirect)
        with opener.open(request, timeout=timeout) as response:
            status = int(response.status)
        if 200 <= status < 300:
            logger.info("webhook to %s delivered (HTTP %d)", target, status)
            return True
        logger.warning("webhook to %s failed: HTTP %d", target, status)
        return False
    except urllib.error.HTTPError as exc:
        logger.warning("webhook to %s failed: HTTP %s", target, exc.code)
        return False
    except Exception as exc:  # never raise: alerting must not break the monitoring run
        logger.warning("webhook to %s failed: %s: %s", target, type(exc).__name__, exc)
        return False


def degrade_features(
    x: np.ndarray, *, shift: float, scale: float, rng: np.random.Generator
) -> np.ndarray:
    """Inject a covariate shift: ``x + N(shift, scale**2)`` elementwise (tests and demos).

    Parameters
    ----------
    x : np.ndarray
        Features; not modified.
    shift : float
        Mean of the added perturbation (a systematic offset, e.g. a sensor bias).
    scale : float
        Standard deviation of the added Gaussian noise, >= 0 (0 = pure shift).
    rng : np.random.Generator
        Source of the noise (seeded by the caller).

    Returns
    -------
    np.ndarray
        The degraded copy, same shape and dtype as ``x`` (float32 stays float32).
    """
    if not math.isfinite(shift):
        raise ValueError(f"shift must be finite, got {shift!r}")
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"scale must be a finite number >= 0, got {scale!r}")
    arr = np.asarray(x)
    dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.dtype(np.float64)
    noise = rng.normal(loc=shift, scale=scale, size=arr.shape) if scale > 0 else shift
    return np.asarray(arr + noise, dtype=dtype)


def degrade_labels(
    y: np.ndarray, *, fraction: float, num_classes: int, rng: np.random.Generator
) -> np.ndarray:
    """Flip ``round(fraction * n)`` labels, each to a different class drawn uniformly.

    Parameters
    ----------
    y : np.ndarray
        Integer labels in ``0 .. num_classes - 1``; not modified.
    fraction : float
        Fraction of labels to corrupt, in ``[0, 1]``.
    num_classes : int
        Number of classes, >= 2.
    rng : np.random.Generator
        Chooses which labels flip and to what.

    Returns
    -------
    np.ndarray
        The corrupted copy (same dtype); exactly ``round(fraction * n)`` entries differ.
    """
    if not (isinstance(fraction, int | float) and 0.0 <= fraction <= 1.0):
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    labels = np.asarray(y)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"y must be a 1-d integer array, got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"y must lie in 0..{num_classes - 1} (num_classes={num_classes})")
    out = labels.copy()
    count = int(round(fraction * len(labels)))
    if count:
        idx = rng.choice(len(labels), size=count, replace=False)
        out[idx] = (labels[idx] + rng.integers(1, num_classes, size=count)) % num_classes
    return out
