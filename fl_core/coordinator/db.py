"""The client registry: SQLAlchemy 2 models, the engine, and Alembic migrations.

Tables (times are UNIX seconds as floats, portable between SQLite and PostgreSQL):

``clients``            enrolled devices: Ed25519 public key, revocation, last heartbeat and
                       what it reported (profile, bandwidth, latency, examples, data hash)
``enrollment_tokens``  one-time tokens, stored as sha256 digests only, with expiry and use
``nonces``             request nonces seen within the replay window (replay -> 409)
``rounds``             published rounds: base version, model key, deadline, closing time
``tasks``              one per (campaign, round, client): the task dict the client fetches
``updates``            accepted uploads: store key, sha256, size, claim time; ``stored``
                       becomes true once the bytes are in the artifact store, and then the
                       update gets ``accepted_at`` and ``arrival_seq`` (its place in the
                       campaign's arrival order, unique per campaign: FedBuff's order)
``stragglers``         clients of a round whose update did not arrive in time, with a reason
``evaluations``        clients' federated-evaluation reports
``histograms``         per-feature bin counts of a client's training data (counts only),
                       reported with a training task: the campaign's reference histograms
``monitoring_reports`` clients' checks of the champion on fresh local data: accuracy,
                       example count, per-feature bin counts, whether the data validated

The schema is created and upgraded only by the Alembic migrations shipped in
``fl_core/coordinator/migrations`` (:func:`migrate`); the ORM classes mirror them.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from fl_core.coordinator import sqlite_direct

logger = logging.getLogger(__name__)

__all__ = [
    "Base",
    "ClientRow",
    "EnrollmentTokenRow",
    "EvaluationRow",
    "HistogramRow",
    "MonitoringReportRow",
    "NonceRow",
    "RoundRow",
    "StragglerRow",
    "TaskRow",
    "UpdateRow",
    "make_engine",
    "make_sessionmaker",
    "migrate",
]

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class Base(DeclarativeBase):
    pass


class ClientRow(Base):
    __tablename__ = "clients"

    client_id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    public_key: Mapped[str | None] = mapped_column(sa.String(64))
    created_at: Mapped[float] = mapped_column(sa.Float)
    enrolled_at: Mapped[float | None] = mapped_column(sa.Float)
    revoked_at: Mapped[float | None] = mapped_column(sa.Float)
    last_heartbeat: Mapped[float | None] = mapped_column(sa.Float)
    available: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    profile: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    uplink_mbps: Mapped[float | None] = mapped_column(sa.Float)
    downlink_mbps: Mapped[float | None] = mapped_column(sa.Float)
    latency_s: Mapped[float | None] = mapped_column(sa.Float)
    num_examples: Mapped[int | None] = mapped_column(sa.Integer)
    data_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    data_valid: Mapped[bool | None] = mapped_column(sa.Boolean)


class EnrollmentTokenRow(Base):
    __tablename__ = "enrollment_tokens"

    token_sha256: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(sa.String(128), index=True)
    created_at: Mapped[float] = mapped_column(sa.Float)
    expires_at: Mapped[float] = mapped_column(sa.Float)
    used_at: Mapped[float | None] = mapped_column(sa.Float)


class NonceRow(Base):
    __tablename__ = "nonces"

    nonce: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(sa.String(128))
    seen_at: Mapped[float] = mapped_column(sa.Float, index=True)


class RoundRow(Base):
    __tablename__ = "rounds"

    campaign: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    round: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    base_version: Mapped[int] = mapped_column(sa.Integer)
    model_key: Mapped[str] = mapped_column(sa.String(512))
    published_at: Mapped[float] = mapped_column(sa.Float)
    deadline: Mapped[float] = mapped_column(sa.Float)
    closed_at: Mapped[float | None] = mapped_column(sa.Float)


class TaskRow(Base):
    __tablename__ = "tasks"

    campaign: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    round: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    client_id: Mapped[str] = mapped_column(sa.String(128), primary_key=True, index=True)
    task: Mapped[dict[str, Any]] = mapped_column(sa.JSON)


class UpdateRow(Base):
    __tablename__ = "updates"

    campaign: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    round: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    client_id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(512))
    sha256: Mapped[str] = mapped_column(sa.String(64))
    size: Mapped[int] = mapped_column(sa.BigInteger)
    received_at: Mapped[float] = mapped_column(sa.Float)
    stored: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    accepted_at: Mapped[float | None] = mapped_column(sa.Float)
    arrival_seq: Mapped[int | None] = mapped_column(sa.Integer)
    signature: Mapped[str | None] = mapped_column(sa.String(128))
    """The client's Ed25519 update signature (base64), verified before the claim."""
    public_key: Mapped[str | None] = mapped_column(sa.String(128))
    """The public key it verified with (the client's key when it uploaded)."""

    __table_args__ = (
        # accepted updates only (migration 0006): a lookup by key has the primary key alone
        sa.Index(
            "ix_updates_campaign_arrival_seq", "campaign", "arrival_seq", unique=True,
            postgresql_where=sa.text("arrival_seq IS NOT NULL"),
            sqlite_where=sa.text("arrival_seq IS NOT NULL"),
        ),
    )  # fmt: skip


