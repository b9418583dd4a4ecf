"""The production stack on one machine (``make stack`` / ``make stack-down``).

Starts, as local processes bound to 127.0.0.1, what ``docker-compose.yaml`` runs in
containers, with the same environment variable names:

- Airflow 3 on PostgreSQL with the CeleryExecutor and Redis as the broker: api-server
  (FAB auth manager, admin user from the env file), scheduler, dag-processor, triggerer and
  two Celery workers;
- the MLflow tracking server (``--app-name basic-auth``) on PostgreSQL with its artifacts in
  S3 (proxied: clients never hold the MLflow bucket's credentials);
- an S3 endpoint (``moto_server`` here, MinIO in compose) holding the round state
  (``FL_ARTIFACT_STORE=s3://...``) and MLflow's artifacts;
- serving: a small watcher that serves ``models:/NAME@champion`` with ``mlflow models serve``
  and restarts it when the alias moves;
- the coordinator (``fl_core.coordinator``), started only when that package imports.

Databases (one role, one database each for Airflow, MLflow and MLflow's users) and buckets
are created idempotently on the machine's PostgreSQL (``FL_STACK_PG_ADMIN_URL``, default
``postgresql://postgres@127.0.0.1:5432/postgres``) and the S3 endpoint. Secrets come from
an env file (``$FL_HOME/stack/stack.env``, created mode 0600 with random secrets on first
use, same keys as ``deploy/stack.env.example`` that compose reads); they are passed to the
services in their environment, never on a command line. State (pids, logs, the env file)
lives under ``$FL_HOME/stack/``; ``down`` stops exactly the process groups ``up`` recorded.

    python -m fl_airflow.stack up | down | status | env
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"

# Keys of the env file shared by this launcher, the stack test and docker-compose.yaml.
# Secrets are generated on first use; the others have these defaults.
SECRET_KEYS = (
    "POSTGRES_PASSWORD",
    "REDIS_PASSWORD",
    "AIRFLOW_JWT_SECRET",
    "AIRFLOW_API_SECRET_KEY",
    "AIRFLOW_FERNET_KEY",
    "AIRFLOW_ADMIN_PASSWORD",
    "MLFLOW_ADMIN_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "S3_ROOT_PASSWORD",
    "S3_WRITER_SECRET",
    "S3_READER_SECRET",
)
DEFAULTS: dict[str, str] = {
    "POSTGRES_USER": "fl",
    "AIRFLOW_DB": "fl_airflow",
    "MLFLOW_DB": "fl_mlflow",
    "MLFLOW_AUTH_DB": "fl_mlflow_auth",
    "COORDINATOR_DB": "fl_coordinator",
    "REDIS_DB": "5",
    "AIRFLOW_ADMIN_USER": "admin",
    "MLFLOW_ADMIN_USER": "admin",
    "S3_ROOT_USER": "fl-root",
    "S3_WRITER_KEY": "fl-writer",
    "S3_READER_KEY": "fl-reader",
    "ARTIFACT_BUCKET": "fl-artifacts",
    "MLFLOW_BUCKET": "fl-mlflow",
    "DVC_BUCKET": "fl-dvc",
    "SERVING_MODEL": "fl-mnist5k-mlp",
    "AIRFLOW_PARALLELISM": "4",
    "CELERY_CONCURRENCY": "2",
}
# Ports of the local stack (override with FL_STACK_<NAME>_PORT).
PORTS = {"api": 8080, "mlflow": 5000, "serving": 5001, "s3": 9000, "coordinator": 8090}
WORKERS = ("worker-1", "worker-2")
FAB_AUTH_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"


# --------------------------------------------------------------------------- settings


def stack_dir(home: Path | None = None) -> Path:
    """``$FL_HOME/stack`` (pids, logs, the env file)."""
    if home is None:
        env = os.environ.get("FL_HOME")
        home = Path(env) if env else PROJECT_ROOT / ".fl"
    return home.resolve() / "stack"


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines (``#`` comments, blank lines and optional quotes allowed)."""
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"{path}:{number}: expected KEY=VALUE, got {line[:40]!r}")
        values[key.strip()] = value.strip().strip("'\"")
    return values


def ensure_env_file(path: Path) -> dict[str, str]:
    """Read the env file, creating it (mode 0600, random secrets) when it does not exist.

    Missing keys are filled with defaults / new random secrets and written back, so an
    older file keeps working.
    """
    existing = read_env_file(path) if path.exists() else {}
    values = dict(existing)
    for key, default in DEFAULTS.items():
        values.setdefault(key, default)
    for key in SECRET_KEYS:
        if not values.get(key):
            values[key] = _fernet_key() if key == "AIRFLOW_FERNET_KEY" else secrets.token_hex(24)
    if values != existing:
        path.parent.mkdir(parents=True, exist_ok=True)
        body = "".join(f"{k}={v}\n" for k, v in sorted(values.items()))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("# Secrets of the local stack (make stack); same keys as\n")
            handle.write("# deploy/stack.env.example, which docker-compose.yaml reads.\n")
            handle.write(body)
    os.chmod(path, 0o600)
    return values


