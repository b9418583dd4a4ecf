"""Coordinator settings: where the client registry and the artifact store live, and limits.

Everything comes from arguments or the environment (never from ``params.yaml``, never a
secret in a file): ``FL_COORDINATOR_DB_URL`` (a SQLAlchemy URL; default SQLite at
``$FL_HOME/coordinator/registry.db``), ``FL_ARTIFACT_STORE`` (path, ``file://`` or ``s3://``;
default ``$FL_HOME/artifacts``, the same default as the Airflow artifact-store hook), and
``FL_HOME`` (default ``./.fl``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

__all__ = ["ENV_DB_URL", "CoordinatorSettings", "fl_home"]

ENV_DB_URL = "FL_COORDINATOR_DB_URL"


def fl_home() -> Path:
    """The local-state root: ``$FL_HOME``, else ``./.fl``."""
    return Path(os.environ.get("FL_HOME") or ".fl").resolve()


@dataclass(frozen=True, kw_only=True)
class CoordinatorSettings:
    """What the coordinator app and its Python API need.

    Parameters
    ----------
    db_url
        SQLAlchemy URL of the client registry (``sqlite:///...`` or
        ``postgresql+psycopg://...``).
    store_url
        The artifact store shared with the round steps (path, ``file://`` or ``s3://`` URL).
    max_update_bytes
        Hard cap on one upload; the body is cut off while streaming beyond it (413). The
        effective cap of a round is also bounded by its layout (see ``update_cap``).
    clock_skew_s
        How far a request's signed timestamp may be from the server clock (the replay window).
    long_poll_s
        Longest time ``GET /v1/tasks/next`` holds a request before answering 204.
    live_window_s
        A client is live when its last heartbeat is at most this old.
    enrollment_ttl_s
        Lifetime of a one-time enrollment token.
    poll_interval_s
        How often a long-poll re-reads the registry.
    max_concurrent_uploads
        Uploads whose bodies are read and checked at once; the others wait unread (TCP
        back-pressure), so the coordinator's memory is bounded whatever the number of clients.
    """

    db_url: str
    store_url: str
    max_update_bytes: int = 256 << 20
    clock_skew_s: float = 60.0
    long_poll_s: float = 25.0
    live_window_s: float = 120.0
    enrollment_ttl_s: float = 3600.0
    poll_interval_s: float = 0.5
    max_concurrent_uploads: int = 8

    def __post_init__(self) -> None:
        if self.max_update_bytes < 1024:
            raise ValueError(f"max_update_bytes must be >= 1024, got {self.max_update_bytes}")
        for name in ("clock_skew_s", "long_poll_s", "live_window_s", "enrollment_ttl_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_concurrent_uploads < 1:
            raise ValueError(
                f"max_concurrent_uploads must be >= 1, got {self.max_concurrent_uploads}"
            )
        if self.poll_interval_s <= 0:
            raise ValueError(f"poll_interval_s must be > 0, got {self.poll_interval_s}")

    @classmethod
    def from_env(cls, **overrides: object) -> CoordinatorSettings:
        """Settings from ``FL_COORDINATOR_DB_URL``, ``FL_ARTIFACT_STORE`` and ``FL_HOME``."""
        home = fl_home()
        db_url = os.environ.get(ENV_DB_URL) or (f"sqlite:///{home / 'coordinator' / 'registry.db'}")
        store_url = os.environ.get("FL_ARTIFACT_STORE") or str(home / "artifacts")
        settings = cls(db_url=db_url, store_url=store_url)
        return replace(settings, **overrides)  # type: ignore[arg-type]

    @classmethod
    def local(cls, home: str | Path, **overrides: object) -> CoordinatorSettings:
        """Settings with the registry and the store under ``home`` (tests, embedded runs)."""
        root = Path(home).resolve()
        settings = cls(
            db_url=f"sqlite:///{root / 'coordinator' / 'registry.db'}",
            store_url=str(root / "artifacts"),
        )
        return replace(settings, **overrides)  # type: ignore[arg-type]
