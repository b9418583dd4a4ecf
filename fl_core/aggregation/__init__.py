"""Aggregation rules (streaming where the rule allows) and server optimizers.

``create_aggregator(name, dim=...)`` maps config names to classes.
"""

from __future__ import annotations

from typing import Any

from fl_core.aggregation.base import Aggregator
from fl_core.aggregation.fedavg import FedAvg
from fl_core.aggregation.server_opt import ServerOptimizer

AGGREGATORS: dict[str, type[Aggregator]] = {"fedavg": FedAvg}


def create_aggregator(name: str, *, dim: int, **kwargs: Any) -> Aggregator:
    """Build the aggregator registered under ``name``."""
    try:
        cls = AGGREGATORS[name]
    except KeyError:
        raise ValueError(
            f"aggregator {name!r} is unknown; allowed values: {', '.join(AGGREGATORS)}"
        ) from None
    return cls(dim, **kwargs)


__all__ = ["AGGREGATORS", "Aggregator", "FedAvg", "ServerOptimizer", "create_aggregator"]
