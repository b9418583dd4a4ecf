"""Edge export: int8 dynamically quantized TorchScript versus the float model, on digits."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fl_core import export
from fl_core.client import TrainSettings, train_centralized
from fl_core.data.datasets import load_digits
from fl_core.export import FLOAT_FILE, INT8_FILE, METADATA_FILE, export_edge, pick_quantized_engine
from fl_core.models import ModelSpec, init_vector, predict_logits

DigitsSplit = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@pytest.fixture(scope="module")
def digits() -> DigitsSplit:
    ds = load_digits()
    order = np.random.default_rng(0).permutation(ds.num_examples)
    train, test = order[:1300], order[1300:]
    return ds.x[train], ds.y[train], ds.x[test], ds.y[test]


@pytest.fixture(scope="module")
def mlp(digits: DigitsSplit) -> tuple[ModelSpec, np.ndarray]:
    """A small MLP trained on digits in well under a second.

    One intra-op thread: for a model this small, thread hand-offs cost far more than they
    save, especially on a loaded CI machine (seconds instead of ~0.1 s).
    """
    import torch

    x, y, _, _ = digits
    spec = ModelSpec("mlp", (1, 8, 8), 10, hidden=(128,))
    settings = TrainSettings(batch_size=64, lr=0.1, momentum=0.9)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        vector = train_centralized(spec, x, y, settings=settings, epochs=8, seed=0)
    finally:
        torch.set_num_threads(threads)
    return spec, vector


@pytest.fixture(scope="module")
def mlp_export(
    mlp: tuple[ModelSpec, np.ndarray], digits: DigitsSplit, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], Path]:
    spec, vector = mlp
    _, _, x_test, y_test = digits
    out = tmp_path_factory.mktemp("edge")
    return export_edge(spec, vector, out, x_eval=x_test, y_eval=y_test), out


def _jit_load(path: str | Path) -> Any:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path))


def _jit_predict(path: str | Path, x: np.ndarray) -> np.ndarray:
    import torch

    model = _jit_load(path)
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x, np.float32))).argmax(1).numpy()


def test_int8_file_is_smaller_than_float_for_the_mlp(
    mlp_export: tuple[dict[str, Any], Path],
) -> None:
    result, out = mlp_export

    assert result["kind"] == "torchscript_int8"
    assert Path(result["path"]) == out / INT8_FILE
    assert result["size_bytes"] == (out / INT8_FILE).stat().st_size
    assert result["float_size_bytes"] == (out / FLOAT_FILE).stat().st_size
    assert result["size_bytes"] < 0.6 * result["float_size_bytes"]


def test_int8_accuracy_within_two_points_of_float(
    mlp_export: tuple[dict[str, Any], Path], mlp: tuple[ModelSpec, np.ndarray], digits: DigitsSplit
) -> None:
    result, _ = mlp_export
    spec, vector = mlp
    _, _, x_test, y_test = digits
    reference = float((predict_logits(spec, vector, x_test).argmax(1) == y_test).mean())

    assert result["accuracy_float"] == pytest.approx(reference)
    assert result["accuracy_float"] > 0.9  # the model did learn
    assert abs(result["accuracy_int8"] - result["accuracy_float"]) <= 0.02


def test_loaded_int8_file_agrees_with_float_model(
    mlp_export: tuple[dict[str, Any], Path], mlp: tuple[ModelSpec, np.ndarray], digits: DigitsSplit
) -> None:
    result, _ = mlp_export
    spec, vector = mlp
    _, _, x_test, _ = digits

    int8_labels = _jit_predict(result["path"], x_test)
    float_labels = predict_logits(spec, vector, x_test).argmax(1)

    assert (int8_labels == float_labels).mean() >= 0.95


def test_metadata_file_describes_the_artifact(mlp_export: tuple[dict[str, Any], Path]) -> None:
    result, out = mlp_export

    meta = json.loads((out / METADATA_FILE).read_text())

    assert meta["path"] == INT8_FILE
    assert meta["size_bytes"] == result["size_bytes"]
    assert meta["spec"]["name"] == "mlp"
    assert meta["input"] == {"dtype": "float32", "shape": [-1, 64]}


def test_cnn_keeps_convolutions_float(digits: DigitsSplit, tmp_path: Path) -> None:
    spec = ModelSpec("cnn", (1, 8, 8), 10, channels=(4, 8))
    vector, _ = init_vector(spec, seed=0)
    _, _, x_test, y_test = digits

    result = export_edge(spec, vector, tmp_path, x_eval=x_test[:64], y_eval=y_test[:64])
    model = _jit_load(result["path"])
    kinds = {name: m.original_name for name, m in model.named_modules() if name}

    assert result["kind"] == "torchscript_int8"
    assert [k for k in kinds.values() if k == "Conv2d"]  # still float convolutions
    assert "Linear" in kinds.values()  # the head, now the dynamic quantized Linear
    labels = _jit_predict(result["path"], x_test[:64])
    float_labels = predict_logits(spec, vector, x_test[:64]).argmax(1)
    assert (labels == float_labels).mean() >= 0.95


def test_float_kind_writes_only_the_float_model(
    mlp: tuple[ModelSpec, np.ndarray], digits: DigitsSplit, tmp_path: Path
) -> None:
    spec, vector = mlp
    _, _, x_test, y_test = digits

    result = export_edge(
        spec, vector, tmp_path, x_eval=x_test, y_eval=y_test, kind="torchscript_float"
    )

    assert result["kind"] == "torchscript_float"
    assert result["path"] == str(tmp_path / FLOAT_FILE)
    assert result["accuracy_int8"] is None and result["note"] is None
    assert not (tmp_path / INT8_FILE).exists()


def test_falls_back_to_float_without_a_quantized_engine(
    mlp: tuple[ModelSpec, np.ndarray],
    digits: DigitsSplit,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    spec, vector = mlp
    _, _, x_test, y_test = digits
    monkeypatch.setattr(export, "_supported_engines", lambda: ["none"])

    with caplog.at_level("WARNING", logger="fl_core.export"):
        result = export_edge(spec, vector, tmp_path, x_eval=x_test, y_eval=y_test)

    assert result["kind"] == "torchscript_float"
    assert result["size_bytes"] == result["float_size_bytes"]
    assert result["accuracy_int8"] is None
    assert "no quantized engine" in result["note"]
    assert "no quantized engine" in caplog.text
    assert not (tmp_path / INT8_FILE).exists()


def test_export_restores_the_quantized_engine(
    mlp: tuple[ModelSpec, np.ndarray], digits: DigitsSplit, tmp_path: Path
) -> None:
    import torch

    spec, vector = mlp
    _, _, x_test, y_test = digits
    before = torch.backends.quantized.engine

    export_edge(spec, vector, tmp_path, x_eval=x_test[:10], y_eval=y_test[:10])

    assert torch.backends.quantized.engine == before


@pytest.mark.parametrize(
    ("supported", "expected"),
    [
        (["qnnpack", "onednn", "x86", "fbgemm"], "x86"),
        (["qnnpack", "fbgemm"], "fbgemm"),
        (["qnnpack"], "qnnpack"),
        (["none", "qnnpack"], "qnnpack"),
        (["none"], None),
        ([], None),
    ],
)
def test_pick_quantized_engine(supported: list[str], expected: str | None) -> None:
    assert pick_quantized_engine(supported) == expected


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"kind": "onnx"}, "kind"),
        ({"x_eval": np.zeros((4, 63), np.float32)}, "x_eval"),
        ({"x_eval": np.zeros((0, 64), np.float32), "y_eval": np.zeros(0, np.int64)}, "x_eval"),
        ({"x_eval": np.full((4, 64), np.nan, np.float32)}, "x_eval"),
        ({"y_eval": np.zeros(3, np.int64)}, "y_eval"),
    ],
)
def test_export_rejects_bad_arguments(
    kwargs: dict[str, Any], argument: str, mlp: tuple[ModelSpec, np.ndarray], tmp_path: Path
) -> None:
    spec, vector = mlp
    args: dict[str, Any] = {
        "x_eval": np.zeros((4, 64), np.float32),
        "y_eval": np.zeros(4, np.int64),
        **kwargs,
    }

    with pytest.raises(ValueError, match=argument):
        export_edge(spec, vector, tmp_path, **args)


def test_edge_model_of_a_scaled_spec_takes_raw_features(
    digits: DigitsSplit, tmp_path: Path
) -> None:
    import torch

    x, y, x_test, y_test = digits
    raw_train, raw_test = x * 40.0 + 7.0, x_test * 40.0 + 7.0  # badly scaled raw features
    mean = tuple(float(v) for v in raw_train.mean(axis=0))
    std = tuple(float(v) if v > 0 else 1.0 for v in raw_train.std(axis=0))
    spec = ModelSpec("mlp", (64,), 10, hidden=(64,), feature_mean=mean, feature_std=std)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        vector = train_centralized(
            spec,
            raw_train,
            y,
            settings=TrainSettings(batch_size=64, lr=0.1, momentum=0.9),
            epochs=5,
            seed=0,
        )
    finally:
        torch.set_num_threads(threads)

    result = export_edge(spec, vector, tmp_path, x_eval=raw_test, y_eval=y_test)

    expected = float((predict_logits(spec, vector, raw_test).argmax(1) == y_test).mean())
    labels = _jit_predict(tmp_path / FLOAT_FILE, raw_test)
    assert float((labels == y_test).mean()) == pytest.approx(expected)
    assert result["accuracy_float"] == pytest.approx(expected) and expected > 0.85
