"""Registry operations on a database session: enrollment, identity, heartbeats, rounds.

Both the HTTP routers and the Python API (:mod:`fl_core.coordinator.api`) go through these
functions, so a rule (a revoked client is refused, an enrollment token is single use, a
late upload is a straggler) lives in one place. Refusals raise :class:`ProtocolError` with
the HTTP status and a reason.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import secrets
import time
from dataclasses import dataclass
from typing import Any, NoReturn, cast

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fl_core.coordinator import protocol
from fl_core.coordinator.db import (
    ClientRow,
    EnrollmentTokenRow,
    EvaluationRow,
    HistogramRow,
    MonitoringReportRow,
    NonceRow,
    RoundRow,
    StragglerRow,
    TaskRow,
    UpdateRow,
)
from fl_core.coordinator.sqlite_direct import commit as _commit
from fl_core.coordinator.sqlite_direct import execute as _execute
from fl_core.coordinator.sqlite_direct import rollback as _rollback

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "flenroll_"


class ProtocolError(Exception):
    """A refused request: ``status`` is the HTTP status, ``reason`` says why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# --------------------------------------------------------------------------- enrollment


def create_enrollment_token(session: Session, client_id: str, *, ttl_s: float) -> str:
    """A new one-time token for ``client_id`` (created if new); only its digest is stored.

    Re-enrolling a known client (e.g. a replaced device) is allowed unless it is revoked;
    the new key replaces the old one when the token is used.
    """
    protocol.check_client_id(client_id)
    if ttl_s <= 0:
        raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
    now = time.time()
    row = session.get(ClientRow, client_id)
    if row is None:
        session.add(ClientRow(client_id=client_id, created_at=now, profile={}, available=False))
    elif row.revoked_at is not None:
        raise ValueError(f"client {client_id!r} is revoked; enroll the device under a new name")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(
        EnrollmentTokenRow(
            token_sha256=token_digest(token),
            client_id=client_id,
            created_at=now,
            expires_at=now + ttl_s,
        )
    )
    session.commit()
    return token


def enroll(session: Session, *, token: str, public_key: str) -> str:
    """Redeem ``token`` for the client it names, binding ``public_key``; returns the client id.

    The token is consumed in the same transaction (a conditional update), so two redemptions
    racing each other cannot both succeed.
    """
    try:
        protocol.load_public_key(public_key)
    except ValueError as exc:
        raise ProtocolError(400, f"public_key: {exc}") from None
    now = time.time()
    digest = token_digest(token)
    used = session.execute(
        sa.update(EnrollmentTokenRow)
        .where(
            EnrollmentTokenRow.token_sha256 == digest,
            EnrollmentTokenRow.used_at.is_(None),
            EnrollmentTokenRow.expires_at > now,
        )
        .values(used_at=now)
    )
    if used.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise ProtocolError(401, "enrollment token is unknown, expired or already used")
    row = session.scalars(
        sa.select(EnrollmentTokenRow).where(EnrollmentTokenRow.token_sha256 == digest)
    ).one()
    client = session.get(ClientRow, row.client_id)
    if client is None or client.revoked_at is not None:
        session.rollback()
        raise ProtocolError(403, f"client {row.client_id!r} is revoked")
    client.public_key = public_key
    client.enrolled_at = now
    session.commit()
    logger.info("client %s enrolled", client.client_id)
    return client.client_id


def revoke(session: Session, client_id: str) -> bool:
    """Revoke a client at once (every later request is refused with 403); False if unknown."""
    row = session.get(ClientRow, client_id)
    if row is None:
        return False
    if row.revoked_at is None:
        row.revoked_at = time.time()
        row.available = False
    session.commit()
    return True


@dataclass(frozen=True)
class ClientInfo:
    """What the registry knows about a client (``fl clients list``, selection)."""

    client_id: str
    enrolled: bool
    revoked: bool
    last_heartbeat: float | None
    available: bool
    profile: dict[str, Any]
    uplink_mbps: float | None
    downlink_mbps: float | None
    latency_s: float | None
    num_examples: int | None
    data_sha256: str | None
    data_valid: bool | None

    @classmethod
    def of(cls, row: ClientRow) -> ClientInfo:
        return cls(
            client_id=row.client_id,
            enrolled=row.public_key is not None,
            revoked=row.revoked_at is not None,
            last_heartbeat=row.last_heartbeat,
            available=bool(row.available),
            profile=dict(row.profile or {}),
            uplink_mbps=row.uplink_mbps,
            downlink_mbps=row.downlink_mbps,
            latency_s=row.latency_s,
            num_examples=row.num_examples,
            data_sha256=row.data_sha256,
            data_valid=row.data_valid,
        )

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def list_clients(session: Session) -> list[ClientInfo]:
    rows = session.scalars(sa.select(ClientRow).order_by(ClientRow.client_id)).all()
    return [ClientInfo.of(r) for r in rows]


