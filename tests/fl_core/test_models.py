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


def test_scaled_spec_standardizes_raw_input_with_the_same_layout() -> None:
    mean, std = (1.0, -2.0, 10.0), (2.0, 0.5, 4.0)
    plain = ModelSpec("mlp", (3,), 2, hidden=(4,))
    scaled = ModelSpec("mlp", (3,), 2, hidden=(4,), feature_mean=mean, feature_std=std)
    vector, layout = init_vector(plain, seed=0)
    a, b = build_model(plain), build_model(scaled)
    set_flat(a, vector)
    set_flat(b, vector, layout)
    x = torch.rand(6, 3) * 10

    assert layout_of(b) == layout
    expected = a((x - torch.tensor(mean)) / torch.tensor(std))
    torch.testing.assert_close(b(x), expected)
    assert ModelSpec.from_json(scaled.to_json()) == scaled
    assert "feature_mean" not in plain.to_json()  # unscaled specs keep their exact JSON


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_scaled_model_survives_torchscript(tmp_path) -> None:
    spec = ModelSpec("logreg", (2,), 2, feature_mean=(5.0, 5.0), feature_std=(2.0, 3.0))
    model = build_model(spec)
    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    x = torch.rand(4, 2)

    torch.testing.assert_close(torch.jit.load(str(path))(x), model(x))


def test_bad_scaling_statistics_are_refused() -> None:
    with pytest.raises(ValueError, match="feature_std"):
        ModelSpec("mlp", (2,), 2, feature_mean=(0.0, 0.0), feature_std=(1.0, 0.0))
