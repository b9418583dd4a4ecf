"""The coordinator protocol's constants and signatures, shared by the coordinator and the agent.

This module is the protocol in code (``docs/protocol.md`` is the prose): header names,
the canonical byte strings that are signed, and Ed25519 helpers. It imports only
``cryptography``, so the agent can use it without the server's dependencies.

Request signature (every authenticated request): the eight lines, joined by ``\\n``::

    FL-REQ-1 | METHOD | path | raw query | sha256 hex of body | timestamp | nonce | client

signed with the client's Ed25519 key; ``path`` is relative to the coordinator's base URL
(``/v1/...``), so the signature does not depend on where the app is mounted.

Update signature (kept beside every stored update), lines joined by ``\\n``::

    FL-UPDATE-1 | campaign | round | client | sha256 hex of the whole wire message

The wire message's own header carries the payload's sha256, so this signs header and payload.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
import secrets
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "API_PREFIX",
    "CLIENT_ID_PATTERN",
    "H_CLIENT",
    "H_CONTENT_SHA256",
    "H_NONCE",
    "H_SIGNATURE",
    "H_TIMESTAMP",
    "H_UPDATE_SIGNATURE",
    "check_client_id",
    "public_key_b64",
    "request_message",
    "sign",
    "sign_request",
    "update_message",
    "verify",
]

API_PREFIX = "/v1"
H_CLIENT = "X-FL-Client"
H_TIMESTAMP = "X-FL-Timestamp"
H_NONCE = "X-FL-Nonce"
H_CONTENT_SHA256 = "X-FL-Content-SHA256"
H_SIGNATURE = "X-FL-Signature"
H_UPDATE_SIGNATURE = "X-FL-Update-Signature"

CLIENT_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""Client ids are file-name safe, so ``update_key(..., client)`` is one unique file."""
_NONCE = re.compile(r"[0-9a-f]{32}")
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
# The 401 reason of a request read too long after it was signed (or from a skewed clock):
# the agent signs it again, once, with a fresh timestamp (a queue at an overloaded
# coordinator can age a request past the window; a skewed clock fails again).
STALE_TIMESTAMP_REASON = "request timestamp is more than"


def check_client_id(client_id: str) -> str:
    """Return ``client_id`` if it matches :data:`CLIENT_ID_PATTERN`, else raise ``ValueError``."""
    if not isinstance(client_id, str) or not CLIENT_ID_PATTERN.fullmatch(client_id):
        raise ValueError(
            f"client id {client_id!r:.80} must match {CLIENT_ID_PATTERN.pattern} "
            "(letters, digits, '.', '_', '-'; at most 64 characters)"
        )
    return client_id


def check_nonce(nonce: str) -> str:
    if not _NONCE.fullmatch(nonce):
        raise ValueError("nonce must be 32 lowercase hex characters")
    return nonce


def request_message(
    *,
    method: str,
    path: str,
    query: str,
    body_sha256: str,
    timestamp: str,
    nonce: str,
    client_id: str,
) -> bytes:
    """The canonical bytes a request signature covers."""
    parts = ["FL-REQ-1", method.upper(), path, query, body_sha256, timestamp, nonce, client_id]
    return "\n".join(parts).encode()


def update_message(*, campaign: str, rnd: int, client_id: str, message_sha256: str) -> bytes:
    """The canonical bytes an update signature covers."""
    return "\n".join(["FL-UPDATE-1", campaign, str(rnd), client_id, message_sha256]).encode()


def public_key_b64(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The raw 32-byte public key, base64 (what the registry stores)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


@functools.lru_cache(maxsize=4096)
def load_public_key(b64: str) -> Ed25519PublicKey:
    """Parse a base64 raw Ed25519 public key; ``ValueError`` if malformed. Parsed keys are
    cached (immutable objects; every request of a client verifies with the same key)."""
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("public key is not base64") from None
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key has 32 bytes, got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def sign(key: Ed25519PrivateKey, message: bytes) -> str:
    return base64.b64encode(key.sign(message)).decode()


def verify(public_key: str, message: bytes, signature: str) -> bool:
    """Whether ``signature`` (base64) is ``public_key``'s Ed25519 signature of ``message``."""
    try:
        sig = base64.b64decode(signature, validate=True)
        load_public_key(public_key).verify(sig, message)
    except (InvalidSignature, ValueError, binascii.Error):
        return False
    return True


def sign_request(
    key: Ed25519PrivateKey,
    *,
    client_id: str,
    method: str,
    path: str,
    query: str = "",
    body_sha256: str = EMPTY_SHA256,
    timestamp: float | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The authentication headers of one request."""
    ts = str(int(time.time() if timestamp is None else timestamp))
    nonce = nonce or secrets.token_hex(16)
    message = request_message(
        method=method,
        path=path,
        query=query,
        body_sha256=body_sha256,
        timestamp=ts,
        nonce=nonce,
        client_id=client_id,
    )
    return {
        H_CLIENT: client_id,
        H_TIMESTAMP: ts,
        H_NONCE: nonce,
        H_CONTENT_SHA256: body_sha256,
        H_SIGNATURE: sign(key, message),
    }
