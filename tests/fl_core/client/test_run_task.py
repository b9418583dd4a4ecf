"""The one client code path: fl_core.client.run_task, as both transports call it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fl_core import wire
from fl_core.client import ClientState, ClientTask, TaskDeclined, dp_sgd_epsilon, run_task
from fl_core.models import ModelSpec, init_vector

SPEC = ModelSpec(name="logreg", input_shape=(16,), num_classes=4)


def _data(n: int = 96) -> tuple[np.ndarray, np.ndarray]:
    gen = np.random.default_rng(0)
    y = gen.integers(0, 4, size=n).astype(np.int64)
    x = (gen.standard_normal((n, 16)) + y[:, None]).astype(np.float32)
    return x, y


def _task(rnd: int = 1, **changes: Any) -> ClientTask:
    raw: dict[str, Any] = {
        "local_epochs": 1,
        "batch_size": 16,
        "lr": 0.1,
        "momentum": 0.0,
        "weight_decay": 0.0,
        "prox_mu": 0.0,
        "codec": "dense_fp32",
        "error_feedback": False,
        "downlink_codec": "dense_fp32",
        "downlink_delta_codec": None,
        "seed": 5,
        **changes,
    }
    return ClientTask.from_manifest(
        raw, campaign="c", round=rnd, base_version=rnd - 1, client="a", model_spec=SPEC.to_json()
    )


def _message(rnd: int = 1, vector: np.ndarray | None = None) -> tuple[bytes, np.ndarray]:
    start, layout = init_vector(SPEC, seed=0)
    vector = start if vector is None else vector
    header = wire.Header(
        kind="model",
        campaign="c",
        round=rnd,
        base_version=rnd - 1,
        client="a",
        codec="dense_fp32",
        layout=layout,
    )
    return wire.encode(header, vector), vector


def _vector(update: bytes) -> np.ndarray:
    return wire.decode(update)[1]


def test_same_task_and_state_give_the_same_update_without_dp() -> None:
    message, _ = _message()
    x, y = _data()

    first = run_task(message, _task(), x, y, state=ClientState())
    second = run_task(message, _task(), x, y, state=ClientState())

    np.testing.assert_array_equal(_vector(first.update), _vector(second.update))
    header = wire.decode(first.update)[0]
    assert (header.kind, header.client, header.round, header.base_version) == ("update", "a", 1, 0)
    assert header.num_examples == len(x)
    assert first.state.known_version == 0


def test_local_dp_noise_comes_from_the_client_not_from_the_public_seed() -> None:
    message, _ = _message()
    x, y = _data()
    task = _task(privacy={"mode": "local", "clipping_norm": 0.5, "noise_multiplier": 1.0})

    first = run_task(message, task, x, y, state=ClientState())
    second = run_task(message, task, x, y, state=ClientState())

    assert not np.array_equal(_vector(first.update), _vector(second.update))


def test_error_feedback_residual_is_kept_by_the_client_and_carried_over() -> None:
    message, _ = _message()
    x, y = _data()
    task = _task(codec="topk:0.1", error_feedback=True)

    first = run_task(message, task, x, y, state=ClientState())
    again = run_task(message, task, x, y, state=first.state)

    sent = _vector(first.update)
    assert first.state.residual is not None and np.count_nonzero(first.state.residual) > 0
    # What top-k dropped is exactly the residual: sent + residual is the dense update.
    dense = run_task(message, _task(), x, y, state=ClientState())
    np.testing.assert_allclose(sent + first.state.residual, _vector(dense.update), atol=1e-6)
    # The next round starts from the residual: a different message from the same start.
    assert not np.array_equal(_vector(again.update), sent)


def test_dp_sgd_epsilon_is_composed_across_rounds_and_capped_by_the_client_budget() -> None:
    x, y = _data()
    dp = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-3, "max_epsilon": None}
    msg1, _ = _message(1)
    r1 = run_task(msg1, _task(1, privacy={"dp_sgd": dp}), x, y, state=ClientState())
    msg2, _ = _message(2)
    r2 = run_task(msg2, _task(2, privacy={"dp_sgd": dp}), x, y, state=r1.state)

    eps1, eps2 = r1.metrics["dp_sgd_epsilon"], r2.metrics["dp_sgd_epsilon"]
    assert 0 < eps1 < eps2
    assert eps2 == pytest.approx(dp_sgd_epsilon(r2.state.dp_sgd_history, 1e-3))
    assert len(r2.state.dp_sgd_history) == 2
    # A budget between the two: round 2 is declined, the state is not spent.
    capped = {**dp, "max_epsilon": (eps1 + eps2) / 2}
    with pytest.raises(TaskDeclined, match="budget"):
        run_task(msg2, _task(2, privacy={"dp_sgd": capped}), x, y, state=r1.state)
    # The history survives the client's own restart (state on its disk, no pickle).
    restored = ClientState.from_arrays(r2.state.to_arrays())
    assert restored.dp_sgd_history == r2.state.dp_sgd_history


def test_a_model_message_for_another_version_or_layout_is_refused() -> None:
    message, _ = _message(rnd=3)
    x, y = _data()

    with pytest.raises(wire.WireError, match="version"):
        run_task(message, _task(rnd=1), x, y, state=ClientState())
    other = ModelSpec(name="logreg", input_shape=(8,), num_classes=4).to_json()
    task = ClientTask.from_dict({**_task(3).to_dict(), "model_spec": other})
    with pytest.raises(wire.WireError, match="parameters"):
        run_task(message, task, x, y, state=ClientState())


def test_a_downlink_delta_decodes_against_the_model_the_client_holds() -> None:
    start, layout = init_vector(SPEC, seed=0)
    new = start + np.float32(0.01)
    header = wire.Header(
        kind="model",
        campaign="c",
        round=2,
        base_version=1,
        client="a",
        codec="dense_fp32",
        layout=layout,
    )
    delta = wire.encode_model_for_client(
        header, new, known_version=0, known_model=start, delta_codec="dense_fp32"
    )
    x, y = _data()
    holder = ClientState(known_version=0, known_model=start)

    result = run_task(delta, _task(2), x, y, state=holder)
    direct = run_task(wire.encode(header, new), _task(2), x, y, state=ClientState())

    np.testing.assert_allclose(_vector(result.update), _vector(direct.update), atol=1e-5)
    np.testing.assert_allclose(result.state.known_model, new, atol=1e-6)
