"""The registry on the machine's PostgreSQL (production): Alembic migrations, enrollment,
a signed upload over HTTPS, replay refusal and round closing. Skips with a hint when no
PostgreSQL answers on 127.0.0.1:5432; fails instead under ``CI=true``."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from fl_core.agent.transport import RetryPolicy
from fl_core.coordinator import db
from fl_core.coordinator.api import Coordinator
from fl_core.coordinator.settings import CoordinatorSettings
from fl_core.rounds.layout import update_key
from tests.fl_core.coordinator.harness import (
    TLSFiles,
    accept_signed,
    check_close_while_storing,
    check_upload_authentication,
    enrolled_round,
    serving,
    start_campaign,
    task_dict,
    temporary_database,
    update_bytes,
)
from tests.fl_core.coordinator.test_http import enroll, upload

ADMIN_URL = os.environ.get(
    "FL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture
def pg_url() -> Iterator[str]:
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any connection failure means "not available"
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required under CI=true ({ADMIN_URL}): {exc}")
        pytest.skip("needs PostgreSQL on 127.0.0.1:5432 (apt-get install postgresql)")
    finally:
        admin.dispose()
    with temporary_database(ADMIN_URL, "fl_registry") as url:
        yield url


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
        assert version == "0006_partial_arrival_index"  # the head revision
        assert stored["stored"] is True
        assert status.received == ["a"] and status.stragglers == {
            "b": "no update when the round closed"
        }
    finally:
        coord.close()


def test_concurrent_acceptances_numbered_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    """Twenty-four uploads accepted at once from eight threads (as the HTTP app's worker
    threads accept them) on PostgreSQL: every one is accepted on its first try (no error
    reaches the client), and the campaign's arrival numbers are 1..24, each once."""
    coord = Coordinator(CoordinatorSettings(db_url=pg_url, store_url=str(tmp_path / "artifacts")))
    try:
        names = [f"c{i:02d}" for i in range(24)]
        layout, keys = enrolled_round(coord, "camp-1", names)

        def accept(n: str) -> bool:
            data = update_bytes("camp-1", 1, n, layout, scale=0.01 * (1 + names.index(n)))
            return accept_signed(coord, keys[n], "camp-1", n, data)

        with ThreadPoolExecutor(8) as pool:
            fresh = list(pool.map(accept, names))
        arrivals = coord.arrivals("camp-1", rounds=[1])
    finally:
        coord.close()
    assert fresh == [True] * 24
    assert sorted(u.arrival_seq for u in arrivals) == list(range(1, 25))
    assert sorted(u.client_id for u in arrivals) == names


def test_an_update_stored_while_its_round_closes_is_refused_on_postgresql(
    pg_url: str, tmp_path: Path
) -> None:
    """As on SQLite (test_registry): acceptance and closing exclude each other through the
    campaign's advisory lock and the open check in the accepting statement."""
    settings = CoordinatorSettings(db_url=pg_url, store_url=str(tmp_path / "artifacts"))
    check_close_while_storing(
        lambda store: Coordinator(settings, store=store), tmp_path / "artifacts"
    )


def test_pooled_connections_killed_by_the_server_are_replaced(pg_url: str, tmp_path: Path) -> None:
    """The server drops every registry connection (as a PostgreSQL restart does) while they
    sit in the coordinator's pool: once they have been idle ``IDLE_PING_S``, the next
    requests find them stale at checkout and get fresh ones (no request fails). Without the
    idle ping the first request on each dead connection fails (``OperationalError``)."""
    coord = Coordinator(CoordinatorSettings(db_url=pg_url, store_url=str(tmp_path / "artifacts")))
    try:
        names = [f"c{i}" for i in range(8)]
        layout, keys = enrolled_round(coord, "camp-1", names)
        barrier = threading.Barrier(4)

        def hold_one(_: int) -> int:  # four connections in the pool at once
            with coord.connection() as conn:
                barrier.wait(timeout=10)
                return int(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())

        with ThreadPoolExecutor(4) as pool:
            pids = set(pool.map(hold_one, range(4)))
        assert len(pids) == 4
        assert _drop_connections(pg_url) >= 4
        time.sleep(db.IDLE_PING_S + 0.2)

        def accept(n: str) -> bool:
            data = update_bytes("camp-1", 1, n, layout, scale=0.01 * (1 + names.index(n)))
            return accept_signed(coord, keys[n], "camp-1", n, data)

        with ThreadPoolExecutor(4) as pool:
            fresh = list(pool.map(accept, names))
        received = coord.round_status("camp-1", 1).received
    finally:
        coord.close()
    assert fresh == [True] * 8
    assert sorted(received) == names


