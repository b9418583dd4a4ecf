"""The agent's main loop: enroll once, then heartbeat -> long-poll -> download -> evaluate
-> train -> upload, surviving network errors, coordinator restarts and its own restarts.

Crash safety: the new client state and the signed update are written to the client home
*before* the upload; on start the agent re-sends any pending update (the coordinator
accepts byte-identical retries), so a restart neither loses nor retrains a round and the
error-feedback residual stays consistent with what was sent.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fl_core.agent import training
from fl_core.agent.identity import ClientHome, Identity, PendingUpload
from fl_core.agent.transport import CoordinatorClient, Refused, RetryPolicy, Unreachable
from fl_core.client import TaskDeclined
from fl_core.coordinator import protocol

logger = logging.getLogger(__name__)

__all__ = ["Agent", "AgentConfig", "LocalData"]


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    coordinator: str
    data: Path
    home: Path
    ca: Path | None = None
    enroll_token: str | None = None
    eval_data: Path | None = None
    monitor_data: Path | None = None
    holdout: float = 0.2
    wait_s: float = 20.0
    heartbeat_s: float = 30.0
    retry: RetryPolicy = RetryPolicy()
    profile: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 <= self.holdout < 1.0:
            raise ValueError(f"holdout must be in [0, 1), got {self.holdout}")
        if self.wait_s < 0 or self.heartbeat_s <= 0:
            raise ValueError("wait_s must be >= 0 and heartbeat_s > 0")


def as_table(path: Path, cache_dir: Path) -> Path:
    """``path`` as a table in the project's on-disk format: a Parquet file as it is; a CSV
    (columns ``x0..x{d-1}``, ``label``) converted once into ``cache_dir`` with features as
    float32 and an all-integer label as int64. Other columns and values are kept, so the
    Great Expectations suite still reports what is wrong with the operator's file."""
    path = Path(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        return path
    if path.suffix.lower() != ".csv":
        raise ValueError(f"{path}: unsupported data file {path.suffix!r}; use .csv or .parquet")
    import re

    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fl_core.data.io import file_sha256

    out = Path(cache_dir) / f"{path.stem}-{file_sha256(path)[:16]}.parquet"
    if not out.is_file():
        frame = pd.read_csv(path)
        for column in frame.columns:
            if re.fullmatch(r"x\d+", str(column)) and pd.api.types.is_numeric_dtype(frame[column]):
                frame[column] = frame[column].astype(np.float32)
        label = frame.get("label")
        if label is not None and label.notna().all() and (label % 1 == 0).all():
            frame["label"] = label.astype(np.int64)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp)
        tmp.replace(out)
    return out


