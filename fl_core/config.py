"""Typed configuration: ``params.yaml`` loaded into frozen dataclasses.

``params.yaml`` is the single source of truth, one section per stage. :func:`load_params`
reads it and :func:`from_dict` validates every key *before any work starts*: an unknown key,
a wrong type or a value outside its allowed set raises :class:`ConfigError` naming the dotted
key and the allowed values. Library functions take these dataclasses (or plain typed
arguments) and never read files themselves.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from fl_core.privacy.settings import PrivacySettings

#: Loaders shipped with fl_core; ``data.dataset`` may also name a dataset registered in the
#: ``datasets`` section (``fl init-dataset``).
BUILTIN_DATASETS: tuple[str, ...] = ("digits", "mnist5k", "synthetic", "file")
#: Built-ins whose features are pixel intensities in [0, 1] (the cnn needs one of them).
IMAGE_DATASETS: tuple[str, ...] = ("digits", "mnist5k")
#: A registered dataset's name (also part of campaign and registered-model names).
DATASET_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,39}$"
#: Campaign ids become artifact-store prefixes, MLflow run names and Airflow run-id parts:
#: one safe path component (no ``/``, no leading ``.``), at most 128 characters. The same
#: pattern serves as the JSON-schema ``pattern`` of the DAG's ``campaign_id`` Param.
from fl_core.rounds.layout import CAMPAIGN_ID_MAX_LENGTH, CAMPAIGN_ID_PATTERN  # noqa: E402

#: ``campaign.name`` is a campaign id's prefix; ids add ``-YYYYmmddTHHMMSS-xxxxxx`` (23 chars).
CAMPAIGN_NAME_MAX_LENGTH = CAMPAIGN_ID_MAX_LENGTH - 23
PartitionScheme = Literal["iid", "dirichlet", "shards", "quantity", "natural"]
ModelName = Literal["logreg", "mlp", "cnn"]
StrategyName = Literal[
    "fedavg", "median", "weighted_median", "trimmed_mean", "krum", "multi_krum", "bulyan",
    "norm_bounding", "centered_clipping", "fltrust",
]
AttackName = Literal["none", "sign_flip", "scaling", "gaussian", "alie", "label_flip"]
ServerOptimizerName = Literal["sgd", "adam"]


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names the key and what is allowed."""


def validate_campaign_id(campaign_id: str, *, key: str = "campaign_id") -> str:
    """Return ``campaign_id`` if it is a safe campaign id, else raise :class:`ConfigError`.

    Allowed: :data:`CAMPAIGN_ID_PATTERN` (letters, digits, ``_ . -``, starting with a letter
    or digit, at most :data:`CAMPAIGN_ID_MAX_LENGTH` characters), so an id is one path
    component: ``a/clients/client_0000`` or a 300-character id never reach the store.
    """
    if not isinstance(campaign_id, str) or not re.fullmatch(CAMPAIGN_ID_PATTERN, campaign_id):
        text = str(campaign_id)
        shown = repr(text) if len(text) <= 80 else f"{text[:77]!r}..."
        raise ConfigError(
            f"{key}: {shown} is not allowed; allowed values: 1..{CAMPAIGN_ID_MAX_LENGTH} "
            "characters from A-Z a-z 0-9 _ . -, starting with a letter or digit"
        )
    return campaign_id


def validate_conf_keys(conf: dict[str, Any], allowed: typing.Iterable[str]) -> None:
    """Reject keys of a DAG-run conf (or any override mapping) that are not in ``allowed``.

    Raises
    ------
    ConfigError
        Naming the unknown keys and listing the allowed ones (``params.yaml`` is strict; so
        is a triggered run: ``roundz`` is a typo, not something to ignore).
    """
    allowed_set = set(allowed)
    unknown = sorted(str(k) for k in conf if k not in allowed_set)
    if unknown:
        raise ConfigError(
            f"{', '.join(unknown)}: unknown key{'s' if len(unknown) > 1 else ''}; "
            f"allowed keys: {', '.join(sorted(allowed_set))}"
        )