class StragglerRow(Base):
    __tablename__ = "stragglers"

    campaign: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    round: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    client_id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    reason: Mapped[str] = mapped_column(sa.String(256))
    recorded_at: Mapped[float] = mapped_column(sa.Float)


class EvaluationRow(Base):
    __tablename__ = "evaluations"

    campaign: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    round: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    client_id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    model_version: Mapped[int] = mapped_column(sa.Integer)
    num_examples: Mapped[int] = mapped_column(sa.Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    received_at: Mapped[float] = mapped_column(sa.Float)


class HistogramRow(Base):
    __tablename__ = "histograms"

    campaign: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    round: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    client_id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    num_examples: Mapped[int] = mapped_column(sa.Integer)
    counts: Mapped[list[list[int]]] = mapped_column(sa.JSON)
    received_at: Mapped[float] = mapped_column(sa.Float)


class MonitoringReportRow(Base):
    __tablename__ = "monitoring_reports"

    campaign: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    round: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    client_id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    model_version: Mapped[int] = mapped_column(sa.Integer)
    num_examples: Mapped[int] = mapped_column(sa.Integer)
    data_valid: Mapped[bool] = mapped_column(sa.Boolean)
    metrics: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    counts: Mapped[list[list[int]] | None] = mapped_column(sa.JSON)
    received_at: Mapped[float] = mapped_column(sa.Float)


SQLITE_BUSY_TIMEOUT_S = 30.0
"""How long a SQLite statement waits for another connection's write lock."""


def _sqlite_pragmas(busy_timeout_s: float) -> Any:
    def on_connect(dbapi_conn: Any, record: Any) -> None:
        record.info[sqlite_direct.INFO_KEY] = dbapi_conn  # the upload path's statements
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        cur.close()

    return on_connect


def make_engine(
    db_url: str, *, busy_timeout_s: float = SQLITE_BUSY_TIMEOUT_S, pool_size: int = 8
) -> Engine:
    """An engine for ``db_url``; SQLite gets WAL, a busy timeout (``busy_timeout_s``; 0:
    a locked database raises at once) and its folder created."""
    url = sa.make_url(db_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": busy_timeout_s},
            pool_size=pool_size,
        )
        event.listen(engine, "connect", _sqlite_pragmas(busy_timeout_s))
        return engine
    engine = sa.create_engine(url, pool_size=10, max_overflow=20)
    ping_when_idle(engine)
    return engine


IDLE_PING_S = 1.0
"""A pooled server connection unused this long is pinged before it is handed out."""


def ping_when_idle(engine: Engine, idle_s: float = IDLE_PING_S) -> None:
    """Ping a pooled connection before use only if it sat unused ``idle_s`` or more.

    SQLAlchemy's ``pool_pre_ping`` pings on *every* checkout: one round trip to the server
    per checkout, three per signed upload on the coordinator's hot path. A connection in
    steady use has just proved itself; the one that may have gone stale (the server
    restarted, a proxy dropped it) is the one left in the pool, so only that one is pinged.
    A failed ping raises ``DisconnectionError``, on which the pool discards the connection
    and checks out another (a fresh one, once the stale ones are gone). A server restart
    *while* a connection is in use fails that request either way (with pre-ping too); the
    pool then recycles every connection older than the failure.
    """

    @event.listens_for(engine, "checkin")
    def _idle_from(_dbapi_conn: Any, record: Any) -> None:
        if record is not None:
            record.info["fl_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop("fl_idle_since", None)
        if since is None or time.monotonic() - since < idle_s:
            return  # just connected, or back in use within idle_s
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:  # noqa: BLE001 - any failure: the connection is unusable
            raise sa.exc.DisconnectionError(f"stale pooled connection: {exc}") from exc


def make_sessionmaker(engine: Engine) -> sessionmaker[Any]:
    return sessionmaker(engine, expire_on_commit=False)


MIGRATION_LOCK = 0x464C5245  # "FLRE": PostgreSQL advisory lock id for schema upgrades


def migrate(engine: Engine) -> None:
    """Bring the registry schema to the newest Alembic revision (idempotent).

    Safe when several processes start at once (the API server's coordinator, a DAG task, the
    CLI): on PostgreSQL the upgrade holds a transaction-level advisory lock; on SQLite the
    transaction takes the write lock first (``BEGIN IMMEDIATE``), so one process migrates
    and the others then find the schema at head.
    """
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        elif engine.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
        conn.commit()
    logger.debug("registry schema at head (%s)", engine.url.render_as_string(hide_password=True))