# --------------------------------------------------------------------------- authentication


def authenticate(
    session: Session | sa.Connection,
    *,
    client_id: str,
    message: bytes,
    signature: str,
    nonce: str,
    timestamp: float,
    skew_s: float,
) -> str:
    """Check one signed request: known client (401), valid signature (401), not revoked
    (403), fresh nonce (409). The nonce is recorded; nonces older than the window are pruned.
    """
    now = check_timestamp(timestamp, skew_s)
    row = session.execute(_key_query(), {"client_id": client_id}).first()
    _admit(session, row, client_id, message, signature, nonce, now=now, skew_s=skew_s)
    return client_id


def authenticate_upload(
    session: Session | sa.Connection,
    campaign: str,
    rnd: int,
    *,
    client_id: str,
    message: bytes,
    signature: str,
    nonce: str,
    timestamp: float,
    skew_s: float,
) -> UploadContext:
    """:func:`authenticate` then :func:`upload_context`, with the same refusals in the same
    order, reading the client's key and the upload's context in one query (one round trip
    to the database less per upload).

    Its writes (the nonce, the occasional prune, a straggler record on 410) are one
    transaction, committed at the end, refused or not: on SQLite the first write takes the
    write lock and nothing after it waits for one, so a call that found the database locked
    wrote nothing and may run again whole (what an inline call does when it falls back to a
    worker thread: :meth:`Coordinator.inline <fl_core.coordinator.api.Coordinator.inline>`).
    """
    now = check_timestamp(timestamp, skew_s)
    row = _execute(
        session, _auth_upload_query(), {"client_id": client_id, "campaign": campaign, "round": rnd}
    ).first()
    _admit(session, row, client_id, message, signature, nonce, now=now, skew_s=skew_s, commit=False)
    assert row is not None  # _admit refused an unknown client
    try:
        ctx = upload_context_of(session, row, campaign, rnd, client_id)
    except ProtocolError:  # 403 / 410: the nonce (and the straggler record) still count
        _commit(session)
        raise
    _commit(session)
    return ctx


def check_timestamp(timestamp: float, skew_s: float) -> float:
    """The server time, or 401 when the request's timestamp is too far from it."""
    now = time.time()
    if not math.isfinite(timestamp) or abs(now - timestamp) > skew_s:
        raise ProtocolError(
            401, f"{protocol.STALE_TIMESTAMP_REASON} {skew_s:.0f} s from server time"
        )
    return now


def refusal(row: Any, message: bytes, signature: str) -> ProtocolError | None:
    """Why a signed request from the client of ``row`` (its ``public_key`` and
    ``revoked_at``, or None) is refused before its nonce is looked at: unknown client or
    bad signature (401), revoked (403); None when it is not."""
    if row is None or row.public_key is None:
        return ProtocolError(401, "unknown client")
    if not protocol.verify(row.public_key, message, signature):
        return ProtocolError(401, "bad request signature")
    if row.revoked_at is not None:
        return ProtocolError(403, "client is revoked")
    return None


def replayed() -> ProtocolError:
    """409: the request's nonce was seen before."""
    return ProtocolError(409, "replayed request (nonce already seen)")


def prune_nonces(now: float, skew_s: float) -> sa.Delete:
    """Forget nonces older than any timestamp still accepted (run about once per 256
    requests)."""
    return sa.delete(NonceRow).where(NonceRow.seen_at < nonce_horizon(now, skew_s))


def nonce_horizon(now: float, skew_s: float) -> float:
    """The time before which a nonce can be forgotten: no request signed then is still
    accepted (its timestamp would be refused as stale)."""
    return now - 2 * skew_s - 1