@dataclass(frozen=True)
class SyntheticConfig:
    """FedProx Synthetic(alpha, beta) generator settings (Li et al., MLSys 2020)."""

    alpha: float = 1.0
    beta: float = 1.0
    num_clients: int = 30
    num_features: int = 60
    num_classes: int = 10


@dataclass(frozen=True)
class DatasetEntry:
    """One user dataset registered in the ``datasets`` section (``fl init-dataset``).

    ``path`` is a CSV or Parquet file, relative to the project root; ``fl init-dataset`` puts
    it (or a symlink to it) under ``data/raw/``, which the ``prepare`` stage depends on, so
    editing the file reruns the pipeline.
    """

    path: str
    label_column: str = "label"
    client_column: str | None = None


@dataclass(frozen=True)
class DataConfig:
    """``data`` section, read by the ``prepare`` stage.

    ``dataset`` is a built-in (``digits``, ``mnist5k``, ``synthetic``, ``file`` with ``path``)
    or the name of a dataset in the ``datasets`` section. ``scaling``: ``auto`` standardizes
    the user's tables (``file`` and registered datasets) with federated statistics and
    leaves the built-ins as published (images in [0, 1]; FedProx Synthetic as generated, so
    benchmark figures stay comparable), ``standard`` always, ``none`` never.
    """

    dataset: str = "mnist5k"
    path: str | None = None
    label_column: str = "label"
    client_column: str | None = None
    test_fraction: float = 0.2
    seed: int = 42
    scaling: Literal["auto", "standard", "none"] = "auto"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass(frozen=True)
class PartitionConfig:
    """``partition`` section, read by the ``partition`` stage."""

    scheme: PartitionScheme = "dirichlet"
    num_clients: int = 20
    alpha: float = 0.5
    classes_per_client: int = 2
    sigma: float = 1.0
    min_samples: int = 10
    seed: int = 42


@dataclass(frozen=True)
class ValidationConfig:
    """``validation`` section, read by the ``validate`` stage."""

    min_samples_per_client: int = 10
    allow_single_class: bool = False
    min_classes_per_client: int = 1


@dataclass(frozen=True)
class ModelConfig:
    """``model`` section: which lightweight model and its size."""

    name: ModelName = "mlp"
    hidden: tuple[int, ...] = (200,)
    channels: tuple[int, ...] = (8, 16)


@dataclass(frozen=True)
class ClientConfig:
    """``client`` section: local training on each client."""

    local_epochs: int = 3
    batch_size: int = 16
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    prox_mu: float = 0.0


@dataclass(frozen=True)
class ServerConfig:
    """``server`` section: aggregation rule and server optimizer (FedAvg / FedAvgM / FedAdam)."""

    strategy: StrategyName = "fedavg"
    optimizer: ServerOptimizerName = "sgd"
    lr: float = 1.0
    momentum: float = 0.7
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    max_update_norm: float = 1e4
    norm_outlier_factor: float | None = 10.0
    num_byzantine: int = 0
    trim_fraction: float = 0.1
    clip_norm: float = 10.0
    root_dataset_size: int = 100


@dataclass(frozen=True)
class CommunicationConfig:
    """``communication`` section: codecs on the uplink (updates) and the downlink (models).

    Codec names: ``dense_fp32``, ``fp16``, ``q8``/``q4``/``q2`` (stochastic quantization),
    ``topk:<fraction>`` and ``topk:<fraction>+q8`` etc. (sparse). ``error_feedback`` keeps
    each client's compression residual across rounds (lossy uplink codecs only).
    ``downlink_delta_codec`` sends a client the model as a delta from the version it last
    saw when that message is smaller than the full model.
    """

    uplink_codec: str = "dense_fp32"
    error_feedback: bool = True
    downlink_codec: str = "dense_fp32"
    downlink_delta_codec: str | None = None
    policy: Literal["fixed", "adaptive"] = "fixed"
    slow_mbps: float = 2.0
    fast_mbps: float = 15.0
    slow_codec: str = "topk:0.01+q8"
    medium_codec: str = "topk:0.05+q8"
    fast_codec: str = "q8"
    slow_epochs_factor: int = 2
    slow_participation_every: int = 2


