"""The round's records: small typed, versioned objects read and written through one module.

Every step reads its inputs as records and writes its output as one; a record knows its
store name (from :mod:`fl_core.rounds.layout`), the step that writes it and its schema
version. Reading a record that is not there raises :class:`MissingRecord`, naming the step
to run first: steps never re-run each other.

A record is stored as JSON: its fields, plus ``"schema"``. Optional fields that are None are
left out (so ``"epsilon" in metrics`` says whether DP was on).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from fl_core.rounds import layout
from fl_core.store import ArtifactStore

R = TypeVar("R", bound="Record")

logger = logging.getLogger(__name__)


class MissingRecord(RuntimeError):
    """A step's input record is missing: the step that writes it has not run."""


class RecordError(ValueError):
    """A stored record has another schema version or malformed fields."""


@dataclass
class Record:
    """Base of every round record."""

    NAME: ClassVar[str] = ""
    PRODUCER: ClassVar[str] = ""
    SCHEMA: ClassVar[int] = 1
    CAMPAIGN_LEVEL: ClassVar[bool] = False
    KEEP_NONE: ClassVar[bool] = False
    # A step's output is written once: of two concurrent runs of the same step, the first
    # record stands and the other run returns it (compare-and-set on the store).
    WRITE_ONCE: ClassVar[bool] = True

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and not self.KEEP_NONE and f.default is None:
                continue
            out[f.name] = _plain(value)
        out["schema"] = self.SCHEMA
        return out

    @classmethod
    def from_dict(cls: type[R], raw: dict[str, Any]) -> R:
        schema = raw.get("schema", 1)
        if schema != cls.SCHEMA:
            raise RecordError(
                f"{cls.NAME}: schema version {schema} is not the supported {cls.SCHEMA}"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in raw.items() if k in names}
        try:
            return cls._convert(kwargs)
        except (TypeError, KeyError) as exc:
            raise RecordError(f"{cls.NAME}: malformed record: {exc}") from exc

    @classmethod
    def _convert(cls: type[R], kwargs: dict[str, Any]) -> R:
        return cls(**kwargs)

    @classmethod
    def key(cls, cid: str, rnd: int) -> str:
        if cls.CAMPAIGN_LEVEL:
            return layout.campaign_key(cid, cls.NAME)
        return layout.round_key(cid, rnd, cls.NAME)


