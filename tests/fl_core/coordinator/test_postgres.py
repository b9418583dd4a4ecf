"""The registry on the machine's PostgreSQL (production): Alembic migrations, enrollment,
a signed upload over HTTPS, replay refusal and round closing. Skips with a hint when no
PostgreSQL answers on 127.0.0.1:5432; fails instead under ``CI=true``."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from fl_core.coordinator.api import Coordinator
from fl_core.coordinator.settings import CoordinatorSettings
from tests.fl_core.coordinator.harness import (
    TLSFiles,
    serving,
    start_campaign,
    task_dict,
    update_bytes,
)
from tests.fl_core.coordinator.test_http import enroll, upload

ADMIN_URL = os.environ.get(
    "FL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture
def pg_url() -> Iterator[str]:
    try:
        admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any connection failure means "not available"
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required under CI=true ({ADMIN_URL}): {exc}")
        pytest.skip("needs PostgreSQL on 127.0.0.1:5432 (apt-get install postgresql)")
    name = f"fl_registry_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_registry_on_postgresql(pg_url: str, tls: TLSFiles, tmp_path: Path) -> None:
    coord = Coordinator(CoordinatorSettings(db_url=pg_url, store_url=str(tmp_path / "artifacts")))
    try:
        layout, _ = start_campaign(coord.store, "camp-1")
        with serving(coord, tls) as server:
            client = enroll(coord, server, tls, "a")
            coord.publish_round(
                "camp-1",
                1,
                base_version=0,
                tasks={"a": task_dict(), "b": task_dict()},
                deadline_s=60,
            )
            stored = upload(client, 1, update_bytes("camp-1", 1, "a", layout))
            client.close()
        status = coord.close_round("camp-1", 1)
        with coord.engine.connect() as conn:
            version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        assert coord.engine.dialect.name == "postgresql"
        assert version == "0004_update_signatures"  # the head revision
        assert stored["stored"] is True
        assert status.received == ["a"] and status.stragglers == {
            "b": "no update when the round closed"
        }
    finally:
        coord.close()
