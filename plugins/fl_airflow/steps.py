"""Running one round step from an Airflow task: the store from the hook, the step from
:mod:`fl_core.rounds`, a one-line summary in the task log, a small XCom value back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fl_airflow.hooks.artifact_store import ArtifactStoreHook


def _cohort(o: dict[str, Any]) -> str:
    return f"cohort ({o['num_selected']}, {o['strategy']}): {o['cohort']}"


def _collect(o: dict[str, Any]) -> str:
    return f"received {o['num_received']}, stragglers/dropouts {o['missing']}"


def _validate(o: dict[str, Any]) -> str:
    return f"accepted {o['num_accepted']}, rejected {o['rejected']}, {o['bytes_up']} bytes up"


def _aggregate(o: dict[str, Any]) -> str:
    return (
        f"{o['strategy']} over {o['num_aggregated']} updates ({o['total_examples']} examples), "
        f"update norm {o['update_norm']:.4f}"
    )


def _server(o: dict[str, Any]) -> str:
    return f"global model v{o['model_version']} sha256 {o['model_sha256']}"


def _evaluate(o: dict[str, Any]) -> str:
    return (
        f"round {o['round']}: test accuracy {o['test_accuracy']:.4f}, loss {o['test_loss']:.4f}, "
        f"client accuracy p10 {o['client_accuracy_p10']:.4f}, bytes up {o['bytes_up']}, "
        f"down {o['bytes_down']}"
    )


# step -> (summary line, the value the task returns to XCom)
SUMMARIES: dict[str, tuple[Callable[[dict[str, Any]], str], Callable[[dict[str, Any]], Any]]] = {
    "select_clients": (_cohort, lambda o: int(o["num_selected"])),
    "collect": (_collect, lambda o: int(o["num_received"])),
    "validate_updates": (_validate, lambda o: int(o["num_accepted"])),
    "aggregate": (_aggregate, lambda o: o),
    "privatize": (lambda o: f"privacy: {o}", lambda o: o),
    "server_update": (_server, lambda o: str(o["model_sha256"])),
    "evaluate": (_evaluate, lambda o: float(o["test_accuracy"])),
    "register_round": (lambda o: f"logged: {o['logged']}", lambda o: bool(o["logged"])),
    "register_model": (
        lambda o: f"registered {o.get('registered_model')} version {o.get('version')}",
        lambda o: o,
    ),
    "deploy": (lambda o: f"deploy: {o}", lambda o: o),
}


def run_step(name: str, ref: dict[str, Any], *args: Any) -> Any:
    """Run step ``name`` for the run's campaign and round; print its summary."""
    from fl_core import rounds

    out = rounds.step(name)(
        ArtifactStoreHook.get_store(), ref["campaign_id"], int(ref["round"]), *args
    )
    summary, value = SUMMARIES.get(name, (lambda o: f"{name}: {o}", lambda o: o))
    print(summary(out))
    return value(out)