@dataclass(frozen=True)
class SelectionConfig:
    """``selection`` section: random, or adaptive Oort-style selection (Lai et al., OSDI
    2021) using loss, speed, availability history, validation quality and reputation."""

    strategy: Literal["random", "oort"] = "random"
    overselect: bool = False
    exploration: float = 0.9
    min_reputation: float = 0.0


@dataclass(frozen=True)
class SimulationConfig:
    """``simulation`` section: device/network profiles, availability and a simulated clock
    for simulated clients (shares of the three profiles: cellular_slow, cellular_fast,
    wifi)."""

    enabled: bool = False
    cellular_slow: float = 0.3
    cellular_fast: float = 0.4
    wifi: float = 0.3
    jitter: float = 0.2
    base_availability: float = 1.0
    diurnal_amplitude: float = 0.0
    hours_per_round: float = 1.0
    dropout_rate: float = 0.0
    deadline_s: float | None = None


@dataclass(frozen=True)
class AttackConfig:
    """``attack`` section (evaluation only): a fraction of malicious simulated clients."""

    kind: AttackName = "none"
    fraction: float = 0.0
    scale: float | None = None
    noise_std: float = 1.0


@dataclass(frozen=True)
class AsyncConfig:
    """``asynchronous`` section: FedBuff (Nguyen et al., AISTATS 2022). The server
    aggregates whenever ``buffer_size`` updates arrived, whatever version each was computed
    on, weighted by 1/(1+staleness)^exponent; ``concurrency`` clients train at once."""

    enabled: bool = False
    buffer_size: int = 5
    concurrency: int = 10
    staleness_exponent: float = 0.5
    max_staleness: int | None = 10


@dataclass(frozen=True)
class CampaignConfig:
    """``campaign`` section: rounds, cohort and stopping rules."""

    name: str = ""  # null/empty in params.yaml: "<dataset>-<model>" (filled in by from_dict)
    rounds: int = 30
    clients_per_round: int = 10
    fraction: float | None = None
    target_accuracy: float | None = None
    plateau_patience: int | None = None
    plateau_min_delta: float = 0.001
    seed: int = 42
    # Where the clients are: simulated in-process (the embedded default), or real devices
    # talking to the coordinator (fl client run ...). Remote rounds run on the wall clock.
    clients: Literal["simulated", "remote"] = "simulated"
    quorum: float = 1.0  # remote: the fraction of the cohort whose updates close the round
    deadline_s: float = 600.0  # remote: seconds from dispatch until the round closes anyway


@dataclass(frozen=True)
class EvaluateConfig:
    """``evaluate`` section: the centralized baseline trained for comparison."""

    baseline_epochs: int = 20


@dataclass(frozen=True)
class MonitoringConfig:
    """``monitoring`` section: schedules of the retraining and monitoring DAGs, and when the
    deployed model counts as degraded. The alert webhook URL is a secret: it comes from the
    environment (``FL_ALERT_WEBHOOK_URL``), never from this file."""

    retraining_schedule: str = "0 2 * * *"
    monitoring_schedule: str = "0 * * * *"
    max_accuracy_drop: float = 0.05
    max_drift: float = 0.25
    cooldown_hours: float = 24.0
    eval_path: str | None = None


@dataclass(frozen=True)
class TrackingConfig:
    """``tracking`` section: MLflow experiment and registered model name."""

    experiment: str = "federated"
    registered_model: str = ""  # null/empty: "fl-<dataset>-<model>" (filled in by from_dict)


