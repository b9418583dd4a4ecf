"""The upload admission limit over real HTTPS on 127.0.0.1: beyond the uploads in flight and
queued, an upload gets 503 with Retry-After before any work; the agent waits and retries,
and its retry is accepted; nothing acknowledged is lost."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fl_core.agent.identity import Identity
from fl_core.agent.transport import CoordinatorClient, Refused, RetryPolicy, retry_after_s
from fl_core.coordinator import protocol
from fl_core.coordinator.admission import (
    MAX_RETRY_AFTER_S,
    RATE_SAMPLES,
    TURN_S,
    WAITING_TURNS,
    Busy,
    UploadAdmission,
)
from fl_core.coordinator.api import Coordinator
from fl_core.coordinator.app import create_app
from fl_core.coordinator.settings import ENV_LIMITS, CoordinatorSettings
from fl_core.models import Layout
from fl_core.rounds.layout import update_key
from tests.fl_core.coordinator.harness import (
    ServerThread,
    TLSFiles,
    raw_request,
    start_campaign,
    task_dict,
    update_bytes,
)

CID = "camp-adm"
PATH = f"/v1/updates/{CID}/1"


OneSlot = tuple[Coordinator, ServerThread, UploadAdmission]


@contextlib.contextmanager
def one_slot_server(tmp_path: Path, tls: TLSFiles, *, small_queue: int) -> Iterator[OneSlot]:
    """A coordinator that reads one upload at a time and queues none (small ones: at most
    ``small_queue`` on their own allowance), and its admission."""
    coord = Coordinator(
        CoordinatorSettings.local(
            tmp_path / "home",
            max_concurrent_uploads=1,
            max_queued_uploads=0,
            max_queued_small_uploads=small_queue,
        )
    )
    app = create_app(coordinator=coord)
    server = ServerThread(coord, tls).start(app)
    try:
        yield coord, server, app.state.upload_admission
    finally:
        server.stop()
        coord.close()


@pytest.fixture
def one_slot(tmp_path: Path, tls: TLSFiles) -> Iterator[OneSlot]:
    """:func:`one_slot_server` with no allowance for small uploads either."""
    with one_slot_server(tmp_path, tls, small_queue=0) as served:
        yield served


def enroll(coord: Coordinator, server: ServerThread, tls: TLSFiles, name: str) -> Identity:
    token = coord.create_enrollment_token(name)
    key = Ed25519PrivateKey.generate()
    with CoordinatorClient(server.url, ca=tls.ca) as client:
        client_id = client.enroll(token, protocol.public_key_b64(key))
    return Identity(client_id, server.url, key)


def update_signature(identity: Identity, data: bytes) -> str:
    return protocol.sign(
        identity.key,
        protocol.update_message(
            campaign=CID,
            rnd=1,
            client_id=identity.client_id,
            message_sha256=hashlib.sha256(data).hexdigest(),
        ),
    )


def upload_headers(identity: Identity, data: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/octet-stream",
        protocol.H_UPDATE_SIGNATURE: update_signature(identity, data),
        **protocol.sign_request(
            identity.key,
            client_id=identity.client_id,
            method="PUT",
            path=PATH,
            body_sha256=hashlib.sha256(data).hexdigest(),
        ),
    }


class SlowUpload:
    """A signed upload over a raw TLS socket that sends half its body and waits: it holds
    an admission slot until :meth:`finish` sends the rest."""

    def __init__(self, server: ServerThread, tls: TLSFiles, identity: Identity, data: bytes):
        self.data = data
        headers = upload_headers(identity, data)
        self.sock = raw_request(server, tls, f"PUT {PATH} HTTP/1.1", headers, len(data))
        self.sock.sendall(data[: len(data) // 2])

    def finish(self) -> int:
        """Send the rest of the body; the response's status."""
        self.sock.sendall(self.data[len(self.data) // 2 :])
        reply = b""
        while b"\r\n" not in reply:
            chunk = self.sock.recv(4096)
            assert chunk, "connection closed before a response"
            reply += chunk
        self.sock.close()
        return int(reply.split(b" ", 2)[1])


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    """Wait for a server-side state change (not a timing assertion)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def publish(coord: Coordinator, clients: list[str]) -> Layout:
    layout = start_campaign(coord.store, CID)[0]
    coord.publish_round(
        CID, 1, base_version=0, tasks={c: task_dict(seed=i) for i, c in enumerate(clients)},
        deadline_s=120,
    )  # fmt: skip
    return layout


def two_devices(
    coord: Coordinator, server: ServerThread, tls: TLSFiles
) -> tuple[Identity, Identity, bytes, bytes]:
    """dev-a and dev-b enrolled and selected in round 1, and an update of each."""
    a = enroll(coord, server, tls, "dev-a")
    b = enroll(coord, server, tls, "dev-b")
    layout = publish(coord, ["dev-a", "dev-b"])
    data_a = update_bytes(CID, 1, "dev-a", layout)
    data_b = update_bytes(CID, 1, "dev-b", layout, scale=0.02)
    return a, b, data_a, data_b


def slot_held(one_slot: OneSlot, tls: TLSFiles) -> tuple[Identity, bytes, SlowUpload]:
    """:func:`two_devices`, dev-a's upload holding the only slot half sent; dev-b, its
    update, and dev-a's upload."""
    coord, server, adm = one_slot
    a, b, data_a, data_b = two_devices(coord, server, tls)
    slow = SlowUpload(server, tls, a, data_a)
    wait_until(lambda: adm.admitted == 1, "the slow upload to hold the only slot")
    return b, data_b, slow


def test_upload_beyond_the_limit_gets_503_with_retry_after_and_the_retry_is_accepted(
    one_slot: OneSlot, tls: TLSFiles
) -> None:
    coord, server, adm = one_slot
    b, data_b, slow = slot_held(one_slot, tls)
    with httpx.Client(verify=ssl.create_default_context(cafile=str(tls.ca)), timeout=30) as http:
        refused = http.put(server.url + PATH, content=data_b, headers=upload_headers(b, data_b))

    assert refused.status_code == 503
    assert int(refused.headers["Retry-After"]) >= coord.settings.busy_retry_after_s
    assert "retry after" in refused.json()["detail"]
    assert coord.received_updates(CID, 1) == []  # nothing stored, nothing claimed

    result: dict[str, object] = {}

    def agent_upload() -> None:  # the agent's own retry rule, after Retry-After
        with CoordinatorClient(server.url, ca=tls.ca, identity=b) as client:
            out, _ = client.upload_update(PATH, data_b, signature=update_signature(b, data_b))
            result["out"] = out

    worker = threading.Thread(target=agent_upload)
    worker.start()
    wait_until(lambda: adm.refused >= 2, "the agent's first attempt to be refused")
    assert slow.finish() == 201
    worker.join(timeout=60)

    assert not worker.is_alive()
    assert result["out"] == {
        "client_id": "dev-b",
        "key": update_key(CID, 1, "dev-b"),
        "sha256": hashlib.sha256(data_b).hexdigest(),
        "size": len(data_b),
        "stored": True,
    }
    assert sorted(u.client_id for u in coord.received_updates(CID, 1)) == ["dev-a", "dev-b"]
    assert coord.store.get_bytes(update_key(CID, 1, "dev-a")) == slow.data
    assert coord.store.get_bytes(update_key(CID, 1, "dev-b")) == data_b
    assert adm.admitted == 0


def test_a_small_upload_waits_for_the_slot_on_its_own_allowance_instead_of_a_503(
    tmp_path: Path, tls: TLSFiles
) -> None:
    with one_slot_server(tmp_path, tls, small_queue=1) as (coord, server, adm):
        ids = [enroll(coord, server, tls, f"dev-{c}") for c in "abc"]
        layout = publish(coord, [i.client_id for i in ids])
        data = [update_bytes(CID, 1, i.client_id, layout) for i in ids]
        slow = SlowUpload(server, tls, ids[0], data[0])  # small: the allowance's one place
        wait_until(lambda: adm.admitted == 1, "the slow upload to hold the only slot")
        statuses: dict[str, int] = {}
        verify = ssl.create_default_context(cafile=str(tls.ca))

        def put(i: int) -> None:
            with httpx.Client(verify=verify, timeout=60) as http:
                r = http.put(
                    server.url + PATH, content=data[i], headers=upload_headers(ids[i], data[i])
                )
                statuses[ids[i].client_id] = r.status_code

        waiting = threading.Thread(target=put, args=(1,))
        waiting.start()  # the one place of slots + queue: admitted, waits for the slot
        wait_until(lambda: adm.admitted == 2, "the second upload to be admitted")
        put(2)  # both kinds of place taken: refused at once
        assert statuses == {"dev-c": 503}
        assert slow.finish() == 201
        waiting.join(timeout=60)
        assert statuses == {"dev-c": 503, "dev-b": 201}
        assert sorted(u.client_id for u in coord.received_updates(CID, 1)) == ["dev-a", "dev-b"]
        assert adm.admitted == 0 and adm.refused == 1


def test_busy_answers_do_not_use_up_attempts_but_are_bounded(
    one_slot: OneSlot, tls: TLSFiles
) -> None:
    from fl_core.agent.transport import Unreachable

    coord, server, adm = one_slot
    b, data_b, slow = slot_held(one_slot, tls)

    # one attempt, but busy answers may be waited out for up to 1.5 s: >= 2 refusals
    policy = RetryPolicy(attempts=1, busy_s=1.5)
    client = CoordinatorClient(server.url, ca=tls.ca, identity=b, retry=policy)
    with client, pytest.raises(Unreachable, match="503"):
        client.upload_update(PATH, data_b, signature=update_signature(b, data_b))

    assert adm.refused >= 2
    assert slow.finish() == 201
    assert [u.client_id for u in coord.received_updates(CID, 1)] == ["dev-a"]


def _held_uploads(adm: UploadAdmission, now: list[float], holds: list[float], gap: float) -> None:
    """Uploads through ``adm``'s slots one after another: each holds its slot ``hold``
    seconds of the fake clock, ``gap`` seconds apart."""

    async def run() -> None:
        for hold in holds:
            with adm.admit():
                async with adm.slot():
                    now[0] += hold
            now[0] += gap

    asyncio.run(run())


def _refusals(adm: UploadAdmission, count: int) -> list[int]:
    """Fill every place, then the Retry-After of ``count`` refused uploads."""
    held = [adm.admit() for _ in range(adm.slots + adm.queue)]
    for h in held:
        h.__enter__()
    waits = []
    for _ in range(count):
        with pytest.raises(Busy) as busy, adm.admit():
            pass
        waits.append(busy.value.retry_after_s)
    for h in held:
        h.__exit__(None, None, None)
    return waits


def test_refused_clients_are_booked_one_after_another_at_the_service_rate() -> None:
    now = [1000.0]
    adm = UploadAdmission(slots=2, queue=0, retry_after_s=1, clock=lambda: now[0])
    assert adm.rate() == 16.0 * adm.slots  # optimistic until uploads have held the slots

    # 8 uploads, each 0.5 s in its slot, arriving 10 s apart (0.1 a second): the rate is
    # what two slots can do (2 / 0.5 = 4 a second), not how fast uploads arrived
    _held_uploads(adm, now, [0.5] * 8, gap=10.0)
    assert adm.rate() == pytest.approx(4.0)

    waits = _refusals(adm, 40)
    # the k-th refused is booked behind the 2 admitted and the k - 1 refused before it,
    # one every 1 / 4 s, and told that delay / 1.5 (it waits U(1, 2) x the value)
    booked = [2 / 4 + (k + 1) / 4 for k in range(40)]
    assert waits == [max(1, math.floor(b / 1.5)) for b in booked]
    assert waits[-1] == 7 and max(waits) <= MAX_RETRY_AFTER_S
    assert adm.refused == 40 and adm.admitted == 0

    now[0] += 3600  # long after every booked turn: the shortest wait again
    assert _refusals(adm, 1) == [1]


def test_the_rate_follows_the_last_uploads_hold_times() -> None:
    now = [0.0]
    adm = UploadAdmission(slots=4, queue=0, retry_after_s=1, clock=lambda: now[0])
    _held_uploads(adm, now, [0.02] * RATE_SAMPLES, gap=0.0)
    assert adm.rate() == pytest.approx(4 / 0.02)
    _held_uploads(adm, now, [0.2] * RATE_SAMPLES, gap=0.0)  # the coordinator slowed down
    assert adm.rate() == pytest.approx(4 / 0.2)


def test_a_turn_holds_a_place_until_used_or_expired() -> None:
    now = [0.0]
    adm = UploadAdmission(slots=1, queue=1, retry_after_s=1, clock=lambda: now[0])
    assert adm.grant_turn("a") == TURN_S
    assert adm.grant_turn("b") == TURN_S
    with pytest.raises(Busy, match="no upload turn free"):
        adm.grant_turn("c")  # both places held by turns, though nothing is uploading
    with pytest.raises(Busy, match="upload refused"), adm.admit("c"):
        pass
    assert adm.grant_turn("a") == TURN_S  # a holder may renew

    with adm.admit("a") as spend:  # a holder is admitted without the check ...
        assert adm.admitted == 1 and adm.occupied == 2  # a's upload (its turn) and b's turn
        assert not adm.has_turn("a")  # ... and a second request cannot use it meanwhile
        with pytest.raises(Busy), adm.admit("a"):
            pass
        spend()  # authenticated: the turn is spent
    assert adm.admitted == 0 and not adm.has_turn("a")
    assert adm.occupied == 1  # b's turn

    with pytest.raises(RuntimeError), adm.admit("b"):  # failed before authentication
        raise RuntimeError("bad signature")
    assert adm.has_turn("b")  # given back

    now[0] += TURN_S + 1  # b never came: its place is free again
    assert adm.occupied == 0
    assert adm.grant_turn("c") == TURN_S


def test_waiting_turn_requests_get_the_places_freed_in_arrival_order() -> None:
    """``wait_turn``: with every place taken, turn requests wait in line; each upload that
    finishes gives its place to the one waiting longest (not to a later arrival); one that
    waited its time out, one beyond the waiting bound and a client's second one get Busy
    and take no place."""
    adm = UploadAdmission(slots=1, queue=1, retry_after_s=1, waiting_turns=4)

    async def scenario() -> None:
        first, second = adm.admit("a"), adm.admit("b")  # both places taken by uploads
        first.__enter__()
        second.__enter__()
        waits = [asyncio.create_task(adm.wait_turn(c, timeout_s=30)) for c in "cde"]
        late = asyncio.create_task(adm.wait_turn("t", timeout_s=0.05))
        await asyncio.sleep(0.01)  # the woken tasks run
        assert adm.waiting == 4 and not any(w.done() for w in waits)
        with pytest.raises(Busy, match="too many waiting"):
            await adm.wait_turn("f", timeout_s=30)  # beyond the bound: at once
        with pytest.raises(Busy, match="freed in time"):
            await late
        assert adm.waiting == 3 and not adm.has_turn("t")
        with pytest.raises(Busy, match="waiting already"):
            await adm.wait_turn("c", timeout_s=30)  # one client cannot fill the line
        with pytest.raises(Busy, match="no upload turn free"):
            adm.check_room("g")  # a newcomer does not jump the line
        first.__exit__(None, None, None)  # a's upload done: its place goes to c, the first
        await asyncio.sleep(0.01)  # the woken tasks run
        assert waits[0].result() == TURN_S and adm.has_turn("c")
        assert not waits[1].done() and adm.occupied == 2
        second.__exit__(None, None, None)
        await asyncio.sleep(0.01)  # the woken tasks run
        assert waits[1].result() == TURN_S and adm.has_turn("d") and not waits[2].done()
        with adm.admit("c") as spend:  # c uploads on its turn; when done, e gets the place
            spend()
        await asyncio.sleep(0.01)  # the woken tasks run
        assert waits[2].result() == TURN_S and adm.has_turn("e")
        assert adm.waiting == 0 and adm.occupied == 2  # d's and e's turns

    asyncio.run(scenario())


def test_a_turn_that_expires_unused_goes_to_the_line_first() -> None:
    """The only place is held by a turn nobody uses. When it expires, the request waiting
    gets it though no upload finished to wake the line; and a request arriving after the
    expiry, before that wake-up, queues behind the waiting one instead of taking the
    place (so does an upload without a turn)."""
    now = [0.0]

    async def woken_at_expiry() -> None:
        adm = UploadAdmission(slots=1, queue=0, retry_after_s=1, clock=lambda: now[0])
        adm.grant_turn("idle")  # expires at TURN_S, never used
        now[0] = TURN_S - 0.05  # the wake-up is set 0.05 s (+ 0.01) out
        first = asyncio.create_task(adm.wait_turn("b", timeout_s=30))
        await asyncio.sleep(0.01)
        assert adm.waiting == 1 and not first.done()
        now[0] = TURN_S + 1
        assert await asyncio.wait_for(first, 5) == TURN_S  # nobody else arrived
        assert adm.has_turn("b") and not adm.has_turn("idle")

    async def no_jumping() -> None:
        now[0] = 0.0
        adm = UploadAdmission(slots=1, queue=0, retry_after_s=1, clock=lambda: now[0])
        adm.grant_turn("idle")
        first = asyncio.create_task(adm.wait_turn("b", timeout_s=30))  # wake-up 60 s out
        await asyncio.sleep(0.01)
        now[0] = TURN_S + 1  # expired; the wake-up has not come
        with pytest.raises(Busy, match="freed in time"):
            await adm.wait_turn("c", timeout_s=0.2)  # behind b, which got the place
        assert first.done() and first.result() == TURN_S and adm.has_turn("b")
        with pytest.raises(Busy), adm.admit("d", length=None):
            pass

    asyncio.run(woken_at_expiry())
    asyncio.run(no_jumping())


def test_a_waiter_gone_after_its_grant_gives_the_place_to_the_next() -> None:
    adm = UploadAdmission(slots=1, queue=0, retry_after_s=1)

    async def scenario() -> None:
        upload = adm.admit("x")
        upload.__enter__()
        b = asyncio.create_task(adm.wait_turn("b", timeout_s=30))
        c = asyncio.create_task(adm.wait_turn("c", timeout_s=30))
        await asyncio.sleep(0.01)
        upload.__exit__(None, None, None)  # x done: the place is granted to b ...
        assert adm.has_turn("b")
        b.cancel()  # ... whose client is gone before it could answer
        with pytest.raises(asyncio.CancelledError):
            await b
        assert await asyncio.wait_for(c, 5) == TURN_S
        assert adm.has_turn("c") and not adm.has_turn("b") and adm.occupied == 1

    asyncio.run(scenario())


def test_small_uploads_wait_on_their_own_allowance_and_large_ones_are_still_bounded() -> None:
    from fl_core.coordinator.admission import SMALL_UPLOAD_BYTES, Busy

    now = [0.0]
    adm = UploadAdmission(slots=1, queue=0, small_queue=2, retry_after_s=1, clock=lambda: now[0])
    with adm.admit("a", length=SMALL_UPLOAD_BYTES + 1):  # large: takes the only place
        with adm.admit("b", length=SMALL_UPLOAD_BYTES), adm.admit("c", length=10):
            assert adm.admitted == 3 and adm.occupied == 1  # small ones take no large place
            with pytest.raises(Busy), adm.admit("d", length=10):  # allowance used up
                pass
            with pytest.raises(Busy), adm.admit("e", length=None):  # unknown length: large
                pass
            with pytest.raises(Busy):
                adm.grant_turn("f")  # turns are places of the large kind
        with adm.admit("d", length=10):  # the small places were given back
            assert adm.admitted == 2
    assert adm.admitted == 0 and adm.refused == 3
    # without the allowance a small upload is counted like the others
    plain = UploadAdmission(slots=1, queue=0, retry_after_s=1, clock=lambda: now[0])
    with plain.admit("a", length=10), pytest.raises(Busy), plain.admit("b", length=10):
        pass


def test_the_booked_retry_counts_the_small_uploads_waiting() -> None:
    from fl_core.coordinator.admission import Busy

    now = [0.0]
    adm = UploadAdmission(slots=1, queue=0, small_queue=3, retry_after_s=1, clock=lambda: now[0])
    for _ in range(2):  # a measured service rate: 0.5 s per upload
        adm._holds.append(0.5)  # noqa: SLF001
    with contextlib.ExitStack() as held:
        held.enter_context(adm.admit("a", length=10**6))
        for c in "bcd":
            held.enter_context(adm.admit(c, length=10))
        with pytest.raises(Busy) as refused, adm.admit("e", length=10**6):
            pass
    # 4 uploads ahead at 2 a second, then its own: booked 2.5 s out, sent as 2.5 / 1.5
    assert refused.value.retry_after_s == 1
    assert adm._booked_until == pytest.approx(2.5)  # noqa: SLF001


def test_retry_after_is_read_only_from_busy_answers() -> None:
    def answer(status: int, value: str | None) -> httpx.Response:
        return httpx.Response(status, headers={} if value is None else {"Retry-After": value})

    assert retry_after_s(answer(503, "2")) == 2.0
    assert retry_after_s(answer(429, "0.5")) == 0.5
    assert retry_after_s(answer(503, None)) is None
    assert retry_after_s(answer(503, "Wed, 21 Oct 2026 07:28:00 GMT")) is None
    assert retry_after_s(answer(503, "-1")) is None
    assert retry_after_s(answer(500, "2")) is None


def test_busy_delay_spreads_clients_between_one_and_two_retry_afters() -> None:
    policy = RetryPolicy(cap_s=30.0)
    assert policy.busy_delay(2.0, rand=lambda: 0.0) == 2.0
    assert policy.busy_delay(2.0, rand=lambda: 0.999) == pytest.approx(3.998)
    assert RetryPolicy(cap_s=3.0).busy_delay(10.0, rand=lambda: 0.5) == 3.0


def test_admission_limits_come_from_the_environment_and_are_checked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(ENV_LIMITS["max_concurrent_uploads"], "3")
    monkeypatch.setenv(ENV_LIMITS["max_queued_uploads"], "0")
    settings = CoordinatorSettings.from_env()
    assert (settings.max_concurrent_uploads, settings.max_queued_uploads) == (3, 0)
    assert CoordinatorSettings.from_env(max_queued_uploads=5).max_queued_uploads == 5

    monkeypatch.setenv(ENV_LIMITS["max_queued_small_uploads"], "7")
    assert CoordinatorSettings.from_env().max_queued_small_uploads == 7
    assert CoordinatorSettings.local("/tmp/x").max_queued_small_uploads == 1024  # the default
    with pytest.raises(ValueError, match="max_queued_small_uploads"):
        CoordinatorSettings.local("/tmp/x", max_queued_small_uploads=-1)

    monkeypatch.setenv(ENV_LIMITS["max_waiting_turns"], "2")
    assert CoordinatorSettings.from_env().max_waiting_turns == 2
    app = create_app(CoordinatorSettings.local(str(tmp_path), max_waiting_turns=2))
    assert app.state.upload_admission.waiting_turns == 2  # what the app's admission holds
    app.state.coordinator.close()
    assert CoordinatorSettings.local("/tmp/x").max_waiting_turns == WAITING_TURNS  # default
    with pytest.raises(ValueError, match="max_waiting_turns"):
        CoordinatorSettings.local("/tmp/x", max_waiting_turns=-1)

    monkeypatch.setenv(ENV_LIMITS["max_queued_uploads"], "many")
    with pytest.raises(ValueError, match="FL_COORDINATOR_MAX_QUEUED_UPLOADS"):
        CoordinatorSettings.from_env()
    with pytest.raises(ValueError, match="max_queued_uploads"):
        CoordinatorSettings.local("/tmp/x", max_queued_uploads=-1)
    with pytest.raises(ValueError, match="busy_retry_after_s"):
        CoordinatorSettings.local("/tmp/x", busy_retry_after_s=0)


class LateClient(CoordinatorClient):
    """An agent whose first ``late`` signed requests reach the coordinator an hour after they
    were signed (as behind a long queue at an overloaded coordinator, or a skewed clock)."""

    def __init__(self, *args: object, late: int, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.late = late
        self.sent = 0

    def _build(self, method: str, path: str, **kw: object) -> httpx.Request:
        request = super()._build(method, path, **kw)  # type: ignore[arg-type]
        self.sent += 1
        if kw["signed"] and self.late > 0:
            self.late -= 1
            assert self.identity is not None
            request.headers.update(
                protocol.sign_request(
                    self.identity.key,
                    client_id=self.identity.client_id,
                    method=method,
                    path=request.url.path,
                    query=request.url.query.decode(),
                    body_sha256=hashlib.sha256(kw["content"]).hexdigest(),  # type: ignore[arg-type]
                    timestamp=time.time() - 3600,
                )
            )
        return request


def test_an_upload_read_after_its_signature_aged_is_signed_again_once_and_accepted(
    one_slot: OneSlot, tls: TLSFiles
) -> None:
    coord, server, _ = one_slot
    a = enroll(coord, server, tls, "dev-a")
    layout = publish(coord, ["dev-a"])
    data = update_bytes(CID, 1, "dev-a", layout)
    with LateClient(server.url, ca=tls.ca, identity=a, late=1) as client:
        client.upload_update(PATH, data, signature=update_signature(a, data))
        assert client.sent == 2  # refused once (401, stale timestamp), then signed again
    (stored,) = coord.received_updates(CID, 1)
    assert stored.client_id == "dev-a"
    assert coord.store.get_bytes(update_key(CID, 1, "dev-a")) == data


def test_a_client_whose_clock_is_off_is_refused_after_one_fresh_signature(
    one_slot: OneSlot, tls: TLSFiles
) -> None:
    from fl_core.agent.transport import Refused

    coord, server, _ = one_slot
    a = enroll(coord, server, tls, "dev-a")
    layout = publish(coord, ["dev-a"])
    data = update_bytes(CID, 1, "dev-a", layout)
    with LateClient(server.url, ca=tls.ca, identity=a, late=10) as client:
        with pytest.raises(Refused, match="401: request timestamp is more than"):
            client.upload_update(PATH, data, signature=update_signature(a, data))
        assert client.sent == 2  # not retried for ever: a skewed clock stays skewed
    assert coord.received_updates(CID, 1) == []


def test_a_large_update_waits_for_a_turn_and_sends_its_body_once(
    one_slot: OneSlot, tls: TLSFiles
) -> None:
    coord, server, adm = one_slot
    b, data_b, slow = slot_held(one_slot, tls)

    sent: list[tuple[str, str, int]] = []
    result: dict[str, object] = {}

    def agent_upload() -> None:  # every update counts as large here
        with CoordinatorClient(server.url, ca=tls.ca, identity=b, turn_min_bytes=0) as client:
            client._http.event_hooks["response"].append(  # noqa: SLF001 - observe the wire
                lambda r: sent.append((r.request.method, r.request.url.path, r.status_code))
            )
            result["out"], _ = client.upload_update(
                PATH, data_b, signature=update_signature(b, data_b)
            )

    worker = threading.Thread(target=agent_upload)
    worker.start()
    wait_until(lambda: adm.waiting == 1, "the agent's turn request to be held")
    assert slow.finish() == 201  # the only place frees: the held request gets it
    worker.join(timeout=60)

    assert not worker.is_alive()
    # one turn request, held until the place freed (no refusals to come back to), then
    # the body, once
    assert sent == [("POST", PATH + "/turn", 200), ("PUT", PATH, 201)]
    assert adm.refused == 0
    assert coord.store.get_bytes(update_key(CID, 1, "dev-b")) == data_b
    assert adm.admitted == 0 and adm.occupied == 0


def test_a_waiting_turn_request_whose_client_disconnects_leaves_the_line(
    one_slot: OneSlot, tls: TLSFiles
) -> None:
    coord, server, adm = one_slot
    b, _, slow = slot_held(one_slot, tls)
    signed = protocol.sign_request(
        b.key, client_id="dev-b", method="POST", path=PATH + "/turn", query="wait=25",
        body_sha256=hashlib.sha256(b"").hexdigest(),
    )  # fmt: skip
    sock = raw_request(server, tls, f"POST {PATH}/turn?wait=25 HTTP/1.1", signed, 0)
    wait_until(lambda: adm.waiting == 1, "the turn request to wait in line")
    sock.close()  # the device is gone
    # at once, not when its 25 s are up
    wait_until(lambda: adm.waiting == 0, "the gone request to leave the line", timeout_s=10)
    assert slow.finish() == 201
    assert not adm.has_turn("dev-b") and adm.occupied == 0  # the place went to nobody


def test_a_turn_request_that_cannot_wait_is_refused_and_comes_back(
    one_slot: OneSlot, tls: TLSFiles
) -> None:
    """Without ``wait`` (a client that does not wait, or too many waiting), a turn request
    gets 503 + Retry-After at once; the agent waits that out and asks again."""
    coord, server, adm = one_slot
    b, data_b, slow = slot_held(one_slot, tls)
    adm.waiting_turns = 0  # nobody may wait
    sent: list[int] = []

    def agent_turn() -> None:
        with CoordinatorClient(server.url, ca=tls.ca, identity=b) as client:
            client._http.event_hooks["response"].append(  # noqa: SLF001 - observe the wire
                lambda r: sent.append(r.status_code)
            )
            assert client.upload_turn(PATH) == TURN_S

    worker = threading.Thread(target=agent_turn)
    worker.start()
    wait_until(lambda: adm.refused >= 2, "the agent's turn to be refused twice")
    assert slow.finish() == 201
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert sent[:-1] == [503] * (len(sent) - 1) and sent[-1] == 200 and len(sent) >= 3
    assert adm.has_turn("dev-b")


def test_a_turn_is_kept_for_its_holder_and_a_forged_request_cannot_spend_it(
    one_slot: OneSlot, tls: TLSFiles
) -> None:
    coord, server, adm = one_slot
    a, b, data_a, data_b = two_devices(coord, server, tls)
    with CoordinatorClient(server.url, ca=tls.ca, identity=b) as client_b:
        assert client_b.upload_turn(PATH) == TURN_S
    assert adm.has_turn("dev-b") and adm.occupied == 1

    verify = ssl.create_default_context(cafile=str(tls.ca))
    with httpx.Client(verify=verify, timeout=30) as http:
        # the only place is b's: a's upload and a's turn are refused before any work
        refused = http.put(server.url + PATH, content=data_a, headers=upload_headers(a, data_a))
        assert refused.status_code == 503 and "Retry-After" in refused.headers
        # someone naming dev-b without b's key: 401, and b keeps its turn
        mallory = Identity("dev-b", server.url, Ed25519PrivateKey.generate())
        forged = http.put(
            server.url + PATH, content=data_b, headers=upload_headers(mallory, data_b)
        )
        assert forged.status_code == 401
    assert adm.has_turn("dev-b")
    with CoordinatorClient(server.url, ca=tls.ca, identity=b) as client_b:
        out, _ = client_b.upload_update(PATH, data_b, signature=update_signature(b, data_b))
    assert out["stored"] is True and adm.occupied == 0
    with CoordinatorClient(server.url, ca=tls.ca, identity=a) as client_a:
        assert client_a.upload_turn(PATH) == TURN_S  # the place is free again
    assert [u.client_id for u in coord.received_updates(CID, 1)] == ["dev-b"]


def test_a_turn_request_is_checked_like_the_upload(one_slot: OneSlot, tls: TLSFiles) -> None:
    coord, server, adm = one_slot
    a = enroll(coord, server, tls, "dev-a")
    outsider = enroll(coord, server, tls, "dev-x")
    publish(coord, ["dev-a"])
    client = CoordinatorClient(server.url, ca=tls.ca, identity=outsider)
    with client, pytest.raises(Refused) as not_selected:
        client.upload_turn(PATH)
    assert not_selected.value.status == 403
    verify = ssl.create_default_context(cafile=str(tls.ca))
    headers = protocol.sign_request(
        a.key, client_id="dev-a", method="POST", path=PATH + "/turn",
        body_sha256=hashlib.sha256(b"x").hexdigest(),
    )  # fmt: skip
    with httpx.Client(verify=verify, timeout=30) as http:
        with_body = http.post(server.url + PATH + "/turn", content=b"x", headers=headers)
    assert with_body.status_code == 400 and "no body" in with_body.json()["detail"]
    assert adm.occupied == 0  # neither got a turn
