"""Uploads in batches on PostgreSQL: many uploads' registry work in one statement each.

On PostgreSQL an upload made four round trips to the server, each its own statement and
transaction (the key and upload context; the nonce; the claim; the acceptance, one call of
``fl_accept_update``), through SQLAlchemy and psycopg from a worker thread. Under a burst
of uploads that per-statement cost, not the server's work, bounded the coordinator:
profiled (py-spy, 1,000 top-k uploads), SQLAlchemy's execution, psycopg's query
conversion and the thread hops were most of its interpreter time, and each write
transaction waits for its own WAL flush.

Here the uploads that arrive while a batch runs wait for the next one, and a batch makes
the same two round trips however many uploads it holds, awaited on the event loop through
the batches' own psycopg connections (:class:`Connections`: no worker thread, no
SQLAlchemy execution):

- **authentication** (before the body is read): one ``SELECT`` of every upload's client
  key and upload context (the batch's (client, campaign, round) triples, one JSON
  parameter read by ``json_to_recordset``, as every batch statement takes its rows),
  the signatures checked here, then one ``INSERT ... ON CONFLICT DO NOTHING RETURNING``
  of the admitted nonces: a nonce not returned was seen before (409);
- **acceptance** (after the body is read and checked): one ``INSERT ... ON CONFLICT DO
  NOTHING RETURNING`` of the claims, the bytes written to the store, then one ``SELECT``
  calling ``fl_accept_update`` for each stored update, in the batch's order (arrival
  numbers follow it; the function's statements see the calls before them, as any
  ``VOLATILE`` function's do).

Each upload keeps its own answer: a refusal (401, 403, 409, 410, 400) is that upload's,
and the batch goes on with the others. The rare cases (a claim that met another, an
acceptance that did not happen, a straggler record) run the one-upload functions of
:mod:`fl_core.coordinator.registry`, so their rules stay in one place. No batch waits for
a timer: one starts as soon as one of the (two) running has finished, so a lone upload goes
at once. The rare cases' one-upload functions run in a worker thread, on the coordinator's
engine.
SQLite keeps its own path (inline, one writer at a time); S3 stores keep the one-upload
acceptance (a batch would write its updates to S3 one after another, on the event loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

import psycopg
import sqlalchemy as sa
from psycopg.rows import namedtuple_row
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects.postgresql import psycopg as pg_psycopg

from fl_core.coordinator import registry
from fl_core.coordinator.db import IDLE_PING_S, ClientRow, NonceRow, RoundRow, TaskRow, UpdateRow
from fl_core.coordinator.registry import ProtocolError

__all__ = [
    "MAX_BATCH",
    "Batcher",
    "Claim",
    "Connections",
    "SignedUpload",
    "accept_stored",
    "authenticate_uploads",
    "claim_updates",
    "connect",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

MAX_BATCH = 128
"""The most uploads one batch holds (the rows of its statements' JSON parameter; the rest
wait for the next)."""


class Batcher(Generic[T, R]):
    """Await ``run(items)`` on the items submitted while the previous run was busy; each
    caller gets its own item's result, or its own exception.

    ``run`` returns one result per item, an exception instance where that item failed; an
    exception raised by ``run`` itself fails every item of the batch. Belongs to the event
    loop it was made on; at most ``parallel`` runs at a time (2: one batch's Python work
    while another waits for the database; measured on PostgreSQL, top-k N = 100 / 1,000:
    0.34-0.36 / 0.35-0.42x the bare endpoint with one, 0.36 / 0.43x with two).
    """

    def __init__(
        self,
        run: Callable[[list[T]], Awaitable[Sequence[R | BaseException]]],
        *,
        max_items: int = MAX_BATCH,
        parallel: int = 2,
    ) -> None:
        self._run = run
        self._max = max_items
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._parallel = parallel
        self._running = 0
        self.batches = 0
        """Batches run so far."""
        self.largest = 0
        """The most items one batch held."""

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._running < self._parallel:
            self._running += 1
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self._max]
                del self._pending[: self._max]
                self.batches += 1
                self.largest = max(self.largest, len(batch))
                try:
                    await self._answer(batch)
                except Exception:  # answered below: each caller gets an error, none waits
                    logger.exception("an upload batch of %d failed", len(batch))
                finally:  # whatever happened, no caller is left waiting
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(RuntimeError("the upload batch did not finish"))
        finally:
            self._running -= 1
            if self._pending and self._running == 0:  # cancelled with items still waiting
                for _, future in self._pending:
                    if not future.done():
                        future.set_exception(RuntimeError("the upload batch was cancelled"))
                self._pending.clear()

    async def _answer(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results: Sequence[Any] = await self._run([i for i, _ in batch])
        except Exception as exc:  # noqa: BLE001 - the batch's failure is each item's
            results = [exc] * len(batch)
        if len(results) != len(batch):
            wrong = RuntimeError(f"a batch of {len(batch)} returned {len(results)} results")
            results = [wrong] * len(batch)
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():  # its request was cancelled (a client gone)
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)


# --------------------------------------------------------------------------- statements

_clients = cast(sa.Table, ClientRow.__table__)
_tasks = cast(sa.Table, TaskRow.__table__)
_rounds = cast(sa.Table, RoundRow.__table__)
_updates = cast(sa.Table, UpdateRow.__table__)
_nonces = cast(sa.Table, NonceRow.__table__)


def _records(name: str, alias: str, *columns: tuple[str, Any]) -> Any:
    """The rows of the JSON array of objects bound to ``name`` (``json_to_recordset``),
    typed: one text parameter for a whole batch. Arrays (one per column) cost psycopg a
    Python-level walk of every element to dump them: measured, about 8 % of the
    coordinator's interpreter time on top-k uploads, against a ``json.dumps`` in C here."""
    return (
        sa.func.json_to_recordset(sa.cast(sa.bindparam(name, type_=sa.Text), pg.JSON))
        .table_valued(*(sa.column(n, t) for n, t in columns))
        .render_derived(name=alias, with_types=True)
    )


