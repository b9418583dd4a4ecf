"""Arrival order of accepted updates: ``updates.accepted_at`` and ``updates.arrival_seq``.

An update is accepted when its bytes are durably stored (``stored`` becomes true, the 201
goes out); at that moment it gets the campaign's next arrival number and the time. FedBuff
on the wall clock applies updates in this order. Existing stored updates are numbered by
their claim time (``received_at``), the order the registry used before.

Revision ID: 0002_arrival_order
Revises: 0001_registry
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_arrival_order"
down_revision = "0001_registry"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("updates") as batch:
        batch.add_column(sa.Column("accepted_at", sa.Float, nullable=True))
        batch.add_column(sa.Column("arrival_seq", sa.Integer, nullable=True))
    updates = sa.table(
        "updates",
        sa.column("campaign", sa.String),
        sa.column("round", sa.Integer),
        sa.column("client_id", sa.String),
        sa.column("received_at", sa.Float),
        sa.column("stored", sa.Boolean),
        sa.column("accepted_at", sa.Float),
        sa.column("arrival_seq", sa.Integer),
    )
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(updates.c.campaign, updates.c.round, updates.c.client_id, updates.c.received_at)
        .where(updates.c.stored.is_(True))
        .order_by(updates.c.campaign, updates.c.received_at, updates.c.client_id)
    ).all()
    seq: dict[str, int] = {}
    for row in rows:
        seq[row.campaign] = seq.get(row.campaign, 0) + 1
        conn.execute(
            sa.update(updates)
            .where(
                updates.c.campaign == row.campaign,
                updates.c.round == row.round,
                updates.c.client_id == row.client_id,
            )
            .values(accepted_at=row.received_at, arrival_seq=seq[row.campaign])
        )
    op.create_index(
        "ix_updates_campaign_arrival_seq", "updates", ["campaign", "arrival_seq"], unique=True
    )


def downgrade() -> None:
    op.drop_index("ix_updates_campaign_arrival_seq", table_name="updates")
    with op.batch_alter_table("updates") as batch:
        batch.drop_column("arrival_seq")
        batch.drop_column("accepted_at")