def _admit(
    session: Session | sa.Connection,
    row: Any,
    client_id: str,
    message: bytes,
    signature: str,
    nonce: str,
    *,
    now: float,
    skew_s: float,
    commit: bool = True,
) -> None:
    """Known client and valid signature (401), not revoked (403), fresh nonce (409, else
    recorded) for ``row`` (the client's ``public_key`` and ``revoked_at``, or None). Without
    ``commit`` the nonce (and prune) are left in the caller's open transaction."""
    refused = refusal(row, message, signature)
    if refused is not None:
        raise refused
    try:
        _execute(session, _nonce_insert(), {"nonce": nonce, "client_id": client_id, "seen_at": now})
    except IntegrityError:
        _rollback(session)
        raise replayed() from None
    if secrets.randbelow(256) == 0:
        session.execute(prune_nonces(now, skew_s))
    if commit:
        _commit(session)


# --------------------------------------------------------------------------- heartbeats


def heartbeat(session: Session, client_id: str, report: dict[str, Any]) -> None:
    """Record a heartbeat and what the client measured and reported."""
    row = session.get(ClientRow, client_id)
    if row is None:
        raise ProtocolError(401, "unknown client")
    row.last_heartbeat = time.time()
    row.available = bool(report.get("available", True))
    row.profile = dict(report.get("profile") or {})
    for name in ("uplink_mbps", "downlink_mbps", "latency_s", "num_examples", "data_sha256"):
        if report.get(name) is not None:
            setattr(row, name, report[name])
    if report.get("data_valid") is not None:
        row.data_valid = bool(report["data_valid"])
    session.commit()


# --------------------------------------------------------------------------- rounds


def get_round(session: Session, campaign: str, rnd: int) -> RoundRow | None:
    return session.get(RoundRow, (campaign, rnd))


def get_task(session: Session, campaign: str, rnd: int, client_id: str) -> TaskRow | None:
    return session.get(TaskRow, (campaign, rnd, client_id))


def next_task(session: Session, client_id: str) -> tuple[TaskRow, RoundRow] | None:
    """The oldest open task of ``client_id`` with no accepted update (training) or report
    (monitoring), if any."""
    now = time.time()
    stmt = (
        sa.select(TaskRow, RoundRow)
        .join(
            RoundRow,
            sa.and_(RoundRow.campaign == TaskRow.campaign, RoundRow.round == TaskRow.round),
        )
        .outerjoin(
            UpdateRow,
            sa.and_(
                UpdateRow.campaign == TaskRow.campaign,
                UpdateRow.round == TaskRow.round,
                UpdateRow.client_id == TaskRow.client_id,
            ),
        )
        .outerjoin(
            MonitoringReportRow,
            sa.and_(
                MonitoringReportRow.campaign == TaskRow.campaign,
                MonitoringReportRow.round == TaskRow.round,
                MonitoringReportRow.client_id == TaskRow.client_id,
            ),
        )
        .where(
            TaskRow.client_id == client_id,
            RoundRow.closed_at.is_(None),
            RoundRow.deadline > now,
            UpdateRow.client_id.is_(None),
            MonitoringReportRow.client_id.is_(None),
        )
        .order_by(RoundRow.published_at, TaskRow.campaign, TaskRow.round)
        .limit(1)
    )
    found = session.execute(stmt).first()
    return None if found is None else (found[0], found[1])


def record_straggler(
    session: Session | sa.Connection, campaign: str, rnd: int, client_id: str, reason: str
) -> None:
    """Record ``client_id`` as a straggler of the round (the first reason stays)."""
    key = {"campaign": campaign, "round": rnd, "client_id": client_id}
    table = cast(sa.Table, StragglerRow.__table__)
    exists = session.execute(
        sa.select(table.c.client_id).where(*(table.c[k] == v for k, v in key.items()))
    ).first()
    if exists is not None:
        return
    try:
        session.execute(sa.insert(table), {**key, "reason": reason, "recorded_at": time.time()})
        session.commit()
    except IntegrityError:
        session.rollback()


# The statements of the per-request paths (authentication, upload) are built once, on the
# tables rather than the ORM classes, with bound parameters: building a statement and the
# ORM execution path cost several times more than SQLite's lookup itself. These paths take
# a Core ``sa.Connection`` (the coordinator's hot path: no ORM unit of work, about half the
# cost per statement) or a Session alike: they only execute statements, commit and roll back.
_clients = ClientRow.__table__.c
_nonces = cast(sa.Table, NonceRow.__table__)
_rounds = RoundRow.__table__.c
_tasks = TaskRow.__table__.c
_updates = cast(sa.Table, UpdateRow.__table__)


