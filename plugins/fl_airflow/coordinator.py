"""Mounts the FL coordinator on the Airflow 3 API server (``fastapi_apps``) at ``/fl``.

Edge agents then use ``--coordinator https://<api-server>/fl``. The coordinator shares the
artifact store with the DAG (``FL_ARTIFACT_STORE``, else ``FL_HOME/artifacts``) and keeps its
client registry at ``FL_COORDINATOR_DB_URL`` (else SQLite under ``FL_HOME/coordinator``).

Airflow imports plugin modules in every component (scheduler, workers, triggerer), so the
app is built lazily, on the first request the API server routes to it: loading the plugin
imports neither FastAPI nor SQLAlchemy and opens no database.
"""

from __future__ import annotations

import threading
from typing import Any

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/fl"


class LazyCoordinatorApp:
    """An ASGI app that builds ``fl_core.coordinator.app.create_app()`` on first use."""

    def __init__(self) -> None:
        self._app: Any = None
        self._lock = threading.Lock()

    def get(self) -> Any:
        with self._lock:
            if self._app is None:
                from fl_core.coordinator.app import create_app

                self._app = create_app()
            return self._app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":  # nothing to start; the registry opens on first use
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            return
        await self.get()(scope, receive, send)


coordinator_app = LazyCoordinatorApp()


class FlCoordinatorPlugin(AirflowPlugin):
    """The coordinator app for real edge clients, on the API server."""

    name = "fl_coordinator"
    fastapi_apps = [
        {"app": coordinator_app, "url_prefix": URL_PREFIX, "name": "FL coordinator"},
    ]
