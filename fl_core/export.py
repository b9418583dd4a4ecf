"""Edge artifact export: an int8 dynamically quantized TorchScript model, plus its float twin.

The deploy step turns the champion ``(ModelSpec, vector)`` into a self-contained TorchScript
file that an edge client runs with ``torch.jit.load`` (no ``fl_core`` and no Python model
code needed). Two files are written so the gain can be measured on the same evaluation data:

* ``model_float.torchscript.pt``: the float32 model, scripted;
* ``model_int8.torchscript.pt``: the same model after post-training *dynamic* quantization
  (Jacob et al., "Quantization and Training of Neural Networks for Efficient
  Integer-Arithmetic-Only Inference", CVPR 2018; PyTorch ``quantize_dynamic``): every
  ``nn.Linear`` weight is stored as int8 with a per-tensor scale, activations are quantized
  on the fly at inference time. No calibration data is needed.

Only ``nn.Linear`` layers are quantized. For the CNN the convolutions stay float32: dynamic
quantization has no convolution kernels (they need static quantization with calibration), so
only its linear head shrinks, and for very small models (the logistic regression, the CNN)
the TorchScript code of the quantized modules can outweigh the saved bytes: compare
``size_bytes`` with ``float_size_bytes`` in the result before shipping.

The quantized weights are re-packed for the loading machine's quantized engine when the file
is loaded (``fbgemm``/``x86`` on x86, ``qnnpack`` on ARM), so one file serves both. When the
exporting platform has no quantized engine, the export falls back to the float file and says
so in the result (``kind == "torchscript_float"`` and a ``note``) and in the log.

Notes
-----
``torch.jit`` and ``torch.ao.quantization`` are deprecated in recent torch releases (in favour
of ``torch.export`` and torchao); they still work in the pinned torch and their
``DeprecationWarning`` is silenced here only around the calls that emit it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fl_core.models import ModelSpec, build_model, set_flat

if TYPE_CHECKING:
    from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["EXPORT_KINDS", "FLOAT_FILE", "INT8_FILE", "METADATA_FILE", "export_edge"]

EXPORT_KINDS: tuple[str, ...] = ("torchscript_int8", "torchscript_float")
"""Allowed values of ``kind``."""
FLOAT_FILE = "model_float.torchscript.pt"
INT8_FILE = "model_int8.torchscript.pt"
METADATA_FILE = "edge_model.json"

_ENGINE_PREFERENCE = ("x86", "fbgemm", "qnnpack", "onednn")


def export_edge(
    spec: ModelSpec,
    vector: np.ndarray,
    out_dir: str | Path,
    *,
    x_eval: np.ndarray,
    y_eval: np.ndarray,
    kind: str = "torchscript_int8",
) -> dict[str, Any]:
    """Export (spec, vector) as TorchScript files for edge devices and measure them.

    Both files are evaluated after loading them back with ``torch.jit.load``, i.e. exactly
    as an edge client would run them.

    Parameters
    ----------
    spec : ModelSpec
        The model architecture.
    vector : np.ndarray
        Flat float32 parameter vector matching ``spec``.
    out_dir : str or Path
        Folder for the files (created if missing); existing files of the same names are
        replaced.
    x_eval : np.ndarray
        Evaluation features, shape ``(n, spec.num_features)``, ``n >= 1``.
    y_eval : np.ndarray
        Evaluation labels, shape ``(n,)``.
    kind : str, optional
        ``"torchscript_int8"`` (default; falls back to float when no quantized engine is
        available) or ``"torchscript_float"``.

    Returns
    -------
    dict
        ``path`` (str, the file to ship), ``kind`` (the kind actually produced),
        ``size_bytes`` (of ``path``), ``float_size_bytes``, ``accuracy_int8`` (``None`` when
        no int8 file was produced), ``accuracy_float``, ``float_path``, ``engine`` (the
        quantized engine used, or ``None``) and ``note`` (why int8 was not produced, or
        ``None``). The same values, with the spec, are written to ``edge_model.json``.
    """

    if kind not in EXPORT_KINDS:
        raise ValueError(f"kind {kind!r} is unknown; allowed values: {', '.join(EXPORT_KINDS)}")
    x = np.asarray(x_eval)
    y = np.asarray(y_eval)
    if x.ndim != 2 or x.shape[1] != spec.num_features or len(x) == 0:
        raise ValueError(
            f"x_eval must have shape (n >= 1, {spec.num_features}), got {tuple(x.shape)}"
        )
    if y.shape != (len(x),):
        raise ValueError(f"y_eval must have shape ({len(x)},), got {tuple(y.shape)}")
    if not np.all(np.isfinite(x)):
        raise ValueError("x_eval must contain only finite values")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(spec)
    set_flat(model, np.asarray(vector, dtype=np.float32))
    model.eval()

    float_path = out / FLOAT_FILE
    _save_torchscript(model, float_path)
    accuracy_float = _accuracy(float_path, x, y)
    result: dict[str, Any] = {
        "kind": "torchscript_float",
        "path": str(float_path),
        "size_bytes": float_path.stat().st_size,
        "float_path": str(float_path),
        "float_size_bytes": float_path.stat().st_size,
        "accuracy_float": accuracy_float,
        "accuracy_int8": None,
        "engine": None,
        "note": None,
    }

    if kind == "torchscript_int8":
        engine = pick_quantized_engine(_supported_engines())
        if engine is None:
            result["note"] = (
                "int8 export skipped: torch has no quantized engine on this platform "
                f"(supported_engines={_supported_engines()}); shipping the float TorchScript model"
            )
        else:
            int8_path = out / INT8_FILE
            try:
                with _quantized_engine(engine):
                    quantized = _quantize_linear(model)
                    _save_torchscript(quantized, int8_path)
                    accuracy_int8 = _accuracy(int8_path, x, y)
            except (RuntimeError, NotImplementedError) as exc:
                int8_path.unlink(missing_ok=True)
                result["note"] = (
                    f"int8 export failed with quantized engine {engine!r} ({exc}); "
                    "shipping the float TorchScript model"
                )
            else:
                result.update(
                    kind="torchscript_int8",
                    path=str(int8_path),
                    size_bytes=int8_path.stat().st_size,
                    accuracy_int8=accuracy_int8,
                    engine=engine,
                )
        if result["note"]:
            logger.warning("%s", result["note"])
        elif result["size_bytes"] >= result["float_size_bytes"]:
            logger.info(
                "int8 file (%d bytes) is not smaller than the float one (%d bytes) for %s: "
                "too few Linear weights to outweigh the quantized modules' TorchScript code",
                result["size_bytes"],
                result["float_size_bytes"],
                spec.name,
            )

    (out / METADATA_FILE).write_text(
        json.dumps(
            {
                **result,
                "path": Path(result["path"]).name,
                "float_path": float_path.name,
                "spec": spec.to_json(),
                "input": {"dtype": "float32", "shape": [-1, spec.num_features]},
                "output": {"dtype": "float32", "shape": [-1, spec.num_classes], "is": "logits"},
            },
            indent=1,
            sort_keys=True,
        )
        + "\n"
    )
    logger.info(
        "edge export %s: %s (%d bytes, float %d bytes), accuracy int8 %s float %.4f",
        spec.name,
        result["kind"],
        result["size_bytes"],
        result["float_size_bytes"],
        result["accuracy_int8"],
        accuracy_float,
    )
    return result


def pick_quantized_engine(supported: Sequence[str]) -> str | None:
    """The quantized engine to export with, or ``None`` when there is none.

    Parameters
    ----------
    supported : sequence of str
        ``torch.backends.quantized.supported_engines`` (``"none"`` entries are ignored).

    Returns
    -------
    str or None
        The first of ``x86``, ``fbgemm``, ``qnnpack``, ``onednn`` that is supported, else any
        other supported engine, else ``None``.
    """
    usable = [e for e in supported if e and e != "none"]
    for engine in _ENGINE_PREFERENCE:
        if engine in usable:
            return engine
    return usable[0] if usable else None


def _supported_engines() -> list[str]:
    import torch

    return list(torch.backends.quantized.supported_engines)


@contextlib.contextmanager
def _quantized_engine(engine: str) -> Iterator[None]:
    """Select ``engine`` for the duration of the block, then restore the previous one."""
    import torch

    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


@contextlib.contextmanager
def _quiet_deprecations() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\..*")
        warnings.filterwarnings("ignore", message=r".*torch\.(jit|ao\.quantization).*deprecated")
        warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions.*")
        yield


def _quantize_linear(model: nn.Module) -> nn.Module:
    """Dynamic int8 quantization of every ``nn.Linear`` (weights int8, per-tensor scale)."""
    import torch
    from torch import nn

    with _quiet_deprecations():
        quantized: nn.Module = torch.ao.quantization.quantize_dynamic(
            model, {nn.Linear}, dtype=torch.qint8, inplace=False
        )
    return quantized


def _save_torchscript(model: nn.Module, path: Path) -> None:
    """Script ``model`` and save it atomically to ``path``."""
    import torch

    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with _quiet_deprecations():
            scripted = torch.jit.script(model)
            torch.jit.save(scripted, str(tmp))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _accuracy(path: Path, x: np.ndarray, y: np.ndarray, *, batch_size: int = 1024) -> float:
    """Accuracy of the TorchScript file at ``path`` on (x, y), loaded as an edge client would."""
    import torch

    with _quiet_deprecations():
        loaded = torch.jit.load(str(path), map_location="cpu")
    loaded.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size], np.float32))
            pred = loaded(xb).argmax(1).numpy()
            correct += int((pred == y[start : start + batch_size]).sum())
    return correct / len(x)