@functools.cache
def _key_query() -> sa.Select[Any, Any]:
    return sa.select(_clients.public_key, _clients.revoked_at).where(
        _clients.client_id == sa.bindparam("client_id")
    )


@functools.cache
def _nonce_insert() -> sa.Insert:
    return sa.insert(_nonces)


UPLOAD_COLUMNS = (
    _rounds.base_version,
    _rounds.deadline,
    _rounds.closed_at,
    _tasks.task,
    _clients.public_key,
    _updates.c.sha256,
    _updates.c.stored,
)


def updates_of_task() -> sa.ColumnElement[bool]:
    u = _updates.c
    return sa.and_(
        u.campaign == _tasks.campaign, u.round == _tasks.round, u.client_id == _tasks.client_id
    )


def round_of_task() -> sa.ColumnElement[bool]:
    return sa.and_(_rounds.campaign == _tasks.campaign, _rounds.round == _tasks.round)


@functools.cache
def _upload_query() -> sa.Select[Any]:
    """The upload context of (campaign, round, client): no row if the client has no task."""
    return (
        sa.select(*UPLOAD_COLUMNS)
        .select_from(TaskRow.__table__)
        .join(RoundRow.__table__, round_of_task())
        .outerjoin(ClientRow.__table__, _clients.client_id == _tasks.client_id)
        .outerjoin(_updates, updates_of_task())
        .where(
            _tasks.campaign == sa.bindparam("campaign"),
            _tasks.round == sa.bindparam("round"),
            _tasks.client_id == sa.bindparam("client_id"),
        )
    )


@functools.cache
def _auth_upload_query() -> sa.Select[Any]:
    """The client's key and revocation with the upload context (None columns when the
    client has no task in the round); no row if the client is unknown."""
    task_of_client = sa.and_(
        _tasks.client_id == _clients.client_id,
        _tasks.campaign == sa.bindparam("campaign"),
        _tasks.round == sa.bindparam("round"),
    )
    return (
        sa.select(*UPLOAD_COLUMNS, _clients.revoked_at)
        .select_from(ClientRow.__table__)
        .outerjoin(TaskRow.__table__, task_of_client)
        .outerjoin(RoundRow.__table__, round_of_task())
        .outerjoin(_updates, updates_of_task())
        .where(_clients.client_id == sa.bindparam("client_id"))
    )


def _update_where() -> sa.ColumnElement[bool]:
    u = _updates.c
    return sa.and_(
        u.campaign == sa.bindparam("w_campaign"),
        u.round == sa.bindparam("w_round"),
        u.client_id == sa.bindparam("w_client_id"),
    )


@functools.cache
def _claim_insert() -> sa.Insert:
    return sa.insert(_updates)


@functools.cache
def _claimed_query() -> sa.Select[Any, Any, Any]:
    u = _updates.c
    return sa.select(u.sha256, u.stored, u.received_at).where(_update_where())


@functools.cache
def _mark_stored() -> sa.Update:
    """Accept a claimed update: stored, its time, the campaign's next arrival number.
    SQLite runs this statement; PostgreSQL runs its twin inside ``fl_accept_update``
    (migrations ``0005_accept_function``, ``0006_partial_arrival_index``), so a change here
    needs a migration that replaces that function too. The next number's query says
    ``arrival_seq IS NOT NULL`` so that the (partial) arrival index serves it."""
    u = _updates.c
    prior = _updates.alias("prior")  # not correlated with the updated row
    latest = (
        sa.select(sa.func.coalesce(sa.func.max(prior.c.arrival_seq), 0) + 1)
        .where(prior.c.campaign == sa.bindparam("w_campaign"), prior.c.arrival_seq.is_not(None))
        .scalar_subquery()
    )
    still_open = (
        sa.select(_rounds.round)
        .where(
            _rounds.campaign == sa.bindparam("w_campaign"),
            _rounds.round == sa.bindparam("w_round"),
            _rounds.closed_at.is_(None),
            _rounds.deadline >= sa.bindparam("accepted_at"),
        )
        .exists()
    )
    return (
        sa.update(_updates)
        .where(_update_where(), u.stored.is_(False), still_open)
        .values(stored=True, accepted_at=sa.bindparam("accepted_at"), arrival_seq=latest)
    )


