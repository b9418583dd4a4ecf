"""The registry database: Alembic migrations (concurrent starts), enrollment tokens, and a
round closing while an update is being stored (SQLite; PostgreSQL in test_postgres)."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from fl_core.coordinator.api import Coordinator, _sqlite_busy
from fl_core.coordinator.db import make_engine, migrate
from fl_core.coordinator.settings import CoordinatorSettings
from tests.fl_core.coordinator.harness import (
    check_close_while_storing,
    check_upload_authentication,
    enrolled_round,
    registry_file,
)


def _migrate(url: str, barrier: Any) -> None:
    engine = make_engine(url)
    barrier.wait(timeout=60)  # everyone imported and connected: start together
    migrate(engine)
    engine.dispose()


def test_processes_starting_together_migrate_the_registry_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'coordinator' / 'registry.db'}"
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_migrate, args=(url, barrier)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)

    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    engine = make_engine(url)
    with engine.connect() as conn:
        version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
        tables = set(sa.inspect(conn).get_table_names())
    engine.dispose()
    assert version == ["0006_partial_arrival_index"]  # the head revision
    assert {"clients", "enrollment_tokens", "nonces", "rounds", "tasks", "updates"} <= tables
    assert {"histograms", "monitoring_reports"} <= tables


def test_upgrading_a_registry_numbers_its_stored_updates_in_claim_order(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config

    from fl_core.coordinator.db import MIGRATIONS

    engine = make_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.connect() as conn:  # a registry of the first release, with three uploads
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001_registry")
        rows = [("b", 1, 10.0, True), ("a", 1, 20.0, True), ("c", 1, 15.0, False)]
        for client, rnd, at, stored in rows:
            conn.execute(
                sa.text(
                    "INSERT INTO updates (campaign, round, client_id, key, sha256, size, "
                    "received_at, stored) VALUES ('camp', :r, :c, 'k', 's', 1, :t, :s)"
                ),
                {"r": rnd, "c": client, "t": at, "s": stored},
            )
        conn.commit()

    migrate(engine)

    with engine.connect() as conn:
        got = conn.execute(
            sa.text("SELECT client_id, arrival_seq, accepted_at FROM updates ORDER BY client_id")
        ).all()
    engine.dispose()
    assert [tuple(r) for r in got] == [("a", 2, 20.0), ("b", 1, 10.0), ("c", None, None)]


def test_an_update_stored_while_its_round_closes_is_refused_not_lost(tmp_path: Path) -> None:
    """SQLite. Fails without the open check in the accepting statement: the late update
    was acknowledged (201) after the close had counted the round without it."""
    settings = CoordinatorSettings.local(tmp_path)
    check_close_while_storing(
        lambda store: Coordinator(settings, store=store), tmp_path / "artifacts"
    )


def test_upload_authentication_refuses_as_authenticate_then_upload_context(
    tmp_path: Path,
) -> None:
    """The upload's one-query authentication refuses as the two checks in order do (see
    ``harness.check_upload_authentication``; on PostgreSQL in test_postgres)."""
    coord = Coordinator(CoordinatorSettings.local(tmp_path))
    try:
        check_upload_authentication(coord)
    finally:
        coord.close()


def test_upload_statements_run_straight_on_sqlite3_as_through_sqlalchemy(tmp_path: Path) -> None:
    """The upload path's statements on SQLite skip SQLAlchemy's execution (``sqlite_direct``):
    each returns the same rows, decoded the same way (JSON as dicts, booleans as bools),
    and fails with the same SQLAlchemy exceptions (a duplicate key, a locked database)."""
    import sqlite3

    from fl_core.coordinator import registry, sqlite_direct

    settings = CoordinatorSettings.local(tmp_path / "home")
    coord = Coordinator(settings)
    try:
        enrolled_round(coord, "camp-1", ["a", "b"])
        with coord.connection() as conn:
            registry.claim_update(
                conn, campaign="camp-1", rnd=1, client_id="a", key="k", sha256="0" * 64, size=3
            )
        queries = [
            (registry._auth_upload_query(), {"client_id": "a", "campaign": "camp-1", "round": 1}),
            (registry._auth_upload_query(), {"client_id": "b", "campaign": "camp-1", "round": 2}),
            (registry._auth_upload_query(), {"client_id": "zz", "campaign": "camp-1", "round": 1}),
            (registry._upload_query(), {"client_id": "a", "campaign": "camp-1", "round": 1}),
            (registry._claimed_query(), {"w_campaign": "camp-1", "w_round": 1, "w_client_id": "a"}),
        ]
        with coord.connection() as conn:
            assert conn.info.get(sqlite_direct.INFO_KEY) is not None
            for stmt, params in queries:
                direct = sqlite_direct.execute(conn, stmt, params).first()
                assert not isinstance(direct, sa.Row)  # it did not go through SQLAlchemy
                expected = conn.execute(stmt, params).first()
                if expected is None:
                    assert direct is None
                    continue
                assert direct._asdict() == expected._asdict()
                assert [type(v) for v in direct] == [type(v) for v in expected]
            task = sqlite_direct.execute(conn, *queries[0]).first().task
            assert isinstance(task, dict) and task["codec"] == "dense_fp32"

            update = {"w_campaign": "camp-1", "w_round": 1, "w_client_id": "a", "accepted_at": 5.0}
            result = sqlite_direct.execute(conn, registry._mark_stored(), update)
            assert result.rowcount == 1
            sqlite_direct.commit(conn)
            row = conn.execute(registry._claimed_query(), update).first()
            assert row is not None and row.stored is True

            # without a value for a column that has a Python-side default, SQLAlchemy's
            # path runs it (and fills the default)
            claim = {"campaign": "camp-1", "round": 1, "client_id": "b", "key": "k2",
                     "sha256": "1" * 64, "size": 4, "received_at": 2.0}  # fmt: skip
            sqlite_direct.execute(conn, registry._claim_insert(), claim)
            sqlite_direct.commit(conn)
            where_b = {"w_campaign": "camp-1", "w_round": 1, "w_client_id": "b"}
            claimed = sqlite_direct.execute(conn, registry._claimed_query(), where_b).first()
            assert claimed is not None and claimed.stored is False

            nonce = {"nonce": "n" * 32, "client_id": "a", "seen_at": 1.0}
            sqlite_direct.execute(conn, registry._nonce_insert(), nonce)
            sqlite_direct.commit(conn)
            try:
                sqlite_direct.execute(conn, registry._nonce_insert(), nonce)
            except sa.exc.IntegrityError:
                sqlite_direct.rollback(conn)
            else:
                raise AssertionError("a duplicate nonce was inserted")

        other = sqlite3.connect(registry_file(coord), isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            engine = make_engine(settings.db_url, busy_timeout_s=0.0)
            with engine.connect() as conn:
                try:
                    nonce2 = {**nonce, "nonce": "m" * 32}
                    sqlite_direct.execute(conn, registry._nonce_insert(), nonce2)
                except sa.exc.OperationalError as exc:
                    assert "locked" in str(exc.orig)
                    assert _sqlite_busy(exc)  # what makes an inline call fall back
                else:
                    raise AssertionError("wrote to a database another connection had locked")
            engine.dispose()
        finally:
            other.execute("ROLLBACK")
            other.close()
    finally:
        coord.close()
