"""The round steps' coordinator (``fl_core.rounds.remote.coordinator``) is built once per
(store, registry) in a process: the schema is checked once, not on every call, and the
cached object stays right when the coordinator service restarts, when the registry file is
replaced, when the registry URL changes and in a forked child."""

from __future__ import annotations

import logging
import multiprocessing as mp
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fl_core.rounds import remote
from fl_core.store import LocalStore
from tests.fl_core.coordinator.harness import ServerThread, make_tls


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("FL_COORDINATOR_DB_URL", "FL_ARTIFACT_STORE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FL_HOME", str(tmp_path / "home"))
    remote.clear_cache()
    yield
    remote.clear_cache()


def test_a_round_checks_the_schema_once_and_survives_a_service_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = LocalStore(tmp_path / "home" / "artifacts")
    caplog.set_level(logging.DEBUG, logger="fl_core.coordinator.db")
    coord = remote.coordinator(store)
    coord.create_enrollment_token("dev-1")
    server = ServerThread(coord, make_tls(tmp_path / "tls")).start()
    assert remote.known_examples(store) == {}  # pending enrollment: no weight yet
    server.stop()  # the service restarts ...
    server = ServerThread(coord, server.tls, port=server.port).start()
    coord.create_enrollment_token("dev-2")
    server.stop()

    # ... and every call of the round went through one coordinator, migrated once.
    assert remote.coordinator(LocalStore(tmp_path / "home" / "artifacts")) is coord
    assert [c.client_id for c in remote.coordinator(store).clients()] == ["dev-1", "dev-2"]
    assert sum("registry schema at head" in r.getMessage() for r in caplog.records) == 1


def test_a_replaced_registry_or_another_url_gets_a_fresh_coordinator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path / "home" / "artifacts")
    first = remote.coordinator(store)
    first.create_enrollment_token("old-device")
    shutil.rmtree(tmp_path / "home" / "coordinator")  # the registry is re-created ...
    fresh = remote.coordinator(store)
    assert fresh is not first
    assert fresh.clients() == []  # ... and the steps see the new one, not the deleted file
    fresh.create_enrollment_token("new-device")

    monkeypatch.setenv("FL_COORDINATOR_DB_URL", f"sqlite:///{tmp_path / 'other.db'}")
    other = remote.coordinator(store)
    assert other is not fresh and other.clients() == []


def _child(store_root: str, inherited_id: int, queue: Any) -> None:
    coord = remote.coordinator(LocalStore(store_root))
    queue.put((id(coord) != inherited_id, [c.client_id for c in coord.clients()]))


def test_a_forked_child_builds_its_own_coordinator(tmp_path: Path) -> None:
    root = str(tmp_path / "home" / "artifacts")
    parent = remote.coordinator(LocalStore(root))
    parent.create_enrollment_token("dev-1")
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(root, id(parent), queue))
    child.start()
    child.join(timeout=60)

    assert child.exitcode == 0
    assert queue.get(timeout=5) == (True, ["dev-1"])
    assert parent.clients()[0].client_id == "dev-1"  # the parent's connections still work
