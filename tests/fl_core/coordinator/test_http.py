"""The coordinator over real HTTPS on 127.0.0.1: enrollment, authentication, authorization,
uploads, downloads, long-poll and evaluation reports; one test per refusal status."""

from __future__ import annotations

import hashlib
import json
import ssl
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fl_core import wire
from fl_core.agent.identity import Identity
from fl_core.agent.transport import CoordinatorClient, Refused, RetryPolicy
from fl_core.coordinator import protocol
from fl_core.coordinator.api import Coordinator
from fl_core.coordinator.schemas import UploadOut
from fl_core.rounds.layout import signature_key, update_key
from tests.fl_core.coordinator.harness import (
    ServerThread,
    TLSFiles,
    raw_request,
    start_campaign,
    task_dict,
    update_bytes,
)

CID = "camp-1"
ONCE = RetryPolicy(attempts=1)


def enroll(coord: Coordinator, server: ServerThread, tls: TLSFiles, name: str) -> CoordinatorClient:
    token = coord.create_enrollment_token(name)
    client = CoordinatorClient(server.url, ca=tls.ca, retry=ONCE)
    key = Ed25519PrivateKey.generate()
    client_id = client.enroll(token, protocol.public_key_b64(key))
    client.identity = Identity(client_id, server.url, key)
    return client


def sign_update(client: CoordinatorClient, rnd: int, data: bytes, cid: str = CID) -> str:
    assert client.identity is not None
    return protocol.sign(
        client.identity.key,
        protocol.update_message(
            campaign=cid,
            rnd=rnd,
            client_id=client.identity.client_id,
            message_sha256=hashlib.sha256(data).hexdigest(),
        ),
    )


def upload(client: CoordinatorClient, rnd: int, data: bytes, cid: str = CID) -> dict:
    out, _ = client.upload_update(
        f"/v1/updates/{cid}/{rnd}", data, signature=sign_update(client, rnd, data, cid)
    )
    return out


def publish(
    coord: Coordinator, clients: list[str], *, rnd: int = 1, deadline_s: float = 60.0
) -> None:
    coord.publish_round(
        CID,
        rnd,
        base_version=rnd - 1,
        tasks={c: task_dict(seed=i) for i, c in enumerate(clients)},
        deadline_s=deadline_s,
    )


@pytest.fixture
def layout(coord: Coordinator):  # type: ignore[no-untyped-def]
    return start_campaign(coord.store, CID)[0]


def raw_put(
    server: ServerThread, tls: TLSFiles, path: str, body: bytes, headers: dict
) -> httpx.Response:
    with httpx.Client(verify=ssl.create_default_context(cafile=str(tls.ca)), timeout=30) as http:
        return http.put(server.url + path, content=body, headers=headers)


# --------------------------------------------------------------------------- enrollment


def test_enrollment_token_is_single_use_and_stored_only_hashed(
    coord: Coordinator, server: ServerThread, tls: TLSFiles
) -> None:
    token = coord.create_enrollment_token("hospital-3")
    client = CoordinatorClient(server.url, ca=tls.ca, retry=ONCE)
    key = protocol.public_key_b64(Ed25519PrivateKey.generate())

    assert client.enroll(token, key) == "hospital-3"
    with pytest.raises(Refused) as second:
        client.enroll(token, key)

    assert second.value.status == 401
    db_file = Path(coord.settings.db_url.removeprefix("sqlite:///"))
    stored = b"".join(p.read_bytes() for p in db_file.parent.glob("registry.db*"))
    assert token.encode() not in stored
    assert hashlib.sha256(token.encode()).hexdigest().encode() in stored


def test_expired_enrollment_token_is_refused(
    coord: Coordinator, server: ServerThread, tls: TLSFiles
) -> None:
    token = coord.create_enrollment_token("late-device", ttl_s=0.2)
    time.sleep(0.4)
    client = CoordinatorClient(server.url, ca=tls.ca, retry=ONCE)
    with pytest.raises(Refused) as refused:
        client.enroll(token, protocol.public_key_b64(Ed25519PrivateKey.generate()))
    assert refused.value.status == 401
    assert not coord.clients()[0].enrolled