def test_an_acceptance_waits_for_a_close_holding_the_campaign_lock(
    pg_url: str, tmp_path: Path
) -> None:
    """While a round's close holds the campaign's advisory lock (here: a transaction of the
    test's own that takes it, then closes the round), an update whose bytes are stored
    waits at its acceptance (``fl_accept_update`` takes the same lock) and, once the close
    commits, is refused 410 rather than accepted into a round already counted. Without the
    lock in the function it is accepted at once, during the close."""
    from fl_core.coordinator import registry
    from fl_core.coordinator.registry import ProtocolError

    coord = Coordinator(CoordinatorSettings(db_url=pg_url, store_url=str(tmp_path / "artifacts")))
    try:
        layout, keys = enrolled_round(coord, "camp-1", ["a"])
        data = update_bytes("camp-1", 1, "a", layout)
        with coord.engine.connect() as closing:
            registry.lock_campaign(closing, "camp-1")  # as Coordinator.close_round does
            with ThreadPoolExecutor(1) as pool:
                accepting = pool.submit(accept_signed, coord, keys["a"], "camp-1", "a", data)
                time.sleep(1.0)
                waited = not accepting.done()
                closing.execute(
                    sa.text("UPDATE rounds SET closed_at = :t WHERE campaign = 'camp-1'"),
                    {"t": time.time()},
                )
                closing.commit()
                with pytest.raises(ProtocolError) as refused:
                    accepting.result(timeout=30)
        status = coord.round_status("camp-1", 1)
    finally:
        coord.close()
    assert waited
    assert refused.value.status == 410
    assert status.received == [] and "a" in status.stragglers


def test_upload_authentication_refuses_as_authenticate_then_upload_context_on_postgresql(
    pg_url: str, tmp_path: Path
) -> None:
    coord = Coordinator(CoordinatorSettings(db_url=pg_url, store_url=str(tmp_path / "artifacts")))
    try:
        check_upload_authentication(coord)
    finally:
        coord.close()