def _json(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, separators=(",", ":"), allow_nan=False)


@functools.cache
def _auth_query() -> sa.Select[Any]:
    """For each (client, campaign, round) of the batch (``want``: objects with ``client_id``,
    ``campaign``, ``round`` and the position ``i``): the client's key and revocation and
    the upload context, as ``registry._auth_upload_query`` reads them for one (None
    columns for an unknown client or one without a task)."""
    want = _records(
        "want", "want", ("client_id", sa.String), ("campaign", sa.String),
        ("round", sa.Integer), ("i", sa.Integer),
    )  # fmt: skip
    task_of_client = sa.and_(
        _tasks.c.client_id == _clients.c.client_id,
        _tasks.c.campaign == want.c.campaign,
        _tasks.c.round == want.c.round,
    )
    return (
        sa.select(want.c.i, *registry.UPLOAD_COLUMNS, _clients.c.revoked_at)
        .select_from(want)
        .outerjoin(_clients, _clients.c.client_id == want.c.client_id)
        .outerjoin(_tasks, task_of_client)
        .outerjoin(_rounds, registry.round_of_task())
        .outerjoin(_updates, registry.updates_of_task())
    )


@functools.cache
def _nonces_insert() -> Any:
    """Record the batch's nonces (``new``: objects with ``nonce``, ``client_id``,
    ``seen_at``); returns those not seen before."""
    new = _records(
        "new", "new", ("nonce", sa.String), ("client_id", sa.String), ("seen_at", sa.Float)
    )
    return (
        pg.insert(_nonces)
        .from_select(["nonce", "client_id", "seen_at"], sa.select(*new.c))
        .on_conflict_do_nothing(index_elements=["nonce"])
        .returning(_nonces.c.nonce)
    )


_PRUNE = sa.delete(_nonces).where(_nonces.c.seen_at < sa.bindparam("before"))
"""Forget the nonces seen before ``before`` (``registry.nonce_horizon``)."""

_CLAIM_COLUMNS = (
    ("campaign", sa.String), ("round", sa.Integer), ("client_id", sa.String),
    ("key", sa.String), ("sha256", sa.String), ("size", sa.BigInteger),
    ("received_at", sa.Float), ("signature", sa.String), ("public_key", sa.String),
)  # fmt: skip


@functools.cache
def _claims_insert() -> Any:
    """Claim the batch's update slots (``new``: objects with the claim columns); returns
    the (campaign, round, client) of each claim made (a slot already claimed is left as it
    is)."""
    new = _records("new", "new", *_CLAIM_COLUMNS)
    return (
        pg.insert(_updates)
        .from_select([n for n, _ in _CLAIM_COLUMNS] + ["stored"], sa.select(*new.c, sa.false()))
        .on_conflict_do_nothing(index_elements=["campaign", "round", "client_id"])
        .returning(_updates.c.campaign, _updates.c.round, _updates.c.client_id)
    )


