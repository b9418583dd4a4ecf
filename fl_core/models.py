"""Lightweight models for CPU edge devices, and their flat-vector parameter layout.

Parameters travel and aggregate as one flat ``float32`` vector plus a :class:`Layout`
(names and shapes, in ``state_dict`` order). Torch is used for training, evaluation and
export only; aggregation math works on the flat vectors.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Layout:
    """Names and shapes of a model's parameters, in flat-vector order."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @functools.cached_property
    def sizes(self) -> tuple[int, ...]:
        """Each parameter's size (computed once: the upload checks read it per update)."""
        return tuple(math.prod(s) for s in self.shapes)

    @functools.cached_property
    def num_params(self) -> int:
        return sum(self.sizes)

    def to_json(self) -> list[list[Any]]:
        return [[n, list(s)] for n, s in zip(self.names, self.shapes, strict=True)]

    @classmethod
    def from_json(cls, raw: Any) -> Layout:
        """Parse a layout from untrusted JSON; raises ``ValueError`` on anything malformed."""
        if not isinstance(raw, list) or not raw:
            raise ValueError("layout must be a non-empty list of [name, shape]")
        names: list[str] = []
        shapes: list[tuple[int, ...]] = []
        for item in raw:
            if (
                not isinstance(item, list)
                or len(item) != 2
                or not isinstance(item[0], str)
                or not isinstance(item[1], list)
                or not all(
                    isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in item[1]
                )
            ):
                raise ValueError(f"layout entry {item!r} is not [name, [non-negative ints]]")
            names.append(item[0])
            shapes.append(tuple(item[1]))
        return cls(tuple(names), tuple(shapes))


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model: name, data shape and size hyperparameters.

    ``feature_mean`` / ``feature_std`` (one value per flattened feature, or ``None``) make the
    model standardize its raw input first, ``(x - mean) / std``, with fixed statistics (see
    :mod:`fl_core.data.scaling`). They are non-persistent buffers: not in the ``state_dict``,
    so the flat parameter vector and its :class:`Layout` are the same with or without them.
    """

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    hidden: tuple[int, ...] = (200,)
    channels: tuple[int, ...] = (8, 16)
    feature_mean: tuple[float, ...] | None = None
    feature_std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if (self.feature_mean is None) != (self.feature_std is None):
            raise ValueError("feature_mean and feature_std go together")
        if self.feature_mean is not None and self.feature_std is not None:
            n = self.num_features
            if len(self.feature_mean) != n or len(self.feature_std) != n:
                raise ValueError(f"feature_mean / feature_std need {n} values each")
            values = (*self.feature_mean, *self.feature_std)
            if not all(math.isfinite(v) for v in values) or min(self.feature_std) <= 0:
                raise ValueError("feature_mean must be finite and feature_std finite and > 0")

    @property
    def num_features(self) -> int:
        return math.prod(self.input_shape)

    @property
    def scaled(self) -> bool:
        """Whether the model standardizes its input."""
        return self.feature_mean is not None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "hidden": list(self.hidden),
            "channels": list(self.channels),
        }
        if self.feature_mean is not None and self.feature_std is not None:
            out["feature_mean"] = list(self.feature_mean)
            out["feature_std"] = list(self.feature_std)
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ModelSpec:
        mean = raw.get("feature_mean")
        std = raw.get("feature_std")
        return cls(
            name=str(raw["name"]),
            input_shape=tuple(int(v) for v in raw["input_shape"]),
            num_classes=int(raw["num_classes"]),
            hidden=tuple(int(v) for v in raw.get("hidden", (200,))),
            channels=tuple(int(v) for v in raw.get("channels", (8, 16))),
            feature_mean=None if mean is None else tuple(float(v) for v in mean),
            feature_std=None if std is None else tuple(float(v) for v in std),
        )

    @classmethod
    def for_data(
        cls,
        *,
        name: str,
        hidden: Sequence[int],
        channels: Sequence[int],
        meta: dict[str, Any],
        manifest: dict[str, Any] | None = None,
    ) -> ModelSpec:
        """The spec for a model on prepared data: shape and classes from ``meta.json``, the
        federated feature scaling (if any) from the partition ``manifest.json``."""
        scaling = (manifest or {}).get("feature_scaling")
        return cls(
            name=name,
            input_shape=tuple(int(v) for v in meta["input_shape"]),
            num_classes=int(meta["num_classes"]),
            hidden=tuple(hidden),
            channels=tuple(channels),
            feature_mean=None if not scaling else tuple(float(v) for v in scaling["mean"]),
            feature_std=None if not scaling else tuple(float(v) for v in scaling["std"]),
        )


def _logreg(spec: ModelSpec) -> nn.Module:
    from torch import nn

    return nn.Sequential(nn.Flatten(), nn.Linear(spec.num_features, spec.num_classes))


def _mlp(spec: ModelSpec) -> nn.Module:
    from torch import nn

    layers: list[nn.Module] = [nn.Flatten()]
    width = spec.num_features
    for h in spec.hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, spec.num_classes))
    return nn.Sequential(*layers)


def _cnn(spec: ModelSpec) -> nn.Module:
    """A small LeNet-style CNN: conv-relu-pool blocks then a linear head."""
    from torch import nn

    if len(spec.input_shape) != 3:
        raise ValueError(f"cnn needs image input (C, H, W), got input_shape={spec.input_shape}")
    c, h, w = spec.input_shape
    layers: list[nn.Module] = [nn.Unflatten(1, (c, h, w))]
    for out in spec.channels:
        layers += [nn.Conv2d(c, out, kernel_size=3, padding=1), nn.ReLU()]
        if h >= 4 and w >= 4:
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
        c = out
    layers += [nn.Flatten(), nn.Linear(c * h * w, spec.num_classes)]
    return nn.Sequential(*layers)


MODELS: dict[str, Callable[[ModelSpec], nn.Module]] = {
    "logreg": _logreg,
    "mlp": _mlp,
    "cnn": _cnn,
}


def _standardized(model: nn.Module, spec: ModelSpec) -> nn.Module:
    """``model`` (a Sequential) behind a fixed standardization of its input, same state_dict."""
    import torch
    from torch import nn

    class StandardizedSequential(nn.Sequential):
        """``(x - feature_mean) * feature_inv_std``, then the layers (scriptable)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = (x - self.feature_mean) * self.feature_inv_std  # type: ignore[operator]
            for layer in self:
                x = layer(x)
            return x

    assert isinstance(model, nn.Sequential)
    wrapped = StandardizedSequential(*model)
    mean = torch.tensor(spec.feature_mean, dtype=torch.float32)
    inv_std = 1.0 / torch.tensor(spec.feature_std, dtype=torch.float64)
    wrapped.register_buffer("feature_mean", mean, persistent=False)
    wrapped.register_buffer("feature_inv_std", inv_std.to(torch.float32), persistent=False)
    return wrapped