@dataclass(frozen=True)
class UploadContext:
    """Everything an upload is checked against, read in one query."""

    base_version: int
    deadline: float
    closed: bool
    task: dict[str, Any]
    public_key: str | None
    update_sha256: str | None
    update_stored: bool


def upload_context(
    session: Session | sa.Connection, campaign: str, rnd: int, client_id: str
) -> UploadContext:
    """The round, the client's task and key and any accepted update, or a refusal: 403 when
    the client was not selected, 410 (recorded as straggler) when the round is closed."""
    found = _execute(
        session, _upload_query(), {"campaign": campaign, "round": rnd, "client_id": client_id}
    ).first()
    return upload_context_of(session, found, campaign, rnd, client_id)


def upload_context_of(
    session: Session | sa.Connection, found: Any, campaign: str, rnd: int, client_id: str
) -> UploadContext:
    """The context from a row of the upload query (403 when the client has no task; 410,
    recorded as straggler, when its round is closed)."""
    ctx = context_of_row(found, campaign, rnd, client_id)
    if is_late(ctx):
        refuse_late(session, campaign, rnd, client_id)
    return ctx


def context_of_row(found: Any, campaign: str, rnd: int, client_id: str) -> UploadContext:
    """The context from a row of the upload query (403 when the client has no task), its
    round not yet checked (:func:`is_late`)."""
    if found is None or found.task is None:
        raise ProtocolError(403, f"client {client_id!r} was not selected in {campaign} round {rnd}")
    return UploadContext(
        base_version=found.base_version,
        deadline=found.deadline,
        closed=found.closed_at is not None,
        task=dict(found.task),
        public_key=found.public_key,
        update_sha256=found.sha256,
        update_stored=bool(found.stored),
    )


def is_late(ctx: UploadContext) -> bool:
    """Whether an upload in this context is too late (its round closed or past deadline)."""
    return ctx.closed or time.time() > ctx.deadline


def refuse_late(
    session: Session | sa.Connection, campaign: str, rnd: int, client_id: str
) -> NoReturn:
    """410 for a late upload, the client recorded as straggler."""
    record_straggler(session, campaign, rnd, client_id, "upload after the round closed")
    raise ProtocolError(410, f"round {rnd} of {campaign} is closed; the update is too late")


def claim_update(
    session: Session | sa.Connection,
    *,
    campaign: str,
    rnd: int,
    client_id: str,
    key: str,
    sha256: str,
    size: int,
    signature: str | None = None,
    public_key: str | None = None,
) -> tuple[bool, float]:
    """Claim the task's one update slot for the message with digest ``sha256``; returns
    (still to be stored, arrival time). ``signature`` (the verified update signature) and
    ``public_key`` (the key it verified with) are recorded with the claim, so an accepted
    update is attributable from the moment it is claimed.

    The primary key (campaign, round, client) makes the claim atomic across processes: only
    a claimant of these bytes writes the store. A claim by the same bytes (an idempotent
    retry) succeeds again; a different message raises 409.
    """
    now = time.time()
    try:
        _execute(
            session,
            _claim_insert(),
            {
                "campaign": campaign,
                "round": rnd,
                "client_id": client_id,
                "key": key,
                "sha256": sha256,
                "size": size,
                "received_at": now,
                "stored": False,
                "signature": signature,
                "public_key": public_key,
            },
        )
        _commit(session)
        return True, now
    except IntegrityError:
        _rollback(session)
    existing = _execute(
        session,
        _claimed_query(),
        {"w_campaign": campaign, "w_round": rnd, "w_client_id": client_id},
    ).first()
    if existing is not None and existing.sha256 == sha256:
        return not existing.stored, existing.received_at
    raise ProtocolError(409, "a different update for this task was already accepted")


