"""Request and response bodies of the coordinator API (pydantic; unknown fields refused,
numbers finite and bounded)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

CAMPAIGN_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
MAX_ROUND = 10**6
"""The highest round number a path may name (rounds count from 1)."""
_SHA256 = r"^[0-9a-f]{64}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class EnrollIn(_Strict):
    token: str = Field(min_length=8, max_length=256)
    public_key: str = Field(min_length=40, max_length=64, description="raw Ed25519 key, base64")


class EnrollOut(BaseModel):
    client_id: str


class HeartbeatIn(_Strict):
    available: bool = True
    profile: dict[str, str | float | int | bool] = Field(default_factory=dict, max_length=32)
    uplink_mbps: float | None = Field(default=None, ge=0, le=1e6)
    downlink_mbps: float | None = Field(default=None, ge=0, le=1e6)
    latency_s: float | None = Field(default=None, ge=0, le=3600)
    num_examples: int | None = Field(default=None, ge=0, le=10**9)
    data_sha256: str | None = Field(default=None, pattern=_SHA256)
    data_valid: bool | None = None

    @field_validator("profile")
    @classmethod
    def _small_profile(cls, value: dict[str, Any]) -> dict[str, Any]:
        for k, v in value.items():
            if len(k) > 64 or (isinstance(v, str) and len(v) > 256):
                raise ValueError("profile keys are at most 64 and values 256 characters")
        return value


class HeartbeatOut(BaseModel):
    client_id: str
    server_time: float


def _check_metrics(value: dict[str, float]) -> dict[str, float]:
    if any(len(k) > 64 for k in value):
        raise ValueError("metric names are at most 64 characters")
    if any(abs(v) > 1e12 for v in value.values()):
        raise ValueError("metric values must be within +/-1e12")
    return value


class EvaluationIn(_Strict):
    model_version: int = Field(ge=0, le=10**9)
    num_examples: int = Field(ge=0, le=10**9)
    metrics: dict[str, float] = Field(max_length=64)

    @field_validator("metrics")
    @classmethod
    def _names(cls, value: dict[str, float]) -> dict[str, float]:
        return _check_metrics(value)


_Counts = list[list[int]]


def _check_counts_bounds(value: _Counts | None) -> _Counts | None:
    if value is None:
        return value
    if len(value) > 100_000 or sum(len(row) for row in value) > 200_000:
        raise ValueError("at most 100000 features and 200000 bins in all")
    if any(c < 0 or c > 10**9 for row in value for c in row):
        raise ValueError("counts must be integers in [0, 1e9]")
    return value


class HistogramIn(_Strict):
    """Bin counts of the client's training data on its task's grid: counts only."""

    num_examples: int = Field(ge=1, le=10**9)
    counts: _Counts

    @field_validator("counts")
    @classmethod
    def _bounded(cls, value: _Counts | None) -> _Counts | None:
        return _check_counts_bounds(value)


class MonitoringIn(_Strict):
    """A client's check of the champion on its fresh data (accuracy, counts, validity)."""

    model_version: int = Field(ge=0, le=10**9)
    num_examples: int = Field(ge=0, le=10**9)
    data_valid: bool = True
    metrics: dict[str, float] = Field(default_factory=dict, max_length=64)
    counts: _Counts | None = None

    @field_validator("counts")
    @classmethod
    def _bounded(cls, value: _Counts | None) -> _Counts | None:
        return _check_counts_bounds(value)

    @field_validator("metrics")
    @classmethod
    def _names(cls, value: dict[str, float]) -> dict[str, float]:
        return _check_metrics(value)


class UploadOut(BaseModel):
    client_id: str
    key: str
    sha256: str
    size: int
    stored: bool = Field(
        description="true when this request stored it, false on an idempotent retry"
    )


class TurnOut(BaseModel):
    client_id: str
    turn_s: float = Field(
        description="seconds the turn is held: the PUT must start within them (0 if stored)"
    )
    stored: bool = Field(description="true when this task's update is already stored")


class HealthOut(BaseModel):
    status: str
    api: str
    server_time: float


class DirectIn(_Strict):
    """A direct upload's size and digest (``POST .../direct`` and ``POST .../commit``)."""

    size: int = Field(ge=1)
    sha256: str = Field(pattern=_SHA256)


class DirectOut(BaseModel):
    stored: bool = Field(description="the task's update is already accepted: no URL")
    url: str | None = Field(description="presigned PUT to the update's staging key")
    headers: dict[str, str] = Field(description="headers the PUT must carry")
    expires_s: float
