"""A real S3 endpoint for tests: a ``moto_server`` subprocess on 127.0.0.1.

:func:`moto_server` starts ``python -m moto.server`` (the ``moto_server`` command of the
running interpreter's environment) on a free loopback port, waits until it answers HTTP and
stops it on exit. :func:`s3_endpoint` wraps it as a session-scoped pytest fixture; use it from
a test module (``from tests.s3 import s3_endpoint``) or register this module in
``tests/conftest.py`` (``pytest_plugins = ["tests.s3"]``).

The server only ever binds 127.0.0.1 and the credentials are dummies (moto accepts any).
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest

HOST = "127.0.0.1"
REGION = "us-east-1"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
}
"""Dummy credentials for the moto server (as environment variables)."""


def free_port(host: str = HOST) -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _answers(host: str, port: int) -> bool:
    conn = http.client.HTTPConnection(host, port, timeout=1.0)
    try:
        conn.request("GET", "/moto-api/")
        conn.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        conn.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextlib.contextmanager
def moto_server(*, timeout: float = 30.0, attempts: int = 3) -> Iterator[str]:
    """Run a moto S3 server on 127.0.0.1 and yield its endpoint URL.

    Parameters
    ----------
    timeout : float
        Seconds to wait for the server to answer, per attempt.
    attempts : int
        Start attempts (a new free port each time, in case another process took the port).

    Yields
    ------
    str
        ``http://127.0.0.1:<port>``.
    """
    last_log = ""
    for _ in range(attempts):
        port = free_port()
        with tempfile.TemporaryFile() as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                deadline = time.monotonic() + timeout
                while proc.poll() is None and time.monotonic() < deadline:
                    if _answers(HOST, port):
                        break
                    time.sleep(0.05)
                else:
                    log.seek(0)
                    last_log = log.read().decode(errors="replace")[-2000:]
                    continue
                yield f"http://{HOST}:{port}"
                return
            finally:
                _stop(proc)
    raise RuntimeError(f"moto_server did not start after {attempts} attempts:\n{last_log}")


def s3_client(endpoint: str) -> Any:
    """A boto3 S3 client for ``endpoint`` with the dummy credentials."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
    )


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """Endpoint URL of a moto S3 server running for the whole test session."""
    with moto_server() as endpoint:
        yield endpoint
