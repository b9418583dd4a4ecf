"""The remote transport, as the round steps see it: a thin seam onto the coordinator.

Not a step. With ``campaign.clients: remote`` the steps use the coordinator's Python API
(:class:`fl_core.coordinator.api.Coordinator`) on the same artifact store: ``select_clients``
draws from enrolled clients with live heartbeats, ``dispatch`` publishes the tasks,
``collect`` closes the round (late uploads are then refused and recorded as stragglers),
``validate_updates`` caps each client's weight by the example count it reported with its
validated data, and ``evaluate`` aggregates the clients' own evaluation reports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fl_core.config import Config
from fl_core.store import ArtifactStore

if TYPE_CHECKING:
    from fl_core.coordinator.api import Coordinator


def is_remote(cfg: Config) -> bool:
    return cfg.campaign.clients == "remote"


def coordinator(store: ArtifactStore) -> Coordinator:
    """The coordinator's API on ``store`` (registry from ``FL_COORDINATOR_DB_URL``)."""
    from fl_core.coordinator.api import Coordinator
    from fl_core.coordinator.settings import CoordinatorSettings

    return Coordinator(CoordinatorSettings.from_env(), store=store)


def live_clients(store: ArtifactStore) -> list[str]:
    coord = coordinator(store)
    try:
        return sorted(c.client_id for c in coord.live_clients())
    finally:
        coord.close()


def known_examples(store: ArtifactStore) -> dict[str, int]:
    """What the server knows of each device's data size: the count it reported with its
    locally validated data (a client can never claim more weight than that)."""
    coord = coordinator(store)
    try:
        return {
            c.client_id: int(c.num_examples or 0)
            for c in coord.clients()
            if c.enrolled and not c.revoked and c.data_valid is not False
        }
    finally:
        coord.close()


def measured_uplinks(store: ArtifactStore) -> dict[str, float | None]:
    """Each enrolled device's uplink bandwidth as it measured and reported it (Mbit/s)."""
    coord = coordinator(store)
    try:
        return {c.client_id: c.uplink_mbps for c in coord.clients()}
    finally:
        coord.close()