def _fernet_key() -> str:
    import base64

    return base64.urlsafe_b64encode(os.urandom(32)).decode()


@dataclass(frozen=True)
class Settings:
    """Where the stack lives and what it connects to."""

    home: Path
    secrets: dict[str, str]
    ports: dict[str, int]
    pg_host: str = HOST
    pg_port: int = 5432
    redis_host: str = HOST
    redis_port: int = 6379
    redis_auth: bool = True
    project_root: Path = PROJECT_ROOT
    dags_folder: Path = field(default_factory=lambda: PROJECT_ROOT / "dags")
    # Where the services read params.yaml (FL_PROJECT_ROOT); the code stays project_root's.
    params_root: Path = PROJECT_ROOT

    @property
    def state(self) -> Path:
        return self.home / "stack"

    def pg_url(self, db: str, *, driver: str = "postgresql+psycopg2") -> str:
        s = self.secrets
        return (
            f"{driver}://{s['POSTGRES_USER']}:{s['POSTGRES_PASSWORD']}"
            f"@{self.pg_host}:{self.pg_port}/{db}"
        )

    @property
    def redis_url(self) -> str:
        auth = f":{self.secrets['REDIS_PASSWORD']}@" if self.redis_auth else ""
        return f"redis://{auth}{self.redis_host}:{self.redis_port}/{self.secrets['REDIS_DB']}"

    def url(self, name: str) -> str:
        return f"http://{HOST}:{self.ports[name]}"


def load_settings(
    home: Path | None = None,
    env_file: Path | None = None,
    *,
    ports: dict[str, int] | None = None,
    dags_folder: Path | None = None,
    params_root: Path | None = None,
) -> Settings:
    """Settings from the environment: ``FL_HOME``, ``FL_STACK_ENV_FILE``,
    ``FL_STACK_<NAME>_PORT``, ``FL_STACK_PG_HOST/PORT``, ``FL_STACK_REDIS_HOST/PORT``,
    ``FL_STACK_DAGS_FOLDER``."""
    state = stack_dir(home)
    path = env_file or Path(os.environ.get("FL_STACK_ENV_FILE") or state / "stack.env")
    values = ensure_env_file(path)
    resolved = {
        name: int(os.environ.get(f"FL_STACK_{name.upper()}_PORT") or default)
        for name, default in PORTS.items()
    }
    resolved.update(ports or {})
    redis_host = os.environ.get("FL_STACK_REDIS_HOST", HOST)
    redis_port = int(os.environ.get("FL_STACK_REDIS_PORT", "6379"))
    return Settings(
        home=state.parent,
        secrets=values,
        ports=resolved,
        pg_host=os.environ.get("FL_STACK_PG_HOST", HOST),
        pg_port=int(os.environ.get("FL_STACK_PG_PORT", "5432")),
        redis_host=redis_host,
        redis_port=redis_port,
        redis_auth=_redis_requires_auth(redis_host, redis_port),
        dags_folder=dags_folder
        or Path(os.environ.get("FL_STACK_DAGS_FOLDER") or PROJECT_ROOT / "dags"),
        params_root=params_root or PROJECT_ROOT,
    )


def _redis_requires_auth(host: str, port: int) -> bool:
    """Whether the Redis server asks for a password (compose's does; a machine's may not,
    and Redis refuses AUTH when no password is configured)."""
    try:
        with socket.create_connection((host, port), timeout=3) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(128)
    except OSError:
        return True
    return reply.startswith(b"-NOAUTH")


# --------------------------------------------------------------------------- environment