@dataclass(frozen=True)
class DeployConfig:
    """``deploy`` section: the quality gate a model must pass to become ``champion``.

    A registered model is promoted only if its accuracy on the evaluation data is at least
    ``min_accuracy``, (with ``beat_majority``) strictly above the rate of always predicting
    the evaluation data's majority class, and above the current champion; otherwise it stays
    ``challenger`` and the reason is logged.
    """

    min_accuracy: float = 0.5
    beat_majority: bool = True


@dataclass(frozen=True)
class Config:
    """The whole ``params.yaml``."""

    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    communication: CommunicationConfig = field(default_factory=CommunicationConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    asynchronous: AsyncConfig = field(default_factory=AsyncConfig)
    campaign: CampaignConfig = field(default_factory=CampaignConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)
    datasets: dict[str, DatasetEntry] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able nested dict (tuples become lists)."""
        return _to_plain(dataclasses.asdict(self))

    def flat(self) -> dict[str, Any]:
        """Dotted keys -> values, for logging as MLflow params."""
        out: dict[str, Any] = {}

        def walk(prefix: str, obj: dict[str, Any]) -> None:
            for key, value in obj.items():
                name = f"{prefix}.{key}" if prefix else key
                if isinstance(value, dict):
                    walk(name, value)
                else:
                    out[name] = value

        walk("", self.to_dict())
        return out


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_to_plain(v) for v in obj]
    return obj


# Bounds checked after typing: key -> (predicate, description of allowed values).
_RULES: dict[str, tuple[typing.Callable[[Any], bool], str]] = {
    "data.test_fraction": (lambda v: 0.0 < v < 1.0, "a number in (0, 1)"),
    "data.synthetic.alpha": (lambda v: v >= 0, "a number >= 0"),
    "data.synthetic.beta": (lambda v: v >= 0, "a number >= 0"),
    "data.synthetic.num_clients": (lambda v: v >= 1, "an integer >= 1"),
    "data.synthetic.num_features": (lambda v: v >= 1, "an integer >= 1"),
    "data.synthetic.num_classes": (lambda v: v >= 2, "an integer >= 2"),
    "partition.num_clients": (lambda v: v >= 1, "an integer >= 1"),
    "partition.alpha": (lambda v: v > 0, "a number > 0"),
    "partition.classes_per_client": (lambda v: v >= 1, "an integer >= 1"),
    "partition.sigma": (lambda v: v >= 0, "a number >= 0"),
    "partition.min_samples": (lambda v: v >= 1, "an integer >= 1"),
    "validation.min_samples_per_client": (lambda v: v >= 1, "an integer >= 1"),
    "validation.min_classes_per_client": (lambda v: v >= 1, "an integer >= 1"),
    "deploy.min_accuracy": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "campaign.name": (
        lambda v: bool(re.fullmatch(CAMPAIGN_ID_PATTERN, v)) and len(v) <= CAMPAIGN_NAME_MAX_LENGTH,
        f"null or 1..{CAMPAIGN_NAME_MAX_LENGTH} characters from A-Z a-z 0-9 _ . -, "
        "starting with a letter or digit",
    ),
    "model.hidden": (lambda v: all(h >= 1 for h in v), "a list of integers >= 1"),
    "model.channels": (lambda v: len(v) >= 1 and all(c >= 1 for c in v), "integers >= 1"),
    "client.local_epochs": (lambda v: v >= 1, "an integer >= 1"),
    "client.batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "client.lr": (lambda v: v > 0, "a number > 0"),
    "client.momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "client.weight_decay": (lambda v: v >= 0, "a number >= 0"),
    "client.prox_mu": (lambda v: v >= 0, "a number >= 0"),
    "server.lr": (lambda v: v > 0, "a number > 0"),
    "server.momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "server.beta1": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "server.beta2": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "server.tau": (lambda v: v > 0, "a number > 0"),
    "server.max_update_norm": (lambda v: v > 0, "a number > 0"),
    "campaign.rounds": (lambda v: v >= 1, "an integer >= 1"),
    "campaign.clients_per_round": (lambda v: v >= 1, "an integer >= 1"),
    "campaign.fraction": (lambda v: v is None or 0 < v <= 1, "null or a number in (0, 1]"),
    "campaign.target_accuracy": (lambda v: v is None or 0 < v <= 1, "null or a number in (0, 1]"),
    "campaign.plateau_patience": (lambda v: v is None or v >= 1, "null or an integer >= 1"),
    "campaign.plateau_min_delta": (lambda v: v >= 0, "a number >= 0"),
    "campaign.quorum": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "campaign.deadline_s": (lambda v: v > 0, "a number of seconds > 0"),
    "evaluate.baseline_epochs": (lambda v: v >= 1, "an integer >= 1"),
    "server.norm_outlier_factor": (lambda v: v is None or v > 1, "null or a number > 1"),
    "server.num_byzantine": (lambda v: v >= 0, "an integer >= 0"),
    "server.trim_fraction": (lambda v: 0 <= v < 0.5, "a number in [0, 0.5)"),
    "server.clip_norm": (lambda v: v > 0, "a number > 0"),
    "server.root_dataset_size": (lambda v: v >= 1, "an integer >= 1"),
    "communication.slow_mbps": (lambda v: v > 0, "a number > 0"),
    "communication.fast_mbps": (lambda v: v > 0, "a number > 0"),
    "communication.slow_epochs_factor": (lambda v: v >= 1, "an integer >= 1"),
    "communication.slow_participation_every": (lambda v: v >= 1, "an integer >= 1"),
    "selection.exploration": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "selection.min_reputation": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "simulation.cellular_slow": (lambda v: v >= 0, "a number >= 0"),
    "simulation.cellular_fast": (lambda v: v >= 0, "a number >= 0"),
    "simulation.wifi": (lambda v: v >= 0, "a number >= 0"),
    "simulation.jitter": (lambda v: v >= 0, "a number >= 0"),
    "simulation.base_availability": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "simulation.diurnal_amplitude": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "simulation.hours_per_round": (lambda v: v >= 0, "a number >= 0"),
    "simulation.dropout_rate": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "simulation.deadline_s": (lambda v: v is None or v > 0, "null or a number > 0"),
    "attack.fraction": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "attack.noise_std": (lambda v: v >= 0, "a number >= 0"),
    "asynchronous.buffer_size": (lambda v: v >= 1, "an integer >= 1"),
    "asynchronous.concurrency": (lambda v: v >= 1, "an integer >= 1"),
    "asynchronous.staleness_exponent": (lambda v: v >= 0, "a number >= 0"),
    "asynchronous.max_staleness": (lambda v: v is None or v >= 0, "null or an integer >= 0"),
    "monitoring.max_accuracy_drop": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "monitoring.max_drift": (lambda v: v > 0, "a number > 0 (PSI; 0.1 moderate, 0.25 major)"),
    "monitoring.cooldown_hours": (lambda v: v >= 0, "a number >= 0"),
    "monitoring.retraining_schedule": (lambda v: _cron_ok(v), "a 5-field cron expression"),
    "monitoring.monitoring_schedule": (lambda v: _cron_ok(v), "a 5-field cron expression"),
}


#: Keys whose null value means "derive from the dataset and the model" (:func:`derived_names`).
_DERIVED_NAMES = ("campaign.name", "tracking.registered_model")


def _cron_ok(text: str) -> bool:
    from croniter import croniter

    return len(text.split()) == 5 and bool(croniter.is_valid(text))


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_describe(a) for a in get_args(tp))
    if origin is tuple:
        return f"a list of {_describe(get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(
        tp, str(tp)
    )


def _coerce(key: str, tp: Any, value: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; return the typed value."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _build(key, typing.cast(type, tp), value)
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not allowed; allowed values: {_describe(tp)}")
        return value
    if origin in (types.UnionType, typing.Union):
        errors = []
        for arg in get_args(tp):
            try:
                return _coerce(key, arg, value)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"{key}: expected {_describe(tp)}, got {value!r}")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of names, got {value!r}")
        inner = get_args(tp)[1]
        return {str(k): _coerce(f"{key}.{k}", inner, v) for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected {_describe(tp)}, got {value!r}")
        inner = get_args(tp)[0]
        return tuple(_coerce(f"{key}[{i}]", inner, v) for i, v in enumerate(value))
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{key}: expected null, got {value!r}")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: expected a non-empty string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover - programming error


def _build(prefix: str, cls: type, raw: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"{where}: unknown key; allowed keys: {', '.join(names)}")
    kwargs: dict[str, Any] = {}
    for name in names:
        if name in raw:
            dotted = f"{prefix}.{name}" if prefix else name
            raw_value = raw[name]
            if dotted == "privacy.level" and raw_value is False:
                raw_value = "off"  # YAML 1.1 reads a bare `off` as false
            if dotted in _DERIVED_NAMES and raw_value is None:
                kwargs[name] = ""  # derived from the dataset and the model by from_dict
                continue
            value = _coerce(dotted, hints[name], raw_value)
            rule = _RULES.get(dotted)
            if rule is not None and not rule[0](value):
                raise ConfigError(f"{dotted}: {value!r} is not allowed; allowed values: {rule[1]}")
            kwargs[name] = value
    return cls(**kwargs)


def _codec_ok(name: str | None) -> bool:
    from fl_core.codec import parse_codec

    if name is None:
        return True
    try:
        parse_codec(name)
    except ValueError:
        return False
    return True


_CODEC_FORMS = "dense_fp32, fp16, q8, q4, q2, topk:<fraction>, topk:<fraction>+fp16|q8|q4|q2"
_RULES["communication.uplink_codec"] = (_codec_ok, _CODEC_FORMS)
for _k in ("slow_codec", "medium_codec", "fast_codec"):
    _RULES[f"communication.{_k}"] = (_codec_ok, _CODEC_FORMS)
_RULES["privacy.level"] = (
    lambda v: v in ("off", "low", "medium", "high", "custom"),
    "one of 'off', 'low', 'medium', 'high', 'custom'",
)
_RULES["privacy.mode"] = (lambda v: v in ("central", "local"), "one of 'central', 'local'")
_RULES["privacy.accountant"] = (lambda v: v in ("rdp", "prv"), "one of 'rdp', 'prv'")
_RULES["communication.downlink_codec"] = (_codec_ok, _CODEC_FORMS)
_RULES["communication.downlink_delta_codec"] = (_codec_ok, "null or " + _CODEC_FORMS)


def _check_cross(cfg: Config) -> None:
    s = cfg.server
    if s.strategy in ("krum", "multi_krum") and s.num_byzantine < 1:
        raise ConfigError(f"server.num_byzantine: {s.strategy} needs >= 1 (f, the number of "
                          "Byzantine clients it tolerates)")
    if s.strategy == "bulyan" and cfg.campaign.clients_per_round < 4 * s.num_byzantine + 3:
        raise ConfigError(
            f"campaign.clients_per_round: bulyan with server.num_byzantine={s.num_byzantine} "
            f"needs >= {4 * s.num_byzantine + 3} updates per round (n >= 4f + 3)")
    if cfg.asynchronous.enabled and (cfg.privacy.level != "off"):
        raise ConfigError("asynchronous.enabled: not supported with privacy (the accountant "
                          "assumes synchronous Poisson rounds); allowed: false")
    if cfg.asynchronous.enabled and cfg.asynchronous.buffer_size > cfg.asynchronous.concurrency:
        raise ConfigError("asynchronous.buffer_size: must be <= asynchronous.concurrency")
    if cfg.communication.policy == "adaptive" and not cfg.simulation.enabled:
        raise ConfigError("communication.policy: 'adaptive' needs the clients' link speeds; "
                          "enable simulation (simulation.enabled: true)")
    src = data_source(cfg)
    if cfg.data.dataset == "file" and not cfg.data.path:
        raise ConfigError("data.path: required when data.dataset is 'file'")
    if cfg.partition.scheme == "natural" and src.loader not in ("synthetic", "file"):
        raise ConfigError(
            "partition.scheme: 'natural' needs a dataset with natural clients; allowed "
            "with data.dataset 'synthetic', 'file' (with data.client_column) or a registered "
            "dataset with a client_column"
        )
    if cfg.partition.scheme == "natural" and src.loader == "file" and not src.client_column:
        where = (f"datasets.{src.name}.client_column" if src.name in cfg.datasets
                 else "data.client_column")
        raise ConfigError(f"{where}: required when partition.scheme is 'natural'")
    if cfg.model.name == "cnn" and src.loader not in IMAGE_DATASETS:
        raise ConfigError(
            "model.name: 'cnn' needs image data; allowed with data.dataset 'digits' or 'mnist5k'"
        )
    if (
        cfg.partition.scheme != "natural"
        and cfg.campaign.fraction is None
        and (cfg.campaign.clients_per_round > cfg.partition.num_clients)
    ):
        raise ConfigError(
            f"campaign.clients_per_round: {cfg.campaign.clients_per_round} is more than "
            f"partition.num_clients ({cfg.partition.num_clients}); allowed values: 1.."
            f"{cfg.partition.num_clients}"
        )


@dataclass(frozen=True)
class DataSource:
    """Where ``data.dataset`` comes from, resolved through the ``datasets`` registry.

    ``name`` names the dataset in campaign and registered-model names (the built-in's name,
    the registered name, or the file's stem for ``file``); ``loader`` is the built-in loader.
    """

    name: str
    loader: str
    path: str | None
    label_column: str
    client_column: str | None


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-_")
    return slug[:40] or "file"


def data_source(cfg: Config) -> DataSource:
    """Resolve ``data.dataset`` (a built-in or a registered dataset) into a :class:`DataSource`."""
    d = cfg.data
    entry = cfg.datasets.get(d.dataset)
    if entry is not None:
        return DataSource(d.dataset, "file", entry.path, entry.label_column, entry.client_column)
    if d.dataset == "file":
        name = _slug(Path(d.path).stem) if d.path else "file"
        return DataSource(name, "file", d.path, d.label_column, d.client_column)
    return DataSource(d.dataset, d.dataset, None, d.label_column, d.client_column)


def scaling_enabled(cfg: Config) -> bool:
    """Whether features are standardized (``data.scaling``; ``auto``: the user's tables)."""
    if cfg.data.scaling == "auto":
        return data_source(cfg).loader == "file"
    return cfg.data.scaling == "standard"


def dataset_choices(cfg: Config) -> list[str]:
    """Values ``data.dataset`` may take with this config: the built-ins (``file`` only when
    ``data.path`` is set) and every registered dataset, e.g. for the Airflow form's enum."""
    builtins = [n for n in BUILTIN_DATASETS if n != "file" or cfg.data.path]
    return [*builtins, *sorted(cfg.datasets)]


def derived_names(cfg: Config) -> tuple[str, str]:
    """``(campaign name, registered model name)`` derived from the dataset and the model:
    ``<dataset>-<model>`` and ``fl-<dataset>-<model>``."""
    base = f"{data_source(cfg).name}-{cfg.model.name}"
    return base, f"fl-{base}"


def _fill_names(cfg: Config) -> Config:
    campaign_name, model_name = derived_names(cfg)
    if not cfg.campaign.name:
        cfg = dataclasses.replace(
            cfg, campaign=dataclasses.replace(cfg.campaign, name=campaign_name)
        )
    if not cfg.tracking.registered_model:
        cfg = dataclasses.replace(
            cfg, tracking=dataclasses.replace(cfg.tracking, registered_model=model_name)
        )
    return cfg


def _check_datasets(cfg: Config) -> None:
    for name, entry in cfg.datasets.items():
        if name in BUILTIN_DATASETS or not re.fullmatch(DATASET_NAME_PATTERN, name):
            raise ConfigError(
                f"datasets.{name}: not allowed as a dataset name; allowed: 1..40 characters "
                f"from a-z 0-9 _ -, starting with a letter or digit, not one of "
                f"{', '.join(BUILTIN_DATASETS)}"
            )
        if entry.client_column is not None and entry.client_column == entry.label_column:
            raise ConfigError(f"datasets.{name}.client_column: is the label column")
    if cfg.data.dataset not in BUILTIN_DATASETS and cfg.data.dataset not in cfg.datasets:
        raise ConfigError(
            f"data.dataset: {cfg.data.dataset!r} is not allowed; allowed values: "
            + ", ".join(repr(n) for n in (*BUILTIN_DATASETS, *sorted(cfg.datasets)))
            + " (register your own with `fl init-dataset NAME --file ...`)"
        )


def sampling_rate(cfg: Config, num_clients: int | None = None) -> float:
    """The per-round client sampling rate ``q`` (``campaign.fraction``, else
    ``clients_per_round / num_clients``); the privacy accountant's subsampling rate."""
    n = num_clients or cfg.partition.num_clients
    if cfg.campaign.fraction is not None:
        return cfg.campaign.fraction
    return min(1.0, cfg.campaign.clients_per_round / n)


def resolve_privacy(cfg: Config, num_clients: int | None = None) -> Any:
    """Validate and calibrate the ``privacy`` section for this campaign (ConfigError naming
    the key on a bad combination)."""
    from fl_core.privacy.settings import resolve

    n = num_clients or cfg.partition.num_clients
    keys = {"num_clients": "partition.num_clients", "rounds": "campaign.rounds",
            "sampling_rate": "campaign.fraction" if cfg.campaign.fraction is not None
            else "campaign.clients_per_round"}
    try:
        return resolve(cfg.privacy, num_clients=n, sampling_rate=sampling_rate(cfg, n),
                       rounds=cfg.campaign.rounds, keys=keys)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def from_dict(raw: dict[str, Any] | None) -> Config:
    """Validate a nested mapping (as in ``params.yaml``) into a :class:`Config`.

    Raises
    ------
    ConfigError
        Naming the dotted key and the allowed keys or values.
    """
    cfg = typing.cast(Config, _build("", Config, raw or {}))
    _check_datasets(cfg)
    _check_cross(cfg)
    cfg = _fill_names(cfg)
    if cfg.partition.scheme != "natural" and (
        cfg.privacy.level != "off" or cfg.privacy.client_dp_sgd
    ):
        resolve_privacy(cfg)  # fails before any work, naming the key
    return cfg


def load_params(path: str | Path = "params.yaml") -> Config:
    """Read and validate ``params.yaml``."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return from_dict(raw)


def with_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """Return ``cfg`` with dotted-key overrides applied and validated.

    Example: ``with_overrides(cfg, {"campaign.rounds": 5})``. A campaign or registered-model
    name that was derived from the dataset and model (see :func:`derived_names`) follows an
    override of ``data.dataset`` or ``model.name``; a name set explicitly stays.
    """
    raw = cfg.to_dict()
    campaign_name, model_name = derived_names(cfg)
    if raw["campaign"]["name"] == campaign_name and "campaign.name" not in overrides:
        raw["campaign"]["name"] = None
    if raw["tracking"]["registered_model"] == model_name and (
        "tracking.registered_model" not in overrides
    ):
        raw["tracking"]["registered_model"] = None
    for dotted, value in overrides.items():
        node = raw
        parts = dotted.split(".")
        for part in parts[:-1]:
            if part not in node or not isinstance(node[part], dict):
                raise ConfigError(f"{dotted}: unknown key")
            node = node[part]
        node[parts[-1]] = value
    return from_dict(raw)