def test_revoked_client_is_refused_at_once_403(
    coord: Coordinator, server: ServerThread, tls: TLSFiles
) -> None:
    client = enroll(coord, server, tls, "hospital-3")
    client.heartbeat({"num_examples": 5})

    assert coord.revoke("hospital-3")
    with pytest.raises(Refused) as refused:
        client.heartbeat({"num_examples": 5})

    assert refused.value.status == 403
    assert "revoked" in refused.value.reason
    assert coord.live_clients() == []


# --------------------------------------------------------------------------- authentication


def test_unsigned_request_is_401(coord: Coordinator, server: ServerThread, tls: TLSFiles) -> None:
    with httpx.Client(verify=ssl.create_default_context(cafile=str(tls.ca))) as http:
        response = http.get(server.url + "/v1/tasks/next")
    assert response.status_code == 401
    assert "signature" in response.json()["detail"]


@pytest.mark.parametrize(
    "path",
    ["-camp/1", "camp-1%0A/1", "camp-1/0", "camp-1/1000001", "camp-1/x", "camp-1/" + "9" * 5000],
)
def test_an_upload_to_a_malformed_path_is_400_and_a_wellformed_one_is_served(
    coord: Coordinator, server: ServerThread, tls: TLSFiles, layout, path: str
) -> None:
    """Uploads have their own lean route (``UploadRoute``, ahead of the documented one): a
    campaign off its pattern (a trailing newline included) or a round outside 1..10^6 (a
    number of 5,000 digits included) falls through to the documented route and gets its
    400, not a 401, 500 or 404; the same client's well-formed upload is then served, by the
    lean route, and stored."""
    from starlette.routing import Match

    from fl_core.coordinator.routers.updates import UploadRoute

    lean = server.app.router.routes[0]
    assert isinstance(lean, UploadRoute)
    scope = {"type": "http", "method": "PUT", "path": f"/v1/updates/{CID}/1", "root_path": ""}
    assert lean.matches(scope)[0] is Match.FULL
    client = enroll(coord, server, tls, "a")
    publish(coord, ["a"])
    with httpx.Client(verify=ssl.create_default_context(cafile=str(tls.ca))) as http:
        response = http.put(f"{server.url}/v1/updates/{path}", content=b"x")
        documented = http.get(f"{server.url}/openapi.json").json()["paths"]
    assert response.status_code == 400, response.text
    assert "put" in documented["/v1/updates/{campaign}/{rnd}"]  # still in the API's docs
    assert response.json()["detail"].startswith("malformed request: path")
    assert upload(client, 1, update_bytes(CID, 1, "a", layout))["stored"] is True


def test_request_signed_by_another_key_is_401(
    coord: Coordinator, server: ServerThread, tls: TLSFiles
) -> None:
    client = enroll(coord, server, tls, "a")
    client.identity = Identity("a", server.url, Ed25519PrivateKey.generate())
    with pytest.raises(Refused) as refused:
        client.heartbeat({})
    assert refused.value.status == 401


def test_request_outside_the_time_window_is_401(
    coord: Coordinator, server: ServerThread, tls: TLSFiles
) -> None:
    client = enroll(coord, server, tls, "a")
    assert client.identity is not None
    headers = protocol.sign_request(
        client.identity.key,
        client_id="a",
        method="GET",
        path="/v1/tasks/next",
        timestamp=time.time() - 10 * coord.settings.clock_skew_s,
    )
    with httpx.Client(verify=ssl.create_default_context(cafile=str(tls.ca))) as http:
        response = http.get(server.url + "/v1/tasks/next", headers=headers)
    assert response.status_code == 401
    assert "timestamp" in response.json()["detail"]


def test_replayed_request_is_409(coord: Coordinator, server: ServerThread, tls: TLSFiles) -> None:
    client = enroll(coord, server, tls, "a")
    assert client.identity is not None
    body = json.dumps({"num_examples": 3}).encode()
    headers = protocol.sign_request(
        client.identity.key,
        client_id="a",
        method="POST",
        path="/v1/clients/heartbeat",
        body_sha256=hashlib.sha256(body).hexdigest(),
    )
    with httpx.Client(verify=ssl.create_default_context(cafile=str(tls.ca))) as http:
        first = http.post(server.url + "/v1/clients/heartbeat", content=body, headers=headers)
        again = http.post(server.url + "/v1/clients/heartbeat", content=body, headers=headers)
    assert first.status_code == 200
    assert again.status_code == 409


