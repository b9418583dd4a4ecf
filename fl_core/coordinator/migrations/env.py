"""Alembic environment for the coordinator's client registry.

Run through :func:`fl_core.coordinator.db.migrate`, which passes an open connection in
``config.attributes["connection"]``; the URL form (``alembic -x url=...``) is also accepted.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from fl_core.coordinator.db import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: sa.Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise RuntimeError("give the registry URL: alembic -x url=sqlite:///... upgrade head")
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        _run(conn)
