"""provider batches: jobs sent through the provider's Batch API (run --via batch-api)

provider_batches: one row per batch at the provider, with every id it gave (input file, batch,
output and error files) and its last polled status; jobs.provider_batch_id: the provider batch a job
was last sent in; locks: named locks with an owner and an expiry (one batch-API dispatcher at a
time). Columns are added to `jobs` with plain ALTER TABLE (see 0004, 0005).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 15:00:00.000000
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('provider_batches',
    sa.Column('id', Id, autoincrement=True, nullable=False),
    sa.Column('batch_id', Id, nullable=False),
    sa.Column('endpoint', sa.String(length=64), nullable=False),
    sa.Column('model', sa.String(length=200), nullable=False),
    sa.Column('key_id', sa.String(length=200), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('requests', sa.Integer(), nullable=False),
    sa.Column('input_file_id', sa.String(length=200), nullable=True),
    sa.Column('provider_batch_id', sa.String(length=200), nullable=True),
    sa.Column('provider_status', sa.String(length=32), nullable=True),
    sa.Column('completed', sa.Integer(), server_default='0', nullable=False),
    sa.Column('failed', sa.Integer(), server_default='0', nullable=False),
    sa.Column('output_file_id', sa.String(length=200), nullable=True),
    sa.Column('error_file_id', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.Column('message', sa.Text(), nullable=True),
    sa.Column('cancel_requested', sa.Boolean(), server_default='0', nullable=False),
    sa.ForeignKeyConstraint(['batch_id'], ['batches.id'], name=op.f('fk_provider_batches_batch_id_batches')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_provider_batches'))
    )
    op.add_column('jobs', sa.Column('provider_batch_id', Id, nullable=True))
    op.create_table('locks',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('owner', sa.String(length=200), nullable=False),
    sa.Column('expires', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_locks'))
    )


def downgrade() -> None:
    op.drop_table('locks')
    op.drop_column('jobs', 'provider_batch_id')
    op.drop_table('provider_batches')
