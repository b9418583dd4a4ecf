"""The agent's identity and state on its own disk (the client home).

Layout of ``<home>``::

    identity.json          client id, coordinator URL, public key (no secret)
    key.pem                Ed25519 private key, PKCS#8 PEM, mode 0600
    state/<campaign>.npz   ClientState arrays: known model version and vector, error-feedback
                           residual (numpy, never pickled)
    pending/<c>-<r>.flw    an update trained but not yet acknowledged; .npz: the state it
                           leads to; .json: signature, written last (the commit marker)

Every write is atomic (temp file + rename), so a crash leaves the old file or the new one.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fl_core.coordinator import protocol

logger = logging.getLogger(__name__)

__all__ = ["ClientHome", "Identity", "PendingUpload"]


def _atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Identity:
    client_id: str
    coordinator: str
    key: Ed25519PrivateKey

    @property
    def public_key(self) -> str:
        return protocol.public_key_b64(self.key)


@dataclass(frozen=True)
class PendingUpload:
    """A signed update not yet acknowledged, with the client state it leads to."""

    campaign: str
    round: int
    data: bytes
    signature: str
    state: dict[str, np.ndarray] | None = None


class ClientHome:
    """The agent's folder: identity, key, per-campaign state and pending uploads."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    # ----------------------------------------------------------------- identity

    def new_key(self) -> Ed25519PrivateKey:
        """A fresh key pair, persisted (0600) before it is ever used (enrollment)."""
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _atomic_write(self.root / "key.pem", pem, mode=0o600)
        return key

    def save_identity(self, client_id: str, coordinator: str, key: Ed25519PrivateKey) -> Identity:
        record = {
            "client_id": client_id,
            "coordinator": coordinator,
            "public_key": protocol.public_key_b64(key),
        }
        _atomic_write(self.root / "identity.json", (json.dumps(record, indent=1) + "\n").encode())
        return Identity(client_id, coordinator, key)

    def load_identity(self) -> Identity | None:
        """The enrolled identity, or None before enrollment."""
        path = self.root / "identity.json"
        if not path.is_file():
            return None
        record = json.loads(path.read_text())
        key = serialization.load_pem_private_key((self.root / "key.pem").read_bytes(), None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{self.root / 'key.pem'} is not an Ed25519 private key")
        if protocol.public_key_b64(key) != record["public_key"]:
            raise ValueError(f"{self.root / 'key.pem'} does not match identity.json")
        return Identity(str(record["client_id"]), str(record["coordinator"]), key)

    # ----------------------------------------------------------------- state

    def _state_path(self, campaign: str) -> Path:
        return self.root / "state" / f"{campaign}.npz"

    def load_state(self, campaign: str) -> dict[str, np.ndarray]:
        """The client state arrays for a campaign (empty before its first task)."""
        path = self._state_path(campaign)
        if not path.is_file():
            return {}
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}

    def save_state(self, campaign: str, arrays: dict[str, np.ndarray]) -> None:
        buf = io.BytesIO()
        np.savez(buf, allow_pickle=False, **arrays)
        _atomic_write(self._state_path(campaign), buf.getvalue(), mode=0o600)

    # ----------------------------------------------------------------- pending uploads

    def _pending(self, campaign: str, rnd: int) -> Path:
        return self.root / "pending" / f"{campaign}-{rnd:06d}.flw"

    def save_pending(self, upload: PendingUpload) -> None:
        """Write the update, then the state it leads to, then the marker (``.json``) that
        makes the pair count; :meth:`commit_pending` moves the state into place."""
        path = self._pending(upload.campaign, upload.round)
        _atomic_write(path, upload.data, mode=0o600)
        if upload.state is not None:
            buf = io.BytesIO()
            np.savez(buf, allow_pickle=False, **upload.state)
            _atomic_write(path.with_suffix(".npz"), buf.getvalue(), mode=0o600)
        meta = {"campaign": upload.campaign, "round": upload.round, "signature": upload.signature}
        _atomic_write(path.with_suffix(".json"), json.dumps(meta).encode(), mode=0o600)

    def pending(self) -> Iterator[PendingUpload]:
        """Uploads trained before a crash or network failure, oldest round first."""
        folder = self.root / "pending"
        if not folder.is_dir():
            return
        for meta_path in sorted(folder.glob("*.json")):
            data_path = meta_path.with_suffix(".flw")
            if not data_path.is_file():
                continue
            meta: dict[str, Any] = json.loads(meta_path.read_text())
            state = None
            if data_path.with_suffix(".npz").is_file():
                with np.load(data_path.with_suffix(".npz"), allow_pickle=False) as npz:
                    state = {name: npz[name] for name in npz.files}
            yield PendingUpload(
                str(meta["campaign"]),
                int(meta["round"]),
                data_path.read_bytes(),
                meta["signature"],
                state,
            )

    def commit_pending(self, upload: PendingUpload) -> None:
        """Make the pending update's state the campaign's state (idempotent)."""
        if upload.state is not None:
            self.save_state(upload.campaign, upload.state)

    def drop_pending(self, campaign: str, rnd: int) -> None:
        path = self._pending(campaign, rnd)
        path.with_suffix(".json").unlink(missing_ok=True)
        path.with_suffix(".npz").unlink(missing_ok=True)
        path.unlink(missing_ok=True)

    def is_pending(self, campaign: str, rnd: int) -> bool:
        return self._pending(campaign, rnd).with_suffix(".json").is_file()