def mark_stored(session: Session | sa.Connection, campaign: str, rnd: int, client_id: str) -> None:
    """The update's bytes are in the store: it is accepted now, if its round is still open,
    and takes the campaign's next arrival number (``arrival_seq``, the order FedBuff applies
    updates in) and the time (``accepted_at``). A second call (an idempotent retry) changes
    nothing. A round closed (or past its deadline) since the upload's checks raises 410 and
    records the client as straggler: the round's updates were counted when it closed.

    The open check is part of the accepting statement, and acceptance and closing the
    round (:meth:`Coordinator.close_round <fl_core.coordinator.api.Coordinator.close_round>`)
    exclude each other, so an update is either accepted before the
    round closed (and counted by the close) or refused: never acknowledged yet left out.
    SQLite has one writer at a time. On PostgreSQL both take a transaction-scoped advisory
    lock on the campaign first (:func:`lock_campaign`).

    That lock also numbers concurrent acceptances one after another. The number is
    ``max + 1`` within the writing transaction; without the lock two of them computed the
    same number and the unique index refused the second *at the statement* (a 500 to its
    client; measured: 24 acceptances from 8 threads failed at once). Should the index
    still refuse a number, the acceptance retries with the next one.

    On PostgreSQL the lock and the statement run as one call of the server-side function
    ``fl_accept_update`` (migrations 0005 and 0006): one round trip instead of
    four on an autocommit connection, and the lock is held only while they run.
    """
    params = {"w_campaign": campaign, "w_round": rnd, "w_client_id": client_id}
    postgres = _dialect(session) == "postgresql"
    for _ in range(16):
        try:
            now = time.time()
            if postgres:
                done = session.execute(
                    _ACCEPT_CALL,
                    {"lock": arrival_lock_key(campaign), "campaign": campaign, "round": rnd,
                     "client": client_id, "accepted_at": now},
                ).scalar_one()  # fmt: skip
            else:  # one writer at a time: no lock to take
                result = _execute(session, _mark_stored(), {**params, "accepted_at": now})
                done = cast(sa.CursorResult[Any], result).rowcount
            _commit(session)
            break
        except IntegrityError:
            _rollback(session)
    else:
        raise RuntimeError(f"could not number the arrival of {client_id} in {campaign} round {rnd}")
    if done:
        return
    found = _execute(session, _claimed_query(), params).first()
    if found is not None and found.stored:  # accepted before: an idempotent retry
        return
    refuse_late(session, campaign, rnd, client_id)


def lock_campaign(session: Session | sa.Connection, campaign: str) -> None:
    """On PostgreSQL, take the campaign's transaction-scoped advisory lock (held until the
    transaction ends): acceptances (:func:`mark_stored`, inside ``fl_accept_update``) and
    the closing of a round take it, so they run one after another. A no-op on SQLite,
    which has one writer at a time."""
    if _dialect(session) == "postgresql":
        session.execute(_ARRIVAL_LOCK, {"key": arrival_lock_key(campaign)})


def _dialect(session: Session | sa.Connection) -> str:
    bind = session.get_bind() if isinstance(session, Session) else session
    return bind.dialect.name


_ARRIVAL_LOCK = sa.text("SELECT pg_advisory_xact_lock(:key)")
_ACCEPT_CALL = sa.text("SELECT fl_accept_update(:lock, :campaign, :round, :client, :accepted_at)")


def warm_up(conn: sa.Connection) -> None:
    """Run each statement of the upload path once on ``conn``, matching nothing, in a
    transaction rolled back: SQLAlchemy compiles a statement on its first execution on an
    engine (a few ms of CPU for these), which the first uploads after a (re)start then
    need not pay."""
    where = {"w_campaign": "", "w_round": 0, "w_client_id": ""}
    try:
        _execute(conn, _auth_upload_query(), {"client_id": "", "campaign": "", "round": 0})
        _execute(conn, _upload_query(), {"client_id": "", "campaign": "", "round": 0})
        _execute(conn, _claimed_query(), where)
        _execute(conn, _nonce_insert(), {"nonce": "", "client_id": "", "seen_at": 0.0})
        _execute(conn, _claim_insert(),
            {"campaign": "", "round": 0, "client_id": "", "key": "", "sha256": "", "size": 0,
             "received_at": 0.0, "stored": False, "signature": None, "public_key": None},
        )  # fmt: skip
        if _dialect(conn) == "postgresql":
            conn.execute(_ACCEPT_CALL, {"lock": 0, "campaign": "", "round": 0, "client": "",
                                        "accepted_at": 0.0})  # fmt: skip
        else:
            _execute(conn, _mark_stored(), {**where, "accepted_at": 0.0})
    finally:
        _rollback(conn)