def service_env(cfg: Settings) -> dict[str, str]:
    """The environment every service gets (the same names as compose's ``x-fl-env``)."""
    s = cfg.secrets
    airflow_home = cfg.state / "airflow"
    plugins = cfg.project_root / "plugins"
    pythonpath = [str(plugins), str(cfg.project_root)]
    if os.environ.get("PYTHONPATH"):
        pythonpath.append(os.environ["PYTHONPATH"])
    return {
        "FL_HOME": str(cfg.home),
        "FL_PROJECT_ROOT": str(cfg.params_root),
        "PYTHONPATH": os.pathsep.join(dict.fromkeys(pythonpath)),
        "GIT_PYTHON_REFRESH": "quiet",
        "NO_PROXY": "*",
        # Round state in S3 (moto_server here, MinIO in compose), the writer's credentials.
        "FL_ARTIFACT_STORE": f"s3://{s['ARTIFACT_BUCKET']}/campaigns-store",
        "FL_S3_ENDPOINT_URL": cfg.url("s3"),
        "AWS_ACCESS_KEY_ID": s["S3_WRITER_KEY"],
        "AWS_SECRET_ACCESS_KEY": s["S3_WRITER_SECRET"],
        "AWS_DEFAULT_REGION": "us-east-1",
        # MLflow server with basic auth.
        "MLFLOW_TRACKING_URI": cfg.url("mlflow"),
        "MLFLOW_TRACKING_USERNAME": s["MLFLOW_ADMIN_USER"],
        "MLFLOW_TRACKING_PASSWORD": s["MLFLOW_ADMIN_PASSWORD"],
        # The client registry, shared by the coordinator service (and the one the API server
        # mounts at /fl) with the remote-mode round steps on the workers and the
        # wait_for_updates trigger in the triggerer: one registry, one artifact store.
        "FL_COORDINATOR_DB_URL": cfg.pg_url(s["COORDINATOR_DB"]),
        # Airflow 3: PostgreSQL metadata, Celery on Redis, one JWT secret for all parts.
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": cfg.pg_url(s["AIRFLOW_DB"]),
        "AIRFLOW__CELERY__BROKER_URL": cfg.redis_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": cfg.pg_url(s["AIRFLOW_DB"], driver="db+postgresql"),
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": s["CELERY_CONCURRENCY"],
        "AIRFLOW__CORE__DAGS_FOLDER": str(cfg.dags_folder),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__FERNET_KEY": s["AIRFLOW_FERNET_KEY"],
        "AIRFLOW__CORE__PARALLELISM": s["AIRFLOW_PARALLELISM"],
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": s["AIRFLOW_PARALLELISM"],
        "AIRFLOW__CORE__AUTH_MANAGER": FAB_AUTH_MANAGER,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": cfg.url("api") + "/execution/",
        "AIRFLOW__API__BASE_URL": cfg.url("api"),
        "AIRFLOW__API__HOST": HOST,
        "AIRFLOW__API__PORT": str(cfg.ports["api"]),
        "AIRFLOW__API__SECRET_KEY": s["AIRFLOW_API_SECRET_KEY"],
        "AIRFLOW__API_AUTH__JWT_SECRET": s["AIRFLOW_JWT_SECRET"],
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        # A worker that dies mid-task is noticed within ~a minute, then the task retries.
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "45",
    }


