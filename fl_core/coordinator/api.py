"""The coordinator's Python API: what the round steps (remote mode) and the HTTP app call.

One :class:`Coordinator` wraps the registry database and the artifact store. The round steps
use it like this (see ``docs/protocol.md``)::

    coord = Coordinator.from_env()
    live = coord.live_clients()                             # select_clients
    coord.publish_manifest(cid, manifest, deadline_s=600)   # dispatch
    coord.round_status(cid, rnd).num_received               # wait_for_updates (trigger)
    status = coord.close_round(cid, rnd)                    # collect: received + stragglers
    coord.arrivals(cid, rounds=[1, 2, 3])                   # FedBuff: arrival order
    coord.evaluations(cid, rnd)                             # evaluate (federated metrics)

An accepted upload is in the store at ``update_key(cid, rnd, client)`` (the exact bytes the
client sent), so ``collect`` finds it like a simulated update. Its signature record (the
verified update signature and the public key) is in the registry from the moment the update
is claimed (:meth:`Coordinator.update_signature`), and ``close_round`` writes it beside the
update at ``signature_key(cid, rnd, client)`` (keys from :mod:`fl_core.rounds.layout`), so a
closed round's updates can be attributed without the registry.
Every method is safe to call again (idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import math
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from fl_core import wire
from fl_core.codec import parse_codec
from fl_core.coordinator import batch, protocol, registry, sqlite_direct
from fl_core.coordinator.db import (
    ClientRow,
    EvaluationRow,
    HistogramRow,
    MonitoringReportRow,
    RoundRow,
    StragglerRow,
    TaskRow,
    UpdateRow,
    make_engine,
    make_sessionmaker,
    migrate,
)
from fl_core.coordinator.registry import ClientInfo, ProtocolError
from fl_core.coordinator.settings import CoordinatorSettings
from fl_core.models import Layout
from fl_core.store import ArtifactStore, ArtifactTooLargeError, LocalStore, S3Store, open_store

logger = logging.getLogger(__name__)

__all__ = [
    "ClientInfo",
    "Coordinator",
    "EvaluationReport",
    "Histogram",
    "MonitoringReport",
    "ProtocolError",
    "ReceivedUpdate",
    "RoundStatus",
    "staging_key",
    "staging_prefix",
]


HEADER_ALLOWANCE = 64 << 10
"""Bytes allowed for an update's framing and JSON header beyond its payload bound."""


@dataclass(frozen=True)
class ReceivedUpdate:
    """An accepted, stored update: its store key, digest, size, first receipt (UNIX s), and
    its arrival: ``arrival_seq`` (its place in the campaign's arrival order: numbered when
    the bytes were stored and acknowledged) and ``accepted_at`` (that moment, UNIX s)."""

    client_id: str
    key: str
    sha256: str
    size: int
    received_at: float
    round: int = 0
    arrival_seq: int | None = None
    accepted_at: float | None = None

    @classmethod
    def of(cls, row: UpdateRow) -> ReceivedUpdate:
        return cls(
            row.client_id,
            row.key,
            row.sha256,
            row.size,
            row.received_at,
            round=row.round,
            arrival_seq=row.arrival_seq,
            accepted_at=row.accepted_at,
        )


@dataclass(frozen=True)
class RoundStatus:
    """Where a published round stands (what ``wait_for_updates`` polls)."""

    campaign: str
    round: int
    base_version: int
    num_tasks: int
    received: list[str]
    deadline: float
    closed: bool
    deadline_passed: bool
    """Whether the deadline had passed when this status was read."""
    stragglers: dict[str, str] = field(default_factory=dict)

    @property
    def num_received(self) -> int:
        return len(self.received)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(num_received=self.num_received)
        return out


@dataclass(frozen=True)
class EvaluationReport:
    """A client's evaluation of a global model version on its local held-out split."""

    client_id: str
    model_version: int
    num_examples: int
    metrics: dict[str, float]
    received_at: float


@dataclass(frozen=True)
class Histogram:
    """Bin counts of one client's training data on a campaign's grid (counts only)."""

    client_id: str
    round: int
    num_examples: int
    counts: list[list[int]]


@dataclass(frozen=True)
class MonitoringReport:
    """A client's check of the champion on its fresh local data."""

    client_id: str
    model_version: int
    num_examples: int
    data_valid: bool
    metrics: dict[str, float]
    counts: list[list[int]] | None
    received_at: float


def staging_key(campaign: str, rnd: int, client_id: str) -> str:
    """Where a client's direct upload waits to be committed: outside the round's updates,
    one object per task (a new ``PUT`` replaces it; the commit checks the digest)."""
    return f"{staging_prefix(campaign, rnd)}/{client_id}.flw"


def staging_prefix(campaign: str, rnd: int) -> str:
    """The round's staging folder (emptied when the round closes)."""
    return f"staging/updates/{campaign}/{rnd:04d}"


def _check_update(
    ctx: registry.UploadContext,
    campaign: str,
    rnd: int,
    client_id: str,
    sha256: str,
    signature: str,
) -> None:
    """The update signature over the message digest ``sha256`` (401 unknown client or bad
    signature), then 409 if other bytes were already accepted for the task."""
    if ctx.public_key is None:
        raise ProtocolError(401, "unknown client")
    signed = protocol.update_message(
        campaign=campaign, rnd=rnd, client_id=client_id, message_sha256=sha256
    )
    if not protocol.verify(ctx.public_key, signed, signature):
        raise ProtocolError(401, "bad update signature")
    _refuse_other_bytes(ctx, sha256)


def _refuse_other_bytes(ctx: registry.UploadContext, sha256: str) -> None:
    if ctx.update_sha256 is not None and ctx.update_sha256 != sha256:
        raise ProtocolError(409, "a different update for this task was already accepted")


class _Pace:
    """Hands the event loop back between a batch's uploads once every
    :data:`PACE_BYTES` of them: a batch checks and writes its updates on the loop, and a
    batch of large ones would otherwise hold it for tens of milliseconds."""

    def __init__(self) -> None:
        self.since = 0

    async def step(self, size: int) -> None:
        self.since += size
        if self.since >= PACE_BYTES:
            self.since = 0
            await asyncio.sleep(0)


PACE_BYTES = 1 << 20
"""How many update bytes a batch checks or writes between two turns of the event loop."""


