"""The artifact-store layout of a campaign: every key and record name, and nowhere else.

::

    campaigns/<campaign>/campaign.json                 the campaign record (start_campaign)
    campaigns/<campaign>/status.json                   next_round's decision
    campaigns/<campaign>/models/v<NNNN>.flw            global model versions (wire format)
    campaigns/<campaign>/clients/<client>/state_r<NNNN>.npz   a simulated client's own state
    campaigns/<campaign>/rounds/<NNNN>/<record>        one round's records (see RECORDS)
    campaigns/<campaign>/rounds/<NNNN>/updates/<client>.flw   uploaded updates
    campaigns/<campaign>/rounds/<NNNN>/honest/<client>.flw    attackers' honest updates (simulation)
    campaigns/<campaign>/rounds/<NNNN>/sim/<client>.json      simulated durations
    campaigns/<campaign>/registered_model.json, deploy.json, edge/<file>

Round ``r`` (1-based) starts from model version ``r - 1`` and produces version ``r``.
"""

from __future__ import annotations

import re

#: A campaign id: a store-key component and an MLflow/Airflow label, so short and plain.
CAMPAIGN_ID_MAX_LENGTH = 128
CAMPAIGN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


def check_campaign_id(cid: str) -> str:
    """``cid`` if it is a valid campaign id, else ``ValueError`` naming the rule."""
    if not isinstance(cid, str) or not re.fullmatch(CAMPAIGN_ID_PATTERN, cid) or ".." in cid:
        raise ValueError(
            f"campaign id {cid!r} is invalid: 1-{CAMPAIGN_ID_MAX_LENGTH} characters of letters, "
            "digits, '.', '_', '-', starting with a letter or digit, no '..'"
        )
    return cid


CAMPAIGNS = "campaigns"

# Campaign-level records.
CAMPAIGN = "campaign.json"
STATUS = "status.json"
REGISTERED_MODEL = "registered_model.json"
DEPLOY = "deploy.json"

# Round records, by the step that writes them.
COHORT = "cohort.json"  # select_clients
MANIFEST = "manifest.json"  # dispatch
COLLECTED = "collected.json"  # collect
VALIDATION = "validation.json"  # validate_updates
AGGREGATE = "aggregate.json"  # aggregate
AGGREGATE_ARRAYS = "aggregate.npz"  # aggregate
RULE_STATE = "rule_state.npz"  # aggregate (a stateful rule's state, e.g. the CC center)
PRIVACY = "privacy.json"  # privatize
PRIVATIZED = "privatized.npz"  # privatize
ACCOUNTANT = "accountant.json"  # privatize
CLIPPER = "clipper.json"  # privatize (adaptive clipping)
SERVER_OPT = "server_opt.npz"  # server_update
SERVER_UPDATE = "server_update.json"  # server_update
METRICS = "metrics.json"  # evaluate
REGISTERED = "registered.json"  # register_round
SELECTOR = "selector.json"  # next_round (the selector's records of this round)
REPUTATION = "reputation.json"  # next_round

UPDATES = "updates"
HONEST = "honest"
SIM = "sim"
CLIENTS = "clients"
EDGE = "edge"
UPDATE_SUFFIX = ".flw"
SIGNATURE_SUFFIX = ".sig.json"


def campaign_key(cid: str, *parts: str) -> str:
    return "/".join([CAMPAIGNS, cid, *parts])


def campaign_record_key(cid: str) -> str:
    return campaign_key(cid, CAMPAIGN)


def round_key(cid: str, rnd: int, *parts: str) -> str:
    return campaign_key(cid, "rounds", f"{rnd:04d}", *parts)


def model_key(cid: str, version: int) -> str:
    return campaign_key(cid, "models", f"v{version:04d}.flw")


def update_key(cid: str, rnd: int, client: str) -> str:
    return round_key(cid, rnd, UPDATES, f"{client}{UPDATE_SUFFIX}")


def signature_key(cid: str, rnd: int, client: str) -> str:
    """Where the coordinator keeps an uploaded update's verified signature."""
    return update_key(cid, rnd, client) + SIGNATURE_SUFFIX


def claim_key(cid: str, rnd: int, client: str) -> str:
    """Write-once claim of a simulated client's training (client-side DP noise)."""
    return round_key(cid, rnd, "claims", f"{client}.json")


def honest_key(cid: str, rnd: int, client: str) -> str:
    return round_key(cid, rnd, HONEST, f"{client}{UPDATE_SUFFIX}")


def sim_key(cid: str, rnd: int, client: str) -> str:
    return round_key(cid, rnd, SIM, f"{client}.json")


def client_state_prefix(cid: str, client: str) -> str:
    return campaign_key(cid, CLIENTS, client)


def client_state_key(cid: str, client: str, rnd: int) -> str:
    return campaign_key(cid, CLIENTS, client, f"state_r{rnd:04d}.npz")


def client_state_round(key: str) -> int:
    """The round of a key made by :func:`client_state_key`."""
    return int(key.rsplit("state_r", 1)[1][:4])


def edge_key(cid: str, name: str) -> str:
    return campaign_key(cid, EDGE, name)


# Monitoring (outside any campaign).
MONITORING = "monitoring"
MONITORING_COOLDOWN = f"{MONITORING}/cooldown.json"
MONITORING_INCONCLUSIVE = f"{MONITORING}/inconclusive.json"
"""The current run of inconclusive checks: since when, and when it was last alerted."""


def monitoring_report_key(run_id: str) -> str:
    """Where a monitoring run's report is kept (run ids carry ':' and '+')."""
    return f"{MONITORING}/reports/{run_id.replace(':', '_').replace('+', '_')}.json"


def monitoring_check_key(check_id: str) -> str:
    """A federated monitoring check's record: the champion's layout and model spec, the
    reference histograms and the bin edges the clients count in."""
    return f"{MONITORING}/checks/{check_id}/check.json"


def monitoring_model_key(check_id: str) -> str:
    """The champion's weights (wire format) as the coordinator serves them for a check."""
    return f"{MONITORING}/checks/{check_id}/model.flw"
