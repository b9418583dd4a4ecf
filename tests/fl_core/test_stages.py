"""The end-of-run summary tells the truth about a model that learned nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fl_core import stages


def _write_outputs(root: Path, *, federated: float, majority: float, rejected: int) -> None:
    for sub in ("models", "metrics", "data/clients"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "models/campaign.json").write_text(
        json.dumps(
            {
                "campaign_id": "cancer-mlp-x",
                "rounds": 30,
                "stop_reason": "rounds done (30)",
                "model_sha256": "ab" * 32,
                "registered": {"registered_model": "fl-cancer-mlp", "version": "1"},
                "deployed": {
                    "alias": "challenger",
                    "reason": "accuracy 0.6161 is no better than "
                    "predicting the majority class (0.6161)",
                },
            }
        )
    )
    (root / "metrics/eval.json").write_text(
        json.dumps(
            {
                "federated_test_accuracy": federated,
                "baseline_test_accuracy": 0.96,
                "accuracy_gap_points": 100 * (0.96 - federated),
                "majority_class_accuracy": majority,
            }
        )
    )
    (root / "metrics/train.json").write_text(
        json.dumps(
            {
                "bytes_up_total": 1,
                "bytes_down_total": 1,
                "updates_rejected_total": rejected,
                "updates_accepted_total": 300 - rejected,
            }
        )
    )
    (root / "data/clients/manifest.json").write_text(
        json.dumps({"num_clients": 4, "scheme": "natural", "dataset": "cancer"})
    )


def test_majority_rate_run_is_called_what_it_is(tmp_path: Path) -> None:
    _write_outputs(tmp_path, federated=0.6161, majority=0.6161, rejected=21)

    text = stages.summary(stages.Paths(tmp_path))

    assert "no better than predicting the majority class (0.6161)" in text
    assert "21 of 300 client updates were rejected" in text
    assert "not deployed      accuracy 0.6161" in text


def test_a_real_model_gets_no_warning(tmp_path: Path) -> None:
    _write_outputs(tmp_path, federated=0.95, majority=0.62, rejected=0)

    text = stages.summary(stages.Paths(tmp_path))

    assert "WARNING" not in text and "0.6200 majority class" in text


def test_majority_class_accuracy() -> None:
    assert stages.majority_class_accuracy(np.array([1, 1, 0, 1])) == 0.75
