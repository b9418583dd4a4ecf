"""Client registry: clients, enrollment tokens, nonces, rounds, tasks, updates, stragglers,
evaluations.

Revision ID: 0001_registry
Revises:
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_registry"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "clients",
        sa.Column("client_id", sa.String(128), primary_key=True),
        sa.Column("public_key", sa.String(64), nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("enrolled_at", sa.Float, nullable=True),
        sa.Column("revoked_at", sa.Float, nullable=True),
        sa.Column("last_heartbeat", sa.Float, nullable=True),
        sa.Column("available", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("profile", sa.JSON, nullable=False),
        sa.Column("uplink_mbps", sa.Float, nullable=True),
        sa.Column("downlink_mbps", sa.Float, nullable=True),
        sa.Column("latency_s", sa.Float, nullable=True),
        sa.Column("num_examples", sa.Integer, nullable=True),
        sa.Column("data_sha256", sa.String(64), nullable=True),
        sa.Column("data_valid", sa.Boolean, nullable=True),
    )
    op.create_table(
        "enrollment_tokens",
        sa.Column("token_sha256", sa.String(64), primary_key=True),
        sa.Column("client_id", sa.String(128), nullable=False, index=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("used_at", sa.Float, nullable=True),
    )
    op.create_table(
        "nonces",
        sa.Column("nonce", sa.String(64), primary_key=True),
        sa.Column("client_id", sa.String(128), nullable=False),
        sa.Column("seen_at", sa.Float, nullable=False, index=True),
    )
    op.create_table(
        "rounds",
        sa.Column("campaign", sa.String(128), primary_key=True),
        sa.Column("round", sa.Integer, primary_key=True),
        sa.Column("base_version", sa.Integer, nullable=False),
        sa.Column("model_key", sa.String(512), nullable=False),
        sa.Column("published_at", sa.Float, nullable=False),
        sa.Column("deadline", sa.Float, nullable=False),
        sa.Column("closed_at", sa.Float, nullable=True),
    )
    op.create_table(
        "tasks",
        sa.Column("campaign", sa.String(128), primary_key=True),
        sa.Column("round", sa.Integer, primary_key=True),
        sa.Column("client_id", sa.String(128), primary_key=True, index=True),
        sa.Column("task", sa.JSON, nullable=False),
    )
    op.create_table(
        "updates",
        sa.Column("campaign", sa.String(128), primary_key=True),
        sa.Column("round", sa.Integer, primary_key=True),
        sa.Column("client_id", sa.String(128), primary_key=True),
        sa.Column("key", sa.String(512), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("stored", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_table(
        "stragglers",
        sa.Column("campaign", sa.String(128), primary_key=True),
        sa.Column("round", sa.Integer, primary_key=True),
        sa.Column("client_id", sa.String(128), primary_key=True),
        sa.Column("reason", sa.String(256), nullable=False),
        sa.Column("recorded_at", sa.Float, nullable=False),
    )
    op.create_table(
        "evaluations",
        sa.Column("campaign", sa.String(128), primary_key=True),
        sa.Column("round", sa.Integer, primary_key=True),
        sa.Column("client_id", sa.String(128), primary_key=True),
        sa.Column("model_version", sa.Integer, nullable=False),
        sa.Column("num_examples", sa.Integer, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "evaluations",
        "stragglers",
        "updates",
        "tasks",
        "rounds",
        "nonces",
        "enrollment_tokens",
        "clients",
    ):
        op.drop_table(table)
