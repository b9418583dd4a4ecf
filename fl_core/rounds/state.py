"""Read-only access to a campaign's state shared by the steps: the campaign record, its
config, model versions, client tables, and the stateful objects (accountant, clipper,
selector, reputation) as of a given round. Nothing here runs a step."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np

from fl_core import wire
from fl_core.config import Config, from_dict
from fl_core.data.io import read_table
from fl_core.models import Layout, ModelSpec
from fl_core.rounds import layout as L
from fl_core.rounds import records
from fl_core.store import ArtifactStore


class CampaignNotFound(LookupError):
    """No campaign record under that id."""


def load_campaign(store: ArtifactStore, cid: str) -> dict[str, Any]:
    """The campaign record written by ``start_campaign``."""
    key = L.campaign_record_key(cid)
    if not store.exists(key):
        raise CampaignNotFound(f"campaign {cid!r} does not exist (no {key}); start it first")
    rec: dict[str, Any] = store.get_json(key)
    return rec


@functools.lru_cache(maxsize=64)
def _config(raw: str) -> Config:
    return from_dict(json.loads(raw))


def campaign_config(rec: dict[str, Any]) -> Config:
    """The campaign's frozen config (cached: parsing may calibrate DP noise, seconds)."""
    return _config(json.dumps(rec["config"], sort_keys=True))


def spec(rec: dict[str, Any]) -> ModelSpec:
    return ModelSpec.from_json(rec["model_spec"])


def model_layout(rec: dict[str, Any]) -> Layout:
    return Layout.from_json(rec["layout"])


def load_model(store: ArtifactStore, cid: str, version: int) -> np.ndarray:
    """Global model vector of a campaign at ``version`` (0 = initial)."""
    _, vector = wire.decode(store.get_bytes(L.model_key(cid, version)))
    return vector


def encode_model(cid: str, version: int, lay: Layout, vector: np.ndarray) -> bytes:
    header = wire.Header(
        kind="model",
        campaign=cid,
        round=version,
        base_version=version,
        client="server",
        codec="dense_fp32",
        layout=lay,
    )
    return wire.encode(header, vector)


