"""The client side: local training and the one code path every client runs.

- :func:`run_task` (:mod:`fl_core.client.run`): model message + task -> encoded update and
  the client's new state. The in-process simulation and the HTTP agent both call it.
- :mod:`fl_core.client.training`: local SGD / FedProx, evaluation, the centralized baseline.

This package never imports the server's round steps (checked by import-linter).
"""

from fl_core.client.run import TaskDeclined, dp_sgd_epsilon, encode_update, run_task
from fl_core.client.task import ClientState, ClientTask, TaskResult
from fl_core.client.training import (
    ClientResult,
    TrainSettings,
    evaluate,
    local_train,
    train_centralized,
)

__all__ = [
    "ClientResult",
    "ClientState",
    "ClientTask",
    "TaskDeclined",
    "TaskResult",
    "TrainSettings",
    "dp_sgd_epsilon",
    "encode_update",
    "evaluate",
    "local_train",
    "run_task",
    "train_centralized",
]
