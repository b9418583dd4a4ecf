"""Coordinator settings: where the client registry and the artifact store live, and limits.

Everything comes from arguments or the environment (never from ``params.yaml``, never a
secret in a file): ``FL_COORDINATOR_DB_URL`` (a SQLAlchemy URL; default SQLite at
``$FL_HOME/coordinator/registry.db``), ``FL_ARTIFACT_STORE`` (path, ``file://`` or ``s3://``;
default ``$FL_HOME/artifacts``, the same default as the Airflow artifact-store hook),
``FL_HOME`` (default ``./.fl``), the upload admission limits
``FL_COORDINATOR_MAX_CONCURRENT_UPLOADS`` / ``FL_COORDINATOR_MAX_QUEUED_UPLOADS`` (see
:mod:`fl_core.coordinator.admission`), and ``FL_COORDINATOR_DIRECT_UPLOAD_MIN_BYTES``
(updates this large go straight to the S3 store through presigned URLs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

__all__ = ["ENV_DB_URL", "ENV_LIMITS", "CoordinatorSettings", "fl_home"]

ENV_DB_URL = "FL_COORDINATOR_DB_URL"
ENV_LIMITS = {
    "max_concurrent_uploads": "FL_COORDINATOR_MAX_CONCURRENT_UPLOADS",
    "max_queued_uploads": "FL_COORDINATOR_MAX_QUEUED_UPLOADS",
    "max_queued_small_uploads": "FL_COORDINATOR_MAX_QUEUED_SMALL_UPLOADS",
    "max_waiting_turns": "FL_COORDINATOR_MAX_WAITING_TURNS",
    "direct_upload_min_bytes": "FL_COORDINATOR_DIRECT_UPLOAD_MIN_BYTES",
}
"""Settings that may also come from the environment (integers)."""


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
        Longest time ``GET /v1/tasks/next`` holds a request before answering 204, and an
        upload turn request (``?wait=S``) waits in line before its 503.
    live_window_s
        A client is live when its last heartbeat is at most this old.
    enrollment_ttl_s
        Lifetime of a one-time enrollment token.
    poll_interval_s
        How often a long-poll re-reads the registry.
    max_concurrent_uploads
        Uploads authenticated, read and checked at once; the others wait unread (TCP
        back-pressure).
    max_queued_uploads
        Uploads allowed to wait for one of those slots; beyond slots + queue an upload is
        refused at once with 503 and ``Retry-After: busy_retry_after_s``, so the coordinator's
        memory is bounded whatever the number of clients (see
        :mod:`fl_core.coordinator.admission`).
    max_queued_small_uploads
        Small uploads (a declared length of at most 64 KiB) allowed to wait on their own,
        beyond ``max_queued_uploads``: the server buffers such a body whether it queues the
        upload or refuses it (a client sends its whole body before reading the answer), so
        refusing it saves no memory and only makes it come back. 0: small uploads are
        counted like the others.
    max_waiting_turns
        Upload turn requests (``POST .../turn?wait=S``, before a large upload) allowed to
        wait for a place at once, one per client: each is a connection and its headers, no
        body. Beyond, a turn request is refused at once with 503 + ``Retry-After``, as
        without ``wait``. 0: no turn request waits.
    busy_retry_after_s
        The ``Retry-After`` (whole seconds) of that 503.
    direct_upload_min_bytes
        With an S3 artifact store: updates of at least this many bytes are uploaded by the
        client straight to the store, through a presigned ``PUT`` URL the coordinator issues
        for a staging key, and then committed (checked as a streamed upload is, and stored at
        the update's key). None (the default): every update goes through the coordinator.
        Ignored with a local store.
    direct_upload_ttl_s
        How long a presigned upload URL is valid.
    inline_uploads
        With a SQLite registry and a local store: run an upload's registry and store work on
        the event loop, falling back to a worker thread whenever it would wait for a lock
        (see ``Coordinator.inline``). False: always in a worker thread.
    batch_uploads
        With a PostgreSQL registry: run the registry work of the uploads that arrive
        together in batches, two statements per batch for their authentication and two
        for their acceptance (:mod:`fl_core.coordinator.batch`). False: each upload its own.
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
    max_queued_uploads: int = 128
    max_queued_small_uploads: int = 1024
    max_waiting_turns: int = 1024  # admission.WAITING_TURNS
    busy_retry_after_s: int = 1
    direct_upload_min_bytes: int | None = None
    direct_upload_ttl_s: float = 900.0
    inline_uploads: bool = True
    batch_uploads: bool = True

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
        if self.max_queued_uploads < 0:
            raise ValueError(f"max_queued_uploads must be >= 0, got {self.max_queued_uploads}")
        if self.max_queued_small_uploads < 0:
            raise ValueError(
                f"max_queued_small_uploads must be >= 0, got {self.max_queued_small_uploads}"
            )
        if self.max_waiting_turns < 0:
            raise ValueError(f"max_waiting_turns must be >= 0, got {self.max_waiting_turns}")
        if self.busy_retry_after_s < 1:
            raise ValueError(f"busy_retry_after_s must be >= 1, got {self.busy_retry_after_s}")
        if self.direct_upload_min_bytes is not None and self.direct_upload_min_bytes < 0:
            raise ValueError(
                f"direct_upload_min_bytes must be >= 0, got {self.direct_upload_min_bytes}"
            )
        if self.direct_upload_ttl_s < 1:
            raise ValueError(f"direct_upload_ttl_s must be >= 1, got {self.direct_upload_ttl_s}")
        if self.poll_interval_s <= 0:
            raise ValueError(f"poll_interval_s must be > 0, got {self.poll_interval_s}")

    @classmethod
    def from_env(cls, **overrides: object) -> CoordinatorSettings:
        """Settings from ``FL_COORDINATOR_DB_URL``, ``FL_ARTIFACT_STORE``, ``FL_HOME`` and
        the limits in :data:`ENV_LIMITS`; ``overrides`` win."""
        home = fl_home()
        db_url = os.environ.get(ENV_DB_URL) or (f"sqlite:///{home / 'coordinator' / 'registry.db'}")
        store_url = os.environ.get("FL_ARTIFACT_STORE") or str(home / "artifacts")
        limits: dict[str, object] = {}
        for name, var in ENV_LIMITS.items():
            raw = os.environ.get(var, "").strip()
            if raw:
                try:
                    limits[name] = int(raw)
                except ValueError:
                    raise ValueError(f"{var} must be an integer, got {raw!r}") from None
        settings = cls(db_url=db_url, store_url=store_url)
        return replace(settings, **{**limits, **overrides})  # type: ignore[arg-type]

    @classmethod
    def local(cls, home: str | Path, **overrides: object) -> CoordinatorSettings:
        """Settings with the registry and the store under ``home`` (tests, embedded runs)."""
        root = Path(home).resolve()
        settings = cls(
            db_url=f"sqlite:///{root / 'coordinator' / 'registry.db'}",
            store_url=str(root / "artifacts"),
        )
        return replace(settings, **overrides)  # type: ignore[arg-type]
