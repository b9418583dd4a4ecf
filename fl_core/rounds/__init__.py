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

import importlib
from collections.abc import Callable
from typing import Any

Step = Callable[..., dict[str, Any]]

#: The steps of every round, in order (a DAG task id is its step's name). ``train_clients``
#: is the in-process transport of simulated clients, mapped over client batches (its batch
#: is a fourth argument).
ROUND_STEPS: tuple[str, ...] = (
    "select_clients",
    "dispatch",
    "train_clients",
    "collect",
    "validate_updates",
    "aggregate",
    "privatize",
    "server_update",
    "evaluate",
    "register_round",
    "next_round",
)

#: The steps after the last round.
FINAL_STEPS: tuple[str, ...] = ("register_model", "deploy")

STEP_NAMES: tuple[str, ...] = ROUND_STEPS + FINAL_STEPS

# step -> module of this package holding it (importing this package stays light: DAG files
# import it at parse time; the step modules load torch, numpy, ... only when a step runs).
_MODULES: dict[str, str] = {
    "select_clients": "select",
    "dispatch": "dispatch",
    "client_batches": "dispatch",
    "train_clients": "train",
    "collect": "collect",
    "validate_updates": "validate",
    "aggregate": "aggregate",
    "privatize": "privatize",
    "server_update": "server_update",
    "evaluate": "evaluate",
    "register_round": "register",
    "register_model": "register",
    "next_round": "next_round",
    "deploy": "deploy",
    "start_campaign": "campaign",
    "new_campaign_id": "campaign",
}


def step(name: str) -> Step:
    """The step function called ``name`` (``ValueError`` listing the steps otherwise).

    Also ``client_batches``, ``start_campaign`` and ``new_campaign_id``. (Step modules are
    named after their steps, so ``fl_core.rounds.aggregate`` is the module; this, or
    :mod:`fl_core.pipeline`, gives the function.)"""
    if name not in _MODULES:
        raise ValueError(f"no step {name!r}; steps: {', '.join(STEP_NAMES)}")
    fn: Step = getattr(importlib.import_module(f"{__name__}.{_MODULES[name]}"), name)
    return fn


__all__ = ["FINAL_STEPS", "ROUND_STEPS", "STEP_NAMES", "Step", "step"]
