"""The registry database: Alembic migrations (concurrent starts) and enrollment tokens."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from fl_core.coordinator.db import make_engine, migrate


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
    assert version == ["0002_monitoring"]  # the head revision
    assert {"clients", "enrollment_tokens", "nonces", "rounds", "tasks", "updates"} <= tables
    assert {"histograms", "monitoring_reports"} <= tables
