"""key handover by window, and the start of a job's transient failures

api_keys.window_seconds: how long one request of the key counts against its limit (its longest rate
window), stored when a runner leases the key, so that the rule below holds for a runner that died.
api_keys.free_at: set when a lease is given up (or its runner is found dead): the key may be taken by
another runner only from then on, once the last request sent with it has left the provider's window.
jobs.transient_since: when the job's current run of transient failures began (a time budget for
retrying them).

Only columns are added: on SQLite batch mode adds them with ALTER TABLE, without recreating `jobs`,
so the tally triggers of 0003 stay in place.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 09:00:00.000000
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('window_seconds', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('free_at', sa.Float(), nullable=True))

    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('transient_since', sa.Float(), nullable=True))


def downgrade() -> None:
    # Not batch mode: on SQLite it would recreate `jobs` and lose the tally triggers of 0003.
    # ALTER TABLE … DROP COLUMN (SQLite ≥ 3.35) leaves the table and its triggers alone.
    op.drop_column('jobs', 'transient_since')
    op.drop_column('api_keys', 'free_at')
    op.drop_column('api_keys', 'window_seconds')