def test_body_swapped_under_a_valid_signature_is_401(
    coord: Coordinator, server: ServerThread, tls: TLSFiles
) -> None:
    client = enroll(coord, server, tls, "a")
    assert client.identity is not None
    signed = json.dumps({"num_examples": 3}).encode()
    headers = protocol.sign_request(
        client.identity.key,
        client_id="a",
        method="POST",
        path="/v1/clients/heartbeat",
        body_sha256=hashlib.sha256(signed).hexdigest(),
    )
    with httpx.Client(verify=ssl.create_default_context(cafile=str(tls.ca))) as http:
        response = http.post(
            server.url + "/v1/clients/heartbeat",
            content=json.dumps({"num_examples": 10**6}).encode(),
            headers=headers,
        )
    assert response.status_code == 401
    assert coord.clients()[0].num_examples is None


# --------------------------------------------------------------------------- uploads


def test_accepted_update_is_stored_verbatim_with_its_signature(
    coord: Coordinator, server: ServerThread, tls: TLSFiles, layout
) -> None:
    client = enroll(coord, server, tls, "a")
    publish(coord, ["a"])
    data = update_bytes(CID, 1, "a", layout)

    out = upload(client, 1, data)

    key = update_key(CID, 1, "a")
    assert out["stored"] is True and out["key"] == key
    assert UploadOut.model_validate(out).model_dump() == out  # the documented answer, exactly
    assert coord.store.get_bytes(key) == data
    message = protocol.update_message(
        campaign=CID, rnd=1, client_id="a", message_sha256=hashlib.sha256(data).hexdigest()
    )
    sig = coord.update_signature(CID, 1, "a")  # in the registry from the claim on
    assert sig is not None and sig["sha256"] == hashlib.sha256(data).hexdigest()
    assert protocol.verify(sig["public_key"], message, sig["signature"])
    assert sig["public_key"] == protocol.public_key_b64(client.identity.key)
    assert not coord.store.exists(signature_key(CID, 1, "a"))  # not one more file per upload
    assert coord.round_status(CID, 1).received == ["a"]
    assert [u.client_id for u in coord.received_updates(CID, 1)] == ["a"]

    coord.close_round(CID, 1)  # closing writes it beside the update, for the registry-less
    assert coord.store.get_json(signature_key(CID, 1, "a")) == sig
    assert coord.update_signature(CID, 1, "nobody") is None


def test_identical_retry_is_accepted_but_a_different_second_upload_is_409(
    coord: Coordinator, server: ServerThread, tls: TLSFiles, layout
) -> None:
    client = enroll(coord, server, tls, "a")
    publish(coord, ["a"])
    data = update_bytes(CID, 1, "a", layout)
    upload(client, 1, data)

    retry = upload(client, 1, data)
    with pytest.raises(Refused) as other:
        upload(client, 1, update_bytes(CID, 1, "a", layout, scale=0.02))

    assert retry["stored"] is False
    assert other.value.status == 409
    assert coord.store.get_bytes(update_key(CID, 1, "a")) == data


def test_upload_for_a_round_the_client_was_not_selected_in_is_403(
    coord: Coordinator, server: ServerThread, tls: TLSFiles, layout
) -> None:
    enroll(coord, server, tls, "a")
    outsider = enroll(coord, server, tls, "b")
    publish(coord, ["a"])

    with pytest.raises(Refused) as refused:
        upload(outsider, 1, update_bytes(CID, 1, "b", layout))

    assert refused.value.status == 403
    assert not coord.store.exists(update_key(CID, 1, "b"))


def test_update_naming_another_client_is_403(
    coord: Coordinator, server: ServerThread, tls: TLSFiles, layout
) -> None:
    a = enroll(coord, server, tls, "a")
    enroll(coord, server, tls, "b")
    publish(coord, ["a", "b"])

    with pytest.raises(Refused) as refused:
        upload(a, 1, update_bytes(CID, 1, "b", layout))

    assert refused.value.status == 403
    assert coord.round_status(CID, 1).received == []


