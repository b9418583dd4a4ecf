"""The remote transport, as the round steps see it: a thin seam onto the coordinator.

Not a step. With ``campaign.clients: remote`` the steps use the coordinator's Python API
(:class:`fl_core.coordinator.api.Coordinator`) on the same artifact store: ``select_clients``
draws from enrolled clients with live heartbeats, ``dispatch`` publishes the tasks,
``collect`` closes the round (late uploads are then refused and recorded as stragglers),
``validate_updates`` caps each client's weight by the example count it reported with its
validated data, and ``evaluate`` aggregates the clients' own evaluation reports.

Asynchronous rounds (FedBuff) on the wall clock: :func:`fedbuff_plan` fills round ``r``'s
buffer with the ``buffer_size`` earliest *arrivals* (the coordinator's acceptance order,
``arrival_seq``) among the updates of every client still in flight, whatever model version
each was sent; ``wait_for_updates`` waits for it (:func:`buffer_progress`) and ``collect``
records it. See "FedBuff on the wall clock" in ``docs/protocol.md``.

One :class:`Coordinator` per (store, registry URL) is kept for the process
(:func:`coordinator`), so the steps of a round do not rebuild the engine and re-check the
schema on every call.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fl_core.config import Config
from fl_core.store import ArtifactStore

if TYPE_CHECKING:
    from fl_core.coordinator.api import Coordinator


def is_remote(cfg: Config) -> bool:
    return cfg.campaign.clients == "remote"


# --------------------------------------------------------------------------- the coordinator


@dataclass
class _Cached:
    coord: Coordinator
    pid: int
    db_file: tuple[int, int] | None


_CACHE: OrderedDict[tuple[str, str], _Cached] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 4


def _db_file_identity(db_url: str) -> tuple[int, int] | None:
    """(device, inode) of a SQLite registry file; None for a server database or no file."""
    import sqlalchemy as sa

    url = sa.make_url(db_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    try:
        st = os.stat(url.database)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


def coordinator(store: ArtifactStore) -> Coordinator:
    """The coordinator's API on ``store`` (registry from ``FL_COORDINATOR_DB_URL``), kept
    for this process per (store, registry URL): the engine is built and the schema checked
    (Alembic) once, not on every call.

    The cached object stays correct when the coordinator service restarts (it talks to the
    registry database, not to the service; PostgreSQL connections are pinged before reuse),
    when the process forks (a child builds its own engine and never uses the parent's
    connections), when the registry URL changes (another key) and when the SQLite registry
    file is replaced (a new file is noticed by its inode and gets a fresh, migrated engine).
    Callers must not ``close()`` it; :func:`clear_cache` does.
    """
    from fl_core.coordinator.api import Coordinator
    from fl_core.coordinator.settings import CoordinatorSettings

    settings = CoordinatorSettings.from_env()
    key = (repr(store), settings.db_url)
    pid = os.getpid()
    db_file = _db_file_identity(settings.db_url)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None and hit.pid == pid and hit.db_file == db_file:
            _CACHE.move_to_end(key)
            return hit.coord
        if hit is not None:
            _drop(hit, pid)
        coord = Coordinator(settings, store=store)
        coord.engine  # noqa: B018 - build and migrate now, so the file identity below is right
        _CACHE[key] = _Cached(coord, pid, _db_file_identity(settings.db_url))
        _CACHE.move_to_end(key)
        while len(_CACHE) > _CACHE_SIZE:
            _drop(_CACHE.popitem(last=False)[1], pid)
        return coord


def _drop(entry: _Cached, pid: int) -> None:
    """Release a cached coordinator's connections (in a forked child, without closing the
    parent's: SQLAlchemy's ``dispose(close=False)``)."""
    if entry.pid == pid:
        entry.coord.close()
    elif entry.coord._engine is not None:  # noqa: SLF001 - the inherited pool, not ours
        entry.coord._engine.dispose(close=False)  # noqa: SLF001


def clear_cache() -> None:
    """Close and forget every cached coordinator of this process."""
    pid = os.getpid()
    with _CACHE_LOCK:
        while _CACHE:
            _drop(_CACHE.popitem()[1], pid)


def live_clients(store: ArtifactStore) -> list[str]:
    return sorted(c.client_id for c in coordinator(store).live_clients())


def known_examples(store: ArtifactStore) -> dict[str, int]:
    """What the server knows of each device's data size: the count it reported with its
    locally validated data (a client can never claim more weight than that)."""
    return {
        c.client_id: int(c.num_examples or 0)
        for c in coordinator(store).clients()
        if c.enrolled and not c.revoked and c.data_valid is not False
    }


def measured_uplinks(store: ArtifactStore) -> dict[str, float | None]:
    """Each enrolled device's uplink bandwidth as it measured and reported it (Mbit/s)."""
    return {c.client_id: c.uplink_mbps for c in coordinator(store).clients()}


# --------------------------------------------------------------------------- FedBuff


@dataclass(frozen=True)
class Arrival:
    """An accepted update as FedBuff sees it: who, the round whose task (and model version
    ``source_round - 1``) it answers, its place in the arrival order and its staleness
    ``r - source_round`` at round ``r`` (server versions between the one sent and the one
    it is applied to)."""

    client: str
    source_round: int
    arrival_seq: int
    accepted_at: float
    staleness: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "source_round": self.source_round,
            "arrival_seq": self.arrival_seq,
            "accepted_at": self.accepted_at,
            "staleness": self.staleness,
        }


