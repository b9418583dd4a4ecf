"""The ONE place the agent calls into training: an adapter to the shared client code path.

The agent receives the task as JSON (the round manifest's task plus campaign, round, base
version, client, model spec and layout, see ``Coordinator.task_for_client``) and runs it
through :func:`fl_core.client.run_task`, exactly as the in-process simulation does, so a
remote round and a simulated round of the same config train and encode the same way.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from fl_core import wire
from fl_core.client import ClientState, ClientTask, TaskResult, run_task
from fl_core.models import Layout, ModelSpec

logger = logging.getLogger(__name__)

__all__ = ["ClientState", "TaskResult", "client_task", "decode_model", "evaluate", "train"]


def client_task(task: dict[str, Any]) -> ClientTask:
    """The shared :class:`ClientTask` from the task JSON the coordinator sent."""
    return ClientTask.from_manifest(
        task,
        campaign=str(task["campaign"]),
        round=int(task["round"]),
        base_version=int(task["base_version"]),
        client=str(task["client"]),
        model_spec=dict(task["model_spec"]),
    )


def decode_model(message: bytes, task: dict[str, Any], state: ClientState) -> np.ndarray:
    """The full global model from a (possibly delta) model message."""
    _, vector = wire.decode_model_for_client(
        message,
        known_version=state.known_version,
        known_model=state.known_model,
        expected_layout=Layout.from_json(task["layout"]),
    )
    return vector


def evaluate(
    task: dict[str, Any], model: np.ndarray, x: np.ndarray, y: np.ndarray
) -> dict[str, float]:
    """Loss, accuracy and ``num_examples`` of the global model on the local held-out split."""
    from fl_core.client import evaluate as eval_model

    return eval_model(ModelSpec.from_json(task["model_spec"]), model, x, y)


def train(
    message: bytes,
    task: dict[str, Any],
    x: np.ndarray,
    y: np.ndarray,
    *,
    state: ClientState,
    measured: dict[str, float] | None = None,
) -> TaskResult:
    """Run the task through the one client code path (decode, train, DP, error feedback,
    codec). Raises ``wire.WireError`` on a bad model message, ``ValueError`` on a bad task,
    ``fl_core.client.TaskDeclined`` when the client's own DP budget refuses it."""
    return run_task(
        message,
        client_task(task),
        x,
        y,
        state=state,
        expected_layout=Layout.from_json(task["layout"]),
        measured=measured,
    )