def test_bad_update_signature_is_401(
    coord: Coordinator, server: ServerThread, tls: TLSFiles, layout
) -> None:
    client = enroll(coord, server, tls, "a")
    publish(coord, ["a"])
    data = update_bytes(CID, 1, "a", layout)
    forged = protocol.sign(Ed25519PrivateKey.generate(), b"anything")

    with pytest.raises(Refused) as refused:
        client.upload_update(f"/v1/updates/{CID}/1", data, signature=forged)

    assert refused.value.status == 401
    assert not coord.store.exists(update_key(CID, 1, "a"))


def test_upload_after_the_round_closed_is_410_and_recorded_as_straggler(
    coord: Coordinator, server: ServerThread, tls: TLSFiles, layout
) -> None:
    a = enroll(coord, server, tls, "a")
    late = enroll(coord, server, tls, "late")
    publish(coord, ["a", "late"])
    upload(a, 1, update_bytes(CID, 1, "a", layout))

    closed = coord.close_round(CID, 1)
    with pytest.raises(Refused) as refused:
        upload(late, 1, update_bytes(CID, 1, "late", layout))

    assert closed.received == ["a"] and set(closed.stragglers) == {"late"}
    assert refused.value.status == 410
    assert not coord.store.exists(update_key(CID, 1, "late"))
    assert "late" in coord.round_status(CID, 1).stragglers


def test_upload_after_the_deadline_is_410(
    coord: Coordinator, server: ServerThread, tls: TLSFiles, layout
) -> None:
    client = enroll(coord, server, tls, "a")
    publish(coord, ["a"], deadline_s=0.3)
    time.sleep(0.5)
    with pytest.raises(Refused) as refused:
        upload(client, 1, update_bytes(CID, 1, "a", layout))
    assert refused.value.status == 410
    assert coord.round_status(CID, 1).stragglers["a"] == "upload after the round closed"


def test_declared_oversized_upload_is_413_before_reading(
    coord: Coordinator, server: ServerThread, tls: TLSFiles, layout
) -> None:
    client = enroll(coord, server, tls, "a")
    publish(coord, ["a"])
    cap = coord.update_cap(CID)
    body = b"\0" * (cap + 1)
    with pytest.raises(Refused) as refused:
        client.upload_update(f"/v1/updates/{CID}/1", body, signature=sign_update(client, 1, body))
    assert refused.value.status == 413
    assert not coord.store.exists(update_key(CID, 1, "a"))


def test_streamed_upload_without_length_is_cut_off_at_the_cap_413(
    coord: Coordinator, server: ServerThread, tls: TLSFiles, layout
) -> None:
    client = enroll(coord, server, tls, "a")
    publish(coord, ["a"])
    cap = coord.update_cap(CID)
    chunk = b"\0" * 65536
    total_chunks = 4 * cap // len(chunk) + 64
    body = chunk * total_chunks
    assert client.identity is not None
    headers = protocol.sign_request(
        client.identity.key,
        client_id="a",
        method="PUT",
        path=f"/v1/updates/{CID}/1",
        body_sha256=hashlib.sha256(body).hexdigest(),
    )
    headers[protocol.H_UPDATE_SIGNATURE] = sign_update(client, 1, body)
    sent = 0

    def chunks():  # type: ignore[no-untyped-def]
        nonlocal sent
        for _ in range(total_chunks):
            sent += 1
            yield chunk

    try:
        response = raw_put(server, tls, f"/v1/updates/{CID}/1", chunks(), headers)  # type: ignore[arg-type]
        status = response.status_code
    except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
        status = 413  # the server closed the connection mid-body, as it should
    assert status == 413
    assert not coord.store.exists(update_key(CID, 1, "a"))


