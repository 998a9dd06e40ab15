"""job tallies: what `status` shows, kept up to date by triggers

`job_tallies` holds, per batch and state (and per key and model served for succeeded jobs, per error
code for failed ones), the sums of every job's contribution: 1 job (0 for a queued job: the claim
index counts those), its attempts, tokens and cost, and for a succeeded job its flags (priced,
unverified, truncated, fallback). Triggers on `jobs` move a job's contribution whenever a column it
depends on changes, so every writer — any runner, any command, psql — keeps the tallies right and
`status` reads a few rows instead of scanning the jobs.

There is no INSERT trigger: jobs enter the queue fresh (`Store.add_jobs`: queued, no attempt, no
usage), and a fresh job contributes nothing. Even an INSERT trigger whose WHEN clause skips fresh
jobs cost submit ≈ 1.5 µs a row (≈ 15 % of its insert time), and submit is a hot path. So a job
inserted in another state by hand, outside batchrun, is not tallied (updates and deletes are).

SQLite: FOR EACH ROW triggers with an upsert (writers are serialised by the database lock).
PostgreSQL: a FOR EACH STATEMENT trigger on UPDATE aggregates the transition tables into one upsert
per statement (a bulk `retry` or `cancel` stays one statement); DELETE uses a FOR EACH ROW trigger
behind the same WHEN clause as on SQLite. Tally rows are shared by concurrent runners, and one
transaction updates several of them across statements (a claim: queued then running; a result
write: running, succeeded, failed, queued), so two transactions could lock them in opposite orders:
the trigger first takes a transaction-level advisory lock, which orders them.

Beware: a later migration that recreates `jobs` on SQLite (batch mode) drops these triggers; it must
create them again.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 06:00:00.000000
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

#: pg_advisory_xact_lock key of tally writers (the migration lock of store.py is 7166021)
TALLY_LOCK = 7166022

GROUP = ("batch_id", "state", "key_id", "model", "error_code")
SUMS = ("jobs", "attempts", "prompt_tokens", "completion_tokens", "total_tokens", "cost", "priced",
        "unverified", "truncated", "fallbacks")
COLUMNS = GROUP + SUMS
#: the columns of `jobs` a contribution depends on
TRACKED = ("batch_id", "state", "attempts", "key_id", "model", "model_served", "model_sent", "error_code",
           "prompt_tokens", "completion_tokens", "total_tokens", "cost", "request_id", "finish_reason",
           "fallback_reason")


def contribution(row: str, sign: str = "") -> list[str]:
    """The tally values of the job `row` (a table alias, NEW or OLD), negated with sign "-"."""
    def succeeded_with(condition: str) -> str:
        return f"CASE WHEN {row}.state = 'succeeded' AND {condition} THEN {sign}1 ELSE 0 END"

    return [
        f"{row}.batch_id",
        f"{row}.state",
        f"CASE WHEN {row}.state = 'succeeded' THEN COALESCE({row}.key_id, '') ELSE '' END",
        f"CASE WHEN {row}.state = 'succeeded' THEN COALESCE({row}.model_served, {row}.model_sent, {row}.model) "
        "ELSE '' END",
        f"CASE WHEN {row}.state = 'failed' THEN COALESCE({row}.error_code, '') ELSE '' END",
        f"CASE WHEN {row}.state = 'queued' THEN 0 ELSE {sign}1 END",
        f"{sign}{row}.attempts",
        f"{sign}COALESCE({row}.prompt_tokens, 0)",
        f"{sign}COALESCE({row}.completion_tokens, 0)",
        f"{sign}COALESCE({row}.total_tokens, 0)",
        f"{sign}COALESCE({row}.cost, 0.0)",
        succeeded_with(f"{row}.cost IS NOT NULL"),
        succeeded_with(f"{row}.request_id IS NULL"),
        succeeded_with(f"{row}.finish_reason = 'length'"),
        succeeded_with(f"{row}.fallback_reason IS NOT NULL"),
    ]


def fresh(row: str) -> str:
    """True for a job that contributes nothing: queued, never tried, no usage."""
    return (f"{row}.state = 'queued' AND {row}.attempts = 0 AND COALESCE({row}.prompt_tokens, 0) = 0 AND "
            f"COALESCE({row}.completion_tokens, 0) = 0 AND COALESCE({row}.total_tokens, 0) = 0 AND "
            f"COALESCE({row}.cost, 0.0) = 0")


def selected(row: str, sign: str = "") -> str:
    return ", ".join(f"{value} AS {name}" for value, name in zip(contribution(row, sign), COLUMNS))


UPSERT = (f"ON CONFLICT ({', '.join(GROUP)}) DO UPDATE SET "
          + ", ".join(f"{name} = job_tallies.{name} + excluded.{name}" for name in SUMS))


def add_row(row: str, sign: str = "") -> str:
    return f"INSERT INTO job_tallies ({', '.join(COLUMNS)}) VALUES ({', '.join(contribution(row, sign))}) {UPSERT}"


def add_aggregate(source: str, having: bool) -> str:
    """Sum the contributions selected by `source` into the tallies."""
    sums = ", ".join(f"sum({name})" for name in SUMS)
    nonzero = " HAVING " + " OR ".join(f"sum({name}) <> 0" for name in SUMS) if having else ""
    return (f"INSERT INTO job_tallies ({', '.join(COLUMNS)}) SELECT {', '.join(GROUP)}, {sums} FROM ({source}) AS d "
            # WHERE true: SQLite could read the ON of ON CONFLICT as a join's otherwise
            f"WHERE true GROUP BY {', '.join(GROUP)}{nonzero} ORDER BY {', '.join(GROUP)} {UPSERT}")


SQLITE_TRIGGERS = {
    "job_tallies_delete": f"AFTER DELETE ON jobs WHEN NOT ({fresh('OLD')}) BEGIN {add_row('OLD', '-')}; END",
    "job_tallies_update": (
        f"AFTER UPDATE OF {', '.join(TRACKED)} ON jobs "
        f"WHEN {' OR '.join(f'OLD.{name} IS NOT NEW.{name}' for name in TRACKED)} "
        f"BEGIN {add_row('OLD', '-')}; {add_row('NEW')}; END"),
}

_tracked = ", ".join(TRACKED)
POSTGRESQL_FUNCTIONS = {
    # UPDATE (statement level, transition tables) and TRUNCATE
    "batchrun_job_tallies_statement": f"""
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        DELETE FROM job_tallies;
        RETURN NULL;
    END IF;
    IF NOT EXISTS (SELECT {_tracked} FROM new_rows EXCEPT ALL SELECT {_tracked} FROM old_rows) THEN
        RETURN NULL;  -- no contribution changed (a lease renewal, say): no lock, no write
    END IF;
    PERFORM pg_advisory_xact_lock({TALLY_LOCK});
    {add_aggregate(f"SELECT {selected('o', '-')} FROM old_rows AS o UNION ALL SELECT {selected('n')} FROM new_rows AS n",
                   having=True)};
    RETURN NULL;
