"""Builders shared by the tests: tiny configs and prepared federated data in tmp folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fl_core.config import Config, from_dict


def tiny_config(**sections: Any) -> Config:
    """Digits over 6 IID clients, a small MLP, 3 rounds of 4 clients: seconds to run."""
    raw: dict[str, Any] = {
        "data": {"dataset": "digits", "test_fraction": 0.2, "seed": 1},
        "partition": {"scheme": "iid", "num_clients": 6, "min_samples": 10, "seed": 1},
        "validation": {"min_samples_per_client": 10},
        "model": {"name": "mlp", "hidden": [32]},
        "client": {"local_epochs": 1, "batch_size": 32, "lr": 0.1, "momentum": 0.5},
        "server": {"momentum": 0.0},
        "campaign": {"name": "tiny", "rounds": 3, "clients_per_round": 4, "seed": 7},
        "evaluate": {"baseline_epochs": 3},
        "tracking": {"experiment": "tests", "registered_model": "fl-tiny"},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return from_dict(raw)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``data/`` with prepared digits and 6 IID client partitions (built once per session)."""
    from fl_core import stages

    root = tmp_path_factory.mktemp("tiny")
    paths = stages.Paths(root)
    cfg = tiny_config()
    stages.prepare(cfg, paths)
    stages.partition(cfg, paths)
    return paths.data
