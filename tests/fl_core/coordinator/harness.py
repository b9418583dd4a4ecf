"""Builders for coordinator and agent tests: a test CA and server certificate made with
``cryptography``, a campaign in a local artifact store, and a real uvicorn server over TLS
on 127.0.0.1 (in a thread, stoppable and restartable on the same port)."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fl_core import wire
from fl_core.coordinator.api import Coordinator
from fl_core.coordinator.app import create_app
from fl_core.models import Layout, ModelSpec, init_vector
from fl_core.rounds.layout import campaign_key, model_key
from fl_core.store import ArtifactStore

HOST = "127.0.0.1"
SPEC = ModelSpec(name="mlp", input_shape=(8,), num_classes=3, hidden=(6,))


@dataclass(frozen=True)
class TLSFiles:
    ca: Path
    cert: Path
    key: Path


def make_tls(folder: Path) -> TLSFiles:
    """A throwaway CA and a server certificate for 127.0.0.1 / localhost signed by it."""
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fl-test-ca")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TLSFiles(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files.key.chmod(0o600)
    return files


@contextmanager
def temporary_database(server_url: str, prefix: str) -> Iterator[str]:
    """A fresh database on the PostgreSQL server at ``server_url`` (an admin URL ending in a
    database name): yields its URL; dropped after, with any connections still open to it."""
    import secrets

    import sqlalchemy as sa

    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        try:
            yield server_url.rsplit("/", 1)[0] + "/" + name
        finally:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def registry_file(coord: Coordinator) -> str:
    """The SQLite file of ``coord``'s registry (to lock it from another connection, as
    another process would)."""
    database = sa.make_url(coord.settings.db_url).database
    assert database, f"not a SQLite file: {coord.settings.db_url}"
    return database


def stop_processes(procs: list[subprocess.Popen[Any]], timeout: float = 30) -> None:
    """Terminate every process first, then wait for each (killed after ``timeout``): one
    slow to exit does not keep the others running."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_fl(
    env: dict[str, str], *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``fl ARGS`` in a process of its own with ``env``, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "fl_core.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def start_campaign(store: ArtifactStore, cid: str, *, seed: int = 0) -> tuple[Layout, np.ndarray]:
    """The records the coordinator reads: the campaign record and global model v0."""
    vector, layout = init_vector(SPEC, seed=seed)
    store.put_json(
        campaign_key(cid, "campaign.json"),
        {"campaign_id": cid, "layout": layout.to_json(), "model_spec": SPEC.to_json()},
    )
    put_model(store, cid, 0, layout, vector)
    return layout, vector


def put_model(store: ArtifactStore, cid: str, version: int, layout: Layout, vector: Any) -> None:
    header = wire.Header(
        kind="model",
        campaign=cid,
        round=version,
        base_version=version,
        client="server",
        codec="dense_fp32",
        layout=layout,
    )
    store.put_bytes(model_key(cid, version), wire.encode(header, np.asarray(vector, np.float32)))


def task_dict(seed: int = 1, codec: str = "dense_fp32", **extra: Any) -> dict[str, Any]:
    """A manifest task as ``dispatch`` writes it."""
    return {
        "local_epochs": 1,
        "batch_size": 16,
        "lr": 0.1,
        "momentum": 0.0,
        "weight_decay": 0.0,
        "prox_mu": 0.0,
        "codec": codec,
        "link": "wifi",
        "error_feedback": codec.startswith("topk"),
        "downlink_codec": "dense_fp32",
        "downlink_delta_codec": "topk:0.5",
        "seed": seed,
        **extra,
    }


def update_bytes(
    cid: str,
    rnd: int,
    client: str,
    layout: Layout,
    *,
    base_version: int | None = None,
    codec: str = "dense_fp32",
    values: Any = None,
    scale: float = 0.01,
    num_examples: int = 10,
) -> bytes:
    vector = np.full(layout.num_params, scale, np.float32) if values is None else np.asarray(values)
    header = wire.Header(
        kind="update",
        campaign=cid,
        round=rnd,
        base_version=rnd - 1 if base_version is None else base_version,
        client=client,
        codec=codec,
        layout=layout,
        num_examples=num_examples,
        metrics={"train_loss": 1.0},
    )
    return wire.encode(header, vector.astype(np.float32))