def _failing(out: list[Any], which: list[int], exc: Exception) -> list[Any]:
    """``out`` with the answers at ``which`` replaced by ``exc``: a batch statement's error
    is the answer of the uploads it was for, not of those already refused."""
    failed = set(which)
    return [exc if k in failed else r for k, r in enumerate(out)]


@dataclass(frozen=True, slots=True)
class PendingUpload:
    """An upload read and digested, waiting for :meth:`Coordinator.accept_batch`."""

    client_id: str
    campaign: str
    rnd: int
    data: bytes
    signature: str
    sha256: str
    ctx: registry.UploadContext


class WouldWait(Exception):
    """Raised inside :meth:`Coordinator.inline` where the registry would make the caller
    wait (another thread's turn, another connection's SQLite write lock): nothing of the
    call is committed that its rerun would not redo, and the caller runs it again in a
    worker thread."""


class _Inline(threading.local):
    active = False


_INLINE = _Inline()


def _sqlite_busy(exc: sa.exc.OperationalError) -> bool:
    """SQLite refused a statement because another connection holds the lock: SQLITE_BUSY
    or SQLITE_LOCKED, with any extended code (Python reports e.g. 517, BUSY_SNAPSHOT)."""
    code = getattr(exc.orig, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in (5, 6)


class Coordinator:
    """The registry database plus the artifact store, with the operations on both.

    Parameters
    ----------
    settings
        Where the registry and the store are, and the limits.
    store
        An already-open artifact store (default: ``open_store(settings.store_url)``).
    """

    def __init__(
        self, settings: CoordinatorSettings, *, store: ArtifactStore | None = None
    ) -> None:
        self.settings = settings
        self._store = store
        self._engine: sa.Engine | None = None
        self._sessions: Any = None
        self._lock = threading.Lock()
        self._sqlite_turn = threading.RLock()
        self._campaigns: dict[str, dict[str, Any]] = {}
        self._inline_engine: sa.Engine | None = None
        self._inline_conn: sa.Connection | None = None
        self._batch_connections: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, batch.Connections
        ] = weakref.WeakKeyDictionary()

    @classmethod
    def from_env(cls, **overrides: object) -> Coordinator:
        """A coordinator from ``FL_COORDINATOR_DB_URL``, ``FL_ARTIFACT_STORE``, ``FL_HOME``."""
        return cls(CoordinatorSettings.from_env(**overrides))

    # ----------------------------------------------------------------- resources (lazy)

    @property
    def store(self) -> ArtifactStore:
        if self._store is None:
            self._store = open_store(self.settings.store_url)
        return self._store

    @property
    def engine(self) -> sa.Engine:
        with self._lock:
            if self._engine is None:
                engine = make_engine(self.settings.db_url)
                migrate(engine)
                self._engine = engine
                self._sessions = make_sessionmaker(engine)
            return self._engine

    @contextmanager
    def session(self, *, take_turn: bool = True) -> Iterator[Session]:
        """A registry session (the schema is migrated on first use).

        On SQLite, sessions of this process take turns (one lock): SQLite has one writer at
        a time and its busy handler *sleeps* between retries, so many threads contending for
        the write lock would collapse throughput; queued on a lock, each waits only for the
        milliseconds the holder needs. PostgreSQL sessions run concurrently. The lock belongs
        to the thread that entered the session, so a session that may be closed on another
        thread (a FastAPI generator dependency) must pass ``take_turn=False`` and only read.
        """
        if _INLINE.active:  # ORM sessions are not on the inline path: a worker thread
            raise WouldWait("a registry session runs in a worker thread")
        engine = self.engine
        turn = take_turn and engine.dialect.name == "sqlite"
        guard = self._sqlite_turn if turn else contextlib.nullcontext()
        with guard, self._sessions() as session:
            yield session

    @contextmanager
    def connection(self, *, autocommit: bool = False) -> Iterator[sa.Connection]:
        """A Core connection to the registry for the per-request hot paths (authentication,
        upload), taking the same SQLite turn as :meth:`session`; statements commit as they
        go (``connection.commit()``). No ORM unit of work: measured in-process, the upload
        path's registry work took about half the time of the same statements on a
        Session.

        ``autocommit`` (PostgreSQL; ignored on SQLite) makes each statement its own
        transaction, for work whose statements need no atomicity together (authentication
        and the upload context, the claim): psycopg then sends no ``BEGIN``, and the
        ``COMMIT`` / ``ROLLBACK`` that end a transaction are not sent either, each a round
        trip to the server. Counted in PostgreSQL's statement log: 19 round trips per signed
        upload before, 11 with it (of which 3 were the pool's pre-pings, now only after an
        idle second: :func:`~fl_core.coordinator.db.ping_when_idle`), and 4 since the key
        and the upload context are one query and the acceptance one function call."""
        if _INLINE.active:
            yield from self._inline_connection()
            return
        engine = self.engine
        sqlite = engine.dialect.name == "sqlite"
        guard = self._sqlite_turn if sqlite else contextlib.nullcontext()
        with guard, engine.connect() as conn:
            if autocommit and not sqlite:
                conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn

    @functools.cached_property
    def inline_ok(self) -> bool:
        """Whether the upload path's registry and store work may run on the event loop
        (:meth:`inline`): a SQLite registry and a local-folder store, where that work is a
        millisecond of CPU and waits only for locks, which an inline call does not wait
        for. PostgreSQL and S3 are network round trips: in worker threads, or on PostgreSQL
        in batches awaited on the event loop (:attr:`batched`)."""
        return (
            self.settings.inline_uploads
            and self.engine.dialect.name == "sqlite"
            and isinstance(self.store, LocalStore)
        )

    @contextmanager
    def inline(self) -> Iterator[None]:
        """Registry calls made in this block, on this thread, never wait: the SQLite turn is
        taken only if free and statements find another connection's write lock at once
        (busy timeout 0); either way :class:`WouldWait` is raised, the calls' transaction
        rolled back. The upload path runs its registry and store work like this on the
        event loop (``deps.registry_work``) and, on :class:`WouldWait`, again in a worker
        thread; its calls are written to be run again (the authentication's writes are one
        transaction; an upload's claim and acceptance are idempotent, as for a client's
        retry).

        Why: a worker thread per call costs more than the call. Measured (top-k uploads,
        SQLite, local store): the coordinator spent about a third of its CPU handing the
        interpreter lock between the event loop and its worker threads (``perf``: futex
        waits and context switches); running this work on the loop cut its CPU per upload
        from about 3.1 to 1.9 ms (``bench/bench_coordinator.py``, from /proc)."""
        if not self.inline_ok:
            raise WouldWait("inline registry work needs SQLite and a local store")
        _INLINE.active = True
        try:
            yield
        finally:
            _INLINE.active = False

    def _inline_connection(self) -> Iterator[sa.Connection]:
        """The inline calls' one connection (they all run on the event loop's thread, one
        at a time): kept open, not checked out of a pool per call (a tenth of the upload
        path's interpreter time, profiled), its busy timeout 0."""
        if not self._sqlite_turn.acquire(blocking=False):
            raise WouldWait("another thread has the registry's turn")
        try:
            conn = self._inline_conn
            if conn is None or conn.closed or conn.invalidated:
                if self._inline_engine is None:
                    self._inline_engine = make_engine(
                        self.settings.db_url, busy_timeout_s=0.0, pool_size=1
                    )
                conn = self._inline_conn = self._inline_engine.connect()
            try:
                yield conn
            finally:  # what a call left uncommitted (reads) or failed
                sqlite_direct.rollback(conn)
        except sa.exc.OperationalError as exc:
            if _sqlite_busy(exc):
                raise WouldWait(f"the registry is locked: {exc.orig}") from exc
            raise
        finally:
            self._sqlite_turn.release()

    def warm_up(self) -> None:
        """Ready the upload path before serving: the registry opened and migrated, the
        per-upload statements compiled on the connection uploads use
        (:func:`registry.warm_up`), the layouts of campaigns with an open round loaded.
        Without it the first upload after a start paid about 6 ms of CPU more than the
        next (measured in-process), and a round of a hundred uploads right after a
        restart several of them. Best effort: a registry locked by another process is
        left for the first upload to wait for."""
        try:
            inline = self.inline() if self.inline_ok else contextlib.nullcontext()
            with inline, self.connection() as conn:
                registry.warm_up(conn)
            with self.session() as s:
                open_campaigns = s.scalars(
                    sa.select(RoundRow.campaign).where(RoundRow.closed_at.is_(None)).distinct()
                ).all()
            for campaign in open_campaigns:
                with contextlib.suppress(KeyError):
                    self._campaign(campaign)
        except (WouldWait, sa.exc.OperationalError) as exc:
            logger.info("coordinator warm-up skipped: %s", exc)

    def close(self) -> None:
        """Release the database connections."""
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None
            with self._sqlite_turn:  # not under an inline call (they hold the turn)
                if self._inline_conn is not None:
                    self._inline_conn.close()
                    self._inline_conn = None
            if self._inline_engine is not None:
                self._inline_engine.dispose()
                self._inline_engine = None
            for connections in list(self._batch_connections.values()):
                connections.close()
            self._batch_connections.clear()  # a later batch (the engine reopens) makes more

    # ----------------------------------------------------------------- clients

    def create_enrollment_token(self, client_id: str, *, ttl_s: float | None = None) -> str:
        """A one-time enrollment token for ``client_id`` (stored hashed; expires)."""
        with self.session() as s:
            return registry.create_enrollment_token(
                s, client_id, ttl_s=ttl_s or self.settings.enrollment_ttl_s
            )

    def revoke(self, client_id: str) -> bool:
        """Cut a client off at once; False if it was never enrolled."""
        with self.session() as s:
            return registry.revoke(s, client_id)

    def clients(self) -> list[ClientInfo]:
        """Every client in the registry (enrolled or pending), by id."""
        with self.session() as s:
            return registry.list_clients(s)

    def live_clients(self, *, within_s: float | None = None) -> list[ClientInfo]:
        """Enrolled, unrevoked clients that report themselves available, whose data passed
        local validation (or did not say), with a heartbeat in the last ``within_s`` seconds
        (default ``settings.live_window_s``); with their profile, bandwidth, latency,
        ``num_examples`` and data hash, for selection."""
        since = time.time() - (within_s if within_s is not None else self.settings.live_window_s)
        with self.session() as s:
            rows = s.scalars(
                sa.select(ClientRow)
                .where(
                    ClientRow.public_key.is_not(None),
                    ClientRow.revoked_at.is_(None),
                    ClientRow.available.is_(True),
                    ClientRow.last_heartbeat >= since,
                    sa.or_(ClientRow.data_valid.is_(None), ClientRow.data_valid.is_(True)),
                )
                .order_by(ClientRow.client_id)
            ).all()
            return [ClientInfo.of(r) for r in rows]

    # ----------------------------------------------------------------- rounds

    def publish_round(
        self,
        campaign: str,
        rnd: int,
        *,
        base_version: int,
        tasks: Mapping[str, Mapping[str, Any]],
        deadline_s: float,
        model_key: str | None = None,
    ) -> RoundStatus:
        """Publish a round: one task per selected client, open until ``deadline_s`` from now.

        ``tasks`` maps client id to its task dict (the round manifest's ``tasks``); each
        client fetches only its own. Publishing the same round again is a no-op (the first
        deadline stands); different tasks for an already published round raise ``ValueError``.
        The campaign record (``campaign.json``) must be in the store: its layout and model
        spec are what uploads are checked against.
        """
        from fl_core.rounds.layout import model_key as _model_key

        if deadline_s <= 0:
            raise ValueError(f"deadline_s must be > 0, got {deadline_s}")
        for client in tasks:
            protocol.check_client_id(client)
        self._campaign(campaign)  # fails early, naming the missing record
        key = model_key or _model_key(campaign, base_version)
        if not self.store.exists(key):
            raise ValueError(f"model {key!r} is not in the store; publish after it is written")
        now = time.time()
        with self.session() as s:
            existing = registry.get_round(s, campaign, rnd)
            if existing is None:
                s.add(
                    RoundRow(
                        campaign=campaign,
                        round=rnd,
                        base_version=base_version,
                        model_key=key,
                        published_at=now,
                        deadline=now + deadline_s,
                        closed_at=None,
                    )
                )
                for client, task in sorted(tasks.items()):
                    s.add(TaskRow(campaign=campaign, round=rnd, client_id=client, task=dict(task)))
                try:
                    s.commit()
                except sa.exc.IntegrityError:  # published concurrently: compare below
                    s.rollback()
                else:
                    logger.info("published %s round %d to %d clients", campaign, rnd, len(tasks))
                    return self.round_status(campaign, rnd)
            known = {
                t.client_id: t.task
                for t in s.scalars(
                    sa.select(TaskRow).where(TaskRow.campaign == campaign, TaskRow.round == rnd)
                )
            }
            row = registry.get_round(s, campaign, rnd)
            if (
                row is None
                or row.base_version != base_version
                or json.dumps(known, sort_keys=True) != json.dumps(dict(tasks), sort_keys=True)
            ):
                raise ValueError(f"{campaign} round {rnd} was already published with other tasks")
        return self.round_status(campaign, rnd)

    def publication_marker(self) -> tuple[int, float | None]:
        """A value that changes whenever a round (with its tasks) or a monitoring check is
        published: waiting long-polls re-query their tasks only when it changes."""
        with self.session() as s:
            count, latest = s.execute(
                sa.select(sa.func.count(), sa.func.max(RoundRow.published_at)).select_from(
                    RoundRow
                )
            ).one()
        return int(count), latest

    def publish_manifest(
        self, campaign: str, manifest: Mapping[str, Any], *, deadline_s: float
    ) -> RoundStatus:
        """:meth:`publish_round` from a round manifest (``round``, ``base_version``,
        ``model_key``, ``tasks``), as ``dispatch`` writes it."""
        return self.publish_round(
            campaign,
            int(manifest["round"]),
            base_version=int(manifest["base_version"]),
            tasks=manifest["tasks"],
            deadline_s=deadline_s,
            model_key=manifest.get("model_key"),
        )

    def round_status(self, campaign: str, rnd: int) -> RoundStatus:
        """Tasks, stored updates (in arrival order), deadline, closed flag and stragglers."""
        with self.session() as s:
            row = registry.get_round(s, campaign, rnd)
            if row is None:
                raise KeyError(f"{campaign} round {rnd} was not published (run dispatch first)")
            num_tasks = s.scalar(
                sa.select(sa.func.count())
                .select_from(TaskRow)
                .where(TaskRow.campaign == campaign, TaskRow.round == rnd)
            )
            received = [u.client_id for u in self._stored(s, campaign, rnd)]
            stragglers = {
                r.client_id: r.reason
                for r in s.scalars(
                    sa.select(StragglerRow)
                    .where(StragglerRow.campaign == campaign, StragglerRow.round == rnd)
                    .order_by(StragglerRow.client_id)
                )
            }
            return RoundStatus(
                campaign=campaign,
                round=rnd,
                base_version=row.base_version,
                num_tasks=int(num_tasks or 0),
                received=received,
                deadline=row.deadline,
                closed=row.closed_at is not None,
                deadline_passed=time.time() > row.deadline,
                stragglers=stragglers,
            )

    @staticmethod
    def _stored(s: Session, campaign: str, rnd: int) -> list[UpdateRow]:
        return list(
            s.scalars(
                sa.select(UpdateRow)
                .where(
                    UpdateRow.campaign == campaign,
                    UpdateRow.round == rnd,
                    UpdateRow.stored.is_(True),
                )
                .order_by(UpdateRow.arrival_seq, UpdateRow.client_id)
            )
        )

    def received_updates(self, campaign: str, rnd: int) -> list[ReceivedUpdate]:
        """Accepted, stored updates of a round in arrival order (FedBuff's real order)."""
        with self.session() as s:
            return [ReceivedUpdate.of(u) for u in self._stored(s, campaign, rnd)]

    def arrivals(self, campaign: str, *, rounds: Iterable[int]) -> list[ReceivedUpdate]:
        """Accepted, stored updates of the given rounds of a campaign, in the order the
        coordinator accepted them (``arrival_seq``): the order FedBuff applies them in."""
        wanted = sorted({int(r) for r in rounds})
        if not wanted:
            return []
        with self.session() as s:
            rows = s.scalars(
                sa.select(UpdateRow)
                .where(
                    UpdateRow.campaign == campaign,
                    UpdateRow.round.in_(wanted),
                    UpdateRow.stored.is_(True),
                )
                .order_by(UpdateRow.arrival_seq, UpdateRow.client_id)
            ).all()
            return [ReceivedUpdate.of(u) for u in rows]

    def count_received(self, campaign: str, rnd: int) -> int:
        return len(self.received_updates(campaign, rnd))

    def close_round(
        self, campaign: str, rnd: int, *, reason: str = "no update when the round closed"
    ) -> RoundStatus:
        """Close a round: later uploads get 410 and are recorded as stragglers; every
        selected client without a stored update is recorded as a straggler now, with
        ``reason``. Closing a closed round again records nothing new."""
        with self.session() as s:
            row = registry.get_round(s, campaign, rnd)
            if row is None:
                raise KeyError(f"{campaign} round {rnd} was not published (run dispatch first)")
            if row.closed_at is None:
                registry.lock_campaign(s, campaign)  # after any acceptance under way
                row.closed_at = time.time()
                s.commit()
            rows = self._stored(s, campaign, rnd)
            stored = {u.client_id for u in rows}
            records = [self._signature_record(u) for u in rows]  # read before the commits
            tasks = s.scalars(
                sa.select(TaskRow.client_id).where(
                    TaskRow.campaign == campaign, TaskRow.round == rnd
                )
            ).all()
            for client in tasks:
                if client not in stored:
                    registry.record_straggler(s, campaign, rnd, client, reason)
        self._write_signatures(records)
        if self.direct_uploads:  # direct uploads never committed (a client gone mid-way)
            for key in self.store.list(staging_prefix(campaign, rnd)):
                self._drop_staged(key)
        return self.round_status(campaign, rnd)

    @staticmethod
    def _signature_record(row: UpdateRow) -> dict[str, Any]:
        return {
            "algorithm": "ed25519",
            "signed": "FL-UPDATE-1\\n<campaign>\\n<round>\\n<client>\\n<sha256>",
            "campaign": row.campaign,
            "round": row.round,
            "client": row.client_id,
            "sha256": row.sha256,
            "public_key": row.public_key,
            "signature": row.signature,
            "received_at": row.received_at,
        }

    def _write_signatures(self, records: list[dict[str, Any]]) -> None:
        """Each accepted update's signature record beside it in the store
        (``signature_key``), so a closed round's updates are attributable without the
        registry; written once (a second close finds them)."""
        from fl_core.rounds.layout import signature_key

        for rec in records:
            if rec["signature"] is None:  # accepted before signatures were kept (0004)
                continue
            key = signature_key(rec["campaign"], rec["round"], rec["client"])
            self.store.put_json_if_absent(key, rec)

    def update_signature(self, campaign: str, rnd: int, client_id: str) -> dict[str, Any] | None:
        """The signature record of an accepted (stored) update: the signed message's
        fields, the signature and the public key it verified with; None if none."""
        with self.session() as s:
            row = registry.accepted_update(s, campaign, rnd, client_id)
            if row is None or not row.stored or row.signature is None:
                return None
            return self._signature_record(row)

    async def wait_for_updates(
        self, campaign: str, rnd: int, *, quorum: int, poll_s: float = 2.0
    ) -> RoundStatus:
        """Wait (without blocking the event loop) until ``quorum`` updates are stored or the
        round's deadline passes; for a deferrable sensor's trigger in the triggerer. Reads
        only; closing the round is ``collect``'s job (:meth:`close_round`)."""
        import asyncio

        if quorum < 1:
            raise ValueError(f"quorum must be >= 1, got {quorum}")
        while True:
            status = await asyncio.to_thread(self.round_status, campaign, rnd)
            if status.num_received >= quorum or status.deadline_passed or status.closed:
                return status
            await asyncio.sleep(poll_s)

    def evaluations(self, campaign: str, rnd: int) -> list[EvaluationReport]:
        """Clients' federated-evaluation reports for a round, by client id."""
        with self.session() as s:
            rows = s.scalars(
                sa.select(EvaluationRow)
                .where(EvaluationRow.campaign == campaign, EvaluationRow.round == rnd)
                .order_by(EvaluationRow.client_id)
            ).all()
            return [
                EvaluationReport(
                    r.client_id, r.model_version, r.num_examples, dict(r.metrics), r.received_at
                )
                for r in rows
            ]

    def histograms(self, campaign: str) -> dict[str, Histogram]:
        """Each client's latest training-data histogram reported during ``campaign``."""
        with self.session() as s:
            rows = s.scalars(
                sa.select(HistogramRow)
                .where(HistogramRow.campaign == campaign)
                .order_by(HistogramRow.client_id, HistogramRow.round)
            ).all()
            return {
                r.client_id: Histogram(r.client_id, r.round, r.num_examples, list(r.counts))
                for r in rows
            }

    def monitoring_reports(self, campaign: str, rnd: int) -> list[MonitoringReport]:
        """Clients' reports for a monitoring check, by client id."""
        with self.session() as s:
            rows = s.scalars(
                sa.select(MonitoringReportRow)
                .where(MonitoringReportRow.campaign == campaign, MonitoringReportRow.round == rnd)
                .order_by(MonitoringReportRow.client_id)
            ).all()
            return [
                MonitoringReport(
                    r.client_id,
                    r.model_version,
                    r.num_examples,
                    bool(r.data_valid),
                    dict(r.metrics),
                    None if r.counts is None else list(r.counts),
                    r.received_at,
                )
                for r in rows
            ]

    # ----------------------------------------------------------------- for the HTTP app

    def _campaign(self, campaign: str) -> dict[str, Any]:
        """The campaign record's layout and model spec (cached; the record is immutable)."""
        from fl_core.rounds.layout import campaign_record_key, monitoring_check_key

        if campaign not in self._campaigns:
            key = campaign_record_key(campaign)
            if not self.store.exists(key) and self.store.exists(monitoring_check_key(campaign)):
                key = monitoring_check_key(campaign)  # a federated monitoring check
            if not self.store.exists(key):
                raise KeyError(f"campaign record {key!r} is not in the store (start the campaign)")
            rec = self.store.get_json(key)
            self._campaigns[campaign] = {
                "layout": Layout.from_json(rec["layout"]),
                "model_spec": rec["model_spec"],
                "edges": rec.get("edges"),  # a monitoring check's bin edges
            }
        return self._campaigns[campaign]

    def update_cap(self, campaign: str) -> int:
        """The largest upload accepted for a campaign: a bound from its layout (sparse
        payloads cost at most 8 bytes a parameter) plus header, within the settings' cap."""
        n = self._campaign(campaign)["layout"].num_params
        return min(self.settings.max_update_bytes, 8 * n + HEADER_ALLOWANCE)

    def task_for_client(self, task: TaskRow, rnd_row: RoundRow) -> dict[str, Any]:
        """The task as the client receives it: the manifest task plus its context."""
        camp = self._campaign(task.campaign)
        spec = camp["model_spec"]
        return {
            **task.task,
            "campaign": task.campaign,
            "round": task.round,
            "base_version": rnd_row.base_version,
            "client": task.client_id,
            "model_spec": spec,
            "layout": camp["layout"].to_json(),
            "deadline": rnd_row.deadline,
            "model_url": f"{protocol.API_PREFIX}/models/{task.campaign}/{task.round}",
            "upload_url": f"{protocol.API_PREFIX}/updates/{task.campaign}/{task.round}",
            "turn_url": f"{protocol.API_PREFIX}/updates/{task.campaign}/{task.round}/turn",
            **(
                {"direct_upload_min_bytes": self.settings.direct_upload_min_bytes}
                if self.direct_uploads
                else {}
            ),
            **(
                {
                    "edges": camp["edges"],
                    "report_url": f"{protocol.API_PREFIX}/monitoring/{task.campaign}/{task.round}",
                }
                if task.task.get("kind") == "monitor"
                else {}
            ),
        }

    @functools.lru_cache(maxsize=16)  # noqa: B019 - one coordinator per process
    def _global_model(self, key: str) -> np.ndarray:
        _, vector = wire.decode(self.store.get_bytes(key))
        vector.setflags(write=False)
        return vector

    def model_message(
        self, client_id: str, campaign: str, rnd: int, *, known_version: int | None
    ) -> bytes:
        """The round's global model for one client, whole or as a delta from the version it
        holds (the task's downlink codecs), exactly as the in-process transport encodes it."""
        prefix, payload = self.model_message_parts(
            client_id, campaign, rnd, known_version=known_version
        )
        return prefix + bytes(payload)

    def model_message_parts(
        self, client_id: str, campaign: str, rnd: int, *, known_version: int | None
    ) -> tuple[bytes, memoryview]:
        """:meth:`model_message` as its framing and header, and its payload. With
        deterministic downlink codecs the payload is shared: the message is encoded once per
        (model, known version, codecs) and readdressed to each client
        (:func:`fl_core.wire.readdressed`), so concurrent downloads hold one copy of the
        model, not one each."""
        from fl_core.rounds.layout import model_key

        with self.session() as s:
            rnd_row = registry.get_round(s, campaign, rnd)
            task = registry.get_task(s, campaign, rnd, client_id)
            if rnd_row is None or task is None:
                raise ProtocolError(
                    403, f"client {client_id!r} has no task in {campaign} round {rnd}"
                )
        known_key = None
        if known_version is not None:
            known_key = model_key(campaign, known_version)
            if not (0 <= known_version < rnd_row.base_version and self.store.exists(known_key)):
                known_version, known_key = None, None
        codec = str(task.task.get("downlink_codec") or "dense_fp32")
        delta_codec = task.task.get("downlink_delta_codec")
        args = (campaign, rnd, rnd_row.base_version, rnd_row.model_key, known_version, known_key)
        if parse_codec(codec).stochastic or (
            known_key is not None and delta_codec and parse_codec(delta_codec).stochastic
        ):  # the payload depends on the client (its rng): one encoding each
            data = self._encode_model(client_id, codec, delta_codec, *args)
            return data, memoryview(b"")
        template = self._model_template(codec, delta_codec, *args)
        return wire.readdressed(template, client_id)

    @functools.lru_cache(maxsize=8)  # noqa: B019 - one coordinator per process
    def _model_template(self, codec: str, delta_codec: str | None, *args: Any) -> bytes:
        return self._encode_model("-", codec, delta_codec, *args)

    def _encode_model(
        self,
        client_id: str,
        codec: str,
        delta_codec: str | None,
        campaign: str,
        rnd: int,
        base_version: int,
        key: str,
        known_version: int | None,
        known_key: str | None,
    ) -> bytes:
        header = wire.Header(
            kind="model",
            campaign=campaign,
            round=rnd,
            base_version=base_version,
            client=client_id,
            codec=codec,
            layout=self._campaign(campaign)["layout"],
        )
        return wire.encode_model_for_client(
            header,
            self._global_model(key),
            known_version=known_version,
            known_model=None if known_key is None else self._global_model(known_key),
            delta_codec=delta_codec,
        )

    @property
    def direct_uploads(self) -> bool:
        """Whether large updates go straight to the store (``direct_upload_min_bytes`` set
        and an S3 store)."""
        return self.settings.direct_upload_min_bytes is not None and isinstance(
            self.store, S3Store
        )

    def direct_upload(
        self, client_id: str, campaign: str, rnd: int, *, size: int, sha256: str
    ) -> dict[str, Any]:
        """A presigned ``PUT`` of the update (``size`` bytes, digest ``sha256``) to the task's
        staging key in the S3 store, for the client to upload without passing through the
        coordinator: ``{"stored", "url", "headers", "expires_s"}``. The same refusals as
        an upload's headers (403 not selected, 410 too late, 409 other bytes already
        accepted, 413 too large); 404 when this coordinator takes no direct uploads.
        ``stored`` (no URL) when this update is already accepted: the commit will be an
        idempotent retry."""
        ctx = self._direct_context(client_id, campaign, rnd)
        _refuse_other_bytes(ctx, sha256)
        if ctx.update_stored:
            return {"stored": True, "url": None, "headers": {}, "expires_s": 0.0}
        cap = self.update_cap(campaign)
        if size > cap:
            raise ProtocolError(413, f"update of {size} bytes exceeds the limit of {cap}")
        ttl = self.settings.direct_upload_ttl_s
        store = self.store
        assert isinstance(store, S3Store)  # _direct_context checked direct_uploads
        url, headers = store.presigned_put(
            staging_key(campaign, rnd, client_id), size=size, sha256=sha256, expires_s=ttl
        )
        return {"stored": False, "url": url, "headers": headers, "expires_s": ttl}

    def commit_direct(
        self, client_id: str, campaign: str, rnd: int, *, size: int, sha256: str, signature: str
    ) -> tuple[bool, ReceivedUpdate]:
        """Accept the update the client put at its staging key (:meth:`direct_upload`).
        The update signature over the declared digest is checked first (401), before a byte
        is read; then the staged object is read back with the size cap (413), and its size
        and digest must be the declared ones (400); then every check and step of
        :meth:`accept_update` (the bytes stored at the update's key). The staging object is
        removed once the update is accepted or refused, and kept on any other failure (a
        store or database error) so that the client's retry can commit it. An update already
        accepted with this digest answers as an idempotent retry, staged object or not."""
        ctx = self._direct_context(client_id, campaign, rnd)
        _check_update(ctx, campaign, rnd, client_id, sha256, signature)
        if ctx.update_stored:
            with self.session() as s:
                row = registry.accepted_update(s, campaign, rnd, client_id)
            assert row is not None
            return False, ReceivedUpdate.of(row)
        key = staging_key(campaign, rnd, client_id)
        try:
            try:
                data = self.store.get_bytes(key, max_size=self.update_cap(campaign))
            except KeyError:
                raise ProtocolError(
                    400, "no staged update: PUT it to the presigned URL first"
                ) from None
            except ArtifactTooLargeError as exc:
                raise ProtocolError(413, f"staged update: {exc}") from None
            if len(data) != size or hashlib.sha256(data).hexdigest() != sha256:
                raise ProtocolError(
                    400, "the staged update does not match the declared size and sha256"
                )
            result = self.accept_update(
                client_id, campaign, rnd, data, signature=signature, sha256=sha256, context=ctx
            )
        except ProtocolError:
            self._drop_staged(key)  # refused for good: a retry must PUT again
            raise
        self._drop_staged(key)
        return result

    def _direct_context(self, client_id: str, campaign: str, rnd: int) -> registry.UploadContext:
        """The upload context of a direct upload (403 / 410), 404 when this coordinator takes
        none."""
        if not self.direct_uploads:
            raise ProtocolError(404, "this coordinator takes no direct uploads")
        with self.connection(autocommit=True) as c:
            return registry.upload_context(c, campaign, rnd, client_id)

    def _drop_staged(self, key: str) -> None:
        """Remove a staging object; a failure is logged, not raised (it must not replace the
        commit's answer; the round's close removes what is left)."""
        try:
            self.store.delete(key)
        except Exception as exc:  # noqa: BLE001 - e.g. no s3:DeleteObject permission
            logger.warning("could not remove the staged update %s: %s", key, exc)

    @functools.cached_property
    def batched(self) -> bool:
        """Whether uploads' registry work runs in batches (:mod:`fl_core.coordinator.batch`):
        on PostgreSQL (through psycopg 3 whatever driver the URL names), unless
        ``batch_uploads`` is off."""
        return self.settings.batch_uploads and self.engine.dialect.name == "postgresql"

    @functools.cached_property
    def batched_acceptance(self) -> bool:
        """Whether accepting uploads runs in batches too: a batched registry and a
        local-folder store (a batch writes its updates on the event loop, one after another,
        which S3 PUTs must not)."""
        return self.batched and isinstance(self.store, LocalStore)

    def _batch_connection(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """One of the running event loop's batch connections (:class:`batch.Connections`:
        at most four, two for each batcher's two batches at once)."""
        loop = asyncio.get_running_loop()
        found = self._batch_connections.get(loop)
        if found is None:
            engine = self.engine
            found = self._batch_connections[loop] = batch.Connections(
                functools.partial(batch.connect, engine), size=4
            )
        return found.connection()

    async def authenticate_batch(
        self, items: Sequence[batch.SignedUpload]
    ) -> list[tuple[registry.UploadContext, int] | BaseException]:
        """:func:`registry.authenticate_upload` for a batch of uploads' headers (each its
        own answer): the upload context and the size cap of each, or its refusal (or
        error). Runs on the event loop; a straggler record (410, rare) in a worker thread."""
        skew_s = self.settings.clock_skew_s
        async with self._batch_connection() as conn:
            found: list[Any] = await batch.authenticate_uploads(conn, items, skew_s=skew_s)
        for k, (it, row) in enumerate(zip(items, found, strict=True)):
            if isinstance(row, BaseException):
                continue
            try:  # each a failure of this upload only
                ctx = registry.context_of_row(row, it.campaign, it.rnd, it.client_id)
                if registry.is_late(ctx):  # 410, recorded as straggler (the nonce counts)
                    await asyncio.to_thread(self._refuse_late, it.campaign, it.rnd, it.client_id)
                if it.campaign not in self._campaigns:  # store I/O once per campaign
                    await asyncio.to_thread(self._campaign, it.campaign)
                found[k] = (ctx, self.update_cap(it.campaign))
            except Exception as exc:  # noqa: BLE001
                found[k] = exc
        return found

    def _refuse_late(self, campaign: str, rnd: int, client_id: str) -> None:
        with self.connection(autocommit=True) as c:
            registry.refuse_late(c, campaign, rnd, client_id)

    async def accept_batch(
        self, items: Sequence[PendingUpload]
    ) -> list[tuple[bool, ReceivedUpdate] | BaseException]:
        """:meth:`accept_update` for a batch of uploads (each its own answer), with the
        same checks in the same order: each upload's signature and wire checks, then the
        batch's claims in one statement, the claimed bytes written to the (local) store,
        and the stored updates accepted in one statement, in the batch's order. Runs on the
        event loop. A claim that met another, or an acceptance that did not happen (a round
        closed meanwhile, or an idempotent retry), is decided by the one-upload function in
        a worker thread, as for a lone upload."""
        out: list[Any] = [None] * len(items)
        claims: list[batch.Claim] = []
        claimed: list[int] = []
        pace = _Pace()
        for k, u in enumerate(items):
            await pace.step(len(u.data))
            try:
                key = self._verify_upload(
                    u.client_id, u.campaign, u.rnd, u.data, u.sha256, u.signature, u.ctx
                )
            except Exception as exc:  # noqa: BLE001 - this upload's answer, not the batch's
                out[k] = exc
                continue
            claims.append(batch.Claim(u.campaign, u.rnd, u.client_id, key, u.sha256,
                                      len(u.data), u.signature, u.ctx.public_key))  # fmt: skip
            claimed.append(k)
        if not claims:
            return out
        try:
            async with self._batch_connection() as conn:
                made = await batch.claim_updates(conn, claims)
        except Exception as exc:  # noqa: BLE001 - the claimants' error; refusals stand
            return _failing(out, claimed, exc)
        stored: list[int] = []
        for k, claim, made_at in zip(claimed, claims, made, strict=True):
            u = items[k]
            try:
                if made_at is None:  # claimed before: a retry of the same bytes, or 409
                    to_store, received_at = await asyncio.to_thread(self._claim, claim)
                else:
                    to_store, received_at = True, made_at
                rec = ReceivedUpdate(u.client_id, claim.key, u.sha256, claim.size, received_at,
                                     round=u.rnd)  # fmt: skip
                out[k] = (to_store, rec)
                if to_store:
                    await pace.step(len(u.data))
                    self.store.put_bytes(claim.key, u.data)
                    stored.append(k)
            except Exception as exc:  # noqa: BLE001 - this upload's failure, not the batch's
                out[k] = exc
        if not stored:
            return out
        try:
            slots = [(items[k].campaign, items[k].rnd, items[k].client_id) for k in stored]
            async with self._batch_connection() as conn:
                accepted = await batch.accept_stored(conn, slots)
        except Exception as exc:  # noqa: BLE001 - the stored ones' error (a retry accepts)
            return _failing(out, stored, exc)
        for k, done in zip(stored, accepted, strict=True):
            if done:
                continue
            u = items[k]
            try:  # accepted before (a retry), or the round closed meanwhile: 410
                await asyncio.to_thread(self._mark_stored, u.campaign, u.rnd, u.client_id)
            except Exception as exc:  # noqa: BLE001 - this upload's failure, not the batch's
                out[k] = exc
        return out

    def _claim(self, claim: batch.Claim) -> tuple[bool, float]:
        """``registry.claim_update``: (whether to store the bytes, the arrival time); a
        slot claimed before by the same bytes is a retry, by others 409."""
        with self.connection(autocommit=True) as c:
            return registry.claim_update(
                c, campaign=claim.campaign, rnd=claim.rnd, client_id=claim.client_id,
                key=claim.key, sha256=claim.sha256, size=claim.size,
                signature=claim.signature, public_key=claim.public_key,
            )  # fmt: skip

    def _mark_stored(self, campaign: str, rnd: int, client_id: str) -> None:
        with self.connection(autocommit=True) as c:
            registry.mark_stored(c, campaign, rnd, client_id)

    def check_upload_allowed(self, client_id: str, campaign: str, rnd: int) -> int:
        """Refuse an upload before its body is read (403 not selected, 410 too late);
        returns the size cap for it."""
        with self.session() as s:
            registry.upload_context(s, campaign, rnd, client_id)
        return self.update_cap(campaign)

    def accept_update(
        self,
        client_id: str,
        campaign: str,
        rnd: int,
        data: bytes,
        *,
        signature: str,
        sha256: str | None = None,
        context: registry.UploadContext | None = None,
    ) -> tuple[bool, ReceivedUpdate]:
        """Verify and store one upload; returns (newly stored, record).

        Order: open round and task (403/410); update signature over the whole message
        (401); same task already taken by other bytes (409); wire checks against the
        campaign's layout and the task's codec, header fields against the task, finite
        values and metrics (400); then the task's update slot is claimed with the
        signature record, the bytes go to the store, and the update is accepted if its
        round is still open (410 otherwise, recorded as straggler: the round may have
        closed while the body streamed; :func:`registry.mark_stored`). ``sha256`` is the
        digest of ``data`` when the caller already computed it; ``context`` is the upload
        context when the caller already read it (the HTTP app reads it with the
        authentication, before streaming the body).
        """
        digest = sha256 or hashlib.sha256(data).hexdigest()
        ctx = context
        if ctx is None:
            with self.connection(autocommit=True) as c:
                ctx = registry.upload_context(c, campaign, rnd, client_id)
        key = self._verify_upload(client_id, campaign, rnd, data, digest, signature, ctx)
        claim = batch.Claim(campaign, rnd, client_id, key, digest, len(data), signature,
                            ctx.public_key)  # fmt: skip
        to_store, received_at = self._claim(claim)
        if to_store:  # outside the session: store I/O must not hold the registry
            self.store.put_bytes(key, data)
            self._mark_stored(campaign, rnd, client_id)  # PostgreSQL: one call
            logger.debug("stored update of %s for %s round %d", client_id, campaign, rnd)
        return to_store, ReceivedUpdate(client_id, key, digest, len(data), received_at, round=rnd)

    def _verify_upload(
        self,
        client_id: str,
        campaign: str,
        rnd: int,
        data: bytes,
        sha256: str,
        signature: str,
        ctx: registry.UploadContext,
    ) -> str:
        """An upload's checks before its claim, in order: the update signature (401), other
        bytes already accepted (409), then (unless these bytes were) the wire checks (400 /
        403); returns the update's store key."""
        from fl_core.rounds.layout import update_key

        _check_update(ctx, campaign, rnd, client_id, sha256, signature)
        if ctx.update_sha256 is None:
            self._check_message(data, campaign, rnd, client_id, ctx.base_version, ctx.task)
        return update_key(campaign, rnd, client_id)

    def _check_message(
        self,
        data: bytes,
        campaign: str,
        rnd: int,
        client_id: str,
        base_version: int,
        task: dict[str, Any],
    ) -> None:
        layout = self._campaign(campaign)["layout"]
        try:  # the same checks as decoding, finite values included, without the vector
            header = wire.check(
                data,
                expected_layout=layout,
                expected_codec=task.get("codec"),
                max_bytes=self.update_cap(campaign),
            )
        except (wire.WireError, ValueError) as exc:
            raise ProtocolError(400, f"malformed update: {exc}") from None
        if header.kind != "update":
            raise ProtocolError(400, f"message kind is {header.kind!r}, expected 'update'")
        if header.client != client_id:
            raise ProtocolError(403, f"update names client {header.client!r:.80}, not yours")
        if header.campaign != campaign or header.round != rnd:
            raise ProtocolError(400, "update header names another campaign or round")
        if header.base_version != base_version:
            raise ProtocolError(
                400,
                f"update was trained on model version {header.base_version}, "
                f"the round sent version {base_version}",
            )
        if header.num_examples < 1:
            raise ProtocolError(400, "num_examples must be >= 1")
        if not all(math.isfinite(v) for v in header.metrics.values()):
            raise ProtocolError(400, "header metrics must be finite numbers")

    def record_histogram(
        self, client_id: str, campaign: str, rnd: int, *, num_examples: int, counts: Any
    ) -> None:
        with self.session() as s:
            registry.record_histogram(
                s,
                campaign=campaign,
                rnd=rnd,
                client_id=client_id,
                num_examples=num_examples,
                counts=counts,
            )

    def record_monitoring_report(
        self,
        client_id: str,
        campaign: str,
        rnd: int,
        *,
        model_version: int,
        num_examples: int,
        data_valid: bool,
        metrics: Mapping[str, float],
        counts: Any,
    ) -> None:
        try:
            edges = self._campaign(campaign)["edges"]
        except KeyError:
            raise ProtocolError(403, f"{campaign} is not a monitoring check") from None
        if edges is None:
            raise ProtocolError(400, f"{campaign} is not a monitoring check")
        with self.session() as s:
            registry.record_monitoring_report(
                s,
                sizes=[len(e) + 1 for e in edges],
                campaign=campaign,
                rnd=rnd,
                client_id=client_id,
                model_version=model_version,
                num_examples=num_examples,
                data_valid=data_valid,
                metrics=dict(metrics),
                counts=counts,
            )

    def record_evaluation(
        self,
        client_id: str,
        campaign: str,
        rnd: int,
        *,
        model_version: int,
        num_examples: int,
        metrics: Mapping[str, float],
    ) -> None:
        with self.session() as s:
            registry.record_evaluation(
                s,
                campaign=campaign,
                rnd=rnd,
                client_id=client_id,
                model_version=model_version,
                num_examples=num_examples,
                metrics=dict(metrics),
            )
