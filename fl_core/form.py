"""The campaign form: each field declared once, with its config key, bounds and help.

The Airflow ``federated_training`` Params form, the mapping from a run's conf to the
campaign config, and the list of accepted conf keys are all derived from
:data:`FORM_FIELDS`. Choices come from the config's own declarations (the ``Literal`` types
of :mod:`fl_core.config`, the privacy presets), so a name is listed once.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any

from fl_core.config import (
    BUILTIN_DATASETS,
    Config,
    ConfigError,
    ModelName,
    StrategyName,
    with_overrides,
)
from fl_core.privacy.settings import LEVELS
from fl_core.rounds.layout import CAMPAIGN_ID_PATTERN

#: Uplink codecs offered in the form (any codec string is accepted in params.yaml).
FORM_CODECS = ("dense_fp32", "fp16", "q8", "q4", "topk:0.1+q8", "topk:0.01+q8", "topk:0.01")

USER = "Campaign"
PLUMBING = "Set by the previous round (leave empty to start a campaign)"


@dataclass(frozen=True)
class FormField:
    """One form field: its name in the conf, the config key it sets (None for run
    plumbing), its JSON-schema type, choices or bounds, help text and form section."""

    name: str
    key: str | None
    type: str | list[str]
    help: str
    section: str = USER
    enum: tuple[Any, ...] | None = None
    minimum: int | None = None
    maximum: int | None = None
    pattern: str | None = None
    default: Any = None

    def default_value(self, base: Config) -> Any:
        if self.key is None:
            return self.default
        value: Any = base
        for part in self.key.split("."):
            value = getattr(value, part)
        return value

    def choices(self, base: Config) -> tuple[Any, ...] | None:
        if self.name == "dataset":
            builtin = tuple(d for d in BUILTIN_DATASETS if d != "file")
            return builtin + tuple(sorted(base.datasets))
        return self.enum

    def param_kwargs(self, base: Config) -> dict[str, Any]:
        """Keyword arguments of ``airflow.sdk.Param`` for this field."""
        out: dict[str, Any] = {
            "default": self.default_value(base),
            "type": self.type,
            "description": self.help,
            "section": self.section,
        }
        for name in ("enum", "minimum", "maximum", "pattern"):
            value = self.choices(base) if name == "enum" else getattr(self, name)
            if value is not None:
                out[name] = list(value) if name == "enum" else value
        return out


def _choices(literal: Any) -> tuple[str, ...]:
    return tuple(typing.get_args(literal))


FORM_FIELDS: tuple[FormField, ...] = (
    FormField(
        "dataset",
        "data.dataset",
        "string",
        "Dataset: a built-in or one registered with `fl init-dataset` (partitioned per "
        "params.yaml)",
        enum=(),  # filled from the config: built-ins and the registered datasets
    ),
    FormField("model", "model.name", "string", "Model", enum=_choices(ModelName)),
    FormField(
        "strategy",
        "server.strategy",
        "string",
        "Aggregation rule (robust rules use server.* of params.yaml)",
        enum=_choices(StrategyName),
    ),
    FormField("rounds", "campaign.rounds", "integer", "Rounds", minimum=1, maximum=1000),
    FormField(
        "clients_per_round",
        "campaign.clients_per_round",
        "integer",
        "Clients per round",
        minimum=1,
        maximum=10000,
    ),
    FormField(
        "local_epochs", "client.local_epochs", "integer", "Local epochs", minimum=1, maximum=100
    ),
    FormField(
        "privacy_level",
        "privacy.level",
        "string",
        "Differential privacy: low eps=8, medium eps=3, high eps=1 (delta 1e-5)",
        enum=("off", *(k for k in LEVELS if k != "off")),
    ),
    FormField(
        "codec",
        "communication.uplink_codec",
        "string",
        "Uplink codec (lossy ones keep an error-feedback residual per client)",
        enum=FORM_CODECS,
    ),
    FormField(
        "clients",
        "campaign.clients",
        "string",
        "simulated: in-process clients on the partitions; remote: enrolled devices running "
        "`fl client run` (rounds close at campaign.quorum or campaign.deadline_s)",
        enum=("simulated", "remote"),
    ),
    FormField(
        "client_batch_size",
        None,
        "integer",
        "Clients per mapped training task",
        section=PLUMBING,
        minimum=1,
        maximum=1000,
        default=5,
    ),
    FormField(
        "campaign_id",
        None,
        ["null", "string"],
        "Set by the previous round; empty starts a campaign",
        section=PLUMBING,
        pattern=CAMPAIGN_ID_PATTERN,
    ),
    FormField(
        "round",
        None,
        "integer",
        "Set by the previous round",
        section=PLUMBING,
        minimum=1,
        default=1,
    ),
    FormField(
        "chain",
        None,
        "boolean",
        "Trigger the next round's run when this one ends",
        section=PLUMBING,
        default=True,
    ),
)

#: Conf keys a retraining run may add (who asked, and into which registered model).
EXTRA_CONF_KEYS = ("reason", "registered_model")

_INTEGER = {f.name for f in FORM_FIELDS if f.type == "integer"}


def check_conf_keys(conf: dict[str, Any]) -> None:
    """``ConfigError`` naming the first unknown key of a run's conf and the allowed ones."""
    allowed = [f.name for f in FORM_FIELDS] + list(EXTRA_CONF_KEYS)
    unknown = sorted(set(conf) - set(allowed))
    if unknown:
        raise ConfigError(f"conf key {unknown[0]!r} is unknown; allowed keys: {', '.join(allowed)}")


def config_from_form(base: Config, form: dict[str, Any]) -> Config:
    """Apply a run's form values to ``base`` (templated values may arrive as strings).

    Only values that differ from ``base`` count: a field left at its default never
    overrides the project's params.yaml (nor renames the registered model)."""
    check_conf_keys(form)
    overrides: dict[str, Any] = {}
    for f in FORM_FIELDS:
        value = form.get(f.name)
        if f.key is None or value is None or value == "":
            continue
        if f.name in _INTEGER:
            try:
                value = int(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{f.key}: expected an integer, got {value!r}") from None
        if value == f.default_value(base):
            continue
        overrides[f.key] = value
    cfg = with_overrides(base, overrides)
    if "model.name" in overrides or "data.dataset" in overrides:
        # Another dataset or model is another registered model: never compare a champion
        # with a challenger that does not even take the same input.
        name = f"{cfg.data.dataset}-{cfg.model.name}"
        cfg = with_overrides(
            cfg, {"campaign.name": name, "tracking.registered_model": f"fl-{name}"}
        )
    return cfg


def load_params_quietly(path: str | None = None) -> Config:
    """params.yaml (next to the project's dags/, or ``path``) or, if it cannot be read,
    the built-in defaults: a DAG file must parse even when params.yaml is broken (its
    tasks then fail with the config error)."""
    from pathlib import Path

    from fl_core.config import load_params

    file = Path(path) if path else Path(__file__).resolve().parents[1] / "params.yaml"
    try:
        return load_params(file)
    except (ConfigError, OSError):
        return Config()


def airflow_params(base: Config | None = None) -> dict[str, dict[str, Any]]:
    """Every field's ``Param`` keyword arguments, defaults from ``base`` (params.yaml)."""
    cfg = base or Config()
    return {f.name: f.param_kwargs(cfg) for f in FORM_FIELDS}
