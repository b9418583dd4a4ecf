import numpy as np
import pytest
import torch

from fl_core.models import (
    Layout,
    ModelSpec,
    build_model,
    get_flat,
    init_vector,
    layout_of,
    model_size,
    set_flat,
    split_flat,
)

SPECS = [
    ModelSpec("logreg", (1, 8, 8), 10),
    ModelSpec("mlp", (1, 28, 28), 10, hidden=(200,)),
    ModelSpec("cnn", (1, 28, 28), 10, channels=(8, 16)),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_flat_vector_round_trip_restores_the_same_function(spec: ModelSpec) -> None:
    torch.manual_seed(0)
    source = build_model(spec)
    target = build_model(spec)
    x = torch.rand(5, spec.num_features)

    vector = get_flat(source)
    set_flat(target, vector)

    assert vector.dtype == np.float32
    assert vector.size == layout_of(source).num_params
    np.testing.assert_array_equal(get_flat(target), vector)
    torch.testing.assert_close(target(x), source(x))


def test_layout_splits_vector_by_name_and_shape() -> None:
    spec = SPECS[1]
    vector, layout = init_vector(spec, seed=3)

    parts = split_flat(vector, layout)

    assert list(parts) == ["1.weight", "1.bias", "3.weight", "3.bias"]
    assert parts["1.weight"].shape == (200, 784)
    assert Layout.from_json(layout.to_json()) == layout


def test_model_size_reports_params_and_bytes() -> None:
    size = model_size(SPECS[1])

    assert size["num_params"] == 784 * 200 + 200 + 200 * 10 + 10
    assert size["size_bytes"] == 4 * size["num_params"]


def test_init_is_deterministic_per_seed() -> None:
    a, _ = init_vector(SPECS[1], seed=1)
    b, _ = init_vector(SPECS[1], seed=1)
    c, _ = init_vector(SPECS[1], seed=2)

    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_wrong_vector_length_and_unknown_model_are_rejected() -> None:
    model = build_model(SPECS[0])
    with pytest.raises(ValueError, match="layout needs"):
        set_flat(model, np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match="allowed values"):
        build_model(ModelSpec("resnet152", (1, 8, 8), 10))


@pytest.mark.parametrize("bad", [[], [["w", [-1]]], [["w", "3"]], "layout", [[1, [2]]]])
def test_malformed_layout_json_is_rejected(bad: object) -> None:
    with pytest.raises(ValueError):
        Layout.from_json(bad)
