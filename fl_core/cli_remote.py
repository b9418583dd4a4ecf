"""``fl clients``, ``fl coordinator`` and ``fl client``: real edge clients from the command line.

* ``fl clients enroll NAME`` prints a one-time enrollment token (expires; single use; stored
  hashed); ``fl clients list`` shows the registry; ``fl clients revoke NAME`` cuts a client off.
* ``fl coordinator serve --host 127.0.0.1 --port 8443 --tls-cert C --tls-key K`` runs the
  coordinator on its own (the Airflow plugin also mounts it on the API server);
  ``--behind-tls-proxy`` instead of the certificate serves plain HTTP for a TLS-terminating
  proxy in front (``deploy/haproxy/haproxy.cfg``).
* ``fl client run --coordinator URL --ca ca.pem --enroll-token T --data local.parquet`` is the
  device side; later runs need no token (the identity is in ``--home``).

The registry and the artifact store come from the environment (``FL_COORDINATOR_DB_URL``,
``FL_ARTIFACT_STORE``, ``FL_HOME``); see ``docs/protocol.md``. Heavy imports happen inside the
commands, so ``fl --help`` stays fast.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from fl_core.coordinator.server import DEFAULT_MAX_READING

if TYPE_CHECKING:
    from fl_core.coordinator.api import Coordinator

__all__ = ["add_remote_commands"]

clients_app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Enrolled edge clients (the registry)."
)
coordinator_app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="The coordinator service."
)
client_app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="The edge client agent (on the device)."
)

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def add_remote_commands(app: typer.Typer) -> None:
    """Add ``clients``, ``coordinator`` and ``client`` to the ``fl`` command."""
    app.add_typer(clients_app, name="clients")
    app.add_typer(coordinator_app, name="coordinator")
    app.add_typer(client_app, name="client")


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("great_expectations", "httpx", "httpcore", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _coordinator() -> Coordinator:
    from fl_core.coordinator.api import Coordinator

    return Coordinator.from_env()


# --------------------------------------------------------------------------- fl clients


@clients_app.command("enroll")
def enroll(
    name: str = typer.Argument(..., help="The client id, e.g. hospital-3."),
    ttl: float = typer.Option(3600.0, "--ttl", min=1.0, help="Token lifetime in seconds."),
) -> None:
    """Print a one-time enrollment token for NAME (give it to the device operator)."""
    coord = _coordinator()
    try:
        token = coord.create_enrollment_token(name, ttl_s=ttl)
    except ValueError as exc:
        typer.echo(f"enroll failed: {exc}", err=True)
        raise typer.Exit(2) from None
    finally:
        coord.close()
    typer.echo(token)
    typer.echo(
        f"one-time token for {name}, valid {ttl:.0f} s: "
        f"fl client run --coordinator URL --ca ca.pem --enroll-token <token> --data FILE",
        err=True,
    )


@clients_app.command("list")
def list_clients(as_json: bool = typer.Option(False, "--json", help="JSON lines.")) -> None:
    """Enrolled clients: status, last heartbeat, data version hash, device profile."""
    coord = _coordinator()
    try:
        clients = coord.clients()
    finally:
        coord.close()
    if as_json:
        for c in clients:
            typer.echo(json.dumps(c.to_dict(), sort_keys=True))
        return
    now = time.time()
    typer.echo(
        f"{'client':<24} {'status':<9} {'heartbeat':>10} {'examples':>9} {'uplink':>8} "
        f"{'data sha256':<14} profile"
    )
    for c in clients:
        status = "revoked" if c.revoked else ("enrolled" if c.enrolled else "pending")
        beat = "-" if c.last_heartbeat is None else f"{now - c.last_heartbeat:.0f}s ago"
        up = "-" if c.uplink_mbps is None else f"{c.uplink_mbps:.1f}M"
        typer.echo(
            f"{c.client_id:<24} {status:<9} {beat:>10} {c.num_examples or '-':>9} {up:>8} "
            f"{(c.data_sha256 or '-')[:12]:<14} {json.dumps(c.profile, sort_keys=True)}"
        )


@clients_app.command("revoke")
def revoke(name: str = typer.Argument(..., help="The client id.")) -> None:
    """Revoke NAME: every later request of it is refused (403), at once."""
    coord = _coordinator()
    try:
        known = coord.revoke(name)
    finally:
        coord.close()
    if not known:
        typer.echo(f"no client {name!r} in the registry", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {name}")


# --------------------------------------------------------------------------- fl coordinator


@coordinator_app.command("serve")
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to bind (loopback by default)."),
    port: int = typer.Option(8443, min=1, max=65535),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", exists=True, dir_okay=False),
    tls_key: Path | None = typer.Option(None, "--tls-key", exists=True, dir_okay=False),
    behind_tls_proxy: bool = typer.Option(
        False,
        "--behind-tls-proxy",
        envvar="FL_COORDINATOR_BEHIND_TLS_PROXY",
        help="Serve plain HTTP on --host (off loopback too) for a proxy in front that "
        "terminates the devices' TLS on a private network, e.g. deploy/haproxy/haproxy.cfg: "
        "the proxy then holds each device's TLS connection (docs/protocol.md).",
    ),
    max_concurrent_uploads: int | None = typer.Option(
        None,
        min=1,
        help="Uploads read and checked at once (default 8, or "
        "$FL_COORDINATOR_MAX_CONCURRENT_UPLOADS).",
    ),
    max_queued_uploads: int | None = typer.Option(
        None,
        min=0,
        help="Uploads waiting for a slot; beyond, 503 + Retry-After (default 128, or "
        "$FL_COORDINATOR_MAX_QUEUED_UPLOADS).",
    ),
    max_queued_small_uploads: int | None = typer.Option(
        None,
        min=0,
        help="Small uploads (<= 64 KiB) that may wait on their own beyond that: the server "
        "reads a refused one's body anyway (default 1024, or "
        "$FL_COORDINATOR_MAX_QUEUED_SMALL_UPLOADS; 0 counts them like the others).",
    ),
    max_waiting_turns: int | None = typer.Option(
        None,
        min=0,
        help="Upload turn requests (before a large upload) that may wait for a place at once, "
        "one per client, each a connection and its headers; beyond, 503 + Retry-After "
        "(default 1024, or $FL_COORDINATOR_MAX_WAITING_TURNS; 0: none waits).",
    ),
    limit_concurrency: int | None = typer.Option(
        None,
        min=1,
        help="uvicorn's cap on open connections + tasks; beyond it every request gets 503 "
        "(no Retry-After; the agent backs off). Default: none (uploads are bounded above).",
    ),
    max_reading_connections: int = typer.Option(
        DEFAULT_MAX_READING,
        min=0,
        envvar="FL_COORDINATOR_MAX_READING_CONNECTIONS",
        help="New connections read and answered at once; the others wait unread, in arrival "
        "order, instead of each holding what the server read of its request (long-polls "
        "and idle keep-alive connections hold no place; 0: off). See docs/protocol.md.",
    ),
    workers: int = typer.Option(
        1,
        min=1,
        envvar="FL_COORDINATOR_WORKERS",
        help="Processes serving the port (SO_REUSEPORT; one takes 340-550 signed top-k "
        "uploads/s on 2 cores). The limits above are per worker. A dead worker is restarted.",
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run the coordinator (HTTPS with --tls-cert/--tls-key; plain HTTP only on loopback,
    or behind a TLS-terminating proxy with --behind-tls-proxy).

    Memory is bounded by the upload admission limit: at most --max-concurrent-uploads
    bodies in flight and --max-queued-uploads waiting (plus up to
    --max-queued-small-uploads small ones, whose bodies the server reads anyway, and
    --max-waiting-turns turn requests, which have none); further uploads get 503 with
    Retry-After, which agents honour. Before that, at most
    --max-reading-connections new connections are read at once; the others wait unread."""
    from fl_core.coordinator import server
    from fl_core.coordinator.app import serving_app
    from fl_core.coordinator.settings import CoordinatorSettings

    _logging(verbose)
    if (tls_cert is None) != (tls_key is None):
        typer.echo("give both --tls-cert and --tls-key, or neither", err=True)
        raise typer.Exit(2)
    if behind_tls_proxy and tls_cert is not None:
        typer.echo("--behind-tls-proxy serves plain HTTP: drop --tls-cert/--tls-key", err=True)
        raise typer.Exit(2)
    if tls_cert is None and host not in LOOPBACK and not behind_tls_proxy:
        typer.echo(
            f"refusing plain HTTP on {host}: pass --tls-cert and --tls-key, or "
            "--behind-tls-proxy when a proxy in front terminates TLS",
            err=True,
        )
        raise typer.Exit(2)
    limits = {
        name: value
        for name, value in (
            ("max_concurrent_uploads", max_concurrent_uploads),
            ("max_queued_uploads", max_queued_uploads),
            ("max_queued_small_uploads", max_queued_small_uploads),
            ("max_waiting_turns", max_waiting_turns),
        )
        if value is not None
    }
    try:
        settings = CoordinatorSettings.from_env(**limits)
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "max_reading": max_reading_connections,
        "ssl_certfile": str(tls_cert) if tls_cert else None,
        "ssl_keyfile": str(tls_key) if tls_key else None,
        "log_level": "debug" if verbose else "info",
        "timeout_graceful_shutdown": 5,
        "limit_concurrency": limit_concurrency,
    }
    if workers > 1:
        from fl_core.coordinator.api import Coordinator

        coord = Coordinator(settings)
        coord.engine  # noqa: B018 - migrate the registry once, before the workers start
        coord.close()
        status = server.serve_workers(
            functools.partial(serving_app, settings),
            workers,
            setup_logging=functools.partial(_logging, verbose),
            **options,
        )
        raise typer.Exit(status)
    server.run(serving_app(settings), **options)


