"""The ONE place the agent calls into training (an adapter to the client code path).

:func:`run_task` takes the downloaded model message, the task and the local data and returns
the encoded update, the new client state and metrics, exactly as the in-process transport
does (same decode, same local training, same error feedback, same codec seed), so a remote
round and a simulated round of the same config give the same bytes.

Until ``fl_core.client.run_task`` (the shared client code path being extracted from the
round steps) lands on main, this module mirrors it with the pieces already shared:
``fl_core.client.local_train``, ``fl_core.wire`` and ``fl_core.codec.ErrorFeedback``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fl_core import wire
from fl_core.models import Layout, ModelSpec

logger = logging.getLogger(__name__)

__all__ = ["AgentState", "TaskResult", "decode_model", "evaluate", "run_task"]


@dataclass
class AgentState:
    """What a client keeps between rounds of a campaign: the model version it knows (and
    that model, for deltas) and its error-feedback residual."""

    known_version: int | None = None
    known_model: np.ndarray | None = None
    residual: np.ndarray | None = None

    def to_arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        if self.known_version is not None and self.known_model is not None:
            out["known_version"] = np.asarray(self.known_version, dtype=np.int64)
            out["known_model"] = np.asarray(self.known_model, dtype=np.float32)
        if self.residual is not None:
            out["residual"] = np.asarray(self.residual, dtype=np.float32)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> AgentState:
        known = int(arrays["known_version"]) if "known_version" in arrays else None
        return cls(
            known_version=known,
            known_model=arrays.get("known_model"),
            residual=arrays.get("residual"),
        )


@dataclass
class TaskResult:
    update: bytes
    state: AgentState
    metrics: dict[str, float] = field(default_factory=dict)


def decode_model(message: bytes, task: dict[str, Any], state: AgentState) -> np.ndarray:
    """The full global model from a (possibly delta) model message."""
    layout = Layout.from_json(task["layout"])
    _, vector = wire.decode_model_for_client(
        message,
        known_version=state.known_version,
        known_model=state.known_model,
        expected_layout=layout,
    )
    return vector


def evaluate(
    task: dict[str, Any], model: np.ndarray, x: np.ndarray, y: np.ndarray
) -> dict[str, float]:
    """Loss and accuracy of the global model on the local held-out split."""
    from fl_core.client import evaluate as eval_model

    return eval_model(ModelSpec.from_json(task["model_spec"]), model, x, y)


def run_task(
    message: bytes, task: dict[str, Any], x: np.ndarray, y: np.ndarray, *, state: AgentState
) -> TaskResult:
    """Decode the model, train locally, encode the update (error feedback from ``state``).

    Raises ``wire.WireError`` if the model message is bad, ``ValueError`` on a bad task.
    """
    from fl_core.client import TrainSettings, local_train
    from fl_core.codec import ErrorFeedback
    from fl_core.seeding import derive_seed

    spec = ModelSpec.from_json(task["model_spec"])
    layout = Layout.from_json(task["layout"])
    start = decode_model(message, task, state)
    settings = TrainSettings(
        local_epochs=int(task["local_epochs"]),
        batch_size=int(task["batch_size"]),
        lr=float(task["lr"]),
        momentum=float(task.get("momentum", 0.0)),
        weight_decay=float(task.get("weight_decay", 0.0)),
        prox_mu=float(task.get("prox_mu", 0.0)),
    )
    seed = int(task["seed"])
    result = local_train(spec, start, x, y, settings=settings, seed=seed)
    feedback = None
    if task.get("error_feedback"):
        feedback = ErrorFeedback(layout.num_params)
        if state.residual is not None:
            feedback.load_state_dict({"residual": state.residual})
    metrics = {
        "train_loss": result.train_loss,
        "duration_s": result.duration_s,
        "bytes_down": float(len(message)),
    }
    header = wire.Header(
        kind="update",
        campaign=str(task["campaign"]),
        round=int(task["round"]),
        base_version=int(task["base_version"]),
        client=str(task["client"]),
        codec=str(task["codec"]),
        layout=layout,
        num_examples=result.num_examples,
        metrics=metrics,
    )
    codec_rng = np.random.default_rng(derive_seed(seed, "codec"))
    update = wire.encode(header, result.delta, feedback=feedback, rng=codec_rng)
    residual = None if feedback is None else feedback.state_dict()["residual"]
    new_state = AgentState(
        known_version=int(task["base_version"]), known_model=start, residual=residual
    )
    return TaskResult(update=update, state=new_state, metrics=metrics)
