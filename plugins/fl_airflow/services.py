"""Start the embedded Airflow (``make airflow``): api-server on 127.0.0.1:8080, scheduler,
dag-processor and triggerer as separate processes, none listening on 0.0.0.0 (no log
servers: ``--skip-serve-logs``), parallelism sized for a small machine. Prints the login.
Ctrl-C stops everything.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from fl_airflow import env

COMMANDS = {
    "api-server": ["api-server", "-H", "127.0.0.1", "-p", "8080"],
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


def start(*, parallelism: int = 2) -> list[subprocess.Popen[bytes]]:
    values = env.configure(parallelism=parallelism)
    home = Path(values["AIRFLOW_HOME"])
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], check=True, stdout=subprocess.DEVNULL
    )
    procs = []
    for name, args in COMMANDS.items():
        log = open(home / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "airflow", *args], stdout=log, stderr=subprocess.STDOUT
            )
        )
        print(f"started {name} (pid {procs[-1].pid}, log {home / f'{name}.log'})")
    return procs


def login() -> tuple[str, str]:
    path = Path(env.configure()["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    for _ in range(30):
        if path.exists():
            users = json.loads(path.read_text())
            return "admin", users.get("admin", "?")
        time.sleep(1)
    return "admin", f"(see {path})"


def main() -> int:
    procs = start()
    try:
        ok = _wait_http("http://127.0.0.1:8080/api/v2/monitor/health", 120)
        user, password = login()
        print(f"\nAirflow {'is up' if ok else 'did not answer yet'}: http://127.0.0.1:8080")
        print(f"login: {user} / {password}")
        print("trigger 'federated_training' with its form; Ctrl-C stops Airflow\n")
        while all(p.poll() is None for p in procs):
            time.sleep(2)
        print("a service exited; stopping the others", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    sys.exit(main())
