"""Direct uploads: a large update goes from the client straight to the S3 artifact store
through a presigned URL, then is committed and checked by the coordinator as an upload.

Services: a real S3 endpoint, ``moto_server`` on 127.0.0.1 (``tests/s3.py``), as the
coordinator's store; the coordinator over HTTPS on 127.0.0.1. moto does not enforce the
length and checksum signed into a presigned URL (real S3 does), so these tests also show
that the commit's own checks refuse whatever the staging key holds.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

from fl_core import wire
from fl_core.agent.transport import Refused, Unreachable
from fl_core.coordinator.api import Coordinator, staging_key
from fl_core.coordinator.registry import ProtocolError
from fl_core.coordinator.settings import CoordinatorSettings
from fl_core.data.io import write_table
from fl_core.rounds.layout import update_key
from fl_core.store import S3Store
from tests.fl_core.agent.test_agent import agent_for
from tests.fl_core.coordinator.harness import (
    SPEC,
    ServerThread,
    TLSFiles,
    free_port,
    start_campaign,
    task_dict,
    update_bytes,
)
from tests.fl_core.coordinator.test_http import CID, enroll, publish, sign_update
from tests.s3 import CREDENTIALS, s3_client, s3_endpoint  # noqa: F401  (s3_endpoint: fixture)

BUCKET = "fl-direct"
DIRECT_MIN = 512  # the test model's updates are 700 bytes


class RecordingS3Store(S3Store):
    """The S3 store, noting the keys the coordinator presigned; ``fail_puts`` writes fail
    (a store outage), ``presign_to`` replaces the presigned URL's address."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.presigned: list[str] = []
        self.fail_puts = 0
        self.presign_to: str | None = None

    def presigned_put(self, key: str, **kwargs: Any) -> tuple[str, dict[str, str]]:
        self.presigned.append(key)
        url, headers = super().presigned_put(key, **kwargs)
        if self.presign_to is not None:
            url = self.presign_to + url[url.index("/", len("http://")) :]
        return url, headers

    def put_bytes(self, key: str, data: bytes) -> str:
        if self.fail_puts:
            self.fail_puts -= 1
            raise RuntimeError("store outage (test)")
        return super().put_bytes(key, data)


@pytest.fixture
def coord(
    s3_endpoint: str,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Coordinator]:
    for name, value in CREDENTIALS.items():  # presigning signs with the store's credentials
        monkeypatch.setenv(name, value)
    client = s3_client(s3_endpoint)
    if BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=BUCKET)
    store = RecordingS3Store(BUCKET, f"run-{secrets.token_hex(4)}", client=client)
    settings = CoordinatorSettings.local(tmp_path / "home", direct_upload_min_bytes=DIRECT_MIN)
    c = Coordinator(settings, store=store)
    yield c
    c.close()


@pytest.fixture
def layout(coord: Coordinator):  # type: ignore[no-untyped-def]
    return start_campaign(coord.store, CID)[0]


def _store(coord: Coordinator) -> RecordingS3Store:
    store = coord.store
    assert isinstance(store, RecordingS3Store)
    return store