@dataclass
class BufferPlan:
    """Round ``r``'s FedBuff buffer on the wall clock, as of one reading of the registry.

    ``received``: the buffer, in arrival order (at most ``buffer_size``). ``dropped``:
    arrived updates that can never be applied (staler than ``max_staleness``, or the
    campaign ends), with the reason. ``inflight``: clients whose update is still to be
    applied by a later round (arrived and waiting, or still training). ``missing``: clients
    given up on (their round closed or its deadline passed without an update, or any later
    update would be too stale). ``close``: rounds to close now at the coordinator, with the
    reason their remaining devices are recorded as stragglers under. ``need``: arrivals that
    complete the buffer now (``buffer_size``, or fewer when fewer clients can still deliver).
    """

    round: int
    buffer_size: int
    received: list[Arrival] = field(default_factory=list)
    dropped: list[dict[str, Any]] = field(default_factory=list)
    inflight: dict[str, dict[str, Any]] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    close: dict[int, str] = field(default_factory=dict)
    need: int = 0
    deadline_passed: bool = False

    @property
    def done(self) -> bool:
        """Whether ``collect`` may run: the buffer is complete or the round's deadline passed."""
        return len(self.received) >= self.need or self.deadline_passed

    def progress(self) -> dict[str, Any]:
        """What the ``wait_for_updates`` trigger reports."""
        return {
            "received": len(self.received),
            "tasks": len(self.received) + len(self.inflight),
            "need": self.need,
            "buffer_size": self.buffer_size,
            "deadline_passed": self.deadline_passed,
            "done": self.done,
        }


def fedbuff_plan(store: ArtifactStore, cid: str, rnd: int, cfg: Config, *, step: str) -> BufferPlan:
    """Round ``rnd``'s FedBuff buffer from the round records and the coordinator's arrivals.

    The pool is every client still in flight after round ``rnd - 1`` (its ``collect``
    record) plus round ``rnd``'s cohort, each with the round of its task. Its stored
    updates are taken in arrival order: an update staler than ``max_staleness`` at round
    ``rnd`` is dropped, the first ``buffer_size`` others fill the buffer, later ones wait
    for the next round (or are dropped if the next round could not apply them either).
    Reads only; ``collect`` closes the rounds in ``close`` and records the plan.
    """
    from fl_core.rounds import records as R
    from fl_core.rounds import state

    a = cfg.asynchronous
    k, max_st = a.buffer_size, a.max_staleness
    last = rnd >= cfg.campaign.rounds
    pool = {c: int(v["round"]) for c, v in state.inflight(store, cid, rnd - 1, step=step).items()}
    for client in R.read(store, R.Manifest, cid, rnd, step=step).tasks:
        pool[client] = rnd
    coord = coordinator(store)
    rounds = sorted(set(pool.values()) | {rnd})
    status = {r: coord.round_status(cid, r) for r in rounds}

    def hopeless(src: int) -> str | None:
        """Why no later round could apply an update of round ``src`` (None: one could)."""
        if last:
            return f"campaign ends with round {rnd}"
        if max_st is not None and rnd + 1 - src > max_st:
            return (
                f"too stale: round {rnd + 1} would apply it {rnd + 1 - src} versions after "
                f"the one sent (max_staleness {max_st})"
            )
        return None

    plan = BufferPlan(round=rnd, buffer_size=k, deadline_passed=status[rnd].deadline_passed)
    delivered: set[str] = set()
    for u in coord.arrivals(cid, rounds=rounds):
        if pool.get(u.client_id) != u.round:  # an update already applied, or not in flight
            continue
        delivered.add(u.client_id)
        item = Arrival(u.client_id, u.round, int(u.arrival_seq or 0), float(u.accepted_at or 0),
                       rnd - u.round)  # fmt: skip
        if max_st is not None and item.staleness > max_st:
            why: str | None = f"too stale: staleness {item.staleness} > max_staleness {max_st}"
        elif len(plan.received) < k:
            plan.received.append(item)
            continue
        else:
            why = hopeless(u.round)
        if why is None:
            plan.inflight[u.client_id] = {"round": u.round, "arrival_seq": item.arrival_seq}
        else:
            plan.dropped.append({**item.to_dict(), "reason": why})
    could_join = 0
    for client, src in sorted(pool.items()):
        if client in delivered:
            continue
        st = status[src]
        if st.closed or st.deadline_passed:
            plan.missing[client] = st.stragglers.get(client) or "no update before the deadline"
            continue
        if max_st is None or rnd - src <= max_st:
            could_join += 1
        why = hopeless(src)
        if why is None:
            plan.inflight[client] = {"round": src}
        else:
            plan.missing[client] = why
    for src in rounds:
        st = status[src]
        if not st.closed and st.deadline_passed:
            plan.close[src] = "no update before the round's deadline"
        elif not st.closed and (why := hopeless(src)) is not None:
            plan.close[src] = why
    plan.need = min(k, len(plan.received) + could_join)
    return plan


def buffer_progress(store: ArtifactStore, cid: str, rnd: int) -> dict[str, Any]:
    """Where round ``rnd``'s FedBuff buffer stands (the ``wait_for_updates`` trigger)."""
    from fl_core.rounds import state

    cfg = state.campaign_config(state.load_campaign(store, cid))
    return fedbuff_plan(store, cid, rnd, cfg, step="wait_for_updates").progress()