class LocalData:
    """The private table: training split, held-out split, and its version hash.

    The held-out split is a fixed function of the data itself (a permutation seeded by the
    file's sha256), so it is the same after a restart. With ``eval_data`` the whole table
    trains and the other file is the held-out set; with ``holdout=0`` and no ``eval_data``
    the whole table trains and federated evaluation is skipped.
    """

    def __init__(
        self,
        path: Path,
        *,
        holdout: float,
        eval_data: Path | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        from fl_core.data.io import file_sha256, read_table

        self.source = Path(path)
        self.sha256 = file_sha256(self.source)  # the data version: the operator's own file
        cache = Path(cache_dir) if cache_dir is not None else self.source.parent
        self.path = as_table(self.source, cache)
        try:
            x, y = read_table(self.path)
        except ValueError as exc:  # the validation suite says exactly what is wrong
            logger.error("local data is not usable: %s", exc)
            x, y = np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
        self.eval: tuple[np.ndarray, np.ndarray] | None = None
        if eval_data is not None:
            self.x, self.y = x, y
            self.eval = read_table(as_table(Path(eval_data), cache))
        elif holdout > 0 and len(y) > 1:
            order = np.random.default_rng(int(self.sha256[:16], 16)).permutation(len(y))
            cut = max(1, int(round(len(y) * holdout)))
            test, train = np.sort(order[:cut]), np.sort(order[cut:])
            self.x, self.y = x[train], y[train]
            self.eval = (x[test], y[test])
        else:
            self.x, self.y = x, y
        self._valid: dict[str, bool] = {}

    @property
    def num_examples(self) -> int:
        return int(len(self.y))

    def validate(self, model_spec: dict[str, Any]) -> bool:
        """The project's Great Expectations suite on the local file; logs pass/fail and
        the failed rules (file, column, expectation), never rows. Cached per model spec."""
        from fl_core.data.validation import ValidationRules, validate_tables

        key = repr(sorted(model_spec.items()))
        if key not in self._valid:
            n_features = 1
            for d in model_spec["input_shape"]:
                n_features *= int(d)
            rules = ValidationRules(
                num_features=n_features,
                labels=tuple(range(int(model_spec["num_classes"]))),
                feature_min=None,
                feature_max=None,
                min_samples=1,
            )
            report = validate_tables([self.path], rules=rules)
            self._valid[key] = report.success
            if report.success:
                logger.info("local data %s passed validation", self.path.name)
            else:
                logger.error("local data failed validation:\n%s", report.format())
        return self._valid[key]

    @property
    def last_validation(self) -> bool | None:
        return None if not self._valid else all(self._valid.values())


class Agent:
    """One edge client. ``run()`` loops until ``stop`` is set or ``max_tasks`` are done."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.home = ClientHome(config.home)
        self.data = LocalData(
            config.data,
            holdout=config.holdout,
            eval_data=config.eval_data,
            cache_dir=Path(config.home) / "data",
        )
        self.client = CoordinatorClient(config.coordinator, ca=config.ca, retry=config.retry)
        self.stop = threading.Event()
        self.tasks_done = 0
        self._uplink_mbps: float | None = None
        self._direct_min_bytes: int | None = None  # the last task's offer of direct uploads
        self._downlink_mbps: float | None = None
        self._latency_s: float | None = None
        self._last_heartbeat = 0.0
        self._declined: set[tuple[str, int]] = set()
        self._histograms_sent: set[str] = set()

    def close(self) -> None:
        self.client.close()

    # ----------------------------------------------------------------- identity

    def ensure_identity(self) -> Identity:
        """The stored identity, or enroll now with the one-time token."""
        identity = self.home.load_identity()
        if identity is None:
            if not self.config.enroll_token:
                raise RuntimeError(
                    f"{self.home.root} holds no identity: pass --enroll-token for the first run"
                )
            key = self.home.new_key()
            client_id = self.client.enroll(self.config.enroll_token, protocol.public_key_b64(key))
            identity = self.home.save_identity(client_id, self.config.coordinator, key)
            logger.info("enrolled as %s", client_id)
        self.client.identity = identity
        return identity

    # ----------------------------------------------------------------- loop

    def run(self, *, max_tasks: int | None = None) -> int:
        """Serve tasks; returns the number done. Network failures are waited out."""
        self.ensure_identity()
        failures = 0
        while not self.stop.is_set():
            try:
                self._resume_pending()
                if time.monotonic() - self._last_heartbeat >= self.config.heartbeat_s:
                    self.heartbeat()
                task = self.client.next_task(wait_s=self.config.wait_s)
                failures = 0
                if task is not None and (task["campaign"], task["round"]) in self._declined:
                    self.stop.wait(self.config.wait_s)  # stays open server-side; nothing to do
                elif task is not None:
                    self.handle(task)
                    self.heartbeat()
                    if max_tasks is not None and self.tasks_done >= max_tasks:
                        break
            except Unreachable as exc:
                failures += 1
                pause = self.config.retry.delay(min(failures, 6))
                logger.warning("coordinator unreachable (%s); waiting %.1f s", exc, pause)
                self.stop.wait(pause)
            except Refused as exc:
                if exc.status in (401, 403):
                    logger.error("coordinator refused this client (%s); stopping", exc)
                    raise
                logger.warning("request refused: %s", exc)
                self.stop.wait(self.config.retry.base_s)
        return self.tasks_done

    def heartbeat(self) -> None:
        """Report availability, device/link profile, measured link and data version."""
        try:
            _, rtt = self.client.health()
            self._latency_s = rtt
        except Unreachable:
            pass
        self.client.heartbeat(
            {
                "available": True,
                "profile": {
                    "platform": platform.system().lower(),
                    "machine": platform.machine(),
                    "python": platform.python_version(),
                    **dict(self.config.profile),
                },
                "uplink_mbps": self._uplink_mbps,
                "downlink_mbps": self._downlink_mbps,
                "latency_s": self._latency_s,
                "num_examples": self.data.num_examples,
                "data_sha256": self.data.sha256,
                "data_valid": self.data.last_validation,
            }
        )
        self._last_heartbeat = time.monotonic()

    def resume(self) -> int:
        """Send every update left pending by a crash or a network failure (byte-identical,
        so the coordinator accepts it once); returns how many were settled."""
        self.ensure_identity()
        return self._resume_pending()

    def _resume_pending(self) -> int:
        done = 0
        for upload in self.home.pending():
            done += 1
            self._upload(upload)
        return done

    def _upload(self, upload: PendingUpload) -> None:
        self.home.commit_pending(upload)
        url = f"{protocol.API_PREFIX}/updates/{upload.campaign}/{upload.round}"
        try:
            _, seconds = self.client.upload_update(
                url,
                upload.data,
                signature=upload.signature,
                direct_min_bytes=self._direct_min_bytes,
            )
            self._uplink_mbps = _mbps(len(upload.data), seconds)
            logger.info(
                "uploaded %s round %d (%d bytes)", upload.campaign, upload.round, len(upload.data)
            )
        except Refused as exc:
            if exc.status not in (400, 409, 410):
                raise
            logger.warning("update for %s round %d refused: %s", upload.campaign, upload.round, exc)
        self.home.drop_pending(upload.campaign, upload.round)

    def handle(self, task: dict[str, Any]) -> None:
        """One task: validate data, download, evaluate, train, persist, upload (or, for a
        monitoring task, :meth:`monitor`)."""
        direct = task.get("direct_upload_min_bytes")  # resumed uploads after a restart: None
        self._direct_min_bytes = int(direct) if isinstance(direct, int) and direct >= 0 else None
        if task.get("kind") == "monitor":
            self.monitor(task)
            return
        campaign, rnd = str(task["campaign"]), int(task["round"])
        if self.home.is_pending(campaign, rnd):
            self._resume_pending()
            return
        if not self.data.validate(task["model_spec"]):
            self.heartbeat()  # reports data_valid=False: selection leaves this client out
            self._declined.add((campaign, rnd))
            raise Refused(400, "local data failed validation; not training")
        state = training.ClientState.from_arrays(self.home.load_state(campaign))
        message, seconds = self.client.download_model(
            str(task["model_url"]), known_version=state.known_version
        )
        self._downlink_mbps = _mbps(len(message), seconds)
        if self.data.eval is not None:
            model = training.decode_model(message, task, state)
            metrics = training.evaluate(task, model, *self.data.eval)
            self.client.report_evaluation(
                campaign,
                rnd,
                {
                    "model_version": int(task["base_version"]),
                    "num_examples": int(metrics.pop("num_examples")),
                    "metrics": {k: v for k, v in metrics.items() if np.isfinite(v)},
                },
            )
        if task.get("histogram") and campaign not in self._histograms_sent:
            self._report_histogram(task)
        measured = {
            k: v
            for k, v in (("uplink_mbps", self._uplink_mbps), ("latency_s", self._latency_s))
            if v is not None
        }
        try:
            result = training.train(
                message, task, self.data.x, self.data.y, state=state, measured=measured
            )
        except TaskDeclined as exc:
            logger.warning("declined %s round %d: %s", campaign, rnd, exc)
            self._declined.add((campaign, rnd))
            return
        identity = self.client.identity
        assert identity is not None
        signature = protocol.sign(
            identity.key,
            protocol.update_message(
                campaign=campaign,
                rnd=rnd,
                client_id=identity.client_id,
                message_sha256=hashlib.sha256(result.update).hexdigest(),
            ),
        )
        upload = PendingUpload(campaign, rnd, result.update, signature, result.state.to_arrays())
        # Update and state are on disk before anything is sent: a crash resumes the upload.
        self.home.save_pending(upload)
        self._upload(upload)
        self.tasks_done += 1

    def _report_histogram(self, task: dict[str, Any]) -> None:
        """Counts of the training split on the task's fixed grid (the campaign's reference
        histograms are their sum over clients); counts only, never rows. Once per campaign
        and process (the data does not change while the agent runs)."""
        from fl_core.histograms import bin_counts, grid_edges

        campaign, rnd = str(task["campaign"]), int(task["round"])
        if self.data.num_examples == 0:
            return
        counts = bin_counts(self.data.x, grid_edges(task["histogram"]))
        self.client.report_histogram(
            campaign, rnd, {"num_examples": self.data.num_examples, "counts": counts}
        )
        self._histograms_sent.add(campaign)

    def monitor(self, task: dict[str, Any]) -> None:
        """A monitoring task: evaluate the champion on the *current* content of the local
        data (``--monitor-data``, else ``--data``, re-read now), count it per feature in the
        check's bin edges and report accuracy, loss, example count and the counts; a table
        that fails validation is reported as such, with no numbers."""
        from fl_core.histograms import bin_counts

        campaign, rnd = str(task["campaign"]), int(task["round"])
        fresh = LocalData(
            self.config.monitor_data or self.config.data,
            holdout=0.0,
            cache_dir=Path(self.config.home) / "data",
        )
        report: dict[str, Any] = {"model_version": int(task["base_version"])}
        if fresh.num_examples == 0 or not fresh.validate(task["model_spec"]):
            report.update(num_examples=0, data_valid=False)
        else:
            message, seconds = self.client.download_model(
                str(task["model_url"]), known_version=None
            )
            self._downlink_mbps = _mbps(len(message), seconds)
            model = training.decode_model(message, task, training.ClientState())
            metrics = training.evaluate(task, model, fresh.x, fresh.y)
            report.update(
                num_examples=int(metrics.pop("num_examples")),
                data_valid=True,
                metrics={k: v for k, v in metrics.items() if np.isfinite(v)},
                counts=bin_counts(fresh.x, task["edges"]),
            )
        self.client.report_monitoring(campaign, rnd, report)
        logger.info(
            "monitoring check %s: %d examples, accuracy %s",
            campaign,
            report["num_examples"],
            report.get("metrics", {}).get("accuracy"),
        )
        self.tasks_done += 1


def _mbps(num_bytes: int, seconds: float) -> float | None:
    return None if seconds <= 0 else min(1e6, num_bytes * 8 / seconds / 1e6)
