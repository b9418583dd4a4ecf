"""The registry database: Alembic migrations (concurrent starts), enrollment tokens, and a
round closing while an update is being stored (SQLite; PostgreSQL in test_postgres)."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from fl_core.coordinator.api import Coordinator
from fl_core.coordinator.db import make_engine, migrate
from fl_core.coordinator.settings import CoordinatorSettings
from tests.fl_core.coordinator.harness import (
    check_close_while_storing,
    check_upload_authentication,
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
    assert version == ["0005_accept_function"]  # the head revision
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
