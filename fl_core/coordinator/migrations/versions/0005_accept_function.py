"""PostgreSQL: an update's acceptance as one server-side function, ``fl_accept_update``.

Accepting a stored update takes the campaign's advisory lock, then numbers and accepts the
update in one ``UPDATE`` if its round is still open (:func:`registry.mark_stored`). From
the coordinator that was four round trips to the server (``BEGIN``, the lock, the
``UPDATE``, ``COMMIT``), and the lock, which makes a campaign's acceptances and the closing
of its rounds wait for one another, was held across three of them. The function does the
same two statements in one call, in one transaction of its own (the connection is in
autocommit), so the lock is held only while they run. Each statement of a ``VOLATILE``
PL/pgSQL function takes a fresh snapshot under READ COMMITTED, so the ``UPDATE`` sees every
acceptance committed before the lock was granted, as it did as a statement of its own.

SQLite has no server-side functions and one writer at a time: nothing changes there.

Revision ID: 0005_accept_function
Revises: 0004_update_signatures
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0005_accept_function"
down_revision = "0004_update_signatures"
branch_labels = None
depends_on = None

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
            FROM updates AS prior WHERE prior.campaign = p_campaign
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
    if op.get_bind().dialect.name == "postgresql":
        op.execute(ACCEPT_FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "DROP FUNCTION IF EXISTS fl_accept_update(bigint, varchar, integer, varchar, "
            "double precision)"
        )
