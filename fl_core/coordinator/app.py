"""The coordinator's FastAPI app factory.

``create_app(settings)`` builds the app from settings (tests pass a temporary registry and
store); nothing touches the database until the first request, so building the app at import
time (the Airflow plugin does) costs no I/O. Every route lives under ``/v1``.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from fl_core.coordinator import protocol
from fl_core.coordinator.admission import Busy, UploadAdmission
from fl_core.coordinator.api import Coordinator
from fl_core.coordinator.registry import ProtocolError
from fl_core.coordinator.routers import (
    clients,
    evaluations,
    health,
    models,
    monitoring,
    tasks,
    updates,
)
from fl_core.coordinator.settings import CoordinatorSettings

logger = logging.getLogger(__name__)

__all__ = ["create_app", "serving_app"]


def create_app(
    settings: CoordinatorSettings | None = None, *, coordinator: Coordinator | None = None
) -> FastAPI:
    """The coordinator app on ``settings`` (default: from the environment), or on an existing
    :class:`Coordinator` (shares its store and database engine)."""
    coord = coordinator or Coordinator(settings or CoordinatorSettings.from_env())
    app = FastAPI(
        title="fl-core coordinator",
        version="1",
        description="Enrollment, tasks, models and signed updates for real edge clients. "
        "See docs/protocol.md.",
    )
    app.state.coordinator = coord
    app.state.publications = tasks.Publications(coord)
    app.state.upload_admission = UploadAdmission(
        slots=coord.settings.max_concurrent_uploads,
        queue=coord.settings.max_queued_uploads,
        small_queue=coord.settings.max_queued_small_uploads,
        waiting_turns=coord.settings.max_waiting_turns,
        retry_after_s=coord.settings.busy_retry_after_s,
    )

    @app.exception_handler(ProtocolError)
    async def _refused(request: Request, exc: ProtocolError) -> JSONResponse:
        busy = isinstance(exc, Busy)  # routine under load: not worth an info line each
        logger.log(
            logging.DEBUG if busy else logging.INFO,
            "%s %s refused %d: %s",
            request.method,
            request.url.path,
            exc.status,
            exc.reason,
        )
        headers = {"Connection": "close"} if exc.status == 413 else None
        if isinstance(exc, Busy):  # keep the connection: the client reads it after sending
            headers = {"Retry-After": str(exc.retry_after_s)}
        return JSONResponse({"detail": exc.reason}, status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _malformed(request: Request, exc: RequestValidationError) -> JSONResponse:
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]
        )
        return JSONResponse({"detail": f"malformed request: {reasons}"}, status_code=400)

    for router in (health, clients, tasks, models, updates, evaluations, monitoring):
        app.include_router(router.router, prefix=protocol.API_PREFIX)
    app.router.routes.insert(0, updates.UploadRoute(protocol.API_PREFIX))  # the hot path
    return app


def serving_app(settings: CoordinatorSettings) -> FastAPI:
    """:func:`create_app` with its registry opened, migrated and warmed up
    (:meth:`Coordinator.warm_up`): what a serving process runs, so its first requests do
    not pay for that (a module-level function of picklable
    settings: ``fl coordinator serve --workers N`` spawns its workers with it)."""
    app = create_app(settings)
    app.state.coordinator.warm_up()  # open and migrate now; compile the upload path
    return app