def test_a_large_update_goes_straight_to_the_store_and_is_committed(
    coord: Coordinator, server: ServerThread, tls: TLSFiles, layout
) -> None:
    client = enroll(coord, server, tls, "a")
    publish(coord, ["a"])
    task = client.next_task(wait_s=0)
    assert task is not None and task["direct_upload_min_bytes"] == DIRECT_MIN
    data = update_bytes(CID, 1, "a", layout)
    assert len(data) >= DIRECT_MIN
    signature = sign_update(client, 1, data)
    offer = client.direct_offer(task["upload_url"], size=len(data), sha256=_sha(data))

    out, _ = client.upload_update(
        task["upload_url"], data, signature=signature, direct_min_bytes=DIRECT_MIN
    )
    again, _ = client.upload_update(
        task["upload_url"], data, signature=signature, direct_min_bytes=DIRECT_MIN
    )

    store = _store(coord)
    # SigV4, with the length and the checksum among the signed headers (enforced by S3)
    query = parse_qs(urlsplit(offer["url"]).query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    signed_headers = query["X-Amz-SignedHeaders"][0].split(";")
    assert {"content-length", "x-amz-checksum-sha256"} <= set(signed_headers)
    assert out["stored"] is True and again["stored"] is False  # 201, then an idempotent 200
    staged = staging_key(CID, 1, "a")
    assert store.presigned == [staged, staged]  # the bytes went to the staging key
    assert store.get_bytes(update_key(CID, 1, "a")) == data
    assert store.list("staging") == []  # the staging object is removed after the commit
    assert coord.close_round(CID, 1).received == ["a"]
    record = coord.update_signature(CID, 1, "a")
    assert record is not None and record["signature"] == signature


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_small_updates_still_stream_through_the_coordinator(
    coord: Coordinator, server: ServerThread, tls: TLSFiles, layout
) -> None:
    client = enroll(coord, server, tls, "a")
    publish(coord, ["a"])
    data = update_bytes(CID, 1, "a", layout)

    out, _ = client.upload_update(
        f"/v1/updates/{CID}/1", data, signature=sign_update(client, 1, data),
        direct_min_bytes=len(data) + 1,
    )  # fmt: skip

    assert out["stored"] is True and _store(coord).presigned == []


def _refused(fn: Any) -> Refused:
    with pytest.raises(Refused) as refused:
        fn()
    return refused.value


def test_direct_upload_refusals(
    coord: Coordinator, server: ServerThread, tls: TLSFiles, layout
) -> None:
    a = enroll(coord, server, tls, "a")
    outsider = enroll(coord, server, tls, "b")
    publish(coord, ["a"])
    url = f"/v1/updates/{CID}/1"
    data = update_bytes(CID, 1, "a", layout)
    sha = _sha(data)
    signature = sign_update(a, 1, data)
    cap = coord.update_cap(CID)

    def commit(signature: str = signature) -> dict[str, Any]:
        return a.commit_direct(url, size=len(data), sha256=sha, signature=signature)

    not_selected = _refused(lambda: outsider.direct_offer(url, size=len(data), sha256=sha))
    too_large = _refused(lambda: a.direct_offer(url, size=cap + 1, sha256=sha))
    nothing_staged = _refused(commit)  # a commit with nothing at the staging key
    # what real S3 would refuse to store under this URL, moto takes: the commit refuses it
    offer = a.direct_offer(url, size=len(data), sha256=sha)
    forged = bytearray(data)
    forged[-1] ^= 0xFF
    a.put_presigned(offer["url"], bytes(forged), offer["headers"])
    mismatch = _refused(commit)  # other bytes than the declared digest
    a.put_presigned(offer["url"], b"\0" * (cap + 1), offer["headers"])
    oversized = _refused(commit)  # more than the cap: refused before reading it
    # the right bytes, signed by another key
    a.put_presigned(offer["url"], data, offer["headers"])
    bad_signature = _refused(lambda: commit(sign_update(outsider, 1, data)))
    # the update is still acceptable afterwards; then other bytes are a conflict
    a.put_presigned(offer["url"], data, offer["headers"])
    accepted = commit()
    other = update_bytes(CID, 1, "a", layout, scale=0.5)
    conflict = _refused(lambda: a.direct_offer(url, size=len(other), sha256=_sha(other)))

    assert (not_selected.status, too_large.status) == (403, 413)
    assert nothing_staged.status == 400 and "no staged update" in nothing_staged.reason
    assert mismatch.status == 400 and "does not match" in mismatch.reason
    assert oversized.status == 413
    assert bad_signature.status == 401
    assert accepted["stored"] is True
    assert conflict.status == 409
    assert _store(coord).list("staging") == []
    assert coord.store.get_bytes(update_key(CID, 1, "a")) == data


def test_a_commit_that_fails_midway_keeps_the_staged_update_for_the_retry(
    coord: Coordinator, server: ServerThread, tls: TLSFiles, layout
) -> None:
    """A store outage while the commit writes the update (500): the staged bytes stay, and
    the client's next commit is accepted without uploading them again."""
    a = enroll(coord, server, tls, "a")
    publish(coord, ["a"])
    url = f"/v1/updates/{CID}/1"
    data = update_bytes(CID, 1, "a", layout)
    offer = a.direct_offer(url, size=len(data), sha256=_sha(data))
    a.put_presigned(offer["url"], data, offer["headers"])
    _store(coord).fail_puts = 1

    with pytest.raises(Unreachable):  # 500, not retried by this client (one attempt)
        a.commit_direct(url, size=len(data), sha256=_sha(data), signature=sign_update(a, 1, data))
    staged_after_failure = _store(coord).list("staging")
    out = a.commit_direct(url, size=len(data), sha256=_sha(data), signature=sign_update(a, 1, data))

    assert staged_after_failure == [staging_key(CID, 1, "a")]
    assert out["stored"] is True
    assert coord.store.get_bytes(update_key(CID, 1, "a")) == data


def test_an_unreachable_store_falls_back_to_the_coordinator(
    coord: Coordinator, server: ServerThread, tls: TLSFiles, layout
) -> None:
    """The presigned URL points where the device cannot connect: the agent uploads the
    update through the coordinator instead, and it is accepted."""
    a = enroll(coord, server, tls, "a")
    publish(coord, ["a"])
    data = update_bytes(CID, 1, "a", layout)
    _store(coord).presign_to = f"http://127.0.0.1:{free_port()}"  # nothing listens there

    out, _ = a.upload_update(
        f"/v1/updates/{CID}/1", data, signature=sign_update(a, 1, data), direct_min_bytes=0
    )

    assert _store(coord).presigned == [staging_key(CID, 1, "a")]  # it tried the store first
    assert out["stored"] is True
    assert coord.store.get_bytes(update_key(CID, 1, "a")) == data


def test_closing_the_round_removes_uncommitted_staged_updates(
    coord: Coordinator, server: ServerThread, tls: TLSFiles, layout
) -> None:
    a = enroll(coord, server, tls, "a")
    publish(coord, ["a"])
    data = update_bytes(CID, 1, "a", layout)
    offer = a.direct_offer(f"/v1/updates/{CID}/1", size=len(data), sha256=_sha(data))
    a.put_presigned(offer["url"], data, offer["headers"])  # and the device goes away
    assert _store(coord).list("staging") == [staging_key(CID, 1, "a")]

    status = coord.close_round(CID, 1)

    assert _store(coord).list("staging") == []
    assert status.received == [] and "a" in status.stragglers


def test_a_coordinator_on_a_local_store_takes_no_direct_uploads(tmp_path: Path) -> None:
    coord = Coordinator(CoordinatorSettings.local(tmp_path, direct_upload_min_bytes=0))
    try:
        with pytest.raises(ProtocolError) as refused:
            coord.direct_upload("a", CID, 1, size=10, sha256="0" * 64)
    finally:
        coord.close()
    assert refused.value.status == 404
    assert not coord.direct_uploads


def test_the_agent_follows_the_tasks_offer_of_direct_uploads(
    coord: Coordinator, server: ServerThread, tls: TLSFiles, layout, tmp_path: Path
) -> None:
    """The agent as a device runs it: trains on its own file and, since the task offers
    direct uploads, sends its update to the store through the presigned URL."""
    rng = np.random.default_rng(3)
    path = tmp_path / "device" / "local.parquet"
    write_table(path, rng.normal(size=(40, SPEC.num_features)).astype(np.float32),
                rng.integers(0, SPEC.num_classes, size=40))  # fmt: skip
    token = coord.create_enrollment_token("dev-1")
    agent = agent_for(server, tls, path, tmp_path / "agent-home", token)
    coord.publish_round(CID, 1, base_version=0, tasks={"dev-1": task_dict(seed=5)}, deadline_s=60)

    assert agent.run(max_tasks=1) == 1
    agent.close()

    stored = coord.store.get_bytes(update_key(CID, 1, "dev-1"))
    header, _ = wire.decode(stored, expected_layout=layout)
    assert header.client == "dev-1"
    assert _store(coord).presigned == [staging_key(CID, 1, "dev-1")]
    assert coord.close_round(CID, 1).received == ["dev-1"]


def test_direct_uploads_are_turned_on_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FL_HOME", str(tmp_path))
    assert CoordinatorSettings.from_env().direct_upload_min_bytes is None  # off by default
    monkeypatch.setenv("FL_COORDINATOR_DIRECT_UPLOAD_MIN_BYTES", "1048576")
    assert CoordinatorSettings.from_env().direct_upload_min_bytes == 1 << 20
    monkeypatch.setenv("FL_COORDINATOR_DIRECT_UPLOAD_MIN_BYTES", "-1")
    with pytest.raises(ValueError, match="direct_upload_min_bytes must be >= 0"):
        CoordinatorSettings.from_env()
