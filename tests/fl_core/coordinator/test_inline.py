"""An upload's registry and store work on the event loop (SQLite registry, local store), and
its fall-back to a worker thread whenever that work would wait: the server over real HTTPS
on 127.0.0.1, the registry a real SQLite file that the test locks as another process would."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import sqlite3
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from fl_core.agent.transport import Refused
from fl_core.coordinator import protocol
from fl_core.coordinator.api import Coordinator
from fl_core.coordinator.deps import registry_work
from fl_core.coordinator.settings import CoordinatorSettings
from fl_core.rounds.layout import update_key
from fl_core.store import LocalStore
from tests.fl_core.coordinator.harness import (
    ServerThread,
    TLSFiles,
    enrolled_round,
    registry_file,
    start_campaign,
    update_bytes,
)
from tests.fl_core.coordinator.test_http import enroll, publish, sign_update

CID = "camp-1"


@pytest.fixture
def layout(coord: Coordinator) -> Any:
    return start_campaign(coord.store, CID)[0]


def test_a_registry_locked_by_another_process_holds_the_upload_not_the_server(
    coord: Coordinator, server: ServerThread, tls: TLSFiles, layout: Any
) -> None:
    """Another process (a DAG task) holds SQLite's write lock for 2.5 s while an upload
    arrives: the upload waits for it in a worker thread, and meanwhile the event loop
    serves requests that need no registry (the API description here) at once; once the
    lock is released the upload is accepted."""
    assert coord.inline_ok
    client = enroll(coord, server, tls, "a")
    publish(coord, ["a"])
    data = update_bytes(CID, 1, "a", layout)
    signature = sign_update(client, 1, data)
    outcome: dict[str, Any] = {}

    def upload() -> None:
        outcome["out"], _ = client.upload_update(f"/v1/updates/{CID}/1", data, signature=signature)

    other = sqlite3.connect(registry_file(coord), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # the write lock, as a writing transaction holds it
    try:
        uploading = threading.Thread(target=upload)
        uploading.start()
        time.sleep(0.5)
        verify = ssl.create_default_context(cafile=str(tls.ca))
        with httpx.Client(verify=verify, timeout=30) as http:
            start = time.monotonic()
            served = http.get(server.url + "/openapi.json")
            answered_in = time.monotonic() - start
        waiting = uploading.is_alive()
        time.sleep(2.0)
    finally:
        other.execute("ROLLBACK")
        other.close()
    uploading.join(timeout=30)

    assert served.status_code == 200
    assert answered_in < 1.0, f"the server stalled {answered_in:.1f} s behind the lock"
    assert waiting, "the upload did not wait for the lock (the test proves nothing)"
    assert outcome["out"]["stored"] is True
    assert coord.store.get_bytes(update_key(CID, 1, "a")) == data
    assert coord.round_status(CID, 1).received == ["a"]


class _TurnTakenAfterWrite(LocalStore):
    """A local store that, after its first write, lets another thread take the registry's
    turn (a heartbeat's session, say) and hold it for a while: the upload's next registry
    call, its acceptance, would have to wait for it."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.coord: Coordinator | None = None
        self.armed = False
        self.writes = 0
        self.holder: threading.Thread | None = None

    def put_bytes(self, key: str, data: bytes) -> str:
        uri = super().put_bytes(key, data)
        if not self.armed:
            return uri
        self.writes += 1
        if self.holder is None:
            holding = threading.Event()

            def hold() -> None:
                assert self.coord is not None
                with self.coord.session():
                    holding.set()
                    time.sleep(0.5)

            self.holder = threading.Thread(target=hold)
            self.holder.start()
            holding.wait(10)
        return uri


def test_an_upload_that_falls_back_after_its_claim_is_accepted_once(tmp_path: Path) -> None:
    """The inline acceptance finds the registry's turn taken after the update was claimed
    and written: the whole call runs again in a worker thread (claim and write again, as a
    client's retry would) and the update is accepted exactly once, with its bytes."""
    settings = CoordinatorSettings.local(tmp_path / "home")
    store = _TurnTakenAfterWrite(tmp_path / "home" / "artifacts")
    coord = Coordinator(settings, store=store)
    store.coord = coord
    try:
        layout, keys = enrolled_round(coord, CID, ["a"])
        data = update_bytes(CID, 1, "a", layout)
        signature = protocol.sign(
            keys["a"],
            protocol.update_message(
                campaign=CID, rnd=1, client_id="a", message_sha256=hashlib.sha256(data).hexdigest()
            ),
        )
        assert coord.inline_ok
        store.armed = True  # from here on, only the update is written
        accept = functools.partial(coord.accept_update, signature=signature)

        fresh, record = asyncio.run(registry_work(coord, accept, "a", CID, 1, data))

        assert store.writes == 2, "the acceptance did not fall back (the test proves nothing)"
        assert fresh is True and record.client_id == "a"
        assert store.get_bytes(update_key(CID, 1, "a")) == data
        assert coord.round_status(CID, 1).received == ["a"]
        [arrival] = coord.arrivals(CID, rounds=[1])
        assert arrival.client_id == "a"
        assert coord.accept_update("a", CID, 1, data, signature=signature)[0] is False  # a retry
    finally:
        if store.holder is not None:
            store.holder.join()
        coord.close()


def test_warm_up_compiles_the_upload_path_and_leaves_the_registry_as_it_was(
    tmp_path: Path,
) -> None:
    """What a serving process runs before it listens: the upload path's statements run once
    (matching nothing) and are rolled back, on the connection inline uploads use; the
    layouts of open campaigns are loaded. Not a row is added."""
    from fl_core.coordinator.app import serving_app

    settings = CoordinatorSettings.local(tmp_path / "home")
    first = Coordinator(settings)
    enrolled_round(first, CID, ["a"])
    first.close()

    app = serving_app(settings)
    coord: Coordinator = app.state.coordinator
    try:
        assert CID in coord._campaigns  # noqa: SLF001 - loaded before the first upload
        engine = sa.create_engine(settings.db_url)
        with engine.connect() as conn:
            counts = {
                table: conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
                for table in ("nonces", "updates", "stragglers")
            }
        engine.dispose()
        assert counts == {"nonces": 0, "updates": 0, "stragglers": 0}
        assert coord._inline_conn is not None  # noqa: SLF001 - opened for the first upload
    finally:
        coord.close()


def test_a_late_upload_whose_straggler_record_meets_a_lock_is_410_not_a_replay(
    coord: Coordinator, server: ServerThread, tls: TLSFiles, layout: Any
) -> None:
    """An upload after its round's deadline: the authentication records the nonce, then the
    client as straggler, and answers 410. Both writes are one transaction, so another
    process cannot take SQLite's write lock between them. (When the nonce was committed
    first, another process's lock there made the straggler record fail inline, the rerun in
    a thread then found its own nonce and answered 409, a replay, to a first request.)"""
    client = enroll(coord, server, tls, "late")
    publish(coord, ["late"], deadline_s=1.0)
    time.sleep(1.2)
    data = update_bytes(CID, 1, "late", layout)
    signature = sign_update(client, 1, data)
    database = registry_file(coord)
    seen: list[str] = []

    def take_the_lock_at_the_straggler_record(
        _conn: Any, _cursor: Any, statement: str, *_: Any
    ) -> None:
        if seen or "stragglers" not in statement:
            return
        other = sqlite3.connect(database, isolation_level=None, timeout=0, check_same_thread=False)
        try:
            other.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:  # the upload's transaction holds it
            seen.append("held by the upload")
            other.close()
            return
        seen.append("taken by another process")
        threading.Timer(0.5, lambda: (other.execute("ROLLBACK"), other.close())).start()

    sa.event.listen(sa.Engine, "before_cursor_execute", take_the_lock_at_the_straggler_record)
    try:
        client.upload_update(f"/v1/updates/{CID}/1", data, signature=signature)
    except Refused as refused:
        status = refused.status
    else:
        status = 201
    finally:
        sa.event.remove(sa.Engine, "before_cursor_execute", take_the_lock_at_the_straggler_record)

    assert status == 410
    assert seen == ["held by the upload"]
    assert "late" in coord.round_status(CID, 1).stragglers
