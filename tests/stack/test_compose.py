"""docker-compose.yaml, checked without an engine: Debian's ``docker-compose`` (v1) validates
and renders it with the shared env file (``deploy/stack.env.example`` with secrets filled),
and the rendered stack keeps its promises: secrets only from the environment with no
default, nothing secret on a command line, ports on 127.0.0.1, pinned images, init jobs
awaited, restart policies, a non-root image.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.stack.conftest import ENV_EXAMPLE, REPO, require

COMPOSE = REPO / "docker-compose.yaml"
OPTIONAL_VARS = {"FL_ALERT_WEBHOOK_URL"}


def compose_bin() -> str:
    found = shutil.which("docker-compose")
    require("docker-compose", found is not None, "apt-get install docker-compose")
    assert found is not None
    return found


def filled_env_file(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            secret = value == "change-me"
            values[key] = f"secret-{key.lower()}-{os.urandom(4).hex()}" if secret else value
    path = tmp_path / "stack.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path, values


def run_compose(args: list[str], env_file: Path | None) -> subprocess.CompletedProcess[str]:
    cmd = [compose_bin(), "-f", str(COMPOSE)]
    if env_file is not None:
        cmd += ["--env-file", str(env_file)]
    clean_env = {k: v for k, v in os.environ.items() if not k.isupper() or k in ("PATH", "HOME")}
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, timeout=120, env=clean_env, cwd=REPO
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, str]]:
    env_file, values = filled_env_file(tmp_path_factory.mktemp("compose"))
    check = run_compose(["config", "-q"], env_file)
    assert check.returncode == 0, check.stderr
    out = run_compose(["config"], env_file)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout), values


def test_compose_is_valid_with_the_shared_env_file(
    rendered: tuple[dict[str, Any], dict[str, str]],
) -> None:
    config, _ = rendered
    services = config["services"]
    assert {
        "postgres",
        "redis",
        "minio",
        "mlflow",
        "airflow-api",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-worker-1",
        "airflow-worker-2",
        "serving",
    } <= set(services)


def test_every_variable_compose_reads_is_in_the_env_file() -> None:
    body = "\n".join(
        line for line in COMPOSE.read_text().splitlines() if not line.lstrip().startswith("#")
    )
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", body))
    keys = {
        line.partition("=")[0]
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert used - OPTIONAL_VARS <= keys, sorted(used - OPTIONAL_VARS - keys)


def test_a_missing_secret_stops_compose_naming_it(tmp_path: Path) -> None:
    env_file, values = filled_env_file(tmp_path)
    text = env_file.read_text().replace(f"REDIS_PASSWORD={values['REDIS_PASSWORD']}\n", "")
    env_file.write_text(text)

    out = run_compose(["config", "-q"], env_file)

    assert out.returncode != 0
    assert "REDIS_PASSWORD" in out.stderr


def test_no_secret_on_a_command_line_and_ports_on_loopback(
    rendered: tuple[dict[str, Any], dict[str, str]],
) -> None:
    config, values = rendered
    secret_values = [v for k, v in values.items() if v.startswith("secret-")]
    for name, svc in config["services"].items():
        argv = " ".join(map(str, (svc.get("command") or []) + (svc.get("entrypoint") or [])))
        leaked = [v for v in secret_values if v in argv]
        assert not leaked, f"{name}: secret on the command line"
        for port in svc.get("ports") or []:
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
            assert host_ip == "127.0.0.1", f"{name}: port {port} not bound to 127.0.0.1"


def test_images_pinned_init_jobs_awaited_restart_policies(
    rendered: tuple[dict[str, Any], dict[str, str]],
) -> None:
    config, _ = rendered
    for name, svc in config["services"].items():
        image = svc["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: unpinned {image}"
        assert svc.get("restart") in ("unless-stopped", "no"), f"{name}: no restart policy"
    for name in ("airflow-api", "airflow-scheduler", "airflow-worker-1", "airflow-worker-2"):
        deps = config["services"][name]["depends_on"]
        assert deps["airflow-init"]["condition"] == "service_completed_successfully"
        assert deps["minio-init"]["condition"] == "service_completed_successfully"
        assert deps["postgres"]["condition"] == "service_healthy"
    for name in ("postgres", "redis", "minio", "mlflow", "airflow-api"):
        assert config["services"][name].get("healthcheck"), f"{name}: no healthcheck"


def test_scoped_credentials_and_auth_doors(
    rendered: tuple[dict[str, Any], dict[str, str]],
) -> None:
    config, values = rendered
    services = config["services"]
    root = values["S3_ROOT_PASSWORD"]
    holders = {n for n, s in services.items() if root in str(s.get("environment", {}))}
    assert holders == {"minio", "minio-init"}
    assert services["serving"]["environment"]["AWS_ACCESS_KEY_ID"] == values["S3_READER_KEY"]
    api_env = services["airflow-api"]["environment"]
    assert api_env["AIRFLOW__CORE__AUTH_MANAGER"].endswith("FabAuthManager")
    jwt = {
        s["environment"].get("AIRFLOW__API_AUTH__JWT_SECRET")
        for n, s in services.items()
        if n.startswith("airflow-")
    }
    assert jwt == {values["AIRFLOW_JWT_SECRET"]}
    assert f":{values['REDIS_PASSWORD']}@redis" in api_env["AIRFLOW__CELERY__BROKER_URL"]
    assert "basic-auth" in (REPO / "plugins" / "fl_airflow" / "stack.py").read_text()
    dockerfile = (REPO / "Dockerfile").read_text()
    user = re.findall(r"^USER\s+(\S+)", dockerfile, re.M)
    assert user and user[-1] not in ("root", "0")
    assert not re.search(
        r"pip install (?!torch==|-r requirements\.lock|--no-deps -e \.)", dockerfile
    )


def test_one_client_registry_for_every_service_that_touches_remote_rounds(
    rendered: tuple[dict[str, Any], dict[str, str]],
) -> None:
    """The coordinator service, the API server (which mounts the coordinator), the workers
    (remote-round tasks) and the triggerer (the wait for updates) read and write the same
    registry: one without it would fall back to a private SQLite file and never see the
    enrolled devices or their uploads."""
    config, values = rendered
    services = config["services"]
    users = ["coordinator", "airflow-api", "airflow-scheduler", "airflow-triggerer"]
    users += [n for n in services if n.startswith("airflow-worker")]
    urls = {n: services[n]["environment"].get("FL_COORDINATOR_DB_URL") for n in users}
    assert len(set(urls.values())) == 1, urls
    assert next(iter(urls.values())).endswith(f"@postgres:5432/{values['COORDINATOR_DB']}")


def test_devices_reach_the_coordinator_only_through_its_tls_proxy(
    rendered: tuple[dict[str, Any], dict[str, str]],
) -> None:
    """TLS ends at haproxy (deploy/haproxy/haproxy.cfg, run as is by
    tests/fl_core/coordinator/test_tls_proxy.py): it publishes the devices' port and
    forwards to the port the coordinator serves plain HTTP on, which publishes none."""
    config, _ = rendered
    coordinator, proxy = config["services"]["coordinator"], config["services"]["coordinator-tls"]
    command = coordinator["command"]
    assert "--behind-tls-proxy" in command and "--tls-cert" not in command
    port = command[command.index("--port") + 1]
    assert not coordinator.get("ports")
    assert proxy["environment"]["FL_COORDINATOR_ADDR"] == f"coordinator:{port}"
    mounts = " ".join(str(v.get("source", v) if isinstance(v, dict) else v)
                      for v in proxy["volumes"])  # fmt: skip
    assert "deploy/haproxy/haproxy.cfg" in mounts and "deploy/tls" in mounts
    assert proxy["environment"]["FL_TLS_CERT"].endswith(".crt")  # its .key is read beside it
    [published] = proxy["ports"]
    bind_port = proxy["environment"]["FL_PROXY_BIND"].rsplit(":", 1)[1]
    target = published.get("target") if isinstance(published, dict) else published.split(":")[-1]
    assert str(target).removesuffix("/tcp") == bind_port
    # the plain HTTP leg on a network of its own, and the proxy on no other of the stack's
    backend = set(coordinator["networks"]) & set(proxy["networks"])
    assert backend == {"coordinator-backend"}
    assert config["networks"]["coordinator-backend"].get("internal") is True
    assert "default" not in proxy["networks"]