END""",
    # DELETE of a job that is not fresh (row level)
    "batchrun_job_tallies_delete": f"""
BEGIN
    PERFORM pg_advisory_xact_lock({TALLY_LOCK});
    {add_row('OLD', '-')};
    RETURN NULL;
END""",
}
POSTGRESQL_TRIGGERS = {
    "job_tallies_update": ("AFTER UPDATE ON jobs REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
                           "FOR EACH STATEMENT EXECUTE FUNCTION batchrun_job_tallies_statement()"),
    "job_tallies_truncate": "AFTER TRUNCATE ON jobs FOR EACH STATEMENT EXECUTE FUNCTION batchrun_job_tallies_statement()",
    "job_tallies_delete": (f"AFTER DELETE ON jobs FOR EACH ROW WHEN (NOT ({fresh('OLD')})) "
                           "EXECUTE FUNCTION batchrun_job_tallies_delete()"),
}


def upgrade() -> None:
    op.create_table('job_tallies',
    sa.Column('batch_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('key_id', sa.String(length=200), nullable=False),
    sa.Column('model', sa.String(length=200), nullable=False),
    sa.Column('error_code', sa.String(length=64), nullable=False),
    sa.Column('jobs', sa.BigInteger(), nullable=False),
    sa.Column('attempts', sa.BigInteger(), nullable=False),
    sa.Column('prompt_tokens', sa.BigInteger(), nullable=False),
    sa.Column('completion_tokens', sa.BigInteger(), nullable=False),
    sa.Column('total_tokens', sa.BigInteger(), nullable=False),
    sa.Column('cost', sa.Float(), nullable=False),
    sa.Column('priced', sa.BigInteger(), nullable=False),
    sa.Column('unverified', sa.BigInteger(), nullable=False),
    sa.Column('truncated', sa.BigInteger(), nullable=False),
    sa.Column('fallbacks', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['batch_id'], ['batches.id'], name=op.f('fk_job_tallies_batch_id_batches')),
    sa.PrimaryKeyConstraint('batch_id', 'state', 'key_id', 'model', 'error_code', name=op.f('pk_job_tallies'))
    )
    # Triggers first, then the backfill: on PostgreSQL, CREATE TRIGGER waits for the transactions
    # writing jobs and holds off new ones until this one commits, so no change falls in between.
    if op.get_bind().dialect.name == "postgresql":
        for name, body in POSTGRESQL_FUNCTIONS.items():
            op.execute(f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $${body}$$")
        for name, definition in POSTGRESQL_TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {name} {definition}")
    else:
        for name, definition in SQLITE_TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {name} {definition}")
    op.execute(add_aggregate(f"SELECT {selected('jobs')} FROM jobs WHERE NOT ({fresh('jobs')})", having=False))


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for name in (POSTGRESQL_TRIGGERS if postgresql else SQLITE_TRIGGERS):
        op.execute(f"DROP TRIGGER IF EXISTS {name}" + (" ON jobs" if postgresql else ""))
    if postgresql:
        for name in POSTGRESQL_FUNCTIONS:
            op.execute(f"DROP FUNCTION IF EXISTS {name}()")
    op.drop_table('job_tallies')