def test_a_batch_of_uploads_answers_each_upload_as_alone_on_postgresql(
    pg_url: str, tmp_path: Path
) -> None:
    """On PostgreSQL the uploads that arrive together are authenticated and accepted in
    batches (``fl_core.coordinator.batch``). One batch holding every kind of refusal beside
    good uploads: each gets the answer the one-upload path gives it (status and reason),
    the good ones are accepted once each with their bytes and one arrival number, and none
    of the refused ones is accepted."""
    from fl_core.coordinator import batch, protocol, registry
    from fl_core.coordinator.api import PendingUpload
    from fl_core.coordinator.registry import ProtocolError

    coord = Coordinator(CoordinatorSettings(db_url=pg_url, store_url=str(tmp_path / "artifacts")))
    loop = asyncio.new_event_loop()  # the batches run on an event loop, as the app's do
    on_loop = loop.run_until_complete
    try:
        assert coord.batched and coord.batched_acceptance
        layout, keys = enrolled_round(coord, "camp-1", ["a", "b", "c", "d", "e", "r"])
        _, more = enrolled_round(coord, "camp-2", ["x"])  # enrolled, no task in camp-1
        keys.update(more)
        coord.revoke("r")

        def signed(
            client: str, key: str, *, nonce: str = "", skew: float = 0
        ) -> batch.SignedUpload:
            nonce = nonce or secrets.token_hex(16)
            stamp = str(int(time.time() - skew))
            message = protocol.request_message(
                method="PUT", path="/updates/camp-1/1", query="", body_sha256="0" * 64,
                timestamp=stamp, nonce=nonce, client_id=client,
            )  # fmt: skip
            signature = protocol.sign(keys[key], message)
            return batch.SignedUpload(
                client, "camp-1", 1, message, signature, nonce, float(stamp)
            )

        def cases() -> list[batch.SignedUpload]:
            twice = secrets.token_hex(16)
            return [
                signed("ghost", "a"),  # never enrolled: 401
                signed("a", "b"),  # another client's key: 401
                signed("r", "r"),  # revoked: 403
                signed("x", "x"),  # not selected in camp-1: 403
                signed("a", "a", skew=10_000),  # stale timestamp: 401
                signed("a", "a"), signed("b", "b"), signed("c", "c"), signed("d", "d"),
                signed("e", "e", nonce=twice), signed("e", "e", nonce=twice),  # replay: 409
            ]  # fmt: skip

        def answer(found: Any) -> Any:
            if isinstance(found, ProtocolError):
                return found.status, found.reason
            return "ok", found[0].base_version, found[0].public_key

        alone = []
        for it in cases():
            try:
                with coord.connection(autocommit=True) as c:
                    ctx = registry.authenticate_upload(
                        c, it.campaign, it.rnd, client_id=it.client_id, message=it.message,
                        signature=it.signature, nonce=it.nonce, timestamp=it.timestamp,
                        skew_s=coord.settings.clock_skew_s,
                    )  # fmt: skip
                alone.append(answer((ctx, 0)))
            except ProtocolError as exc:
                alone.append(answer(exc))
        in_batch = cases()
        auth = on_loop(coord.authenticate_batch(in_batch))
        assert [answer(a) for a in auth] == alone
        replay = on_loop(coord.authenticate_batch([in_batch[5]]))  # admitted before: again
        assert answer(replay[0]) == (409, "replayed request (nonce already seen)")
        assert [a[0] for a in alone] == [401, 401, 403, 403, 401] + ["ok"] * 5 + [409]
        ctx = {
            it.client_id: a[0]
            for it, a in zip(cases(), auth, strict=True)
            if not isinstance(a, ProtocolError)
        }

        def pending(client: str, data: bytes, *, key: str = "") -> PendingUpload:
            digest = hashlib.sha256(data).hexdigest()
            message = protocol.update_message(
                campaign="camp-1", rnd=1, client_id=client, message_sha256=digest
            )
            signature = protocol.sign(keys[key or client], message)
            return PendingUpload(client, "camp-1", 1, data, signature, digest, ctx[client])

        good = {n: update_bytes("camp-1", 1, n, layout, scale=0.1 * (i + 1))
                for i, n in enumerate("abc")}  # fmt: skip
        uploads = [
            pending("a", good["a"]),
            pending("b", good["b"]),
            pending("a", good["a"]),  # the same bytes again in the batch: an idempotent retry
            pending("b", update_bytes("camp-1", 1, "b", layout, scale=9.0)),  # other bytes: 409
            pending("c", good["c"], key="a"),  # signed with another key: 401
            pending("d", b"FLW1 not an update"),  # malformed: 400
            pending("e", update_bytes("camp-1", 1, "e", layout, base_version=7)),  # 400
            pending("c", good["c"]),
        ]
        results = on_loop(coord.accept_batch(uploads))
        statuses = [r.status if isinstance(r, ProtocolError) else "ok" for r in results]
        assert statuses == ["ok", "ok", "ok", 409, 401, 400, 400, "ok"]
        for u, r in zip(uploads, results, strict=True):
            if not isinstance(r, Exception):
                assert r[1].sha256 == hashlib.sha256(good[u.client_id]).hexdigest()
        again = on_loop(coord.accept_batch([pending("a", good["a"])]))  # a retry, later: 200
        assert not isinstance(again[0], Exception) and again[0][0] is False
        arrivals = coord.arrivals("camp-1", rounds=[1])
        status = coord.close_round("camp-1", 1)
        stored = {n: coord.store.get_bytes(update_key("camp-1", 1, n)) for n in "abc"}
        # checked while the round was open, accepted after it closed: 410, as alone
        late = on_loop(coord.accept_batch([pending("e", update_bytes("camp-1", 1, "e", layout))]))
    finally:
        coord.close()
        loop.close()
    assert sorted(u.client_id for u in arrivals) == ["a", "b", "c"]
    assert sorted(u.arrival_seq for u in arrivals) == [1, 2, 3]  # each accepted once
    assert stored == good
    assert sorted(status.received) == ["a", "b", "c"]
    assert isinstance(late[0], ProtocolError) and late[0].status == 410


