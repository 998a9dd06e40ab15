"""endpoints: each job keeps its endpoint, and a token estimate instead of a character count

jobs.endpoint: the endpoint's URL (/v1/chat/completions, /v1/embeddings, ...); every job from before
is a chat completion. jobs.input_tokens replaces jobs.prompt_chars: the one token estimate
(batchrun.tokens), written at submit; old rows get ceil(prompt_chars / 4), what they were estimated at.
batch_endpoints: the endpoints of each batch, so that `status` knows without a scan whether to break a
batch down by endpoint.

As in 0004, columns are added and dropped with plain ALTER TABLE (SQLite ≥ 3.35 drops a column in
place), never batch mode, which would recreate `jobs` and lose the tally triggers of 0003.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 14:00:00.000000
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

CHAT_URL = "/v1/chat/completions"
Id = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.add_column('jobs', sa.Column('endpoint', sa.String(length=64), nullable=False, server_default=CHAT_URL))
    op.add_column('jobs', sa.Column('input_tokens', sa.Integer(), nullable=False, server_default='0'))
    op.execute("UPDATE jobs SET input_tokens = (prompt_chars + 3) / 4 WHERE prompt_chars > 0")
    op.drop_column('jobs', 'prompt_chars')
    op.create_table('batch_endpoints',
    sa.Column('batch_id', Id, nullable=False),
    sa.Column('endpoint', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['batch_id'], ['batches.id'], name=op.f('fk_batch_endpoints_batch_id_batches')),
    sa.PrimaryKeyConstraint('batch_id', 'endpoint', name=op.f('pk_batch_endpoints'))
    )
    op.execute(f"INSERT INTO batch_endpoints (batch_id, endpoint) SELECT id, '{CHAT_URL}' FROM batches "
               "WHERE EXISTS (SELECT 1 FROM jobs WHERE jobs.batch_id = batches.id)")


def downgrade() -> None:
    op.drop_table('batch_endpoints')
    op.add_column('jobs', sa.Column('prompt_chars', sa.Integer(), nullable=False, server_default='0'))
    op.execute("UPDATE jobs SET prompt_chars = input_tokens * 4")
    op.drop_column('jobs', 'input_tokens')
    op.drop_column('jobs', 'endpoint')
