"""Record-level DP-SGD inside one client, with Opacus's ``PrivacyEngine``.

Abadi et al., "Deep Learning with Differential Privacy", CCS 2016: each step samples a
Poisson batch (rate ``batch_size / n``), clips every per-example gradient to
``max_grad_norm`` and adds ``N(0, (noise_multiplier * max_grad_norm)^2)`` to their sum.
Opacus computes per-example gradients with hooks (``nn.Linear`` and ``nn.Conv2d`` are
supported; ``nn.Flatten``, ``nn.Unflatten``, ``nn.ReLU`` and ``nn.MaxPool2d`` have no
parameters), so the logreg, MLP and CNN of :mod:`fl_core.models` train unmodified and keep
their parameter layout. The client's epsilon at ``delta`` is that of its own records over
all its local steps (RDP accountant) and is independent of any user-level DP.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
import warnings

import numpy as np

from fl_core.client.training import ClientResult
from fl_core.models import ModelSpec, build_model, get_flat, set_flat
from fl_core.privacy.accountant import RDP_ORDERS, quiet_opacus

logger = logging.getLogger(__name__)


def train_dp_sgd(
    spec: ModelSpec,
    global_vector: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    *,
    local_epochs: int,
    batch_size: int,
    lr: float,
    noise_multiplier: float,
    max_grad_norm: float,
    delta: float,
    seed: int,
    noise_seed: int | None = None,
) -> tuple[ClientResult, float]:
    """Train locally with DP-SGD from ``global_vector``; return the update and epsilon.

    Parameters
    ----------
    spec, global_vector
        The model to rebuild and the parameters to start from.
    x, y
        The client's private examples (float32 features, int64 labels).
    local_epochs, batch_size, lr
        Plain SGD. A step's Poisson sampling rate is 1 / (number of batches), i.e.
        about ``batch_size / len(x)``; an epoch is that many steps.
    noise_multiplier, max_grad_norm
        DP-SGD noise (relative to the clipping bound) and the per-example clipping bound.
    delta
        Record-level delta at which epsilon is reported (should be < 1 / len(x)).
    seed
        Seeds batch sampling (public, reproducible).
    noise_seed
        Seeds the DP noise. ``None`` (the default, and what clients use) draws it from the
        operating system's CSPRNG (``secrets``), so nobody who knows the public seed can
        recompute and subtract the noise. Opacus's ``secure_mode`` needs torchcsprng, which
        is not installable here; a CSPRNG-seeded torch generator is the stand-in.

    Returns
    -------
    result, epsilon
        The same :class:`~fl_core.client.ClientResult` as :func:`fl_core.client.local_train`
        (``train_loss`` is the mean loss over the examples seen) and the record-level epsilon.
    """
    import torch
    import torch.nn.functional as F
    from opacus import PrivacyEngine
    from opacus.validators import ModuleValidator
    from torch.utils.data import DataLoader, TensorDataset

    if len(x) == 0:
        raise ValueError("x: client has no examples")
    if len(x) != len(y):
        raise ValueError(f"y: has {len(y)} labels for {len(x)} examples")
    for name, value in (("local_epochs", local_epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: {value!r} must be an integer >= 1")
    for name, fvalue in (
        ("lr", lr),
        ("noise_multiplier", noise_multiplier),
        ("max_grad_norm", max_grad_norm),
    ):
        if not math.isfinite(fvalue) or fvalue <= 0:
            raise ValueError(f"{name}: {fvalue!r} must be a finite number > 0")
    if not math.isfinite(delta) or not 0 < delta < 1:
        raise ValueError(f"delta: {delta!r} must be in (0, 1)")
    n = len(x)
    if delta >= 1 / n:
        logger.warning("DP-SGD delta %g is not < 1/num_examples (%g)", delta, 1 / n)

    start = time.perf_counter()
    model = build_model(spec)
    set_flat(model, global_vector)
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ValueError(
            f"spec: model {spec.name!r} is not supported by DP-SGD: "
            + "; ".join(str(e) for e in errors)
        )
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    dataset = TensorDataset(
        torch.tensor(np.asarray(x, dtype=np.float32)),
        torch.tensor(np.asarray(y, dtype=np.int64)),
    )
    loader = DataLoader(
        dataset,
        batch_size=min(batch_size, n),
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    total_loss = 0.0
    total_seen = 0
    with quiet_opacus(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        engine = PrivacyEngine(accountant="rdp")
        dp_model, dp_optimizer, dp_loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            poisson_sampling=True,
            noise_generator=torch.Generator().manual_seed(
                secrets.randbits(63) if noise_seed is None else noise_seed
            ),
        )
        for _ in range(local_epochs):
            for xb, yb in dp_loader:
                # An empty Poisson batch is still a step (pure noise, counted by the
                # accountant, as the analysis assumes); its NaN mean loss has no elements
                # to propagate into the per-example gradients.
                dp_optimizer.zero_grad()
                loss = F.cross_entropy(dp_model(xb), yb)
                loss.backward()
                dp_optimizer.step()
                if len(xb):
                    total_loss += float(loss.detach()) * len(xb)
                    total_seen += len(xb)
        epsilon = float(engine.accountant.get_epsilon(delta=delta, alphas=list(RDP_ORDERS)))
    # make_private wraps ``model`` in place (GradSampleModule shares its parameters), so the
    # plain module still carries the trained weights under the original layout.
    delta_vector = get_flat(model) - np.asarray(global_vector, dtype=np.float32)
    result = ClientResult(
        delta=delta_vector.astype(np.float32, copy=False),
        num_examples=n,
        train_loss=total_loss / max(total_seen, 1),
        duration_s=time.perf_counter() - start,
    )
    return result, epsilon