# --------------------------------------------------------------------------- fl client


@client_app.command("run")
def run(
    coordinator: str = typer.Option(..., "--coordinator", help="e.g. https://host:8443"),
    data: Path = typer.Option(..., "--data", exists=True, dir_okay=False, help="Local table."),
    ca: Path | None = typer.Option(
        None, "--ca", exists=True, dir_okay=False, help="CA of the coordinator's certificate."
    ),
    enroll_token: str | None = typer.Option(
        None, "--enroll-token", envvar="FL_ENROLL_TOKEN", help="First run only."
    ),
    home: Path = typer.Option(Path(".fl-client"), "--home", help="Identity and state."),
    eval_data: Path | None = typer.Option(
        None, "--eval-data", exists=True, dir_okay=False, help="Held-out table (optional)."
    ),
    monitor_data: Path | None = typer.Option(
        None,
        "--monitor-data",
        dir_okay=False,
        help="Latest local data the champion is checked on (monitoring tasks; re-read for "
        "each check). Default: --data.",
    ),
    holdout: float = typer.Option(
        0.2, "--holdout", min=0.0, max=0.9, help="Held-out fraction without --eval-data."
    ),
    max_tasks: int | None = typer.Option(None, "--max-tasks", min=1, help="Stop after N."),
    wait: float = typer.Option(20.0, "--wait", min=0.0, help="Long-poll seconds."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run the agent next to the private data: enroll once, then heartbeat, fetch tasks,
    train, upload signed updates and report federated evaluation, until stopped."""
    from fl_core.agent.runner import Agent, AgentConfig
    from fl_core.agent.transport import Refused

    _logging(verbose)
    if coordinator.startswith("http://") and not any(h in coordinator for h in LOOPBACK):
        typer.echo("refusing plain HTTP to a remote coordinator: use https://", err=True)
        raise typer.Exit(2)
    agent = Agent(
        AgentConfig(
            coordinator=coordinator,
            data=data,
            home=home,
            ca=ca,
            enroll_token=enroll_token,
            eval_data=eval_data,
            monitor_data=monitor_data,
            holdout=0.0 if eval_data else holdout,
            wait_s=wait,
        )
    )
    try:
        done = agent.run(max_tasks=max_tasks)
    except Refused as exc:
        typer.echo(f"coordinator refused this client: {exc}", err=True)
        raise typer.Exit(1) from None
    except RuntimeError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        done = agent.tasks_done
    finally:
        agent.close()
    typer.echo(f"done: {done} task(s)")