def arrival_lock_key(campaign: str) -> int:
    """The campaign's advisory-lock key: 64 bits of a digest of its id (signed, as
    PostgreSQL's bigint)."""
    digest = hashlib.sha256(b"fl-arrival-seq:" + campaign.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def accepted_update(session: Session, campaign: str, rnd: int, client_id: str) -> UpdateRow | None:
    return session.get(UpdateRow, (campaign, rnd, client_id))


def record_evaluation(
    session: Session,
    *,
    campaign: str,
    rnd: int,
    client_id: str,
    model_version: int,
    num_examples: int,
    metrics: dict[str, float],
) -> None:
    """Record (or replace) a client's evaluation report for a round it has a task in."""
    if get_task(session, campaign, rnd, client_id) is None:
        raise ProtocolError(403, f"client {client_id!r} has no task in {campaign} round {rnd}")
    row = session.get(EvaluationRow, (campaign, rnd, client_id))
    if row is None:
        row = EvaluationRow(campaign=campaign, round=rnd, client_id=client_id)
        session.add(row)
    row.model_version = model_version
    row.num_examples = num_examples
    row.metrics = dict(metrics)
    row.received_at = time.time()
    try:
        session.commit()
    except IntegrityError:  # a concurrent first report: keep the one that won
        session.rollback()


def _upsert(session: Session, row_type: type[Any], key: tuple[Any, ...], **values: Any) -> None:
    row = session.get(row_type, key)
    if row is None:
        campaign, rnd, client_id = key
        row = row_type(campaign=campaign, round=rnd, client_id=client_id)
        session.add(row)
    for name, value in values.items():
        setattr(row, name, value)
    row.received_at = time.time()
    try:
        session.commit()
    except IntegrityError:  # a concurrent first report: keep the one that won
        session.rollback()


def record_histogram(
    session: Session,
    *,
    campaign: str,
    rnd: int,
    client_id: str,
    num_examples: int,
    counts: list[list[int]],
) -> None:
    """Record (or replace) the bin counts of a client's training data on the grid its
    training task carried (``task["histogram"]``); counts only, checked against the grid."""
    from fl_core.histograms import check_counts

    task = get_task(session, campaign, rnd, client_id)
    if task is None:
        raise ProtocolError(403, f"client {client_id!r} has no task in {campaign} round {rnd}")
    grid = task.task.get("histogram")
    if not grid:
        raise ProtocolError(400, "this task asks for no histogram")
    try:
        check_counts(counts, [int(grid["bins"])] * int(grid["num_features"]), num_examples)
    except ValueError as exc:
        raise ProtocolError(400, f"bad histogram: {exc}") from None
    _upsert(
        session,
        HistogramRow,
        (campaign, rnd, client_id),
        num_examples=num_examples,
        counts=[list(map(int, row)) for row in counts],
    )


def record_monitoring_report(
    session: Session,
    *,
    campaign: str,
    rnd: int,
    client_id: str,
    model_version: int,
    num_examples: int,
    data_valid: bool,
    metrics: dict[str, float],
    counts: list[list[int]] | None,
    sizes: list[int],
) -> None:
    """Record a client's check of the champion on its fresh data (a monitoring task): the
    model version it was sent, accuracy and loss, example count and the per-feature counts
    in the check's bin edges (``sizes``: bins per feature). A client whose data failed
    validation sends no counts."""
    from fl_core.histograms import check_counts

    task = get_task(session, campaign, rnd, client_id)
    if task is None:
        raise ProtocolError(403, f"client {client_id!r} has no task in {campaign} round {rnd}")
    if task.task.get("kind") != "monitor":
        raise ProtocolError(400, f"{campaign} round {rnd} is not a monitoring check")
    rnd_row = get_round(session, campaign, rnd)
    assert rnd_row is not None  # a task implies its round
    if rnd_row.closed_at is not None or time.time() > rnd_row.deadline:
        raise ProtocolError(410, "the monitoring check is closed")
    if model_version != rnd_row.base_version:
        raise ProtocolError(
            400,
            f"report is on model version {model_version}, the check sent {rnd_row.base_version}",
        )
    if data_valid:
        if counts is None or num_examples < 1 or "accuracy" not in metrics:
            raise ProtocolError(400, "a report on valid data needs accuracy, examples and counts")
        try:
            check_counts(counts, sizes, num_examples)
        except ValueError as exc:
            raise ProtocolError(400, f"bad histogram: {exc}") from None
    _upsert(
        session,
        MonitoringReportRow,
        (campaign, rnd, client_id),
        model_version=model_version,
        num_examples=num_examples if data_valid else 0,
        data_valid=data_valid,
        metrics=dict(metrics) if data_valid else {},
        counts=[list(map(int, row)) for row in counts] if data_valid and counts else None,
    )
