"""usage, key run stats and the model catalogue

jobs: the model actually sent (after alias/fallback resolution), why a fallback was used, and the
cost of the job's usage, the parameters dropped as unsupported (--drop-unsupported). api_keys: counts and rates of the last run that used the key, and its lease to one runner. models: the
provider's catalogue as last fetched. submitted_chunks: clean runs of job-file lines, so that
resubmitting a file needs no parsing.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 03:10:00.000000
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('submitted_chunks',
    sa.Column('batch_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('first_line', sa.Integer(), nullable=False),
    sa.Column('line_count', sa.Integer(), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('jobs', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['batch_id'], ['batches.id'], name=op.f('fk_submitted_chunks_batch_id_batches')),
    sa.PrimaryKeyConstraint('batch_id', 'first_line', 'line_count', 'digest', name=op.f('pk_submitted_chunks'))
    )
    op.create_table('models',
    sa.Column('id', sa.String(length=200), nullable=False),
    sa.Column('alias_for', sa.String(length=200), nullable=True),
    sa.Column('context_length', sa.Integer(), nullable=True),
    sa.Column('supported_parameters', sa.Text(), nullable=True),
    sa.Column('response_format', sa.Boolean(), nullable=True),
    sa.Column('prompt_price', sa.Float(), nullable=True),
    sa.Column('completion_price', sa.Float(), nullable=True),
    sa.Column('fetched_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_models'))
    )
    # Existing keys get zero counts (server default): NOT NULL columns need a value on old rows.
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('requests', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('rate_limited', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('errors', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('last_run_at', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('rate_configured', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('rate_adapted', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('lease_owner', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('lease_expires', sa.Float(), nullable=True))

    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('model_sent', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('fallback_reason', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('cost', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('dropped_parameters', sa.String(length=500), nullable=True))


def downgrade() -> None:
    op.drop_table('submitted_chunks')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('dropped_parameters')
        batch_op.drop_column('cost')
        batch_op.drop_column('fallback_reason')
        batch_op.drop_column('model_sent')

    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_column('lease_expires')
        batch_op.drop_column('lease_owner')
        batch_op.drop_column('rate_adapted')
        batch_op.drop_column('rate_configured')
        batch_op.drop_column('last_run_at')
        batch_op.drop_column('errors')
        batch_op.drop_column('rate_limited')
        batch_op.drop_column('requests')

    op.drop_table('models')