_ACCEPT_BATCH = sa.text(
    "SELECT fl_accept_update(want.lock, want.campaign, want.round, want.client, :accepted_at)"
    " FROM json_to_recordset(CAST(:want AS json))"
    " AS want(i integer, lock bigint, campaign varchar, round integer, client varchar)"
    " ORDER BY want.i"
)
"""Accept stored updates one after another in the given order (the function per row;
PostgreSQL evaluates a volatile function of the select list after the sort)."""


# --------------------------------------------------------------------------- connections


@functools.cache
def _sql(statement: Any) -> str:
    """A statement as PostgreSQL text with psycopg's named placeholders (compiled once)."""
    return str(statement.compile(dialect=pg_psycopg.dialect()))


class Connections:
    """The batches' own psycopg connections on one event loop (autocommit: each statement
    its own transaction): at most ``size`` at once, reused; one that sat unused
    ``IDLE_PING_S`` is pinged before use and replaced if the server dropped it (as
    :func:`fl_core.coordinator.db.ping_when_idle` does for the pool), and one a statement
    found broken is dropped.

    Why not the coordinator's SQLAlchemy engine: a statement there runs in a worker thread,
    and the thread hop, SQLAlchemy's execution and the wait for the interpreter lock held by
    the event loop cost more than the statement. Measured (``bench_coordinator.py``, 1,000
    top-k uploads): batches of about 6 uploads spent 12 and 23 ms from start to end for 3
    and 10 ms of CPU. Here the statements are awaited on the event loop (psycopg's async
    connection), which serves requests meanwhile."""

    def __init__(
        self, connect: Callable[[], Awaitable[psycopg.AsyncConnection[Any]]], size: int
    ) -> None:
        self._connect = connect
        self._slots = asyncio.Semaphore(size)
        self._idle: list[tuple[psycopg.AsyncConnection[Any], float]] = []
        self._lock = threading.Lock()  # the idle list: close() may come from another thread
        self._closed = False

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        async with self._slots:
            conn = await self._checkout()
            reuse = False
            try:
                yield conn
                reuse = True
            except Exception:  # a failed statement (autocommit: nothing left open) ...
                reuse = True
                raise
            finally:  # ... unless the connection broke; a cancelled one may be mid-query
                await self._check_in(conn, reuse)

    async def _check_in(self, conn: psycopg.AsyncConnection[Any], reuse: bool) -> None:
        idle = psycopg.pq.TransactionStatus.IDLE
        with self._lock:
            if reuse and not self._closed and conn.info.transaction_status == idle:
                self._idle.append((conn, time.monotonic()))
                return
        await conn.close()

    async def _checkout(self) -> psycopg.AsyncConnection[Any]:
        while True:
            with self._lock:
                if self._closed:
                    raise RuntimeError("the coordinator's batch connections are closed")
                if not self._idle:
                    break
                conn, since = self._idle.pop()
            if time.monotonic() - since < IDLE_PING_S:  # checked in idle, in no transaction
                return conn
            try:
                await conn.execute("SELECT 1")
                return conn
            except psycopg.Error as exc:
                logger.info("dropped a stale batch connection: %s", exc)
                await conn.close()
            except BaseException:  # cancelled mid-ping: not left open
                await conn.close()
                raise
        return await self._connect()

    def close(self) -> None:
        """Close the idle connections (from any thread; one in use closes when returned);
        no connection is made after."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            conn.pgconn.finish()


async def connect(engine: sa.Engine) -> psycopg.AsyncConnection[Any]:
    """An autocommit psycopg (3) connection to ``engine``'s PostgreSQL database (its URL's
    parameters, whatever driver the URL names: ``postgresql+psycopg2://`` too), rows as
    named tuples."""
    url = engine.url.set(drivername="postgresql+psycopg")
    _, params = pg_psycopg.dialect().create_connect_args(url)
    params.pop("context", None)  # SQLAlchemy's own adapters: psycopg's defaults here
    return await psycopg.AsyncConnection.connect(
        **params, autocommit=True, row_factory=namedtuple_row
    )


# --------------------------------------------------------------------------- authentication


@dataclass(frozen=True, slots=True)
class SignedUpload:
    """An upload's signed request headers, as ``registry.authenticate_upload`` takes them."""

    client_id: str
    campaign: str
    rnd: int
    message: bytes
    signature: str
    nonce: str
    timestamp: float