@dataclass(frozen=True)
class Service:
    """One process of the stack."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    health: str | None = None


def _py(*args: str) -> list[str]:
    if args and args[0] == "airflow":
        # Every Airflow process of the stack goes through :func:`run_airflow` (Celery shim).
        return [sys.executable, "-m", "fl_airflow.stack", *args]
    return [sys.executable, "-m", *args]


def install_celery_compat() -> None:
    """Celery 5.7 dropped ``celery.backends.database.retry`` (its database backend retries
    by itself now) but the Airflow Celery provider (3.26.0, the newest) still imports it at
    module level, so the scheduler and the workers cannot even load the CeleryExecutor.
    This restores a decorator with the old meaning (retry a DB call a few times on a
    database error) before Airflow is imported. Remove when the provider stops importing it.
    """
    import functools

    try:
        import celery.backends.database as db_backend
    except ImportError:  # no Celery: nothing to fix
        return
    if hasattr(db_backend, "retry"):
        return

    def retry(fun: Any) -> Any:
        @functools.wraps(fun)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            from sqlalchemy.exc import DatabaseError, InvalidRequestError

            max_retries = kwargs.pop("max_retries", 3)
            for attempt in range(max_retries):
                try:
                    return fun(*args, **kwargs)
                except (DatabaseError, InvalidRequestError):
                    if attempt + 1 == max_retries:
                        raise
                    logger.warning("database error in %s, retrying", fun.__name__)
            return None

        return wrapper

    db_backend.retry = retry


def run_airflow(args: list[str]) -> int:
    """``airflow ARGS`` in this process, after :func:`install_celery_compat`."""
    install_celery_compat()
    from airflow.__main__ import main as airflow_main

    sys.argv = ["airflow", *args]
    airflow_main()
    return 0


def services(cfg: Settings) -> list[Service]:
    """The stack's processes, in start order."""
    s = cfg.secrets
    out = [
        Service(
            "s3",
            _py("moto.server", "-H", HOST, "-p", str(cfg.ports["s3"])),
            health=cfg.url("s3") + "/moto-api/",
        ),
        Service(
            "mlflow",
            _py("fl_airflow.stack", "mlflow-server"),
            env={
                # Only the MLflow server holds the MLflow bucket's credentials.
                "MLFLOW_S3_ENDPOINT_URL": cfg.url("s3"),
                "MLFLOW_BACKEND_STORE_URI": cfg.pg_url(s["MLFLOW_DB"]),
                "MLFLOW_ARTIFACTS_DESTINATION": f"s3://{s['MLFLOW_BUCKET']}/",
                "MLFLOW_AUTH_DATABASE_URI": cfg.pg_url(s["MLFLOW_AUTH_DB"]),
                "MLFLOW_AUTH_ADMIN_USERNAME": s["MLFLOW_ADMIN_USER"],
                "MLFLOW_AUTH_ADMIN_PASSWORD": s["MLFLOW_ADMIN_PASSWORD"],
                "MLFLOW_FLASK_SERVER_SECRET_KEY": s["MLFLOW_FLASK_SERVER_SECRET_KEY"],
                "MLFLOW_SERVER_ALLOWED_HOSTS": f"{HOST}:{cfg.ports['mlflow']},localhost:"
                f"{cfg.ports['mlflow']},mlflow:5000",
                "FL_STACK_MLFLOW_PORT": str(cfg.ports["mlflow"]),
                "FL_STACK_MLFLOW_HOST": HOST,
            },
            health=cfg.url("mlflow") + "/health",
        ),
        Service(
            "api-server",
            _py("airflow", "api-server", "-H", HOST, "-p", str(cfg.ports["api"])),
            health=cfg.url("api") + "/api/v2/monitor/health",
        ),
        Service("scheduler", _py("airflow", "scheduler", "--skip-serve-logs")),
        Service("dag-processor", _py("airflow", "dag-processor")),
        Service("triggerer", _py("airflow", "triggerer", "--skip-serve-logs")),
    ]
    for name in WORKERS:
        out.append(
            Service(
                name,
                _py(
                    "airflow",
                    "celery",
                    "worker",
                    "--celery-hostname",
                    f"{name}@%h",
                    "--concurrency",
                    s["CELERY_CONCURRENCY"],
                    "--skip-serve-logs",
                ),
                env={
                    # Task instance records name the worker that ran them.
                    "FL_WORKER_NAME": name,
                    "AIRFLOW__CORE__HOSTNAME_CALLABLE": "fl_airflow.stack.worker_hostname",
                },
            )
        )
    out.append(
        Service(
            "serving",
            _py(
                "fl_airflow.stack",
                "serve-champion",
                "--model",
                s["SERVING_MODEL"],
                "--port",
                str(cfg.ports["serving"]),
            ),
            env={
                # Serving reads models through the MLflow server only: no S3 write access.
                "AWS_ACCESS_KEY_ID": s["S3_READER_KEY"],
                "AWS_SECRET_ACCESS_KEY": s["S3_READER_SECRET"],
            },
        )
    )
    # --- coordinator (issue 11: fl_core.coordinator, `fl coordinator serve`) -------------
    # Started only when that package imports. It shares the registry (FL_COORDINATOR_DB_URL,
    # PostgreSQL) and the artifact store (S3) with the DAG's tasks through service_env.
    # Plain HTTP on loopback here (compose: TLS at haproxy on 8443, plain HTTP behind it).
    if importlib.util.find_spec("fl_core.coordinator") is not None:
        out.append(
            Service(
                "coordinator",
                _py(
                    "fl_core.cli",
                    "coordinator",
                    "serve",
                    "--host",
                    HOST,
                    "--port",
                    str(cfg.ports["coordinator"]),
                ),
                health=cfg.url("coordinator") + "/v1/health",
            )
        )
    return out


def worker_hostname() -> str:
    """``AIRFLOW__CORE__HOSTNAME_CALLABLE`` of the local Celery workers: the machine's name
    plus the worker's (``FL_WORKER_NAME``), so task instances say which worker ran them."""
    base = socket.getfqdn()
    name = os.environ.get("FL_WORKER_NAME")
    return f"{base}-{name}" if name else base


# --------------------------------------------------------------------------- provisioning


def ensure_databases(cfg: Settings, *, admin_url: str | None = None) -> list[str]:
    """Create the stack's role and databases when missing; returns the databases created."""
    import psycopg2
    from psycopg2 import sql

    s = cfg.secrets
    url = admin_url or os.environ.get(
        "FL_STACK_PG_ADMIN_URL", f"postgresql://postgres@{cfg.pg_host}:{cfg.pg_port}/postgres"
    )
    created = []
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            user = s["POSTGRES_USER"]
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,))
            verb = "ALTER" if cur.fetchone() else "CREATE"
            cur.execute(
                sql.SQL(verb + " ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(user)),
                (s["POSTGRES_PASSWORD"],),
            )
            for db in (s["AIRFLOW_DB"], s["MLFLOW_DB"], s["MLFLOW_AUTH_DB"], s["COORDINATOR_DB"]):
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
                if cur.fetchone() is None:
                    cur.execute(
                        sql.SQL("CREATE DATABASE {} OWNER {}").format(
                            sql.Identifier(db), sql.Identifier(user)
                        )
                    )
                    created.append(db)
    finally:
        conn.close()
    return created


def drop_databases(cfg: Settings, *, admin_url: str | None = None) -> None:
    """Drop the stack's databases (used by the tests' throwaway stacks)."""
    import psycopg2
    from psycopg2 import sql

    url = admin_url or os.environ.get(
        "FL_STACK_PG_ADMIN_URL", f"postgresql://postgres@{cfg.pg_host}:{cfg.pg_port}/postgres"
    )
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for key in ("AIRFLOW_DB", "MLFLOW_DB", "MLFLOW_AUTH_DB", "COORDINATOR_DB"):
                cur.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(cfg.secrets[key])
                    )
                )
    finally:
        conn.close()