@pytest.mark.parametrize(
    "case",
    ["garbage", "wrong_layout", "wrong_codec", "non_finite", "stale_base_version"],
)
def test_malformed_update_is_400(
    coord: Coordinator, server: ServerThread, tls: TLSFiles, layout, case: str
) -> None:
    from fl_core.models import Layout

    client = enroll(coord, server, tls, "a")
    publish(coord, ["a"])
    data = {
        "garbage": lambda: b"FLW1" + b"\xff" * 64,
        "wrong_layout": lambda: update_bytes(CID, 1, "a", Layout(("w",), ((layout.num_params,),))),
        "wrong_codec": lambda: update_bytes(CID, 1, "a", layout, codec="fp16"),
        "non_finite": lambda: update_bytes(
            CID, 1, "a", layout, values=np.full(layout.num_params, np.nan)
        ),
        "stale_base_version": lambda: update_bytes(CID, 1, "a", layout, base_version=3),
    }[case]()

    with pytest.raises(Refused) as refused:
        upload(client, 1, data)

    assert refused.value.status == 400
    assert refused.value.reason
    assert not coord.store.exists(update_key(CID, 1, "a"))
    # The client can still deliver a good update for the task.
    assert upload(client, 1, update_bytes(CID, 1, "a", layout))["stored"] is True


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_non_finite_value_in_a_sparse_update_is_400(
    coord: Coordinator, server: ServerThread, tls: TLSFiles, layout, bad: float
) -> None:
    """A top-k update whose kept values include a non-finite one, framed and checksummed
    as a hostile client would (the encoder refuses to make one): the coordinator checks
    the sparse values without densifying them, and refuses it."""
    import struct

    client = enroll(coord, server, tls, "a")
    coord.publish_round(
        CID, 1, base_version=0, tasks={"a": task_dict(codec="topk:0.1")}, deadline_s=60
    )
    values = np.full(layout.num_params, 0.001, np.float32)
    values[3] = 7.25  # kept by top-k; becomes the non-finite value below
    good = update_bytes(CID, 1, "a", layout, codec="topk:0.1", values=values)
    header = wire.read_header(good)
    head_len = struct.unpack(">I", good[4:8])[0]
    payload = good[8 + head_len :]
    marker = np.float32(7.25).tobytes()
    assert payload.count(marker) == 1
    hostile = payload.replace(marker, np.float32(bad).tobytes())
    head = json.dumps(header.to_json(payload=hostile), sort_keys=True).encode()
    data = wire.MAGIC + struct.pack(">I", len(head)) + head + hostile

    with pytest.raises(Refused) as refused:
        upload(client, 1, data)

    assert refused.value.status == 400
    assert "non-finite" in refused.value.reason
    assert not coord.store.exists(update_key(CID, 1, "a"))
    assert upload(client, 1, good)["stored"] is True


# --------------------------------------------------------------------------- tasks and models


def test_long_poll_returns_the_task_published_while_waiting(
    coord: Coordinator, server: ServerThread, tls: TLSFiles, layout
) -> None:
    client = enroll(coord, server, tls, "a")
    assert client.next_task(wait_s=0) is None
    timer = threading.Timer(0.5, publish, args=(coord, ["a"]))
    timer.start()

    task = client.next_task(wait_s=4)

    timer.join()
    assert task is not None
    assert (task["campaign"], task["round"], task["client"]) == (CID, 1, "a")
    assert task["model_url"] == f"/v1/models/{CID}/1" and task["codec"] == "dense_fp32"


