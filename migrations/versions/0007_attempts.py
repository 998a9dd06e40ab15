"""attempts: every attempt of every run, and what changed during it (batchrun report, status)

attempts: one row per request that ended (or job refused before sending), written in the runner's group
commits; run_events: key state and rate changes, cooling, the breaker, the stop; runners.options: the
options a run was started with, and its request count and latency p50/p99 so far.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 17:00:00.000000
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('attempts',
    sa.Column('id', Id, autoincrement=True, nullable=False),
    sa.Column('runner_id', Id, nullable=False),
    sa.Column('batch_id', Id, nullable=False),
    sa.Column('job_id', Id, nullable=False),
    sa.Column('sent_at', sa.Float(), nullable=False),
    sa.Column('answered_at', sa.Float(), nullable=False),
    sa.Column('latency_bin', sa.Integer(), nullable=True),
    sa.Column('sent', sa.Boolean(), nullable=False),
    sa.Column('key_id', sa.String(length=200), nullable=True),
    sa.Column('endpoint', sa.String(length=64), nullable=False),
    sa.Column('model', sa.String(length=200), nullable=False),
    sa.Column('model_sent', sa.String(length=200), nullable=True),
    sa.Column('model_served', sa.String(length=200), nullable=True),
    sa.Column('status_code', sa.Integer(), nullable=True),
    sa.Column('outcome', sa.String(length=64), nullable=False),
    sa.Column('prompt_tokens', sa.Integer(), nullable=True),
    sa.Column('completion_tokens', sa.Integer(), nullable=True),
    sa.Column('cost', sa.Float(), nullable=True),
    sa.Column('fallback_reason', sa.Text(), nullable=True),
    sa.Column('message', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_attempts'))
    )
    op.create_index('ix_attempts_runner_id_answered_at', 'attempts', ['runner_id', 'answered_at'], unique=False)
    op.create_table('run_events',
    sa.Column('id', Id, autoincrement=True, nullable=False),
    sa.Column('runner_id', Id, nullable=False),
    sa.Column('at', sa.Float(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('key_id', sa.String(length=200), nullable=True),
    sa.Column('message', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_run_events'))
    )
    op.create_index('ix_run_events_runner_id_at', 'run_events', ['runner_id', 'at'], unique=False)
    op.add_column('runners', sa.Column('options', sa.Text(), nullable=True))
    op.add_column('runners', sa.Column('requests', sa.Integer(), nullable=True))
    op.add_column('runners', sa.Column('latency_p50', sa.Float(), nullable=True))
    op.add_column('runners', sa.Column('latency_p99', sa.Float(), nullable=True))


def downgrade() -> None:
    for column in ('latency_p99', 'latency_p50', 'requests', 'options'):
        op.drop_column('runners', column)
    op.drop_index('ix_run_events_runner_id_at', table_name='run_events')
    op.drop_table('run_events')
    op.drop_index('ix_attempts_runner_id_answered_at', table_name='attempts')
    op.drop_table('attempts')
