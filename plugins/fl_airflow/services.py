"""Start the embedded Airflow (``make airflow``): api-server on 127.0.0.1:8080, scheduler,
dag-processor and triggerer as separate processes, none listening on 0.0.0.0 (no log
servers: ``--skip-serve-logs``), parallelism sized for a small machine. Prints the login.
Ctrl-C, SIGTERM or SIGHUP stops everything it started (each service's whole process
group). The generated login file is readable by its owner only (mode 0600).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from fl_airflow import env

COMMANDS = {
    "api-server": ["api-server", "-H", "127.0.0.1", "-p", "{port}"],
    "scheduler": ["scheduler", "--skip-serve-logs"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer", "--skip-serve-logs"],
}


def _wait_http(url: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - loopback only
                return True
        except OSError:
            time.sleep(1)
    return False


def _private_passwords_file(path: Path) -> None:
    """Create the generated-passwords file mode 0600 before Airflow writes it (Airflow keeps
    an existing file's mode), or tighten an existing one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


def start(
    *, parallelism: int = 2, procs: list[subprocess.Popen[bytes]] | None = None
) -> list[subprocess.Popen[bytes]]:
    """Start the services; each one is appended to ``procs`` as soon as it runs (so a
    caller interrupted half-way still knows what to stop)."""
    procs = [] if procs is None else procs
    values = env.configure(parallelism=parallelism)
    home = Path(values["AIRFLOW_HOME"])
    _private_passwords_file(Path(values["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]))
    os.umask(0o077)  # what the services create (logs, DB, passwords) stays the user's own
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], check=True, stdout=subprocess.DEVNULL
    )
    for name, template in COMMANDS.items():
        args = [a.format(port=values["AIRFLOW__API__PORT"]) for a in template]
        log = open(home / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "airflow", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() reaches its children
            )
        )
        print(f"started {name} (pid {procs[-1].pid}, log {home / f'{name}.log'})")
    return procs


def stop(procs: list[subprocess.Popen[bytes]], *, timeout_s: float = 20.0) -> None:
    """SIGTERM every service's process group, SIGKILL what is left after ``timeout_s``."""
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=5)


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def login() -> tuple[str, str]:
    path = Path(env.configure()["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    for _ in range(60):
        if path.exists() and path.stat().st_size:
            users = json.loads(path.read_text())
            return "admin", users.get("admin", "?")
        time.sleep(1)
    return "admin", f"(see {path})"


def main() -> int:
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupt)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        start(procs=procs)
        base = env.configure()["AIRFLOW__API__BASE_URL"]
        ok = _wait_http(f"{base}/api/v2/monitor/health", 120)
        user, password = login()
        print(f"\nAirflow {'is up' if ok else 'did not answer yet'}: {base}")
        print(f"login: {user} / {password}")
        print("trigger 'federated_training' with its form; Ctrl-C stops Airflow\n")
        while all(p.poll() is None for p in procs):
            time.sleep(2)
        print("a service exited; stopping the others", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop(procs)


if __name__ == "__main__":
    sys.exit(main())