def test_concurrent_http_uploads_are_batched_on_postgresql(
    pg_url: str, tls: TLSFiles, tmp_path: Path
) -> None:
    """Thirty-two signed uploads at once over HTTPS, on PostgreSQL: the coordinator groups
    them into batches (some batch holds several), and each is accepted once, with its
    bytes and its own arrival number. The registry URL names psycopg2, as the production
    stack's does: the batches still run (on psycopg 3, which they use directly)."""
    from fl_core.coordinator import deps

    url = sa.make_url(pg_url).set(drivername="postgresql+psycopg2").render_as_string(False)
    coord = Coordinator(CoordinatorSettings(db_url=url, store_url=str(tmp_path / "artifacts")))
    names = [f"c{i:02d}" for i in range(32)]
    try:
        layout, _ = start_campaign(coord.store, "camp-1")
        with serving(coord, tls) as server:
            clients = {n: enroll(coord, server, tls, n) for n in names}
            data, answers = _upload_round(coord, clients, layout, 1)
            for c in clients.values():
                c.close()
            batches = deps._BATCHES[coord]  # noqa: SLF001 - how the uploads were grouped
        arrivals = coord.arrivals("camp-1", rounds=[1])
        stored = {n: coord.store.get_bytes(update_key("camp-1", 1, n)) for n in names}
    finally:
        coord.close()
    assert all(a["stored"] is True for a in answers)
    assert batches.auth.largest > 1 and batches.accept.largest > 1
    assert batches.accept.batches < len(names)
    assert sorted(u.arrival_seq for u in arrivals) == list(range(1, 33))
    assert stored == data


def test_batch_connections_dropped_by_the_server_are_replaced(
    pg_url: str, tls: TLSFiles, tmp_path: Path
) -> None:
    """The server drops every connection (as a PostgreSQL restart does) between two rounds
    of HTTP uploads: the batches' own connections (psycopg, on the event loop), idle since,
    are found stale when next used and replaced, and every upload of the second round is
    accepted. Without the idle ping the first batch on each dead connection failed its
    uploads (500)."""
    coord = Coordinator(CoordinatorSettings(db_url=pg_url, store_url=str(tmp_path / "artifacts")))
    names = [f"c{i}" for i in range(8)]
    try:
        layout, _ = start_campaign(coord.store, "camp-1")
        with serving(coord, tls) as server:
            clients = {n: enroll(coord, server, tls, n) for n in names}
            for c in clients.values():
                c.retry = RetryPolicy(attempts=1)  # a failed upload is not retried unseen
            answers: list[dict[str, Any]] = []
            for rnd in (1, 2):
                answers += _upload_round(coord, clients, layout, rnd)[1]
                if rnd == 1:
                    assert _drop_connections(pg_url) >= 2  # the batches' own among them
                    time.sleep(db.IDLE_PING_S + 0.2)
            for c in clients.values():
                c.close()
        received = coord.round_status("camp-1", 2).received
    finally:
        coord.close()
    assert all(a["stored"] is True for a in answers) and len(answers) == 16
    assert sorted(received) == names


def _upload_round(
    coord: Coordinator, clients: dict[str, Any], layout: Any, rnd: int
) -> tuple[dict[str, bytes], list[dict[str, Any]]]:
    """Round ``rnd`` of camp-1 published for ``clients`` (on model version 0), then each
    one's update uploaded over HTTP, all at once: the updates and the answers."""
    names = list(clients)
    tasks = {n: task_dict() for n in names}
    coord.publish_round("camp-1", rnd, base_version=0, tasks=tasks, deadline_s=60)
    data = {
        n: update_bytes("camp-1", rnd, n, layout, scale=0.01 * (i + 1), base_version=0)
        for i, n in enumerate(names)
    }
    with ThreadPoolExecutor(len(names)) as pool:
        answers = list(pool.map(lambda n: upload(clients[n], rnd, data[n]), names))
    return data, answers


