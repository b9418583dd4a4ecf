"""What the stack tests use to talk to a running stack: Airflow's REST API (token from the
FAB auth manager), the metadata DB on PostgreSQL, the MLflow server and the S3 endpoint."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from fl_airflow import stack

TERMINAL = {"success", "failed"}


class AirflowAPI:
    """A tiny client of Airflow 3's public REST API (``/api/v2``)."""

    def __init__(self, cfg: stack.Settings) -> None:
        self.base = cfg.url("api")
        self.user = cfg.secrets["AIRFLOW_ADMIN_USER"]
        self.password = cfg.secrets["AIRFLOW_ADMIN_PASSWORD"]
        self._token: str | None = None

    def _request(self, method: str, path: str, body: Any = None, *, auth: bool = True) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        for attempt in range(20):
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback
                    raw = resp.read()
                return json.loads(raw) if raw else None
            except urllib.error.HTTPError as exc:
                if exc.code < 500:
                    raise AssertionError(
                        f"{method} {path}: HTTP {exc.code} {exc.read()[:500]!r}"
                    ) from exc
            except OSError:
                pass  # the api-server restarting
            time.sleep(min(2 + attempt, 10))
        raise AssertionError(f"{method} {path}: no answer from {self.base}")

    def token(self) -> str:
        if self._token is None:
            out = self._request(
                "POST",
                "/auth/token",
                {"username": self.user, "password": self.password},
                auth=False,
            )
            self._token = str(out["access_token"])
        return self._token

    def wait_for_dag(self, dag_id: str, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self._request("GET", f"/api/v2/dags?dag_id_pattern={dag_id}")
            if any(d["dag_id"] == dag_id for d in found["dags"]):
                return
            time.sleep(3)
        raise AssertionError(f"DAG {dag_id} was not parsed within {timeout_s} s")

    def unpause(self, dag_id: str) -> None:
        self._request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        out = self._request(
            "POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf}
        )
        return str(out["dag_run_id"])

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        out = self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns?limit=100&order_by=start_date")
        return list(out["dag_runs"])

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        quoted = urllib.parse.quote(run_id, safe="")
        out = self._request(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns/{quoted}/taskInstances?limit=100"
        )
        return list(out["task_instances"])

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        """A task's XCom value (JSON-decoded when the API returns it as text)."""
        import ast

        quoted = urllib.parse.quote(run_id, safe="")
        out = self._request(
            "GET",
            f"/api/v2/dags/{dag_id}/dagRuns/{quoted}/taskInstances/{task_id}/xcomEntries/{key}",
        )
        value = out["value"]
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                return ast.literal_eval(value)
        return value

    def wait_run(self, dag_id: str, run_id: str, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        quoted = urllib.parse.quote(run_id, safe="")
        while time.monotonic() < deadline:
            run = self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quoted}")
            if run["state"] in TERMINAL:
                return dict(run)
            time.sleep(3)
        raise AssertionError(f"{dag_id} run {run_id} did not finish within {timeout_s} s")


def campaign_runs(api: AirflowAPI, campaign_id: str) -> list[dict[str, Any]]:
    """The ``federated_training`` runs of one campaign, by round."""
    runs = [
        r
        for r in api.runs("federated_training")
        if (r.get("conf") or {}).get("campaign_id") == campaign_id
    ]
    return sorted(runs, key=lambda r: int(r["conf"].get("round", 1)))


def wait_campaign(
    api: AirflowAPI, campaign_id: str, rounds: int, timeout_s: float
) -> list[dict[str, Any]]:
    """Wait until the campaign's ``rounds`` runs all ended; returns them (round order)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = campaign_runs(api, campaign_id)
        if any(r["state"] == "failed" for r in runs):
            return runs
        if len(runs) >= rounds and all(r["state"] == "success" for r in runs):
            return runs
        time.sleep(3)
    raise AssertionError(f"campaign {campaign_id} did not finish within {timeout_s} s")
