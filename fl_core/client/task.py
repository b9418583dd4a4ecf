"""What a client receives (a task), keeps (its state) and returns (a result).

These are the only types shared by the server steps and the client side: the in-process
simulation and the HTTP agent both build a :class:`ClientTask` from a round manifest's task
and call :func:`fl_core.client.run_task`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

_TASK_KEYS = (
    "local_epochs",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "prox_mu",
    "codec",
    "error_feedback",
    "downlink_codec",
    "downlink_delta_codec",
    "seed",
)


@dataclass(frozen=True)
class ClientTask:
    """One client's work for one round (JSON-able; the round manifest holds the task part).

    Attributes
    ----------
    campaign, round, base_version, client
        Where the update belongs: it must be computed on global model ``base_version``.
    model_spec
        The model to build (``ModelSpec.to_json()``).
    local_epochs, batch_size, lr, momentum, weight_decay, prox_mu
        Local optimisation (FedProx when ``prox_mu > 0``).
    codec, error_feedback
        Uplink codec and whether the client keeps an error-feedback residual.
    downlink_codec, downlink_delta_codec
        How the model is sent to the client (informational on the client side).
    seed
        The task's public seed: batch order and stochastic codecs (never DP noise).
    privacy
        ``None``, or ``{"mode": "local", "clipping_norm", "noise_multiplier"}`` and/or
        ``{"dp_sgd": {"noise_multiplier", "max_grad_norm", "delta"}}``.
    """

    campaign: str
    round: int
    base_version: int
    client: str
    model_spec: dict[str, Any]
    local_epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    prox_mu: float
    codec: str
    error_feedback: bool
    downlink_codec: str = "dense_fp32"
    downlink_delta_codec: str | None = None
    seed: int = 0
    privacy: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        for name in ("local_epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"task.{name}: {value!r} must be an integer >= 1")
        for name in ("lr", "momentum", "weight_decay", "prox_mu"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"task.{name}: {value!r} must be a finite number >= 0")

    @classmethod
    def from_manifest(
        cls,
        task: dict[str, Any],
        *,
        campaign: str,
        round: int,
        base_version: int,
        client: str,
        model_spec: dict[str, Any],
    ) -> ClientTask:
        """A task from a round manifest's entry for ``client``."""
        missing = [k for k in _TASK_KEYS if k not in task]
        if missing:
            raise ValueError(f"task for {client!r} lacks {', '.join(missing)}")
        return cls(
            campaign=campaign,
            round=int(round),
            base_version=int(base_version),
            client=client,
            model_spec=model_spec,
            privacy=task.get("privacy"),
            **{k: task[k] for k in _TASK_KEYS},
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ClientTask:
        return cls(**raw)


@dataclass
class ClientState:
    """What a client keeps between rounds, on its own side.

    ``known_version`` / ``known_model``: the last global model it received (a downlink delta
    is computed against it); ``residual``: the error-feedback residual of its lossy codec;
    ``dp_sgd_history``: its DP-SGD participations ``(noise_multiplier, sample_rate, steps)``,
    composed into its record-level epsilon across rounds.
    """

    known_version: int | None = None
    known_model: np.ndarray | None = None
    residual: np.ndarray | None = None
    dp_sgd_history: list[tuple[float, float, int]] = field(default_factory=list)

    def to_arrays(self, *, include_model: bool = True) -> dict[str, np.ndarray]:
        """The state as named arrays (``np.savez`` without pickling)."""
        out: dict[str, np.ndarray] = {}
        if self.known_version is not None:
            out["known_version"] = np.asarray(self.known_version)
        if include_model and self.known_model is not None:
            out["known_model"] = np.asarray(self.known_model, dtype=np.float32)
        if self.residual is not None:
            out["residual"] = np.asarray(self.residual, dtype=np.float32)
        if self.dp_sgd_history:
            out["dp_sgd_history"] = np.asarray(self.dp_sgd_history, dtype=np.float64)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> ClientState:
        history = arrays.get("dp_sgd_history")
        return cls(
            known_version=int(arrays["known_version"]) if "known_version" in arrays else None,
            known_model=arrays.get("known_model"),
            residual=arrays.get("residual"),
            dp_sgd_history=[(float(z), float(q), int(s)) for z, q, s in history]
            if history is not None
            else [],
        )


@dataclass(frozen=True)
class TaskResult:
    """A finished task: the encoded update (wire bytes), the client's new state, metrics."""

    update: bytes
    state: ClientState
    metrics: dict[str, float]
    num_examples: int
