"""The arrival index covers accepted updates only: ``WHERE arrival_seq IS NOT NULL``.

``ix_updates_campaign_arrival_seq`` (campaign, arrival_seq) begins with the campaign, as
the primary key (campaign, round, client_id) does. Looking up one update by its key, the
PostgreSQL planner could take either, and on a young table (statistics taken while it was
nearly empty, generic plans cached by the upload statements and by ``fl_accept_update``)
it took the smaller arrival index: measured, each upload's authentication and acceptance
then walked every update of the campaign (5,900 index entries per lookup after six rounds
of 1,000 uploads; the PostgreSQL CPU per upload grew from 0.35 to 1.6 ms over those
rounds). Made partial, the index can serve only a query that says ``arrival_seq IS NOT
NULL`` (the next arrival number: the maximum over the campaign's accepted updates; the
arrival order), so a lookup by key has the primary key alone. Its meaning is unchanged
(NULLs were never unique), and it no longer holds an entry for each claim not yet
accepted.

The next arrival number's query now says ``arrival_seq IS NOT NULL`` itself (SQLite uses a
partial index only for a query whose condition implies its own), in
``registry._mark_stored`` and in ``fl_accept_update``, replaced here with that one change.

Revision ID: 0006_partial_arrival_index
Revises: 0005_accept_function
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_partial_arrival_index"
down_revision = "0005_accept_function"
branch_labels = None
depends_on = None

INDEX = "ix_updates_campaign_arrival_seq"
ACCEPTED = "arrival_seq IS NOT NULL"

ACCEPT_FUNCTION = """
CREATE OR REPLACE FUNCTION fl_accept_update(
    p_lock bigint, p_campaign varchar, p_round integer, p_client varchar,
    p_accepted_at double precision
) RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    accepted integer;
BEGIN
    PERFORM pg_advisory_xact_lock(p_lock);
    UPDATE updates SET
        stored = true,
        accepted_at = p_accepted_at,
        arrival_seq = (
            SELECT coalesce(max(prior.arrival_seq), 0) + 1
            FROM updates AS prior
            WHERE prior.campaign = p_campaign AND prior.arrival_seq IS NOT NULL
        )
    WHERE updates.campaign = p_campaign AND updates.round = p_round
        AND updates.client_id = p_client AND updates.stored = false
        AND EXISTS (
            SELECT 1 FROM rounds
            WHERE rounds.campaign = p_campaign AND rounds.round = p_round
                AND rounds.closed_at IS NULL AND rounds.deadline >= p_accepted_at
        );
    GET DIAGNOSTICS accepted = ROW_COUNT;
    RETURN accepted;
END
$$
"""


def upgrade() -> None:
    op.drop_index(INDEX, table_name="updates")
    op.create_index(
        INDEX, "updates", ["campaign", "arrival_seq"], unique=True,
        postgresql_where=sa.text(ACCEPTED), sqlite_where=sa.text(ACCEPTED),
    )  # fmt: skip
    if op.get_bind().dialect.name == "postgresql":
        op.execute(ACCEPT_FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        from importlib import import_module

        previous = import_module("fl_core.coordinator.migrations.versions.0005_accept_function")
        op.execute(previous.ACCEPT_FUNCTION)
    op.drop_index(INDEX, table_name="updates")
    op.create_index(INDEX, "updates", ["campaign", "arrival_seq"], unique=True)
