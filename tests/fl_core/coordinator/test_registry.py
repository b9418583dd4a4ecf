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
from tests.fl_core.coordinator.harness import check_close_while_storing


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
    """The upload's hot path reads the client's key and the upload context in one query
    (``authenticate_upload``). It must refuse exactly as the two checks one after the other
    do, in the same order: unknown client and wrong key 401, revoked 403 (selected or not),
    replayed nonce 409, not selected 403, round closed 410."""
    import secrets
    import time

    from fl_core.coordinator import protocol, registry
    from fl_core.coordinator.registry import ProtocolError
    from tests.fl_core.coordinator.harness import enrolled_round

    coord = Coordinator(CoordinatorSettings.local(tmp_path))
    _, keys = enrolled_round(coord, "camp-1", ["a", "b", "r", "s"])
    _, more = enrolled_round(coord, "camp-2", ["x"])  # enrolled, no task in camp-1
    keys.update(more)
    coord.revoke("r")

    def one_by_one(s: Any, campaign: str, rnd: int, **signed: Any) -> Any:
        client = registry.authenticate(s, **signed)
        return registry.upload_context(s, campaign, rnd, client)

    def at_once(s: Any, campaign: str, rnd: int, **signed: Any) -> Any:
        return registry.authenticate_upload(s, campaign, rnd, **signed)

    def attempt(path: Any, client: str, key: str, rnd: int = 1, nonce: str = "") -> Any:
        nonce = nonce or secrets.token_hex(16)
        stamp = str(int(time.time()))
        message = protocol.request_message(
            method="PUT", path=f"/updates/camp-1/{rnd}", query="", body_sha256="0" * 64,
            timestamp=stamp, nonce=nonce, client_id=client,
        )  # fmt: skip
        signed = dict(client_id=client, message=message, nonce=nonce, timestamp=float(stamp),
                      signature=protocol.sign(keys[key], message), skew_s=300.0)  # fmt: skip
        try:
            with coord.connection() as c:
                ctx = path(c, "camp-1", rnd, **signed)
        except ProtocolError as exc:
            return exc.status, exc.reason
        return "ok", ctx.base_version, ctx.public_key == protocol.public_key_b64(keys[client])

    cases = [  # (client, signing key, round)
        ("ghost", "a", 1),  # never enrolled
        ("a", "b", 1),  # signed with another client's key
        ("r", "r", 1),  # revoked, selected
        ("x", "x", 1),  # enrolled, not selected in camp-1
        ("a", "a", 2),  # no such round
        ("a", "a", 1),
    ]
    seen = {}
    for path in (one_by_one, at_once):
        seen[path] = [attempt(path, *case) for case in cases]
        used = secrets.token_hex(16)
        attempt(path, "b", "b", nonce=used)
        seen[path].append(attempt(path, "b", "b", nonce=used))  # the same nonce again
    coord.close_round("camp-1", 1)
    for path in (one_by_one, at_once):
        seen[path].append(attempt(path, "s", "s"))
        seen[path].append(attempt(path, "r", "r"))  # revoked beats closed
    coord.close()

    assert seen[at_once] == seen[one_by_one]
    statuses = [outcome[0] for outcome in seen[at_once]]
    assert statuses == [401, 401, 403, 403, 403, "ok", 409, 410, 403]
    assert seen[at_once][0][1] == "unknown client" and "revoked" in seen[at_once][2][1]
    assert seen[at_once][5] == ("ok", 0, True)
