"""Update signatures in the registry: the signature and the public key it verified with are
recorded with the update's claim (one statement), instead of a second file written to the
store for every upload; ``close_round`` writes them beside the round's updates.

Revision ID: 0004_update_signatures
Revises: 0003_monitoring
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_update_signatures"
down_revision = "0003_monitoring"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("updates") as batch:
        batch.add_column(sa.Column("signature", sa.String(128), nullable=True))
        batch.add_column(sa.Column("public_key", sa.String(128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("updates") as batch:
        batch.drop_column("public_key")
        batch.drop_column("signature")
