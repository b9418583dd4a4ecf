"""Opening campaigns for orchestrators (the Airflow DAGs, retraining): config from
``params.yaml`` plus per-run overrides, data prepared and validated for that config, an
MLflow run, the campaign record and initial (or warm-started) model in the artifact store.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from fl_core.config import Config, ConfigError
from fl_core.form import config_from_form as config_from_form  # the form lives there
from fl_core.store import ArtifactStore

logger = logging.getLogger(__name__)

def data_key(cfg: Config) -> str:
    """Content key of the data a config needs (its ``data`` and ``partition`` sections)."""
    raw = {k: cfg.to_dict()[k] for k in ("data", "partition", "validation")}
    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:12]


def ensure_data(cfg: Config, *, project_root: Path, home: Path) -> Path:
    """The ``data/`` folder for ``cfg``: the project's DVC outputs when they match the config,
    else a cached copy under ``FL_HOME/datasets/<key>`` prepared, partitioned and validated
    on first use. Raises ``ValueError`` with the validation report when the data is bad."""
    from fl_core import stages
    from fl_core.config import load_params

    project_data = project_root / "data"
    try:
        project_cfg = load_params(project_root / "params.yaml")
    except (ConfigError, FileNotFoundError):
        project_cfg = None
    if (
        project_cfg is not None
        and data_key(project_cfg) == data_key(cfg)
        and (project_data / "clients" / "manifest.json").exists()
    ):
        return project_data
    root = home / "datasets" / data_key(cfg)
    paths = stages.Paths(root)
    if not (paths.clients / "manifest.json").exists():
        logger.info("preparing data for %s under %s", cfg.data.dataset, root)
        stages.prepare(cfg, paths)
        stages.partition(cfg, paths)
        report = stages.validate(cfg, paths)
        if not report.success:
            (paths.clients / "manifest.json").unlink()
            raise ValueError(f"data validation failed:\n{report.format()}")
    return paths.data


def open_campaign(
    store: ArtifactStore,
    cfg: Config,
    *,
    project_root: Path,
    home: Path,
    campaign_id: str | None = None,
    warm_start: np.ndarray | None = None,
    tracking_uri: str | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Prepare data, start the MLflow run and create the campaign; idempotent per id."""
    from fl_core import tracking as tr
    from fl_core.rounds.campaign import check_campaign_id, new_campaign_id, start_campaign
    from fl_core.rounds.layout import campaign_record_key

    cid = check_campaign_id(campaign_id or new_campaign_id(cfg.campaign.name))
    if store.exists(campaign_record_key(cid)):
        return cid
    data_dir = ensure_data(cfg, project_root=project_root, home=home)
    tracking = tr.start_campaign_run(
        uri=tracking_uri or tr.default_tracking_uri(home),
        experiment=cfg.tracking.experiment,
        campaign_id=cid,
        params=cfg.flat(),
        tags=tags,
        artifact_root=home / "mlartifacts",
    )
    report = data_dir.parent / "reports" / "validation.json"
    status = "unknown"
    if report.exists():
        status = "passed" if json.loads(report.read_text()).get("success") else "failed"
    return start_campaign(
        store,
        cfg,
        data_dir=data_dir,
        campaign_id=cid,
        tracking=tracking,
        warm_start=warm_start,
        validation_status=status,
    )