async def authenticate_uploads(
    conn: psycopg.AsyncConnection[Any], items: Sequence[SignedUpload], *, skew_s: float
) -> list[Any]:
    """:func:`registry.authenticate_upload` for each item, in two statements for the batch:
    the same refusals in the same order up to the nonce (401, 403 revoked, 409), else the
    row of the upload query, of which ``registry.context_of_row`` makes the context (403
    not selected) and the caller refuses a late one (410, ``registry.refuse_late``)."""
    out: list[Any] = [None] * len(items)
    live: list[int] = []
    for k, it in enumerate(items):
        try:
            registry.check_timestamp(it.timestamp, skew_s)
            live.append(k)
        except ProtocolError as exc:
            out[k] = exc
    if not live:
        return out
    want = [
        {"client_id": items[k].client_id, "campaign": items[k].campaign, "round": items[k].rnd,
         "i": i}
        for i, k in enumerate(live, start=1)
    ]  # fmt: skip
    found = await conn.execute(_sql(_auth_query()), {"want": _json(want)})
    rows = {live[row.i - 1]: row for row in await found.fetchall()}
    admitted: list[int] = []
    nonces: set[str] = set()
    for k in live:
        it = items[k]
        refused = registry.refusal(rows[k], it.message, it.signature)
        if refused is not None:
            out[k] = refused
        elif it.nonce in nonces:  # twice in this batch: the second is the replay
            out[k] = registry.replayed()
        else:
            nonces.add(it.nonce)
            admitted.append(k)
    if not admitted:
        return out
    now = time.time()
    new = [
        {"nonce": items[k].nonce, "client_id": items[k].client_id, "seen_at": now}
        for k in admitted
    ]
    inserted = await conn.execute(_sql(_nonces_insert()), {"new": _json(new)})
    fresh = {row.nonce for row in await inserted.fetchall()}
    if secrets.randbelow(256) < len(admitted):  # as often as one prune per 256 requests
        await conn.execute(_sql(_PRUNE), {"before": registry.nonce_horizon(now, skew_s)})
    for k in admitted:
        out[k] = rows[k] if items[k].nonce in fresh else registry.replayed()
    return out


# --------------------------------------------------------------------------- acceptance


@dataclass(frozen=True, slots=True)
class Claim:
    """An update's claim of its task's slot (``registry.claim_update``'s arguments)."""

    campaign: str
    rnd: int
    client_id: str
    key: str
    sha256: str
    size: int
    signature: str
    public_key: str | None


async def claim_updates(
    conn: psycopg.AsyncConnection[Any], claims: Sequence[Claim]
) -> list[float | None]:
    """Claim each slot in one statement: the arrival time where the claim was made now,
    None where the slot was claimed already (before, or by an earlier claim in this batch,
    which alone is inserted): ``registry.claim_update`` decides those one by one (an
    idempotent retry, or 409)."""
    first: dict[tuple[str, int, str], int] = {}
    for k, c in enumerate(claims):
        first.setdefault((c.campaign, c.rnd, c.client_id), k)
    out: list[float | None] = [None] * len(claims)
    if not first:
        return out
    now = time.time()
    new = [claims[k] for k in first.values()]
    rows = [
        {"campaign": c.campaign, "round": c.rnd, "client_id": c.client_id, "key": c.key,
         "sha256": c.sha256, "size": c.size, "received_at": now, "signature": c.signature,
         "public_key": c.public_key}
        for c in new
    ]  # fmt: skip
    made = await conn.execute(_sql(_claims_insert()), {"new": _json(rows)})
    for row in await made.fetchall():
        out[first[(row.campaign, row.round, row.client_id)]] = now
    return out


async def accept_stored(
    conn: psycopg.AsyncConnection[Any], stored: Sequence[tuple[str, int, str]]
) -> list[bool]:
    """Accept each stored update (campaign, round, client), in order, as
    ``registry.mark_stored`` does (the campaign's advisory lock, the next arrival number,
    only while the round is open), in one statement: True where it was accepted now. The
    updates are accepted campaign by campaign (ordered by lock key, so that two batches
    never wait for each other's locks the other way round)."""
    if not stored:
        return []
    locks = [registry.arrival_lock_key(campaign) for campaign, _, _ in stored]
    order = sorted(range(len(stored)), key=locks.__getitem__)
    want = [
        {"i": i, "lock": locks[k], "campaign": stored[k][0], "round": stored[k][1],
         "client": stored[k][2]}
        for i, k in enumerate(order)
    ]  # fmt: skip
    accepted = await conn.execute(
        _sql(_ACCEPT_BATCH), {"want": _json(want), "accepted_at": time.time()}
    )
    out = [False] * len(stored)
    for k, row in zip(order, await accepted.fetchall(), strict=True):
        out[k] = bool(row[0])
    return out
