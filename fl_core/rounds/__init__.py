"""A federated round, one module per step.

=================  ==============================  ========================================
step               module                          reads -> writes (records)
=================  ==============================  ========================================
select_clients     :mod:`~.select`                 campaign, selector/reputation(r-1) -> Cohort
dispatch           :mod:`~.dispatch`               Cohort -> Manifest
train_clients      :mod:`~.train`                  Manifest -> updates, client state (simulation)
collect            :mod:`~.collect`                Cohort, Manifest, Collected(r-1) -> Collected
validate_updates   :mod:`~.validate`               Collected, Manifest -> Validation
aggregate          :mod:`~.aggregate`              Validation (+ digests) -> AggregateInfo
privatize          :mod:`~.privatize`              AggregateInfo -> PrivacyInfo, accountant
server_update      :mod:`~.server_update`          PrivacyInfo -> ServerUpdateInfo, model v(r)
evaluate           :mod:`~.evaluate`               ServerUpdateInfo, Validation -> RoundMetrics
register_round     :mod:`~.register`               RoundMetrics -> MLflow
next_round         :mod:`~.next_round`             RoundMetrics, Validation -> CampaignStatus
register_model     :mod:`~.register`               (campaign end) -> registered model
deploy             :mod:`~.deploy`                 registered model -> alias, edge artifact
=================  ==============================  ========================================

Steps never call each other: each reads the records its predecessors wrote
(:mod:`~.records`, keys in :mod:`~.layout`) and fails naming the step to run first when one
is missing. :data:`ROUND_STEPS` and :data:`FINAL_STEPS` are the order the engine and the
DAG run them in (a DAG task id is its step's name).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fl_core.rounds.aggregate import aggregate
from fl_core.rounds.campaign import new_campaign_id, start_campaign
from fl_core.rounds.collect import collect
from fl_core.rounds.deploy import deploy
from fl_core.rounds.dispatch import client_batches, dispatch
from fl_core.rounds.evaluate import evaluate
from fl_core.rounds.next_round import next_round
from fl_core.rounds.privatize import privatize
from fl_core.rounds.register import register_model, register_round
from fl_core.rounds.select import select_clients
from fl_core.rounds.server_update import server_update
from fl_core.rounds.train import train_clients
from fl_core.rounds.validate import validate_updates

Step = Callable[..., dict[str, Any]]

#: The steps of every round, in order. ``train_clients`` is the in-process transport (mapped
#: over client batches); it takes the batch as a fourth argument.
ROUND_STEPS: tuple[tuple[str, Step], ...] = (
    ("select_clients", select_clients),
    ("dispatch", dispatch),
    ("train_clients", train_clients),
    ("collect", collect),
    ("validate_updates", validate_updates),
    ("aggregate", aggregate),
    ("privatize", privatize),
    ("server_update", server_update),
    ("evaluate", evaluate),
    ("register_round", register_round),
    ("next_round", next_round),
)

#: The steps after the last round.
FINAL_STEPS: tuple[tuple[str, Step], ...] = (
    ("register_model", register_model),
    ("deploy", deploy),
)

STEP_NAMES: tuple[str, ...] = tuple(n for n, _ in ROUND_STEPS + FINAL_STEPS)

__all__ = [
    "FINAL_STEPS",
    "ROUND_STEPS",
    "STEP_NAMES",
    "aggregate",
    "client_batches",
    "collect",
    "deploy",
    "dispatch",
    "evaluate",
    "new_campaign_id",
    "next_round",
    "privatize",
    "register_model",
    "register_round",
    "select_clients",
    "server_update",
    "start_campaign",
    "train_clients",
    "validate_updates",
]