class ServerThread:
    """uvicorn serving the coordinator app over TLS on 127.0.0.1 in a thread."""

    def __init__(self, coord: Coordinator, tls: TLSFiles, port: int | None = None) -> None:
        self.coord = coord
        self.tls = tls
        self.port = port or free_port()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app: Any = None
        """The app served (once started)."""

    @property
    def url(self) -> str:
        return f"https://{HOST}:{self.port}"

    def start(self, app: Any = None) -> ServerThread:
        self.app = app or create_app(coordinator=self.coord)
        config = uvicorn.Config(
            self.app,
            host=HOST,
            port=self.port,
            ssl_certfile=str(self.tls.cert),
            ssl_keyfile=str(self.tls.key),
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("coordinator did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._server.force_exit = True  # do not wait for idle keep-alive clients
            self._thread.join(timeout=20)
        self._server = None


def raw_request(
    server: ServerThread, tls: TLSFiles, request_line: str, headers: dict[str, str], length: int
) -> ssl.SSLSocket:
    """A TLS socket to ``server`` on which the request's line and headers were sent (the
    body, ``length`` bytes, is the caller's to send, or not)."""
    context = ssl.create_default_context(cafile=str(tls.ca))
    raw = socket.create_connection((HOST, server.port), timeout=30)
    sock = context.wrap_socket(raw, server_hostname=HOST)
    head = [request_line, f"Host: {HOST}:{server.port}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    head += [f"Content-Length: {length}", "", ""]
    sock.sendall("\r\n".join(head).encode())
    return sock


@contextmanager
def serving(coord: Coordinator, tls: TLSFiles) -> Iterator[ServerThread]:
    server = ServerThread(coord, tls).start()
    try:
        yield server
    finally:
        server.stop()


def enrolled_round(coord: Coordinator, cid: str, names: list[str]) -> tuple[Layout, dict[str, Any]]:
    """Campaign ``cid`` started, ``names`` enrolled with fresh Ed25519 keys and selected in
    its round 1 (60 s deadline), through the coordinator's own API; returns the layout and
    the keys by client."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fl_core.coordinator import protocol, registry

    layout, _ = start_campaign(coord.store, cid)
    keys = {n: Ed25519PrivateKey.generate() for n in names}
    with coord.session() as s:
        for n in names:
            token = registry.create_enrollment_token(s, n, ttl_s=60)
            registry.enroll(s, token=token, public_key=protocol.public_key_b64(keys[n]))
    coord.publish_round(cid, 1, base_version=0, tasks={n: task_dict() for n in names},
                        deadline_s=60)  # fmt: skip
    return layout, keys


def accept_signed(coord: Coordinator, key: Any, cid: str, client: str, data: bytes) -> bool:
    """``coord.accept_update`` of ``data`` for round 1, signed with ``key`` as the agent
    signs it; returns whether it was newly stored."""
    from fl_core.coordinator import protocol

    signed = protocol.update_message(
        campaign=cid, rnd=1, client_id=client, message_sha256=hashlib.sha256(data).hexdigest()
    )
    fresh, _ = coord.accept_update(client, cid, 1, data, signature=protocol.sign(key, signed))
    return fresh


def check_close_while_storing(coord_for: Callable[[ArtifactStore], Any], root: Path) -> None:
    """The round closes while an accepted update's bytes are being written to the store
    (between its claim and its acceptance): the upload is refused 410 and recorded as
    straggler, and the update is not among the round's received ones, neither in what the
    close returned nor after; a client that was accepted before the close stays received.
    ``coord_for(store)`` makes the coordinator (its registry) around the given store."""
    from fl_core.coordinator import registry
    from fl_core.store import LocalStore

    writing, closed = threading.Event(), threading.Event()

    class SlowStore(LocalStore):
        """Holds the late client's update write until the round has closed."""

        def put_bytes(self, key: str, data: bytes) -> str:
            if "/late" in key:
                writing.set()
                closed.wait(30)
            return super().put_bytes(key, data)

    coord = coord_for(SlowStore(root))
    try:
        layout, keys = enrolled_round(coord, "camp-1", ["early", "late"])

        def accept(n: str) -> Any:
            data = update_bytes("camp-1", 1, n, layout)
            try:
                return accept_signed(coord, keys[n], "camp-1", n, data)
            except registry.ProtocolError as exc:
                return exc

        assert accept("early") is True
        outcome: list[Any] = []
        late = threading.Thread(target=lambda: outcome.append(accept("late")))
        late.start()
        assert writing.wait(30), "the late update never reached the store"
        at_close = coord.close_round("camp-1", 1)
        closed.set()
        late.join(30)
        after = coord.round_status("camp-1", 1)
    finally:
        closed.set()
        coord.close()
    (refused,) = outcome
    assert isinstance(refused, registry.ProtocolError), f"acknowledged after close: {refused}"
    assert refused.status == 410
    assert at_close.received == after.received == ["early"]
    assert "late" in after.stragglers and "early" not in after.stragglers


def check_upload_authentication(coord: Any) -> None:
    """The upload's hot path reads the client's key and the upload context in one query
    (``authenticate_upload``). It must refuse exactly as the two checks one after the other
    do, in the same order: unknown client and wrong key 401, revoked 403 (selected or not),
    replayed nonce 409, not selected 403, round closed 410."""
    import secrets
    import time

    from fl_core.coordinator import protocol, registry
    from fl_core.coordinator.registry import ProtocolError
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

    assert seen[at_once] == seen[one_by_one]
    statuses = [outcome[0] for outcome in seen[at_once]]
    assert statuses == [401, 401, 403, 403, 403, "ok", 409, 410, 403]
    assert seen[at_once][0][1] == "unknown client" and "revoked" in seen[at_once][2][1]
    assert seen[at_once][5] == ("ok", 0, True)
