"""Artifact store behaviour, one suite run against both backends.

Every test taking the ``store`` fixture runs twice: against :class:`LocalStore` in a tmp
folder, and against :class:`S3Store` talking over HTTP to a real ``moto_server`` subprocess on
127.0.0.1 (started once per session by :func:`tests.s3.s3_endpoint`; each test gets a fresh
bucket and a key prefix). Nothing is mocked inside boto3.
"""

from __future__ import annotations

import multiprocessing
import os
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fl_core.store import (
    ArtifactStore,
    ArtifactTooLargeError,
    LocalStore,
    S3Store,
    StoreUnavailableError,
    open_store,
    store_from_env,
)
from tests.s3 import (  # noqa: F401  (s3_endpoint: fixture)
    CREDENTIALS,
    free_port,
    s3_client,
    s3_endpoint,
)

INVALID_KEYS = ["", "/abs", "../x", "a/../b", "a//b", "a/", "./a", "a/./b", "a/\x00b"]


def _new_bucket(endpoint: str) -> tuple[Any, str]:
    client = s3_client(endpoint)
    bucket = f"fl-test-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return client, bucket


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return LocalStore(tmp_path / "artifacts")
    client, bucket = _new_bucket(request.getfixturevalue("s3_endpoint"))
    return S3Store(bucket, "team/fl", client=client)


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch, s3_endpoint: str) -> str:  # noqa: F811
    """Dummy credentials and the moto endpoint in the environment, as in production."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "FL_ARTIFACT_STORE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("FL_S3_ENDPOINT_URL", s3_endpoint)
    return s3_endpoint


# --------------------------------------------------------------------------- shared suite


def test_bytes_round_trip_and_put_returns_uri(store: ArtifactStore) -> None:
    data = bytes(range(256)) * 10

    uri = store.put_bytes("campaigns/c1/models/v0000.flw", data)

    assert store.get_bytes("campaigns/c1/models/v0000.flw") == data
    assert uri == store.uri("campaigns/c1/models/v0000.flw")
    assert store.exists("campaigns/c1/models/v0000.flw")


def test_empty_payload_round_trip(store: ArtifactStore) -> None:
    store.put_bytes("empty.bin", b"")

    assert store.exists("empty.bin")
    assert store.get_bytes("empty.bin") == b""


def test_json_round_trip(store: ArtifactStore) -> None:
    obj = {"round": 3, "cohort": ["c01", "c07"], "eps": 0.5, "nested": {"ok": True, "n": None}}

    store.put_json("campaigns/c1/rounds/0003/manifest.json", obj)

    assert store.get_json("campaigns/c1/rounds/0003/manifest.json") == obj


def test_arrays_round_trip_keeps_dtype_and_shape(store: ArtifactStore) -> None:
    arrays: dict[str, np.ndarray] = {
        "vector": np.linspace(-1, 1, 1001, dtype=np.float32),
        "counts": np.arange(12, dtype=np.int64).reshape(3, 4),
        "scalar": np.array(2.5, dtype=np.float64),
    }

    store.put_arrays("state/opt.npz", arrays)
    back = store.get_arrays("state/opt.npz")

    assert set(back) == set(arrays)
    for name, value in arrays.items():
        assert back[name].dtype == value.dtype
        assert back[name].shape == value.shape
        np.testing.assert_array_equal(back[name], value)


def test_object_arrays_are_refused_not_pickled(store: ArtifactStore) -> None:
    with pytest.raises(ValueError):
        store.put_arrays("bad.npz", {"obj": np.array([{"a": 1}], dtype=object)})

    assert not store.exists("bad.npz")


def test_list_with_prefix_has_folder_semantics(store: ArtifactStore) -> None:
    for key in [
        "campaigns/c1/rounds/0001/updates/b.upd",
        "campaigns/c1/rounds/0001/updates/a.upd",
        "campaigns/c1/rounds/0001/manifest.json",
        "campaigns/c10/campaign.json",
        "campaigns/c1/campaign.json",
    ]:
        store.put_bytes(key, b"x")

    updates = store.list("campaigns/c1/rounds/0001/updates")
    c1 = store.list("campaigns/c1/")
    everything = store.list("")

    assert updates == [
        "campaigns/c1/rounds/0001/updates/a.upd",
        "campaigns/c1/rounds/0001/updates/b.upd",
    ]
    assert c1 == [
        "campaigns/c1/campaign.json",
        "campaigns/c1/rounds/0001/manifest.json",
        "campaigns/c1/rounds/0001/updates/a.upd",
        "campaigns/c1/rounds/0001/updates/b.upd",
    ]
    assert "campaigns/c10/campaign.json" not in c1
    assert everything == sorted(everything) and len(everything) == 5
    assert store.list("campaigns/nope") == []
    assert store.list("campaigns/c1/campaign.json") == []  # a file is not a folder


def test_missing_key_raises_key_error(store: ArtifactStore) -> None:
    store.put_bytes("present.bin", b"1")

    with pytest.raises(KeyError, match="missing.bin"):
        store.get_bytes("missing.bin")
    with pytest.raises(KeyError):
        store.get_json("missing.json")
    with pytest.raises(KeyError):
        store.get_arrays("missing.npz")
    assert not store.exists("missing.bin")


def test_overwrite_replaces_whole_artifact(store: ArtifactStore) -> None:
    store.put_bytes("model.flw", b"old" * 1000)

    store.put_bytes("model.flw", b"new")

    assert store.get_bytes("model.flw") == b"new"
    assert store.list("") == ["model.flw"]  # no temp files or stale versions visible


def test_failed_write_keeps_previous_artifact(store: ArtifactStore) -> None:
    store.put_bytes("model.flw", b"old")

    with pytest.raises(TypeError):
        store.put_bytes("model.flw", object())  # type: ignore[arg-type]

    assert store.get_bytes("model.flw") == b"old"
    assert store.list("") == ["model.flw"]


@pytest.mark.parametrize("key", INVALID_KEYS)
def test_invalid_keys_are_rejected(store: ArtifactStore, key: str) -> None:
    with pytest.raises(ValueError, match="invalid artifact key"):
        store.put_bytes(key, b"x")
    with pytest.raises(ValueError, match="invalid artifact key"):
        store.get_bytes(key)
    with pytest.raises(ValueError, match="invalid artifact key"):
        store.exists(key)
    with pytest.raises(ValueError, match="invalid artifact key"):
        store.uri(key)


def test_list_rejects_escaping_prefix(store: ArtifactStore) -> None:
    with pytest.raises(ValueError, match="invalid artifact key"):
        store.list("../outside")


# --------------------------------------------------------------------------- uri forms


def test_local_uri_is_file_uri_of_the_artifact(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "with space")

    uri = store.put_bytes("a/b.json", b"{}")

    assert uri == (tmp_path / "with space" / "a" / "b.json").resolve().as_uri()
    assert uri.startswith("file:///") and "%20" in uri


def test_s3_uri_forms(s3_endpoint: str) -> None:  # noqa: F811
    client, bucket = _new_bucket(s3_endpoint)

    with_prefix = S3Store(bucket, "/team/fl/", client=client)
    no_prefix = S3Store(bucket, client=client)

    assert with_prefix.prefix == "team/fl"
    assert with_prefix.uri("a/b.json") == f"s3://{bucket}/team/fl/a/b.json"
    assert no_prefix.uri("a/b.json") == f"s3://{bucket}/a/b.json"
    assert with_prefix.put_bytes("a/b.json", b"1") == f"s3://{bucket}/team/fl/a/b.json"
    assert no_prefix.list("") == ["team/fl/a/b.json"]  # the prefix is a plain folder


# --------------------------------------------------------------------------- S3 specifics


def test_s3_list_follows_pagination(s3_endpoint: str) -> None:  # noqa: F811
    client, bucket = _new_bucket(s3_endpoint)
    store = S3Store(bucket, "p", client=client)
    store.page_size = 2
    calls: list[str] = []
    client.meta.events.register(
        "before-call.s3.ListObjectsV2", lambda **kwargs: calls.append("list")
    )
    keys = [f"updates/{i:02d}.upd" for i in range(7)]
    for key in keys:
        store.put_bytes(key, b"u")

    listed = store.list("updates")

    assert listed == keys
    assert len(calls) == 4  # 7 keys at 2 per page


def test_s3_missing_bucket_is_not_a_missing_key(s3_endpoint: str) -> None:  # noqa: F811
    store = S3Store("no-such-bucket-fl", client=s3_client(s3_endpoint))

    with pytest.raises(Exception) as info:
        store.get_bytes("x")

    assert not isinstance(info.value, KeyError)
    assert "NoSuchBucket" in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"bucket": ""}, "bucket"),
        ({"bucket": "a/b"}, "bucket"),
        ({"bucket": "ok-bucket", "prefix": "a/../b"}, "prefix"),
        ({"bucket": "ok-bucket", "prefix": "a//b"}, "prefix"),
        ({"bucket": "ok-bucket", "client": object(), "endpoint_url": "http://x"}, "client"),
        ({"bucket": "ok-bucket", "client": object(), "region": "eu-west-1"}, "client"),
    ],
)
def test_s3_store_rejects_bad_arguments(kwargs: dict[str, Any], argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        S3Store(**kwargs)


def test_s3_store_builds_its_own_client_from_the_environment(s3_env: str) -> None:
    _, bucket = _new_bucket(s3_env)
    store = S3Store(bucket, "x", endpoint_url=s3_env)

    store.put_json("k.json", {"a": 1})

    assert store.get_json("k.json") == {"a": 1}
    assert store.client.meta.endpoint_url == s3_env


# --------------------------------------------------------------------------- open_store


def test_open_store_parses_paths_and_file_urls(tmp_path: Path) -> None:
    spaced = tmp_path / "my store"

    cases = {
        str(tmp_path): tmp_path,
        tmp_path.as_uri(): tmp_path,
        f"file://localhost{tmp_path}": tmp_path,
        spaced.as_uri(): spaced,  # percent-encoded, as LocalStore.uri writes it
    }

    for url, root in cases.items():
        store = open_store(url)
        assert isinstance(store, LocalStore), url
        assert store.root == root.resolve(), url
    assert isinstance(open_store(tmp_path), LocalStore)
    assert open_store("relative/dir").root == (Path.cwd() / "relative/dir").resolve()  # type: ignore[attr-defined]


def test_open_store_round_trips_a_local_uri(tmp_path: Path) -> None:
    LocalStore(tmp_path).put_bytes("k.bin", b"abc")

    again = open_store(tmp_path.as_uri())

    assert again.get_bytes("k.bin") == b"abc"


def test_open_store_parses_s3_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("FL_S3_ENDPOINT_URL", raising=False)

    bare = open_store("s3://fl-artifacts")
    nested = open_store("s3://fl-artifacts/prod/campaigns/")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    from_aws_env = open_store("s3://fl-artifacts/p")
    monkeypatch.setenv("FL_S3_ENDPOINT_URL", "http://127.0.0.1:2")
    from_fl_env = open_store("s3://fl-artifacts/p")

    assert isinstance(bare, S3Store) and (bare.bucket, bare.prefix) == ("fl-artifacts", "")
    assert bare.endpoint_url is None
    assert isinstance(nested, S3Store) and nested.prefix == "prod/campaigns"
    assert isinstance(from_aws_env, S3Store) and from_aws_env.endpoint_url == "http://127.0.0.1:1"
    assert isinstance(from_fl_env, S3Store) and from_fl_env.endpoint_url == "http://127.0.0.1:2"
    assert nested.uri("k") == "s3://fl-artifacts/prod/campaigns/k"


@pytest.mark.parametrize(
    "url",
    [
        "",
        "   ",
        "http://example.com/x",
        "gs://bucket/x",
        "s3://",
        "s3:///prefix",
        "s3://bucket/x?versionId=1",
        "s3://user@bucket/x",
        "s3://bucket/../x",
        "file://somehost/x",
    ],
)
def test_open_store_rejects_bad_urls(url: str) -> None:
    with pytest.raises(ValueError):
        open_store(url)


def test_open_store_s3_end_to_end(s3_env: str) -> None:
    client, bucket = _new_bucket(s3_env)

    store = open_store(f"s3://{bucket}/campaigns")
    store.put_json("c1/campaign.json", {"id": "c1"})

    assert store.get_json("c1/campaign.json") == {"id": "c1"}
    assert store.uri("c1/campaign.json") == f"s3://{bucket}/campaigns/c1/campaign.json"
    raw = client.get_object(Bucket=bucket, Key="campaigns/c1/campaign.json")["Body"].read()
    assert b'"c1"' in raw


# --------------------------------------------------------------------------- store_from_env


def test_store_from_env_defaults_to_local(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FL_ARTIFACT_STORE", raising=False)

    store = store_from_env(tmp_path / "artifacts")

    assert isinstance(store, LocalStore) and store.root == (tmp_path / "artifacts").resolve()


def test_store_from_env_ignores_empty_value(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FL_ARTIFACT_STORE", "")

    assert isinstance(store_from_env(tmp_path), LocalStore)


def test_store_from_env_reads_path_and_file_url(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FL_ARTIFACT_STORE", str(tmp_path / "elsewhere"))
    by_path = store_from_env(tmp_path / "default")
    monkeypatch.setenv("FL_ARTIFACT_STORE", (tmp_path / "url").as_uri())
    by_url = store_from_env(tmp_path / "default")

    assert isinstance(by_path, LocalStore) and by_path.root == (tmp_path / "elsewhere").resolve()
    assert isinstance(by_url, LocalStore) and by_url.root == (tmp_path / "url").resolve()


def test_store_from_env_switches_to_s3(monkeypatch: pytest.MonkeyPatch, s3_env: str) -> None:
    _, bucket = _new_bucket(s3_env)
    monkeypatch.setenv("FL_ARTIFACT_STORE", f"s3://{bucket}/prod")

    store = store_from_env("/nonexistent/default")
    store.put_bytes("a.bin", b"1")

    assert isinstance(store, S3Store)
    assert store.list("") == ["a.bin"]


# --------------------------------------------------------------------------- sizes and limits


def test_size_is_the_artifact_length_and_missing_is_key_error(store: ArtifactStore) -> None:
    store.put_bytes("u/a.flw", b"x" * 1234)

    assert store.size("u/a.flw") == 1234
    with pytest.raises(KeyError):
        store.size("u/missing.flw")


def test_get_bytes_with_max_size_refuses_larger_artifacts(store: ArtifactStore) -> None:
    store.put_bytes("u/a.flw", b"y" * 100)

    assert store.get_bytes("u/a.flw", max_size=100) == b"y" * 100
    with pytest.raises(ArtifactTooLargeError, match="100 bytes, more than the limit of 99"):
        store.get_bytes("u/a.flw", max_size=99)
    with pytest.raises(KeyError):
        store.get_bytes("u/missing.flw", max_size=10)
    with pytest.raises(ValueError, match="max_size"):
        store.get_bytes("u/a.flw", max_size=-1)


def test_oversized_local_artifact_is_refused_before_it_is_read(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("u/big.flw", b"")
    with open(tmp_path / "u" / "big.flw", "wb") as fh:  # 300 MiB, sparse: costs no disk
        fh.truncate(300 << 20)

    tracemalloc.start()
    try:
        with pytest.raises(ArtifactTooLargeError):
            store.get_bytes("u/big.flw", max_size=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 4 << 20  # reading it whole would have allocated 300 MiB


def test_oversized_s3_artifact_is_refused_before_its_body_is_read(
    s3_endpoint: str,  # noqa: F811
) -> None:
    client, bucket = _new_bucket(s3_endpoint)
    store = S3Store(bucket, client=client)
    store.put_bytes("u/big.flw", b"z" * (24 << 20))

    tracemalloc.start()
    try:
        with pytest.raises(ArtifactTooLargeError, match="25165824 bytes"):
            store.get_bytes("u/big.flw", max_size=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 8 << 20  # the 24 MiB body was never read


# --------------------------------------------------------------------------- write once


def test_put_if_absent_writes_once_and_keeps_the_first(store: ArtifactStore) -> None:
    first = store.put_bytes_if_absent("r/commit.json", b"first")
    second = store.put_bytes_if_absent("r/commit.json", b"second")

    assert (first, second) == (True, False)
    assert store.get_bytes("r/commit.json") == b"first"
    assert store.list("r") == ["r/commit.json"]  # no temp files left behind


def test_put_json_if_absent(store: ArtifactStore) -> None:
    assert store.put_json_if_absent("c/secret.json", {"v": 1}) is True
    assert store.put_json_if_absent("c/secret.json", {"v": 2}) is False

    assert store.get_json("c/secret.json") == {"v": 1}


def test_put_if_absent_after_put_bytes_sees_the_existing_artifact(store: ArtifactStore) -> None:
    store.put_bytes("r/x.bin", b"old")

    assert store.put_bytes_if_absent("r/x.bin", b"new") is False
    assert store.get_bytes("r/x.bin") == b"old"


RACE_KEYS = 12
RACE_PAYLOAD = 64 << 10


def _race_worker(spec: dict[str, Any], name: str, barrier: Any, out: Any) -> None:
    """Child process: at each barrier, try to write ``RACE_KEYS`` keys once; report wins."""
    if spec["kind"] == "local":
        store: ArtifactStore = LocalStore(spec["root"])
    else:
        os.environ.update(CREDENTIALS)
        store = S3Store(spec["bucket"], spec["prefix"], endpoint_url=spec["endpoint"])
    wins = []
    for i in range(RACE_KEYS):
        payload = (f"{name}:{i}:".encode() * RACE_PAYLOAD)[:RACE_PAYLOAD]
        barrier.wait(timeout=60)
        if store.put_bytes_if_absent(f"race/{i:03d}/commit.bin", payload):
            wins.append(i)
    out.put((name, wins))


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_two_processes_racing_to_write_once_have_exactly_one_winner(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if kind == "local":
        spec: dict[str, Any] = {"kind": "local", "root": str(tmp_path / "store")}
        store: ArtifactStore = LocalStore(spec["root"])
    else:
        endpoint = request.getfixturevalue("s3_endpoint")
        client, bucket = _new_bucket(endpoint)
        spec = {"kind": "s3", "bucket": bucket, "prefix": "p", "endpoint": endpoint}
        store = S3Store(bucket, "p", client=client)
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race_worker, args=(spec, n, barrier, out)) for n in "AB"]
    for proc in procs:
        proc.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0

    for i in range(RACE_KEYS):
        winners = [n for n, wins in results.items() if i in wins]
        assert len(winners) == 1, f"key {i}: winners {winners}"
        expected = (f"{winners[0]}:{i}:".encode() * RACE_PAYLOAD)[:RACE_PAYLOAD]
        assert store.get_bytes(f"race/{i:03d}/commit.bin") == expected  # whole, not mixed
    assert len(store.list("race")) == RACE_KEYS


# --------------------------------------------------------------------------- unavailable store


def test_s3_exists_on_a_missing_bucket_raises_instead_of_answering_false(
    s3_endpoint: str,  # noqa: F811
) -> None:
    store = S3Store("no-such-bucket-fl", client=s3_client(s3_endpoint))

    with pytest.raises(StoreUnavailableError, match="no-such-bucket-fl.*does not exist"):
        store.exists("campaigns/c/rounds/0001/updates/client_0000.flw")
    with pytest.raises(StoreUnavailableError):
        store.size("x")
    with pytest.raises(StoreUnavailableError):
        store.put_bytes_if_absent("x", b"1")


def test_s3_exists_on_an_existing_bucket_still_answers_false_for_a_missing_key(
    s3_endpoint: str,  # noqa: F811
) -> None:
    client, bucket = _new_bucket(s3_endpoint)
    store = S3Store(bucket, client=client)

    assert store.exists("nothing/here.bin") is False
    store.put_bytes("nothing/here.bin", b"1")
    assert store.exists("nothing/here.bin") is True


def test_s3_unreachable_endpoint_raises_store_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    store = S3Store("bucket", endpoint_url=f"http://127.0.0.1:{free_port()}")  # nobody listens
    store.client.meta.config.retries = {"max_attempts": 1}

    for call in (
        lambda: store.exists("k"),
        lambda: store.get_bytes("k"),
        lambda: store.put_bytes("k", b"1"),
        lambda: store.list(""),
    ):
        with pytest.raises(StoreUnavailableError, match="endpoint not reachable"):
            call()
