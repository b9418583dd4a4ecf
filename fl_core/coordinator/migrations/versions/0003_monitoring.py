"""Federated monitoring: clients' training-data histograms and monitoring reports.

Revision ID: 0003_monitoring
Revises: 0002_arrival_order
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_monitoring"
down_revision = "0002_arrival_order"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "histograms",
        sa.Column("campaign", sa.String(128), primary_key=True),
        sa.Column("round", sa.Integer, primary_key=True),
        sa.Column("client_id", sa.String(128), primary_key=True),
        sa.Column("num_examples", sa.Integer, nullable=False),
        sa.Column("counts", sa.JSON, nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
    )
    op.create_table(
        "monitoring_reports",
        sa.Column("campaign", sa.String(128), primary_key=True),
        sa.Column("round", sa.Integer, primary_key=True),
        sa.Column("client_id", sa.String(128), primary_key=True),
        sa.Column("model_version", sa.Integer, nullable=False),
        sa.Column("num_examples", sa.Integer, nullable=False),
        sa.Column("data_valid", sa.Boolean, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("counts", sa.JSON, nullable=True),
        sa.Column("received_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("monitoring_reports")
    op.drop_table("histograms")