def _drop_connections(pg_url: str) -> int:
    """Terminate every server connection to ``pg_url``'s database; how many there were."""
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            return int(
                conn.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity, pg_terminate_backend(pid) "
                        "WHERE datname = :db AND pid <> pg_backend_pid()"
                    ),
                    {"db": sa.make_url(pg_url).database},
                ).scalar_one()
            )
    finally:
        admin.dispose()


def test_an_upload_reads_its_own_update_row_not_the_campaigns_on_postgresql(
    pg_url: str, tmp_path: Path
) -> None:
    """An upload's authentication (the batch statement) and its acceptance
    (``fl_accept_update``) each look one update up by its key: with 3,000 updates already
    accepted in the campaign, they read a few index entries of ``updates``, not the
    campaign's. Run with generic plans (``plan_cache_mode``), as a young table's cached
    plans are: with the arrival index over every row, the planner took it for the lookup by
    key and walked every update of the campaign (measured in the benchmark: 5,900 entries
    per lookup after six rounds of 1,000 uploads; here about 3,000 per statement)."""
    from fl_core.coordinator import batch, registry

    coord = Coordinator(CoordinatorSettings(db_url=pg_url, store_url=str(tmp_path / "artifacts")))
    try:
        with coord.engine.connect() as c:
            version = int(c.execute(sa.text("SHOW server_version_num")).scalar_one())
        if version < 150000:  # pg_stat_force_next_flush(): statistics read back at once
            message = f"needs PostgreSQL 15 or newer (this server: {version})"
            if os.environ.get("CI") == "true":
                pytest.fail(message)
            pytest.skip(message)
        enrolled_round(coord, "camp-1", ["a"])
        with coord.engine.begin() as c:  # earlier rounds' accepted updates; a's claim
            c.execute(sa.text(
                "INSERT INTO updates (campaign, round, client_id, key, sha256, size, "
                "received_at, stored, accepted_at, arrival_seq) SELECT 'camp-1', 100 + i % 3, "
                "'old' || i, 'k', 's', 1, 0, true, 0, i FROM generate_series(1, 3000) AS i"
            ))  # fmt: skip
            c.execute(sa.text(
                "INSERT INTO updates (campaign, round, client_id, key, sha256, size, "
                "received_at, stored) VALUES ('camp-1', 1, 'a', 'k', 's', 1, 0, false)"
            ))  # fmt: skip

        async def lookups() -> tuple[int, list[Any], list[bool]]:
            conn = await batch.connect(coord.engine)
            try:
                await conn.execute("SET plan_cache_mode = force_generic_plan")
                reads = await _index_reads(conn)
                found = []
                for k in range(6):  # past psycopg's threshold for preparing a statement
                    upload = batch.SignedUpload("a", "camp-1", 1, b"m", "bad", f"n{k}", time.time())
                    found += await batch.authenticate_uploads(conn, [upload], skew_s=60)
                accepted = await batch.accept_stored(conn, [("camp-1", 1, "a")])
                return await _index_reads(conn) - reads, found, accepted
            finally:
                await conn.close()

        reads, found, accepted = asyncio.run(lookups())
        arrivals = coord.arrivals("camp-1", rounds=[1])
    finally:
        coord.close()
    # the statements did their work: a's row found (refused for its bad signature), accepted
    assert all(isinstance(f, registry.ProtocolError) and f.status == 401 for f in found)
    assert accepted == [True] and [(u.client_id, u.arrival_seq) for u in arrivals] == [("a", 3001)]
    assert reads < 100, f"{reads} index entries of updates read for 7 lookups by key"


async def _index_reads(conn: Any) -> int:
    """Index entries of the ``updates`` table read so far (this session's own flushed)."""
    await conn.execute("SELECT pg_stat_force_next_flush()")  # flushed once the session idles
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    row = await (
        await conn.execute(
            "SELECT coalesce(sum(idx_tup_read), 0) FROM pg_stat_user_indexes "
            "WHERE relname = 'updates'"
        )
    ).fetchone()
    return int(row[0])