def ensure_buckets(cfg: Settings) -> list[str]:
    """Create the stack's buckets when missing; returns the buckets created."""
    import boto3
    from botocore.config import Config

    s = cfg.secrets
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=cfg.url("s3"),
        region_name="us-east-1",
        aws_access_key_id=s["S3_ROOT_USER"],
        aws_secret_access_key=s["S3_ROOT_PASSWORD"],
        config=Config(s3={"addressing_style": "path"}),
    )
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    created = []
    for key in ("ARTIFACT_BUCKET", "MLFLOW_BUCKET", "DVC_BUCKET"):
        if s[key] not in existing:
            client.create_bucket(Bucket=s[key])
            created.append(s[key])
    return created


def init_airflow(env: dict[str, str], log: Path) -> None:
    """``airflow db migrate`` (with the FAB tables) and the admin user from the env file."""
    with open(log, "ab") as out:
        for args in (["airflow", "db", "migrate"], ["airflow", "fab-db", "migrate"]):
            subprocess.run(_py(*args), env=env, stdout=out, stderr=subprocess.STDOUT, check=True)
        subprocess.run(
            _py("fl_airflow.stack", "create-admin"),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=True,
        )


def create_admin() -> str:
    """Create (or reset the password of) the Airflow admin user from
    ``AIRFLOW_ADMIN_USER`` / ``AIRFLOW_ADMIN_PASSWORD`` (FAB auth manager)."""
    from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder

    user = os.environ.get("AIRFLOW_ADMIN_USER", "admin")
    password = os.environ.get("AIRFLOW_ADMIN_PASSWORD")
    if not password:
        raise SystemExit("AIRFLOW_ADMIN_PASSWORD is not set")
    with get_application_builder() as appbuilder:
        sm = appbuilder.sm
        found = sm.find_user(username=user)
        if found is not None:
            sm.reset_password(found.id, password)
            return f"Airflow user {user} exists; password set from the environment"
        role = sm.find_role("Admin")
        if not sm.add_user(user, "FL", "Admin", f"{user}@localhost", role, password):
            raise SystemExit(f"could not create Airflow user {user}")
    return f"Airflow user {user} created (role Admin)"


