"""The one client code path: a model message and a task in, an encoded update out.

:func:`run_task` is what every client runs, whatever the transport: the in-process
simulation (:mod:`fl_core.rounds.train`) and the HTTP agent call it unchanged. It decodes the
model (or a delta from the version the client holds), trains locally (SGD / FedProx, or
record-level DP-SGD), applies local DP, error feedback and the uplink codec, and returns the
update with the client's new state. It never sees another client's data or the server's
store.

DP noise on the client (local DP, DP-SGD) comes from the operating system's CSPRNG
(``secrets``), never from the task's public seed, so the server cannot subtract it.
"""

from __future__ import annotations

import logging
import math
import secrets
from typing import Any

import numpy as np

from fl_core import wire
from fl_core.client.task import ClientState, ClientTask, TaskResult
from fl_core.client.training import ClientResult, TrainSettings, local_train
from fl_core.codec import ErrorFeedback, parse_codec
from fl_core.models import Layout, ModelSpec
from fl_core.seeding import derive_seed

logger = logging.getLogger(__name__)


class TaskDeclined(RuntimeError):
    """The client will not run this task (e.g. its own DP-SGD budget would be exceeded)."""


def run_task(
    message: bytes,
    task: ClientTask,
    x: np.ndarray,
    y: np.ndarray,
    *,
    state: ClientState,
    expected_layout: Layout | None = None,
    measured: dict[str, float] | None = None,
) -> TaskResult:
    """Run one round's task on the client's own data.

    Parameters
    ----------
    message
        The model message as received (wire format: the global model, or a delta from
        ``state.known_version``).
    task
        The task (hyperparameters, codec, privacy).
    x, y
        The client's private examples; they never leave this function.
    state
        The client's state before this round (not modified; the new one is returned).
    expected_layout
        The model layout the client expects (the simulation passes the campaign's); by
        default it is read from the message and checked against ``task.model_spec``.
    measured
        What the client measured of its link (``uplink_mbps``, ``latency_s``), reported.

    Raises
    ------
    wire.WireError
        The model message is corrupt, for another layout, or a delta from a version the
        client does not hold.
    TaskDeclined
        Record-level DP-SGD would take the client past its own epsilon budget.
    """
    spec = ModelSpec.from_json(task.model_spec)
    header, start = wire.decode_model_for_client(
        message,
        known_version=state.known_version,
        known_model=state.known_model,
        expected_layout=expected_layout,
    )
    if header.base_version != task.base_version:
        raise wire.WireError(
            f"model message is version {header.base_version}, the task needs {task.base_version}"
        )
    layout = header.layout
    if expected_layout is None and layout.num_params != _num_params(spec):
        raise wire.WireError(
            f"model message has {layout.num_params} parameters; the task's model has "
            f"{_num_params(spec)}"
        )
    privacy = task.privacy or {}
    history = list(state.dp_sgd_history)
    if privacy.get("dp_sgd"):
        result, metrics, history = _train_dp_sgd(spec, start, x, y, task, history)
    else:
        settings = TrainSettings(
            local_epochs=task.local_epochs,
            batch_size=task.batch_size,
            lr=task.lr,
            momentum=task.momentum,
            weight_decay=task.weight_decay,
            prox_mu=task.prox_mu,
        )
        result, metrics = local_train(spec, start, x, y, settings=settings, seed=task.seed), {}
    if privacy.get("mode") == "local":
        from fl_core.privacy.local import privatize_update_locally

        noisy = privatize_update_locally(
            result.delta,
            clipping_norm=float(privacy["clipping_norm"]),
            noise_multiplier=float(privacy["noise_multiplier"]),
            rng=np.random.default_rng(secrets.randbits(128)),
        )
        result = ClientResult(
            noisy.astype(np.float32), result.num_examples, result.train_loss, result.duration_s
        )
    feedback = None
    if task.error_feedback and not parse_codec(task.codec).lossless:
        feedback = ErrorFeedback(layout.num_params)
        if state.residual is not None:
            feedback.load_state_dict({"residual": state.residual})
    metrics = {**metrics, "bytes_down": len(message), **(measured or {})}
    data = encode_update(task, layout, result, feedback=feedback, metrics=metrics)
    new_state = ClientState(
        known_version=task.base_version,
        known_model=start,
        residual=feedback.state_dict()["residual"] if feedback is not None else None,
        dp_sgd_history=history,
    )
    return TaskResult(
        update=data,
        state=new_state,
        metrics={"train_loss": result.train_loss, "duration_s": result.duration_s, **metrics},
        num_examples=result.num_examples,
    )


def _num_params(spec: ModelSpec) -> int:
    from fl_core.models import init_vector

    return int(init_vector(spec, seed=0)[1].num_params)


def encode_update(
    task: ClientTask,
    layout: Layout,
    result: ClientResult,
    *,
    feedback: ErrorFeedback | None = None,
    metrics: dict[str, float] | None = None,
) -> bytes:
    """A client's update as a wire message (error feedback applied when given). Stochastic
    codecs draw from the task's seed (campaign seed, round and client), so the same
    campaign config gives the same bytes whatever its id."""
    header = wire.Header(
        kind="update",
        campaign=task.campaign,
        round=task.round,
        base_version=task.base_version,
        client=task.client,
        codec=task.codec,
        layout=layout,
        num_examples=result.num_examples,
        metrics={
            "train_loss": result.train_loss,
            "duration_s": result.duration_s,
            **(metrics or {}),
        },
    )
    codec_rng = np.random.default_rng(derive_seed(task.seed, "codec"))
    return wire.encode(header, result.delta, feedback=feedback, rng=codec_rng)


def dp_sgd_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """Record-level epsilon of every DP-SGD participation so far, composed (Opacus RDP)."""
    if not history:
        return 0.0
    from opacus.accountants import RDPAccountant

    acct = RDPAccountant()
    acct.history = [(float(z), float(q), int(s)) for z, q, s in history]
    return float(acct.get_epsilon(delta=delta))


def _train_dp_sgd(
    spec: ModelSpec,
    start: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    task: ClientTask,
    history: list[tuple[float, float, int]],
) -> tuple[ClientResult, dict[str, float], list[tuple[float, float, int]]]:
    """DP-SGD through Opacus; the epsilon reported is composed over the client's rounds and
    the task is declined if it would exceed the client's budget (``max_epsilon``)."""
    from fl_core.privacy.dpsgd import train_dp_sgd

    p: dict[str, Any] = task.privacy["dp_sgd"]  # type: ignore[index]
    z, delta = float(p["noise_multiplier"]), float(p["delta"])
    batches = math.ceil(len(x) / min(task.batch_size, max(1, len(x))))
    step = (z, 1.0 / batches, task.local_epochs * batches)
    budget = p.get("max_epsilon")
    after = dp_sgd_epsilon([*history, step], delta)
    if budget is not None and after > float(budget):
        raise TaskDeclined(
            f"client {task.client}: DP-SGD would reach epsilon {after:.3f} > its budget {budget}"
        )
    result, _round_eps = train_dp_sgd(
        spec,
        start,
        x,
        y,
        local_epochs=task.local_epochs,
        batch_size=task.batch_size,
        lr=task.lr,
        noise_multiplier=z,
        max_grad_norm=float(p["max_grad_norm"]),
        delta=delta,
        seed=task.seed,
    )
    return (
        result,
        {"dp_sgd_epsilon": after, "dp_sgd_epsilon_round": float(_round_eps)},
        [
            *history,
            step,
        ],
    )
