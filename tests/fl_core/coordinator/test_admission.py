"""The upload admission limit over real HTTPS on 127.0.0.1: beyond the uploads in flight and
queued, an upload gets 503 with Retry-After before any work; the agent waits and retries,
and its retry is accepted; nothing acknowledged is lost."""

from __future__ import annotations

import hashlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fl_core.agent.identity import Identity
from fl_core.agent.transport import CoordinatorClient, RetryPolicy, retry_after_s
from fl_core.coordinator import protocol
from fl_core.coordinator.admission import MAX_RETRY_AFTER_S, Busy, UploadAdmission
from fl_core.coordinator.api import Coordinator
from fl_core.coordinator.app import create_app
from fl_core.coordinator.settings import ENV_LIMITS, CoordinatorSettings
from fl_core.models import Layout
from fl_core.rounds.layout import update_key
from tests.fl_core.coordinator.harness import (
    HOST,
    ServerThread,
    TLSFiles,
    start_campaign,
    task_dict,
    update_bytes,
)

CID = "camp-adm"
PATH = f"/v1/updates/{CID}/1"


OneSlot = tuple[Coordinator, ServerThread, UploadAdmission]


@pytest.fixture
def one_slot(tmp_path: Path, tls: TLSFiles) -> Iterator[OneSlot]:
    """A coordinator that reads one upload at a time and queues none, and its admission."""
    coord = Coordinator(
        CoordinatorSettings.local(tmp_path / "home", max_concurrent_uploads=1, max_queued_uploads=0)
    )
    app = create_app(coordinator=coord)
    server = ServerThread(coord, tls).start(app)
    yield coord, server, app.state.upload_admission
    server.stop()
    coord.close()


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
        context = ssl.create_default_context(cafile=str(tls.ca))
        raw = socket.create_connection((HOST, server.port), timeout=30)
        self.sock = context.wrap_socket(raw, server_hostname=HOST)
        head = [f"PUT {PATH} HTTP/1.1", f"Host: {HOST}:{server.port}"]
        head += [f"{k}: {v}" for k, v in upload_headers(identity, data).items()]
        head += [f"Content-Length: {len(data)}", "", ""]
        self.sock.sendall("\r\n".join(head).encode() + data[: len(data) // 2])

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


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Wait for a server-side state change (not a timing assertion)."""
    deadline = time.monotonic() + 30
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


def test_upload_beyond_the_limit_gets_503_with_retry_after_and_the_retry_is_accepted(
    one_slot: OneSlot, tls: TLSFiles
) -> None:
    coord, server, adm = one_slot
    a = enroll(coord, server, tls, "dev-a")
    b = enroll(coord, server, tls, "dev-b")
    layout = publish(coord, ["dev-a", "dev-b"])
    data_a = update_bytes(CID, 1, "dev-a", layout)
    data_b = update_bytes(CID, 1, "dev-b", layout, scale=0.02)

    slow = SlowUpload(server, tls, a, data_a)
    wait_until(lambda: adm.admitted == 1, "the slow upload to hold the only slot")
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
    assert coord.store.get_bytes(update_key(CID, 1, "dev-a")) == data_a
    assert coord.store.get_bytes(update_key(CID, 1, "dev-b")) == data_b
    assert adm.admitted == 0


def test_busy_answers_do_not_use_up_attempts_but_are_bounded(
    one_slot: OneSlot, tls: TLSFiles
) -> None:
    from fl_core.agent.transport import Unreachable

    coord, server, adm = one_slot
    a = enroll(coord, server, tls, "dev-a")
    b = enroll(coord, server, tls, "dev-b")
    layout = publish(coord, ["dev-a", "dev-b"])
    data_a = update_bytes(CID, 1, "dev-a", layout)
    data_b = update_bytes(CID, 1, "dev-b", layout)
    slow = SlowUpload(server, tls, a, data_a)
    wait_until(lambda: adm.admitted == 1, "the slow upload to hold the only slot")

    # one attempt, but busy answers may be waited out for up to 1.5 s: >= 2 refusals
    policy = RetryPolicy(attempts=1, busy_s=1.5)
    client = CoordinatorClient(server.url, ca=tls.ca, identity=b, retry=policy)
    with client, pytest.raises(Unreachable, match="503"):
        client.upload_update(PATH, data_b, signature=update_signature(b, data_b))

    assert adm.refused >= 2
    assert slow.finish() == 201
    assert [u.client_id for u in coord.received_updates(CID, 1)] == ["dev-a"]


def test_refused_clients_are_booked_one_after_another_at_the_upload_rate() -> None:
    now = [1000.0]
    adm = UploadAdmission(slots=2, queue=0, retry_after_s=1, clock=lambda: now[0])

    def refusals(count: int) -> list[int]:
        held = [adm.admit() for _ in range(adm.slots)]
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

    waits = refusals(40)
    assert waits == sorted(waits)  # later refusals come back later ...
    assert waits[0] == 1 and waits[-1] > waits[0]
    assert max(waits) <= MAX_RETRY_AFTER_S
    assert adm.refused == 40 and adm.admitted == 0

    now[0] += 3600  # long after every booked turn: the shortest wait again
    assert refusals(1) == [1]


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
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV_LIMITS["max_concurrent_uploads"], "3")
    monkeypatch.setenv(ENV_LIMITS["max_queued_uploads"], "0")
    settings = CoordinatorSettings.from_env()
    assert (settings.max_concurrent_uploads, settings.max_queued_uploads) == (3, 0)
    assert CoordinatorSettings.from_env(max_queued_uploads=5).max_queued_uploads == 5

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