def _plain(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def exists(store: ArtifactStore, cls: type[Record], cid: str, rnd: int = 0) -> bool:
    return store.exists(cls.key(cid, rnd))


def write(store: ArtifactStore, record: Record, cid: str, rnd: int = 0) -> dict[str, Any]:
    """Store ``record``; returns its dict form (what a step returns to XCom).

    Write-once records use the store's conditional write: when a concurrent run of the same
    step got there first, its record stands and is returned instead (never a mix of two)."""
    out = record.to_dict()
    key = type(record).key(cid, rnd)
    if not type(record).WRITE_ONCE:
        store.put_json(key, out)
        return out
    if store.put_json_if_absent(key, out):
        return out
    stored: dict[str, Any] = store.get_json(key)
    if stored != json.loads(json.dumps(out)):
        logger.warning(
            "%s: another run of %s wrote it first; keeping that one", key, type(record).PRODUCER
        )
    return stored


def read(store: ArtifactStore, cls: type[R], cid: str, rnd: int = 0, *, step: str) -> R:
    """The record ``cls`` of round ``rnd``, needed by ``step``.

    Raises
    ------
    MissingRecord
        "round 3: aggregate needs the validate_updates record; run validate_updates".
    """
    key = cls.key(cid, rnd)
    if not store.exists(key):
        where = f"campaign {cid}" if cls.CAMPAIGN_LEVEL else f"round {rnd}"
        raise MissingRecord(
            f"{where}: {step} needs the {cls.PRODUCER} record ({cls.NAME}); "
            f"run {cls.PRODUCER} first"
        )
    return cls.from_dict(store.get_json(key))


def maybe(store: ArtifactStore, cls: type[R], cid: str, rnd: int = 0) -> R | None:
    """The record if it was written (a step's own output, for idempotent reruns)."""
    key = cls.key(cid, rnd)
    return cls.from_dict(store.get_json(key)) if store.exists(key) else None


# --------------------------------------------------------------------------- the records


@dataclass
class Cohort(Record):
    NAME: ClassVar[str] = layout.COHORT
    PRODUCER: ClassVar[str] = "select_clients"

    round: int
    cohort: list[str]
    num_selected: int
    strategy: str
    target: int | None = None


@dataclass
class Manifest(Record):
    """The round's tasks: base model version and one task per selected client."""

    NAME: ClassVar[str] = layout.MANIFEST
    PRODUCER: ClassVar[str] = "dispatch"

    round: int
    base_version: int
    model_key: str
    tasks: dict[str, dict[str, Any]]
    num_tasks: int
    transport: str = "simulated"
    deadline_s: float | None = None


@dataclass
class Collected(Record):
    """Which updates count this round (``sources``: client -> round its update came from)."""

    NAME: ClassVar[str] = layout.COLLECTED
    PRODUCER: ClassVar[str] = "collect"

    round: int
    received: list[str]
    missing: list[str]
    sources: dict[str, int]
    clock_s: float
    num_received: int
    num_missing: int
    inflight: dict[str, dict[str, Any]] | None = None
    # Remote FedBuff: the buffer in the coordinator's arrival order (client, source_round,
    # arrival_seq, accepted_at, staleness), and arrived updates that can never be applied.
    arrivals: list[dict[str, Any]] | None = None
    dropped: list[dict[str, Any]] | None = None

    @classmethod
    def _convert(cls, kwargs: dict[str, Any]) -> Collected:
        kwargs["sources"] = {c: int(r) for c, r in kwargs["sources"].items()}
        return cls(**kwargs)


@dataclass
class AcceptedUpdate:
    """One accepted update: who, from which round, its checked facts and its digest."""

    client: str
    source_round: int
    staleness: int
    num_examples: int
    weight: float
    norm: float
    train_loss: float
    duration_s: float
    bytes: int
    sha256: str
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out.update(out.pop("metrics"))  # flat, as the per-round tables read them
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> AcceptedUpdate:
        names = [f.name for f in dataclasses.fields(cls) if f.name != "metrics"]
        return cls(
            **{k: raw[k] for k in names},
            metrics={k: v for k, v in raw.items() if k not in names},
        )


@dataclass
class Validation(Record):
    NAME: ClassVar[str] = layout.VALIDATION
    PRODUCER: ClassVar[str] = "validate_updates"

    round: int
    accepted: list[AcceptedUpdate]
    rejected: list[dict[str, str]]
    num_accepted: int
    num_rejected: int
    bytes_up: int
    bytes_down: int

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["accepted"] = [a.to_dict() for a in self.accepted]
        return out

    @classmethod
    def _convert(cls, kwargs: dict[str, Any]) -> Validation:
        kwargs["accepted"] = [AcceptedUpdate.from_dict(a) for a in kwargs["accepted"]]
        return cls(**kwargs)


@dataclass
class AggregateInfo(Record):
    NAME: ClassVar[str] = layout.AGGREGATE
    PRODUCER: ClassVar[str] = "aggregate"

    round: int
    strategy: str
    num_aggregated: int
    total_examples: int
    update_norm: float
    sparse: bool = False
    max_staleness_seen: int = 0
    clipping_norm: float | None = None
    num_clipped: int | None = None
    num_too_stale: int | None = None
    # FedBuff: the updates in the order applied (client, source_round, staleness, weight,
    # staleness_weight; a dropped one has staleness_weight 0).
    applied: list[dict[str, Any]] | None = None
    outlier_scores: dict[str, float] | None = None
    rejected_at_read: list[dict[str, str]] | None = None


@dataclass
class PrivacyInfo(Record):
    NAME: ClassVar[str] = layout.PRIVACY
    PRODUCER: ClassVar[str] = "privatize"

    round: int
    enabled: bool
    noise_std: float | None = None
    clipping_norm: float | None = None
    next_clipping_norm: float | None = None
    epsilon: float | None = None
    delta: float | None = None
    target_epsilon: float | None = None
    mode: str | None = None
    noise_multiplier: float | None = None
    dp_sgd_epsilon_max: float | None = None


@dataclass
class ServerUpdateInfo(Record):
    NAME: ClassVar[str] = layout.SERVER_UPDATE
    PRODUCER: ClassVar[str] = "server_update"

    round: int
    model_version: int
    model_key: str
    model_sha256: str


@dataclass
class RoundMetrics(Record):
    NAME: ClassVar[str] = layout.METRICS
    PRODUCER: ClassVar[str] = "evaluate"

    round: int
    test_accuracy: float
    test_loss: float
    client_accuracy_mean: float
    client_accuracy_std: float
    client_accuracy_min: float
    client_accuracy_p10: float
    train_loss: float
    num_accepted: int
    num_rejected: int
    bytes_up: int
    bytes_down: int
    sim_time_s: float = 0.0
    epsilon: float | None = None
    uplink_ratio_vs_dense: float | None = None
    dp_sgd_epsilon_max: float | None = None
    # Remote rounds: the devices' evaluation of model v(r-1) on their held-out data.
    fed_model_version: int | None = None
    fed_num_clients: int | None = None
    fed_num_examples: int | None = None
    fed_accuracy: float | None = None
    fed_loss: float | None = None


@dataclass
class CampaignStatus(Record):
    NAME: ClassVar[str] = layout.STATUS
    PRODUCER: ClassVar[str] = "next_round"
    CAMPAIGN_LEVEL: ClassVar[bool] = True
    KEEP_NONE: ClassVar[bool] = True
    WRITE_ONCE: ClassVar[bool] = False  # the latest round's decision

    campaign_id: str
    last_round: int
    reason: str | None
    final_accuracy: float | None
    best_accuracy: float | None
    epsilon: float | None
    # "continue" is a keyword: stored under that name, held as ``proceed``.
    proceed: bool = True

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["continue"] = out.pop("proceed")
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CampaignStatus:
        raw = dict(raw)
        raw["proceed"] = raw.pop("continue", True)
        return super().from_dict(raw)


RECORDS: tuple[type[Record], ...] = (
    Cohort,
    Manifest,
    Collected,
    Validation,
    AggregateInfo,
    PrivacyInfo,
    ServerUpdateInfo,
    RoundMetrics,
    CampaignStatus,
)

__all__ = [
    "RECORDS",
    "AcceptedUpdate",
    "AggregateInfo",
    "CampaignStatus",
    "Cohort",
    "Collected",
    "Manifest",
    "MissingRecord",
    "PrivacyInfo",
    "Record",
    "RecordError",
    "RoundMetrics",
    "ServerUpdateInfo",
    "Validation",
    "exists",
    "maybe",
    "read",
    "write",
]
