"""``make airflow`` (``python -m fl_airflow.services``), really started in a temporary
FL_HOME on a free loopback port: its generated login file is private (mode 0600) and a
SIGTERM to the launcher stops every process it started, grandchildren included."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.s3 import free_port
from tests.stack.conftest import REPO

pytestmark = pytest.mark.slow


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_make_airflow_keeps_its_login_private_and_stops_everything_on_sigterm(
    tmp_path: Path,
) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        FL_HOME=str(tmp_path),
        PYTHONPATH=os.pathsep.join([str(REPO / "plugins"), str(REPO)]),
        AIRFLOW__API__PORT=str(port),
        AIRFLOW__API__BASE_URL=f"http://127.0.0.1:{port}",
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{port}/execution/",
        AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port()),
        GIT_PYTHON_REFRESH="quiet",
    )
    log = tmp_path / "launcher.log"
    with open(log, "wb") as out:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "fl_airflow.services"],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 400
        while "login:" not in log.read_text(errors="replace"):
            assert launcher.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        passwords = tmp_path / "airflow" / "passwords.json"
        started = descendants(launcher.pid)

        mode = stat.S_IMODE(passwords.stat().st_mode)
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=90)
        time.sleep(1)
        left = {pid for pid in started if alive(pid)}

        assert mode == 0o600, oct(mode)
        assert '"admin"' in passwords.read_text()
        assert len(started) >= 4  # api-server, scheduler, dag-processor, triggerer (+ theirs)
        assert left == set(), f"still running after SIGTERM: {sorted(left)}"
    finally:
        for pid in descendants(launcher.pid) | {launcher.pid}:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            launcher.wait(timeout=10)