def build_model(spec: ModelSpec) -> nn.Module:
    """Instantiate the model named by ``spec`` (input is a flat ``(batch, features)`` tensor
    of raw features; a spec with feature scaling standardizes them first)."""
    try:
        factory = MODELS[spec.name]
    except KeyError:
        raise ValueError(
            f"model name {spec.name!r} is unknown; allowed values: {', '.join(MODELS)}"
        ) from None
    model = factory(spec)
    return _standardized(model, spec) if spec.scaled else model


def layout_of(model: nn.Module) -> Layout:
    state = model.state_dict()
    return Layout(tuple(state), tuple(tuple(t.shape) for t in state.values()))


def get_flat(model: nn.Module) -> np.ndarray:
    """Concatenate the model's ``state_dict`` into one float32 vector (a copy)."""
    parts = [
        t.detach().cpu().reshape(-1).to(dtype=_f32()).numpy() for t in model.state_dict().values()
    ]
    return np.concatenate(parts).astype(np.float32, copy=False)


def set_flat(model: nn.Module, vector: np.ndarray, layout: Layout | None = None) -> None:
    """Load a flat vector into the model; the vector's length must match its layout."""
    import torch

    layout = layout or layout_of(model)
    if layout != layout_of(model):
        raise ValueError("layout does not match the model's parameters")
    if vector.ndim != 1 or vector.size != layout.num_params:
        raise ValueError(f"vector has {vector.size} values, layout needs {layout.num_params}")
    state = {}
    offset = 0
    for name, shape, size in zip(layout.names, layout.shapes, layout.sizes, strict=True):
        chunk = np.asarray(vector[offset : offset + size], dtype=np.float32).reshape(shape)
        state[name] = torch.from_numpy(chunk.copy())
        offset += size
    model.load_state_dict(state)


def split_flat(vector: np.ndarray, layout: Layout) -> dict[str, np.ndarray]:
    """Split a flat vector into named arrays (views) following ``layout``."""
    if vector.size != layout.num_params:
        raise ValueError(f"vector has {vector.size} values, layout needs {layout.num_params}")
    out = {}
    offset = 0
    for name, shape, size in zip(layout.names, layout.shapes, layout.sizes, strict=True):
        out[name] = vector[offset : offset + size].reshape(shape)
        offset += size
    return out


def concat_flat(arrays: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype=np.float32).reshape(-1) for a in arrays])


def init_vector(spec: ModelSpec, *, seed: int) -> tuple[np.ndarray, Layout]:
    """Deterministic initial parameters for ``spec`` from ``seed``."""
    import torch

    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = build_model(spec)
    finally:
        torch.random.set_rng_state(gen_state)
    return get_flat(model), layout_of(model)


def vector_sha256(vector: np.ndarray) -> str:
    """Content hash of a parameter vector (the model hash used for determinism checks)."""
    return hashlib.sha256(np.ascontiguousarray(vector, dtype=np.float32).tobytes()).hexdigest()


def model_size(spec: ModelSpec) -> dict[str, int]:
    """Parameter count and fp32 size in bytes."""
    _, layout = init_vector(spec, seed=0)
    return {"num_params": layout.num_params, "size_bytes": 4 * layout.num_params}


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread, then restore the setting.

    Client training and evaluation use it: results no longer depend on how many threads the
    host (an Airflow worker, the engine, a test) gives torch, so a retried client produces
    the same bytes; and these small models run about 3x faster on one thread.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _f32() -> Any:
    import torch

    return torch.float32


def predict_logits(
    spec: ModelSpec, vector: np.ndarray, x: np.ndarray, *, batch_size: int = 1024
) -> np.ndarray:
    """Forward pass of the model given by (spec, vector) on ``x`` (n, features) -> logits."""
    import torch

    model = build_model(spec)
    set_flat(model, vector)
    model.eval()
    outs = []
    with torch.no_grad(), single_thread():
        for start in range(0, len(x), batch_size):
            xb = torch.from_numpy(
                np.ascontiguousarray(x[start : start + batch_size], dtype=np.float32)
            )
            outs.append(model(xb).numpy())
    if not outs:
        return np.zeros((0, spec.num_classes), dtype=np.float32)
    return np.concatenate(outs)
