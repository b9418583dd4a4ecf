"""Fixtures: a coordinator on a temporary registry and store, served over TLS on 127.0.0.1."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fl_core.coordinator.api import Coordinator
from fl_core.coordinator.settings import CoordinatorSettings
from tests.fl_core.coordinator.harness import ServerThread, TLSFiles, make_tls


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def coord(tmp_path: Path) -> Iterator[Coordinator]:
    c = Coordinator(CoordinatorSettings.local(tmp_path / "home", long_poll_s=5.0))
    yield c
    c.close()


@pytest.fixture
def server(coord: Coordinator, tls: TLSFiles) -> Iterator[ServerThread]:
    srv = ServerThread(coord, tls).start()
    yield srv
    srv.stop()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The environment of an ``fl`` command run as a process (:func:`harness.run_fl`): this
    one's without its ``FL_*`` settings, the server's state under ``tmp_path``, the
    repository importable."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("FL_")}
    out["FL_HOME"] = str(tmp_path / "server-home")
    out["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[3]), *sys.path])
    return out