def test_waiting_clients_share_one_registry_poll_and_wake_on_another_process_publishing(
    coord: Coordinator, server: ServerThread, tls: TLSFiles, layout
) -> None:
    import sqlalchemy as sa

    names = [f"w{i}" for i in range(12)]
    clients = [enroll(coord, server, tls, name) for name in names]
    statements: list[str] = []
    sa.event.listen(
        coord.engine, "before_cursor_execute", lambda *args: statements.append(args[2])
    )
    got: dict[str, object] = {}

    def wait(client: CoordinatorClient) -> None:
        assert client.identity is not None
        got[client.identity.client_id] = client.next_task(wait_s=10)

    threads = [threading.Thread(target=wait, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    time.sleep(3.0)  # all waiting: 6 poll intervals
    dag_process = Coordinator(coord.settings)  # the DAG's dispatch: its own engine
    dag_process.publish_round(
        CID, 1, base_version=0, tasks={n: task_dict(seed=i) for i, n in enumerate(names)},
        deadline_s=60,
    )  # fmt: skip
    dag_process.close()
    for t in threads:
        t.join(timeout=30)

    assert sorted(got) == sorted(names) and all(got[n] is not None for n in names)
    lookups = [q for q in statements if "FROM tasks" in q]
    markers = [q for q in statements if "count(*)" in q and "FROM rounds" in q]
    # each waiter looked before waiting, once when the poller started and once when the
    # round appeared; polling each for itself every 0.5 s would be >= 12 x 6 lookups
    assert len(lookups) <= 3 * len(names)
    assert 3 <= len(markers) <= 12  # one poll per interval for all of them


def test_a_client_only_sees_its_own_task_and_not_after_uploading(
    coord: Coordinator, server: ServerThread, tls: TLSFiles, layout
) -> None:
    a = enroll(coord, server, tls, "a")
    b = enroll(coord, server, tls, "b")
    publish(coord, ["a"])

    assert b.next_task(wait_s=0) is None
    upload(a, 1, update_bytes(CID, 1, "a", layout))
    assert a.next_task(wait_s=0) is None


def test_model_download_with_etag_and_delta_from_known_version(
    coord: Coordinator, server: ServerThread, tls: TLSFiles, layout
) -> None:
    from tests.fl_core.coordinator.harness import put_model

    client = enroll(coord, server, tls, "a")
    v0 = wire.decode(coord.store.get_bytes(f"campaigns/{CID}/models/v0000.flw"))[1]
    v1 = v0.copy()
    v1[:3] += 1.0
    put_model(coord.store, CID, 1, layout, v1)
    publish(coord, ["a"], rnd=2)

    full, _ = client.download_model(f"/v1/models/{CID}/2", known_version=None)
    delta, _ = client.download_model(f"/v1/models/{CID}/2", known_version=0)
    with httpx.Client(verify=ssl.create_default_context(cafile=str(tls.ca))) as http:
        assert client.identity is not None
        path = f"/v1/models/{CID}/2"
        headers = protocol.sign_request(client.identity.key, client_id="a", method="GET", path=path)
        first = http.get(server.url + path, headers=headers)
        headers = protocol.sign_request(client.identity.key, client_id="a", method="GET", path=path)
        headers["If-None-Match"] = first.headers["etag"]
        cached = http.get(server.url + path, headers=headers)

    assert np.array_equal(wire.decode_model_for_client(full)[1], v1)
    header, rebuilt = wire.decode_model_for_client(delta, known_version=0, known_model=v0)
    assert header.delta_from == 0 and len(delta) < len(full)
    assert np.allclose(rebuilt, v1)
    assert first.content == full and cached.status_code == 304 and cached.content == b""


def _exchange(sock: ssl.SSLSocket, body: bytes = b"") -> tuple[bytes, bool]:
    """``body`` sent on ``sock`` (a :func:`raw_request`), then the response's head and
    whether the server ended the connection after it (a keep-alive connection stays open,
    idle, for uvicorn's 5 s: no byte and no end within 2 s)."""
    with sock:
        sock.sendall(body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"the connection ended before the response's head: {data!r}"
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        while len(rest) < length:
            chunk = sock.recv(65536)
            assert chunk, "the connection ended before the response's body"
            rest += chunk
        assert len(rest) == length  # nothing more than the one response
        sock.settimeout(2.0)
        try:
            ended = sock.recv(1) == b""
        except TimeoutError:
            ended = False
    return head, ended


def _signed(client: CoordinatorClient, method: str, path: str, body: bytes = b"",
            **extra: str) -> dict[str, str]:  # fmt: skip
    """The agent's authentication headers for the request (and ``extra``)."""
    assert client.identity is not None
    return protocol.sign_request(
        client.identity.key, client_id=client.identity.client_id, method=method, path=path,
        body_sha256=hashlib.sha256(body).hexdigest(),
    ) | extra  # fmt: skip


def test_a_model_download_and_an_accepted_upload_end_their_connection(
    coord: Coordinator, server: ServerThread, tls: TLSFiles, layout
) -> None:
    """A device's connection does not outlive its round's transfers: the TLS layer keeps
    buffers as large as the largest message a connection carried while it stays open
    (bench/bench_coordinator.py --tls measures what that did to the coordinator's memory)."""
    client = enroll(coord, server, tls, "a")
    publish(coord, ["a"])
    data = update_bytes(CID, 1, "a", layout)
    path = f"/v1/updates/{CID}/1"

    def put() -> tuple[bytes, bool]:
        signature = {protocol.H_UPDATE_SIGNATURE: sign_update(client, 1, data)}
        headers = _signed(client, "PUT", path, data, **signature)
        return _exchange(raw_request(server, tls, f"PUT {path} HTTP/1.1", headers, len(data)), data)

    model_path = f"/v1/models/{CID}/1"
    health, health_ended = _exchange(raw_request(server, tls, "GET /v1/health HTTP/1.1", {}, 0))
    model, model_ended = _exchange(raw_request(
        server, tls, f"GET {model_path} HTTP/1.1", _signed(client, "GET", model_path), 0))
    stored, stored_ended = put()
    retried, retried_ended = put()

    assert health.startswith(b"HTTP/1.1 200") and not health_ended  # small answers keep it
    assert model.startswith(b"HTTP/1.1 200") and model_ended
    assert stored.startswith(b"HTTP/1.1 201") and stored_ended
    assert retried.startswith(b"HTTP/1.1 200") and retried_ended
    assert coord.store.get_bytes(update_key(CID, 1, "a")) == data
    # the agent's client opens a fresh connection for what follows and goes on
    assert upload(client, 1, data)["stored"] is False


@pytest.mark.parametrize("downlink", ["dense_fp32", "q8"])
def test_each_client_gets_its_own_header_and_deterministic_codecs_share_one_payload(
    coord: Coordinator, server: ServerThread, tls: TLSFiles, layout, downlink: str
) -> None:
    from tests.fl_core.coordinator.harness import put_model

    clients = {name: enroll(coord, server, tls, name) for name in ("a", "b")}
    v0 = wire.decode(coord.store.get_bytes(f"campaigns/{CID}/models/v0000.flw"))[1]
    v1 = v0.copy()
    v1[:3] += 1.0
    put_model(coord.store, CID, 1, layout, v1)
    coord.publish_round(
        CID, 2, base_version=1, deadline_s=60,
        tasks={c: task_dict(seed=i, downlink_codec=downlink) for i, c in enumerate(clients)},
    )  # fmt: skip

    for known in (None, 0):
        parts = {c: coord.model_message_parts(c, CID, 2, known_version=known) for c in clients}
        for name, (prefix, payload) in parts.items():
            header = wire.Header(kind="model", campaign=CID, round=2, base_version=1,
                                 client=name, codec=downlink, layout=layout)  # fmt: skip
            expected = wire.encode_model_for_client(
                header, v1, known_version=known, known_model=None if known is None else v0,
                delta_codec="topk:0.5",
            )  # fmt: skip
            assert prefix + bytes(payload) == expected  # what the in-process transport sends
            assert wire.read_header(expected).client == name
            downloaded, _ = clients[name].download_model(
                f"/v1/models/{CID}/2", known_version=known
            )
            assert downloaded == expected
        (_, pay_a), (_, pay_b) = parts["a"], parts["b"]
        if downlink == "dense_fp32":  # one encoding serves every client
            assert pay_a.obj is pay_b.obj and len(pay_a) > 0
        elif known is None:  # q8 rounds with an rng seeded by the client: no sharing
            vec_a = wire.decode(parts["a"][0] + bytes(pay_a))[1]
            vec_b = wire.decode(parts["b"][0] + bytes(pay_b))[1]
            assert not np.array_equal(vec_a, vec_b)


def test_model_download_of_a_round_without_a_task_is_403(
    coord: Coordinator, server: ServerThread, tls: TLSFiles, layout
) -> None:
    enroll(coord, server, tls, "a")
    b = enroll(coord, server, tls, "b")
    publish(coord, ["a"])
    with pytest.raises(Refused) as refused:
        b.download_model(f"/v1/models/{CID}/1", known_version=None)
    assert refused.value.status == 403


# --------------------------------------------------------------------------- heartbeats, evaluation


def test_live_clients_come_from_heartbeats(
    coord: Coordinator, server: ServerThread, tls: TLSFiles
) -> None:
    a = enroll(coord, server, tls, "a")
    enroll(coord, server, tls, "silent")
    a.heartbeat(
        {
            "profile": {"device": "rpi4"},
            "uplink_mbps": 12.5,
            "latency_s": 0.02,
            "num_examples": 321,
            "data_sha256": "ab" * 32,
            "data_valid": True,
        }
    )

    live = coord.live_clients()

    assert [c.client_id for c in live] == ["a"]
    assert live[0].profile == {"device": "rpi4"} and live[0].uplink_mbps == 12.5
    assert live[0].num_examples == 321 and live[0].data_sha256 == "ab" * 32
    assert coord.live_clients(within_s=1e-9) == []


def test_heartbeat_with_non_finite_or_unknown_fields_is_400(
    coord: Coordinator, server: ServerThread, tls: TLSFiles
) -> None:
    a = enroll(coord, server, tls, "a")
    with pytest.raises(Refused) as unknown:
        a.heartbeat({"num_examples": 3, "is_admin": True})
    with pytest.raises(Refused) as negative:
        a.heartbeat({"uplink_mbps": -1})
    assert unknown.value.status == negative.value.status == 400


def test_evaluation_reports_are_recorded_for_clients_with_a_task(
    coord: Coordinator, server: ServerThread, tls: TLSFiles, layout
) -> None:
    a = enroll(coord, server, tls, "a")
    b = enroll(coord, server, tls, "b")
    publish(coord, ["a"])

    a.report_evaluation(
        CID, 1, {"model_version": 0, "num_examples": 40, "metrics": {"accuracy": 0.5}}
    )
    with pytest.raises(Refused) as outsider:
        b.report_evaluation(
            CID, 1, {"model_version": 0, "num_examples": 4, "metrics": {"accuracy": 1}}
        )

    reports = coord.evaluations(CID, 1)
    assert [(r.client_id, r.num_examples, r.metrics) for r in reports] == [
        ("a", 40, {"accuracy": 0.5})
    ]
    assert outsider.value.status == 403


def test_publish_is_idempotent_and_refuses_other_tasks(coord: Coordinator, layout) -> None:
    publish(coord, ["a", "b"])
    publish(coord, ["a", "b"])
    with pytest.raises(ValueError, match="already published"):
        publish(coord, ["a", "c"])
    assert coord.round_status(CID, 1).num_tasks == 2


def test_wait_for_updates_returns_at_quorum_or_deadline(
    coord: Coordinator, server: ServerThread, tls: TLSFiles, layout
) -> None:
    import asyncio

    a = enroll(coord, server, tls, "a")
    enroll(coord, server, tls, "b")
    publish(coord, ["a", "b"], deadline_s=3.0)
    threading.Timer(0.5, upload, args=(a, 1, update_bytes(CID, 1, "a", layout))).start()

    at_quorum = asyncio.run(coord.wait_for_updates(CID, 1, quorum=1, poll_s=0.1))
    at_deadline = asyncio.run(coord.wait_for_updates(CID, 1, quorum=2, poll_s=0.1))

    assert at_quorum.received == ["a"] and not at_quorum.deadline_passed
    assert at_deadline.received == ["a"] and at_deadline.deadline_passed


def test_many_concurrent_health_checks_leave_the_registry_usable(
    coord: Coordinator, server: ServerThread, tls: TLSFiles, layout
) -> None:
    import asyncio

    client = enroll(coord, server, tls, "a")
    publish(coord, ["a"])

    async def storm() -> list[int]:
        ctx = ssl.create_default_context(cafile=str(tls.ca))
        async with httpx.AsyncClient(verify=ctx, timeout=60) as http:
            answers = await asyncio.gather(
                *(http.get(server.url + "/v1/health") for _ in range(120))
            )
        return [r.status_code for r in answers]

    statuses = asyncio.run(storm())
    done = threading.Event()
    result: list[dict] = []

    def deliver() -> None:
        result.append(upload(client, 1, update_bytes(CID, 1, "a", layout)))
        done.set()

    threading.Thread(target=deliver, daemon=True).start()

    assert set(statuses) == {200}
    assert done.wait(timeout=30), "the coordinator stopped answering after the health storm"
    assert result[0]["stored"] is True
