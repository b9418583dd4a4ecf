"""A throwaway production stack for the tests: ``fl_airflow.stack`` started on the
machine's PostgreSQL and Redis with its own databases, Redis DB number, loopback ports and
``FL_HOME``; its settings come from ``deploy/stack.env.example`` (the file compose reads)
with fresh random secrets. Stopped, and its databases dropped, at the end of the module.

Without PostgreSQL or Redis on 127.0.0.1 the stack tests are skipped with one line saying
what to install; under ``CI=true`` that is a failure instead.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "plugins") not in sys.path:  # the Airflow plugin package, as Airflow loads it
    sys.path.insert(0, str(REPO / "plugins"))

from fl_airflow import stack  # noqa: E402

from tests.s3 import free_port  # noqa: E402

ENV_EXAMPLE = REPO / "deploy" / "stack.env.example"
TEST_REDIS_DBS = range(8, 16)  # one is claimed per test session (the stack's own DB is 5)


def require(what: str, ok: bool, install: str) -> None:
    """Skip (fail under CI=true) when a part the stack needs is missing."""
    if ok:
        return
    message = f"{what} not available on 127.0.0.1: install it ({install})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _postgres_ok() -> bool:
    try:
        import psycopg2
    except ImportError:
        return False
    url = os.environ.get("FL_STACK_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        psycopg2.connect(url, connect_timeout=3).close()
    except psycopg2.Error:
        return False
    return True


def _redis(host: str, port: int, *commands: str) -> bytes:
    """Send inline commands to Redis, return the raw replies."""
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall("".join(f"{c}\r\n" for c in commands).encode())
        time.sleep(0.2)
        return sock.recv(4096)


def claim_redis_db(host: str, port: int) -> str:
    """A Redis DB number no other session uses: empty, then claimed with SET NX (two test
    sessions on one machine must not share a Celery broker)."""
    import random

    claim = f"fl-stack-test-claim-{os.getpid()}"
    for db in random.sample(list(TEST_REDIS_DBS), len(TEST_REDIS_DBS)):
        reply = _redis(host, port, f"SELECT {db}", "DBSIZE")
        if not reply.endswith(b":0\r\n"):
            if not _claim_is_stale(_redis(host, port, f"SELECT {db}", "GET fl-stack-test-claim")):
                continue
            # A killed session's leftovers (its pid is gone on this machine): take it back.
            _redis(host, port, f"SELECT {db}", "FLUSHDB")
        reply = _redis(host, port, f"SELECT {db}", f"SET fl-stack-test-claim {claim} NX")
        if reply.endswith(b"+OK\r\n"):
            return str(db)
    raise RuntimeError(f"no free Redis DB among {list(TEST_REDIS_DBS)} on {host}:{port}")


def _claim_is_stale(reply: bytes) -> bool:
    """Whether a DB's claim names a test session whose process no longer runs here."""
    match = re.search(rb"fl-stack-test-claim-(\d+)", reply)
    if match is None:
        return False  # not ours (or unclaimed but in use): never flushed
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def write_test_env_file(path: Path, suffix: str, redis_db: str) -> dict[str, str]:
    """The example env file with fresh secrets and test-only database names."""
    values = stack.read_env_file(ENV_EXAMPLE)
    for key in stack.SECRET_KEYS:
        values[key] = ""  # ensure_env_file generates them
    for key in ("AIRFLOW_DB", "MLFLOW_DB", "MLFLOW_AUTH_DB", "COORDINATOR_DB"):
        values[key] = f"{values[key]}_test_{suffix}"
    values["REDIS_DB"] = redis_db
    values["SERVING_MODEL"] = "fl-digits-mlp"
    values["CELERY_CONCURRENCY"] = "2"
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return stack.ensure_env_file(path)


def make_test_project(root: Path) -> Path:
    """A params root for the stack: copies of ``dags/`` and ``params.yaml`` whose
    monitoring runs every minute on ``degraded.parquet`` (written later by the schedules
    test) and watches ``fl-digits-mlp``; nightly retraining is moved out of the way."""
    import yaml

    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "dags", root / "dags", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["monitoring"].update(
        monitoring_schedule="* * * * *",
        # No trigger time between the DAG's start_date (2026-01-01) and 2028-02-29: unpausing
        # federated_retraining starts nothing by itself (catchup=False still runs the
        # latest past trigger time); the test also follows only the run monitoring started.
        retraining_schedule="0 0 29 2 *",
        eval_path=str(root / "degraded.parquet"),
    )
    params["tracking"]["registered_model"] = "fl-digits-mlp"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def _flush_redis_db(host: str, port: int, db: str) -> None:
    _redis(host, port, f"SELECT {db}", "FLUSHDB")


@pytest.fixture(scope="module")
def running_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[stack.Settings]:
    """A started stack (Settings of it); everything stopped and dropped afterwards."""
    require(
        "PostgreSQL",
        _postgres_ok(),
        "apt-get install postgresql; trust or FL_STACK_PG_ADMIN_URL for a superuser",
    )
    require("Redis", _answers("127.0.0.1", 6379), "apt-get install redis-server")
    home = tmp_path_factory.mktemp("stack-home")
    env_file = home / "stack.env"
    redis_db = claim_redis_db("127.0.0.1", 6379)
    write_test_env_file(env_file, secrets.token_hex(3), redis_db)
    ports = {name: free_port() for name in stack.PORTS}
    project = make_test_project(home / "project")
    cfg = stack.load_settings(
        home, env_file, ports=ports, dags_folder=project / "dags", params_root=project
    )
    stack.drop_databases(cfg)
    started = time.perf_counter()
    try:
        stack.up(cfg)
        print(f"\nstack up in {time.perf_counter() - started:.0f} s:\n{stack.describe(cfg)}")
        yield cfg
    finally:
        stack.down(cfg)
        stack.drop_databases(cfg)
        _flush_redis_db(cfg.redis_host, cfg.redis_port, redis_db)