def mlflow_server() -> None:
    """Exec ``mlflow server --app-name basic-auth``; its settings come from the
    environment (``MLFLOW_BACKEND_STORE_URI``, ``MLFLOW_ARTIFACTS_DESTINATION``, the auth
    DB in ``MLFLOW_AUTH_DATABASE_URI``, admin from ``MLFLOW_AUTH_ADMIN_*``): no password
    on the command line. The auth config file is written mode 0600."""
    state = Path(os.environ.get("FL_HOME") or PROJECT_ROOT / ".fl") / "stack"
    state.mkdir(parents=True, exist_ok=True)
    ini = state / "mlflow-auth.ini"
    fd = os.open(ini, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = {os.environ['MLFLOW_AUTH_DATABASE_URI']}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
    os.environ["MLFLOW_AUTH_CONFIG_PATH"] = str(ini)
    host = os.environ.get("FL_STACK_MLFLOW_HOST", HOST)
    port = os.environ.get("FL_STACK_MLFLOW_PORT", "5000")
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    os.execv(
        mlflow,
        [
            mlflow,
            "server",
            "--app-name",
            "basic-auth",
            "--host",
            host,
            "--port",
            port,
            "--workers",
            "1",
        ],
    )


# --------------------------------------------------------------------------- serving


def champion_version(model: str) -> str | None:
    """The version the ``champion`` alias points at, None when there is none."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        return str(MlflowClient().get_model_version_by_alias(model, "champion").version)
    except MlflowException:
        return None


CODE_MODEL_LOADER = "mlflow.pyfunc.loaders.code_model"


def verify_model_code(model_dir: Path) -> list[str]:
    """Why a downloaded pyfunc model must not be served (empty: it may).

    MLflow pyfunc models are code: whoever can register a version could otherwise run code
    in serving. A version is served only when it is a models-from-code model of this
    project: loaded by MLflow's code-model loader (no pickle anywhere in it), its entry
    point identical to the installed ``fl_core/mlflow_model_code.py`` and every file of its
    bundled code identical to the installed ``fl_core`` (compiled caches are deleted, not
    trusted).
    """
    import yaml

    import fl_core

    installed = Path(fl_core.__file__).resolve().parent
    problems: list[str] = []
    try:
        mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
        pyfunc = mlmodel["flavors"]["python_function"]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
        return [f"not a pyfunc model ({exc})"]
    if pyfunc.get("loader_module") != CODE_MODEL_LOADER:
        problems.append(f"loader {pyfunc.get('loader_module')!r} is not {CODE_MODEL_LOADER}")
    entry = model_dir / Path(str(pyfunc.get("model_code_path", ""))).name
    reference = installed / "mlflow_model_code.py"
    if not entry.is_file() or entry.read_bytes() != reference.read_bytes():
        problems.append(f"entry point {entry.name} is not this project's {reference.name}")
    for path in sorted(model_dir.rglob("*")):
        rel = path.relative_to(model_dir)
        if path.suffix in (".pkl", ".pickle", ".cloudpickle"):
            problems.append(f"{rel}: pickled content")
    code = model_dir / str(pyfunc.get("code") or "code")
    for cache in sorted(code.rglob("__pycache__"), reverse=True) if code.exists() else []:
        shutil.rmtree(cache)
    for path in sorted(code.rglob("*")) if code.exists() else []:
        if path.is_dir():
            continue
        rel = path.relative_to(code)
        ref = installed.joinpath(*rel.parts[1:])
        if rel.parts[0] != "fl_core" or not ref.is_file():
            problems.append(f"code/{rel} is not part of the installed fl_core")
        elif ref.read_bytes() != path.read_bytes():
            problems.append(f"code/{rel} differs from the installed fl_core")
    return problems


def fetch_verified_model(model: str, version: str, dest: Path) -> tuple[Path, list[str]]:
    """Download ``models:/MODEL/VERSION`` into ``dest`` and check it with
    :func:`verify_model_code`; returns the local model dir and the problems found."""
    import mlflow.artifacts

    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{model}/{version}", dst_path=str(dest)
        )
    )
    return local, verify_model_code(local)


def serve_champion(model: str, port: int, *, host: str = HOST, poll_s: float = 5.0) -> None:
    """Serve ``models:/MODEL@champion`` on HOST:PORT and follow the alias: when it moves, the
    new version is downloaded and checked (:func:`verify_model_code`), then the old server
    is stopped and the new one started from the checked copy (a restart: the endpoint is
    down for the new server's start-up, a few seconds). A version that fails the check is
    refused and the previous one keeps serving. ``serving.json`` in the stack folder says
    which version answers (and what was refused)."""
    state = Path(os.environ.get("FL_HOME") or PROJECT_ROOT / ".fl") / "stack"
    status_file = state / "serving.json"
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    child: subprocess.Popen[bytes] | None = None
    served: str | None = None
    refused: dict[str, list[str]] = {}
    status: dict[str, Any] = {"model": model, "version": None, "ready": False}
    stopping = False

    def _stop(*_: Any) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        # Also leave a wait for a server's start-up (up to minutes): `finally` stops it.
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        while not stopping:
            try:
                version = champion_version(model)
            except Exception as exc:  # noqa: BLE001 - the registry may be restarting
                logger.warning("registry not answering: %s", exc)
                version = served
            if version is not None and version != served and version not in refused:
                try:
                    local, problems = fetch_verified_model(
                        model, version, state / "serving" / f"v{version}"
                    )
                except Exception as exc:  # noqa: BLE001 - retried on the next poll
                    logger.warning("could not download %s version %s: %s", model, version, exc)
                    local, problems = Path(), None
                if problems:
                    refused[version] = problems
                    logger.error("refusing %s version %s: %s", model, version, problems)
                    status = {**status, "refused": refused}
                    _write_json(status_file, status)
                elif problems is not None:
                    if child is not None:
                        _terminate(child)
                        child = None
                        # Nothing answers until the new version is up: say so.
                        status = {**status, "ready": False, "switching_to": version}
                        _write_json(status_file, status)
                    probe_host = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104
                    if not _port_free(probe_host, port):
                        # Someone else answers on our port: a readiness probe would lie.
                        logger.warning("port %s still in use; retrying on the next poll", port)
                        served = None
                        status = {**status, "version": None, "ready": False}
                        _write_json(status_file, status)
                        time.sleep(poll_s)
                        continue
                    print(f"serving {model} version {version} on {host}:{port}", flush=True)
                    child = subprocess.Popen(
                        [
                            mlflow,
                            "models",
                            "serve",
                            "-m",
                            str(local),
                            "--env-manager",
                            "local",
                            "-h",
                            host,
                            "-p",
                            str(port),
                        ],
                        start_new_session=True,
                        # mlflow execs `uvicorn` from PATH: the one beside this interpreter.
                        env={**os.environ, "PATH": _path_with(Path(sys.executable).parent)},
                    )
                    served = version
                    ready = _wait_http(f"http://{probe_host}:{port}/ping", 180, proc=child)
                    ready = ready and child.poll() is None
                    status = {
                        **status,
                        "version": version,
                        "pid": child.pid,
                        "ready": ready,
                        "since": time.time(),
                        "switching_to": None,
                    }
                    _write_json(status_file, status)
            elif child is not None and child.poll() is not None:
                served = None  # the server died: start it again on the next poll
            for _ in range(int(poll_s * 10)):
                if stopping:
                    break
                time.sleep(0.1)
    finally:
        if child is not None:
            _terminate(child)


def _terminate(proc: subprocess.Popen[bytes], *, timeout_s: float = 20.0) -> None:
    """Stop ``proc``'s whole process group and wait until every member is gone.

    ``mlflow models serve`` is a CLI that starts uvicorn as its child: the CLI exits at once
    on SIGTERM while uvicorn is still shutting down with the port bound. Waiting for the
    leader alone let the next server's readiness probe be answered by the old, dying one
    (then refused connections once it went)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and (proc.poll() is None or _group_alive(proc.pid)):
        time.sleep(0.1)
    if proc.poll() is None or _group_alive(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        while _group_alive(proc.pid):
            time.sleep(0.1)


def _path_with(directory: Path) -> str:
    """PATH with ``directory`` first (once)."""
    rest = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != str(directory)]
    return os.pathsep.join([str(directory), *rest])


def _port_free(host: str, port: int) -> bool:
    """Whether nothing accepts connections on HOST:PORT."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) != 0


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)


# --------------------------------------------------------------------------- processes


def _wait_http(
    url: str,
    timeout_s: float,
    *,
    proc: subprocess.Popen[bytes] | None = None,
    pid: int | None = None,
) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        if pid is not None and not _alive(pid):
            return False
        try:
            with urllib.request.urlopen(url, timeout=3):  # noqa: S310 - loopback only
                return True
        except urllib.error.HTTPError as exc:
            if exc.code < 500:  # answering (e.g. 401 behind auth)
                return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def _alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _start_time(pid: int) -> int | None:
    """The process's start time (clock ticks after boot): with the pid, an identity that
    survives exec and process renaming, and that a reused pid does not share."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _is_running(record: dict[str, Any]) -> bool:
    pid = int(record["pid"])
    return _alive(pid) and _start_time(pid) == record.get("start_time")


def start_service(cfg: Settings, svc: Service, env: dict[str, str]) -> dict[str, Any]:
    """Start one service in its own session (process group); returns its pid record."""
    logs = cfg.state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{svc.name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            svc.argv,
            env={**env, **svc.env},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cfg.project_root,
            start_new_session=True,
        )
    return {
        "name": svc.name,
        "pid": proc.pid,
        "start_time": _start_time(proc.pid),
        "argv": svc.argv,
        "log": str(log),
    }


def stop_record(record: dict[str, Any], *, timeout_s: float = 30.0) -> bool:
    """Stop one recorded service's process group if that pid is still the process that was
    started (same start time: never a process that reused the pid); returns whether it was
    running."""
    pid = int(record["pid"])
    if not _is_running(record):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _group_alive(pid):
            return True
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Zombies of our own children count as gone.
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _pids_file(cfg: Settings) -> Path:
    return cfg.state / "pids.json"


def read_pids(cfg: Settings) -> list[dict[str, Any]]:
    path = _pids_file(cfg)
    return list(json.loads(path.read_text())) if path.exists() else []


def save_pids(cfg: Settings, records: list[dict[str, Any]]) -> None:
    _write_json(_pids_file(cfg), records)


def restart_service(cfg: Settings, name: str) -> dict[str, Any]:
    """Stop one running service and start it again (the fault tests' scheduler and MLflow
    restarts); the pid file is updated."""
    records = read_pids(cfg)
    svc = next(s for s in services(cfg) if s.name == name)
    index = next(i for i, r in enumerate(records) if r["name"] == name)
    stop_record(records[index])
    records[index] = start_service(cfg, svc, service_env(cfg))
    save_pids(cfg, records)
    if svc.health and not _wait_http(svc.health, 180, pid=records[index]["pid"]):
        raise RuntimeError(f"{name} did not answer after a restart; see {records[index]['log']}")
    return records[index]


def up(cfg: Settings, *, timeout_s: float = 300.0) -> list[dict[str, Any]]:
    """Start the stack (idempotent databases and buckets); returns the pid records."""
    running = [r for r in read_pids(cfg) if _is_running(r)]
    if running:
        raise RuntimeError(
            f"the stack under {cfg.state} is already running ({len(running)} processes); "
            "run `make stack-down` first"
        )
    cfg.state.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **service_env(cfg)}
    for key in [
        k for k in env if k.startswith(("AIRFLOW__", "MLFLOW_")) and k not in service_env(cfg)
    ]:
        # A caller's embedded-Airflow settings and MLflow URIs must not leak in: e.g.
        # MLFLOW_REGISTRY_URI, which mlflow.set_registry_uri exports in the calling process,
        # sent serving to another registry, where it never found a champion.
        env.pop(key)
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    try:
        created = ensure_databases(cfg)
        print(f"PostgreSQL {cfg.pg_host}:{cfg.pg_port}: databases ready (created {created})")
        for svc in services(cfg):
            if svc.name == "api-server":
                admin = {
                    k: cfg.secrets[k] for k in ("AIRFLOW_ADMIN_USER", "AIRFLOW_ADMIN_PASSWORD")
                }
                init_airflow({**env, **admin}, cfg.state / "logs" / "airflow-init.log")
                print("Airflow metadata DB migrated, admin user set")
            records.append(start_service(cfg, svc, env))
            save_pids(cfg, records)
            if svc.health and not _wait_http(svc.health, timeout_s, pid=records[-1]["pid"]):
                raise RuntimeError(
                    f"{svc.name} did not answer {svc.health}; see {records[-1]['log']}"
                )
            if svc.name == "s3":
                print(f"S3 endpoint {cfg.url('s3')}: buckets created {ensure_buckets(cfg)}")
    except BaseException:
        for record in reversed(records):
            stop_record(record)
        _pids_file(cfg).unlink(missing_ok=True)
        raise
    return records


def down(cfg: Settings) -> list[str]:
    """Stop exactly what ``up`` started (by recorded pid and command); returns the names."""
    stopped = [r["name"] for r in reversed(read_pids(cfg)) if stop_record(r)]
    _pids_file(cfg).unlink(missing_ok=True)
    return stopped


def describe(cfg: Settings) -> str:
    """Where everything is."""
    s = cfg.secrets
    lines = [
        f"Airflow        {cfg.url('api')}  (user {s['AIRFLOW_ADMIN_USER']}, password in "
        f"{os.environ.get('FL_STACK_ENV_FILE') or cfg.state / 'stack.env'})",
        f"MLflow         {cfg.url('mlflow')}  (basic auth, user {s['MLFLOW_ADMIN_USER']})",
        f"serving        {cfg.url('serving')}/invocations  (models:/{s['SERVING_MODEL']}"
        "@champion, follows the alias)",
        f"S3 (moto)      {cfg.url('s3')}  buckets {s['ARTIFACT_BUCKET']}, "
        f"{s['MLFLOW_BUCKET']}, {s['DVC_BUCKET']}",
        f"PostgreSQL     {cfg.pg_host}:{cfg.pg_port}  databases {s['AIRFLOW_DB']}, "
        f"{s['MLFLOW_DB']}, {s['MLFLOW_AUTH_DB']}, {s['COORDINATOR_DB']} "
        f"(role {s['POSTGRES_USER']})",
        f"Redis broker   {cfg.redis_host}:{cfg.redis_port}/{s['REDIS_DB']}"
        + ("" if cfg.redis_auth else "  (this Redis has no password; compose's has one)"),
        f"state          {cfg.state}  (pids.json, logs/)",
    ]
    for record in read_pids(cfg):
        lines.append(f"  {record['name']:<14} pid {record['pid']:<8} log {record['log']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fl_airflow.stack", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start the stack and print where everything is")
    sub.add_parser("down", help="stop exactly what `up` started")
    sub.add_parser("status", help="where everything is")
    sub.add_parser("env", help="print the services' environment (secrets masked)")
    sub.add_parser("airflow", help="(internal) run an Airflow command with the Celery shim")
    sub.add_parser("create-admin", help="(internal) Airflow admin user from the environment")
    sub.add_parser(
        "init-airflow", help="airflow db migrate (+ FAB tables) and the admin user (compose)"
    )
    sub.add_parser("mlflow-server", help="(internal) exec the MLflow server from the environment")
    serve = sub.add_parser("serve-champion", help="(internal) serve MODEL@champion, follow it")
    serve.add_argument("--model", required=True)
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--host", default=HOST, help="bind address (0.0.0.0 in a container)")
    serve.add_argument("--poll", type=float, default=5.0)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "airflow":
        return run_airflow(argv[1:])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.command == "create-admin":
        print(create_admin())
        return 0
    if args.command == "init-airflow":
        log = Path(os.environ.get("FL_HOME") or PROJECT_ROOT / ".fl") / "airflow-init.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        init_airflow(dict(os.environ), log)
        print(f"Airflow DB migrated and admin user set (log {log})")
        return 0
    if args.command == "mlflow-server":
        mlflow_server()
        return 0
    if args.command == "serve-champion":
        serve_champion(args.model, args.port, host=args.host, poll_s=args.poll)
        return 0
    cfg = load_settings()
    if args.command == "up":
        started = time.perf_counter()
        up(cfg)
        print(f"\nthe stack is up ({time.perf_counter() - started:.0f} s):\n{describe(cfg)}")
        print("\nstop it with `make stack-down`")
    elif args.command == "down":
        print(f"stopped: {', '.join(down(cfg)) or 'nothing was running'}")
    elif args.command == "status":
        print(describe(cfg))
    else:
        import re

        masked = {
            k: (
                "***"
                if any(w in k for w in ("PASSWORD", "SECRET", "KEY"))
                else re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", v)  # passwords in URLs
            )
            for k, v in service_env(cfg).items()
        }
        for key, value in sorted(masked.items()):
            print(f"{key}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
