"""Aggregation rules (streaming where the rule allows) and server optimizers.

``create_aggregator(name, dim=..., **hyperparameters)`` maps config names to classes:

==================  ========================  =========================================
name                class                     hyperparameters (keyword-only)
==================  ========================  =========================================
fedavg              FedAvg                    -
median              CoordinateMedian          capacity
weighted_median     WeightedMedian            capacity
trimmed_mean        TrimmedMean               beta=0.1, capacity
krum                Krum                      num_byzantine, capacity
multi_krum          MultiKrum                 num_byzantine, num_selected, weighted, capacity
bulyan              Bulyan                    num_byzantine, capacity
norm_bounding       NormBounding              max_norm
centered_clipping   CenteredClipping          tau, iterations=1, weighted, center, capacity
fltrust             FLTrust                   root_update (or ``set_reference``)
==================  ========================  =========================================

Rules with ``requires_full_cohort`` buffer every update of the round (see
:func:`requires_full_cohort`); the others stream. The pure math is in
:mod:`fl_core.aggregation.robust_math`; asynchronous buffered aggregation (FedBuff) is in
:mod:`fl_core.aggregation.fedbuff`.
"""

from __future__ import annotations

import inspect
from typing import Any

from fl_core.aggregation.base import Aggregator
from fl_core.aggregation.buffered import BufferedAggregator
from fl_core.aggregation.bulyan import Bulyan
from fl_core.aggregation.clipping import CenteredClipping, NormBounding
from fl_core.aggregation.fedavg import FedAvg
from fl_core.aggregation.fltrust import FLTrust
from fl_core.aggregation.krum import Krum, MultiKrum
from fl_core.aggregation.median import CoordinateMedian, WeightedMedian
from fl_core.aggregation.server_opt import ServerOptimizer
from fl_core.aggregation.trimmed_mean import TrimmedMean

AGGREGATORS: dict[str, type[Aggregator]] = {
    "fedavg": FedAvg,
    "median": CoordinateMedian,
    "weighted_median": WeightedMedian,
    "trimmed_mean": TrimmedMean,
    "krum": Krum,
    "multi_krum": MultiKrum,
    "bulyan": Bulyan,
    "norm_bounding": NormBounding,
    "centered_clipping": CenteredClipping,
    "fltrust": FLTrust,
}


def _aggregator_class(name: str) -> type[Aggregator]:
    try:
        return AGGREGATORS[name]
    except KeyError:
        raise ValueError(
            f"aggregator {name!r} is unknown; allowed values: {', '.join(AGGREGATORS)}"
        ) from None


def aggregator_arguments(name: str) -> dict[str, bool]:
    """Keyword arguments the rule ``name`` takes (besides ``dim``), each mapped to whether
    it is required."""
    params = inspect.signature(_aggregator_class(name)).parameters
    return {
        p.name: p.default is inspect.Parameter.empty
        for p in params.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def create_aggregator(name: str, *, dim: int, **kwargs: Any) -> Aggregator:
    """Build the aggregator registered under ``name``.

    Raises
    ------
    ValueError
        If ``name`` is unknown, an argument is not one the rule takes, a required argument
        is missing, or a value is invalid (each message names the argument).
    """
    cls = _aggregator_class(name)
    allowed = aggregator_arguments(name)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(
            f"aggregator {name!r} takes no argument {unknown[0]!r}; allowed arguments: "
            f"{', '.join(allowed) or 'none'}"
        )
    missing = sorted(k for k, required in allowed.items() if required and k not in kwargs)
    if missing:
        raise ValueError(f"aggregator {name!r} requires the argument {missing[0]!r}")
    return cls(dim, **kwargs)


def aggregator_from_config(
    name: str,
    *,
    dim: int,
    server: Any,
    num_updates: int,
    root_update: Any = None,
) -> Aggregator:
    """Build the rule ``name`` with its hyperparameters read from the ``server`` config
    section as the rule's class declares them (``config_arguments``), its capacity when it
    buffers the cohort, and the server's root update when it needs one."""
    cls = _aggregator_class(name)
    kwargs: dict[str, Any] = {
        arg: getattr(server, field) for arg, field in cls.config_arguments.items()
    }
    if cls.requires_full_cohort:
        kwargs["capacity"] = num_updates
    if cls.needs_root_update:
        if root_update is None:
            raise ValueError(f"aggregator {name!r} needs the server's root update")
        kwargs["root_update"] = root_update
    return create_aggregator(name, dim=dim, **kwargs)


def needs_root_update(name: str) -> bool:
    """Whether the rule ``name`` needs the server's root update (FLTrust)."""
    return bool(_aggregator_class(name).needs_root_update)


def requires_full_cohort(name: str) -> bool:
    """Whether the rule ``name`` needs every update of the round before aggregating (it
    buffers them) rather than streaming them one at a time."""
    return bool(getattr(_aggregator_class(name), "requires_full_cohort", False))


__all__ = [
    "AGGREGATORS",
    "Aggregator",
    "BufferedAggregator",
    "Bulyan",
    "CenteredClipping",
    "CoordinateMedian",
    "FLTrust",
    "FedAvg",
    "Krum",
    "MultiKrum",
    "NormBounding",
    "ServerOptimizer",
    "TrimmedMean",
    "WeightedMedian",
    "aggregator_arguments",
    "aggregator_from_config",
    "needs_root_update",
    "create_aggregator",
    "requires_full_cohort",
]