@functools.lru_cache(maxsize=4096)
def _read_table_cached(path: str, mtime_ns: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    return read_table(Path(path))


def table(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A partition or test table (cached by path, mtime and size)."""
    st = path.stat()
    return _read_table_cached(str(path), st.st_mtime_ns, st.st_size)


def client_files(rec: dict[str, Any]) -> dict[str, Path]:
    root = Path(rec["data_dir"]) / "clients"
    return {c["client_id"]: root / c["file"] for c in rec["clients"]}


def client_examples(rec: dict[str, Any]) -> dict[str, int]:
    """What the server knows of each client's size (the partition manifest's count)."""
    return {c["client_id"]: int(c["num_examples"]) for c in rec["clients"]}


def test_table(rec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    return table(Path(rec["test"]["file"]))


# --------------------------------------------------------------------------- privacy state


def privacy(rec: dict[str, Any]) -> Any:
    """The campaign's ``ResolvedPrivacy`` (None when privacy is off)."""
    if not rec.get("privacy"):
        return None
    from fl_core.privacy.settings import ResolvedPrivacy

    return ResolvedPrivacy.from_dict(rec["privacy"])


def central(rp: Any) -> bool:
    return rp is not None and rp.enabled and rp.mode == "central"


def accountant(store: ArtifactStore, cid: str, rp: Any, upto: int) -> Any:
    """The accountant with every round <= ``upto`` recorded (the state saved with ``upto``)."""
    acct = rp.make_accountant()
    if upto >= 1:
        acct.load_state_dict(store.get_json(L.round_key(cid, upto, L.ACCOUNTANT)))
    return acct


def clipper(store: ArtifactStore, cid: str, rp: Any, upto: int) -> Any:
    clip = rp.make_clipper()
    if clip is not None and upto >= 1:
        clip.load_state_dict(store.get_json(L.round_key(cid, upto, L.CLIPPER)))
    return clip


def privacy_budget(store: ArtifactStore, cid: str, rnd: int) -> dict[str, Any]:
    """Whether round ``rnd`` may run without pushing epsilon past the campaign's target."""
    rp = privacy(load_campaign(store, cid))
    if rp is None or not rp.enabled:
        return {"allowed": True, "enabled": False}
    acct = accountant(store, cid, rp, rnd - 1)
    after = float(acct.epsilon_if_step())
    return {
        "allowed": after <= rp.epsilon + 1e-9,
        "enabled": True,
        "epsilon_spent": float(acct.epsilon()) if rnd > 1 else 0.0,
        "epsilon_after_round": after,
        "target_epsilon": rp.epsilon,
        "delta": rp.delta,
    }


# --------------------------------------------------------------------------- selection state


def reputation(store: ArtifactStore, cid: str, upto: int) -> Any:
    from fl_core.reputation import ReputationBook

    book = ReputationBook()
    key = L.round_key(cid, upto, L.REPUTATION)
    if upto >= 1 and store.exists(key):
        book.load_state_dict(store.get_json(key))
    return book


def selector(store: ArtifactStore, cid: str, upto: int, cfg: Config) -> Any:
    """The selector with the records of rounds <= ``upto`` and current reputations."""
    from fl_core.selection import create_selector

    kwargs: dict[str, Any] = {"min_reputation": cfg.selection.min_reputation}
    if cfg.selection.strategy == "oort":
        kwargs["exploration"] = cfg.selection.exploration
    sel = create_selector(cfg.selection.strategy, **kwargs)
    key = L.round_key(cid, upto, L.SELECTOR)
    if upto >= 1 and store.exists(key):
        sel.load_state_dict(store.get_json(key))
    book = reputation(store, cid, upto)
    sel.set_signals(reputation={c: book.score(c, round=upto + 1) for c in book.clients})
    return sel


def collected(store: ArtifactStore, cid: str, upto: int, *, step: str) -> records.Collected | None:
    """Round ``upto``'s collect record (None before round 1)."""
    if upto < 1:
        return None
    return records.read(store, records.Collected, cid, upto, step=step)


def inflight(store: ArtifactStore, cid: str, upto: int, *, step: str) -> dict[str, dict[str, Any]]:
    """Asynchronous mode: clients still training after round ``upto`` closed."""
    rec = collected(store, cid, upto, step=step)
    return dict(rec.inflight or {}) if rec is not None else {}


def clock(store: ArtifactStore, cid: str, upto: int, *, step: str) -> float:
    """Simulated time (s) when round ``upto`` closed."""
    rec = collected(store, cid, upto, step=step)
    return float(rec.clock_s) if rec is not None else 0.0


def sim_duration(store: ArtifactStore, cid: str, rnd: int, client: str) -> float | None:
    """Simulated seconds from dispatch to delivery (None without simulation)."""
    key = L.sim_key(cid, rnd, client)
    return float(store.get_json(key)["duration_s"]) if store.exists(key) else None


def manifest(store: ArtifactStore, cid: str, rnd: int, *, step: str) -> records.Manifest:
    return records.read(store, records.Manifest, cid, rnd, step=step)


def history(store: ArtifactStore, cid: str, upto: int) -> list[dict[str, Any]]:
    """Per-round metrics of rounds 1..upto that have been evaluated."""
    return [
        store.get_json(records.RoundMetrics.key(cid, r))
        for r in range(1, upto + 1)
        if store.exists(records.RoundMetrics.key(cid, r))
    ]


# --------------------------------------------------------------------------- updates


def max_update_bytes(lay: Layout) -> int:
    """The largest message an update of ``lay`` can legitimately be (dense fp32, or a
    sparse message listing every coordinate), plus the largest header."""
    return 8 * lay.num_params + wire.MAX_HEADER_BYTES + 64


def read_update(store: ArtifactStore, key: str, lay: Layout) -> bytes:
    """An update's bytes, refused before reading when the stored object is too large."""
    from fl_core.store import ArtifactTooLargeError

    limit = max_update_bytes(lay)
    try:
        return store.get_bytes(key, max_size=limit)
    except ArtifactTooLargeError as exc:
        raise wire.WireError(f"update of {exc.size} bytes exceeds the {limit}-byte limit") from None
