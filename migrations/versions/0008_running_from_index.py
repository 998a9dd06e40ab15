"""job tallies: running jobs counted by the claim index, as queued ones are; claims do no tally work

Until now a job's contribution counted it once it was leased: every claim moved it from the `queued`
tally row to the `running` one, and every result from `running` to `succeeded` — four upserts a job,
run by the triggers of 0003 in the claim's and the result's transactions. Measured at thousands of
jobs a second (bench 1), that was ≈ 10 µs of the run's CPU a job, most of it for tallying jobs that
are only in flight.

Now a job that is queued *or running* counts 0 in `jobs` (`Store.counts` counts both states from the
claim index `ix_jobs_claim`, state first), and a job in one of those states with no attempt and no usage
contributes nothing at all ("fresh"). On SQLite the update trigger is split in two — one takes away the
old contribution unless the old row was fresh, one adds the new unless the new row is fresh — so a claim
of a fresh job fires neither and a first result makes one upsert instead of two. On PostgreSQL the
statement trigger compares the contributions of the old and new rows instead of the tracked columns, so a
claim takes neither the tally lock nor a write.

The index of leases, `ix_jobs_lease_owner`, now holds only leased jobs (`WHERE lease_owner IS NOT NULL`):
every queued and finished job had an entry for its NULL, which each claim and each result moved (and
each submitted job added).

The existing `running` tally rows lose their job counts (attempts and usage of jobs leased again after a
failure stay). Downgrading restores 0003's triggers and puts the running jobs back into the tallies.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 18:30:00.000000
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

# The helpers below are 0003's, with the states the index counts as a parameter: copied, not imported,
# so that each migration stays what it was when databases were migrated with it.

#: pg_advisory_xact_lock key of tally writers (as in 0003)
TALLY_LOCK = 7166022

GROUP = ("batch_id", "state", "key_id", "model", "error_code")
SUMS = ("jobs", "attempts", "prompt_tokens", "completion_tokens", "total_tokens", "cost", "priced",
        "unverified", "truncated", "fallbacks")
COLUMNS = GROUP + SUMS
#: the columns of `jobs` a contribution depends on
TRACKED = ("batch_id", "state", "attempts", "key_id", "model", "model_served", "model_sent", "error_code",
           "prompt_tokens", "completion_tokens", "total_tokens", "cost", "request_id", "finish_reason",
           "fallback_reason")
#: the states whose jobs the claim index counts: 0003 had only queued
INDEXED_0003 = ("queued",)
INDEXED = ("queued", "running")


def _in(row: str, states: tuple[str, ...]) -> str:
    return f"{row}.state IN ({', '.join(repr(state) for state in states)})"


def contribution(row: str, sign: str = "", indexed: tuple[str, ...] = INDEXED) -> list[str]:
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
        f"CASE WHEN {_in(row, indexed)} THEN 0 ELSE {sign}1 END",
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


def fresh(row: str, indexed: tuple[str, ...] = INDEXED) -> str:
    """True for a job that contributes nothing: counted by the index, never tried, no usage."""
    return (f"{_in(row, indexed)} AND {row}.attempts = 0 AND COALESCE({row}.prompt_tokens, 0) = 0 AND "
            f"COALESCE({row}.completion_tokens, 0) = 0 AND COALESCE({row}.total_tokens, 0) = 0 AND "
            f"COALESCE({row}.cost, 0.0) = 0")


def selected(row: str, sign: str = "", indexed: tuple[str, ...] = INDEXED) -> str:
    return ", ".join(f"{value} AS {name}" for value, name in zip(contribution(row, sign, indexed), COLUMNS))


UPSERT = (f"ON CONFLICT ({', '.join(GROUP)}) DO UPDATE SET "
          + ", ".join(f"{name} = job_tallies.{name} + excluded.{name}" for name in SUMS))


def add_row(row: str, sign: str = "", indexed: tuple[str, ...] = INDEXED) -> str:
    return (f"INSERT INTO job_tallies ({', '.join(COLUMNS)}) VALUES ({', '.join(contribution(row, sign, indexed))}) "
            f"{UPSERT}")


def add_aggregate(source: str) -> str:
    """Sum the contributions selected by `source` into the tallies (groups that sum to zero left out)."""
    sums = ", ".join(f"sum({name})" for name in SUMS)
    nonzero = " OR ".join(f"sum({name}) <> 0" for name in SUMS)
    return (f"INSERT INTO job_tallies ({', '.join(COLUMNS)}) SELECT {', '.join(GROUP)}, {sums} FROM ({source}) AS d "
            # WHERE true: SQLite could read the ON of ON CONFLICT as a join's otherwise
            f"WHERE true GROUP BY {', '.join(GROUP)} HAVING {nonzero} ORDER BY {', '.join(GROUP)} {UPSERT}")


_CHANGED = " OR ".join(f"OLD.{name} IS NOT NEW.{name}" for name in TRACKED)


def sqlite_triggers(indexed: tuple[str, ...]) -> dict[str, str]:
    delete = f"AFTER DELETE ON jobs WHEN NOT ({fresh('OLD', indexed)}) BEGIN {add_row('OLD', '-', indexed)}; END"
    if indexed == INDEXED_0003:
        return {"job_tallies_delete": delete, "job_tallies_update": (
            f"AFTER UPDATE OF {', '.join(TRACKED)} ON jobs WHEN {_CHANGED} "
            f"BEGIN {add_row('OLD', '-', indexed)}; {add_row('NEW', '', indexed)}; END")}
    return {
        "job_tallies_delete": delete,
        # Two triggers: their order does not matter, the sums are the same either way.
        "job_tallies_update_old": (
            f"AFTER UPDATE OF {', '.join(TRACKED)} ON jobs WHEN ({_CHANGED}) AND NOT ({fresh('OLD', indexed)}) "
            f"BEGIN {add_row('OLD', '-', indexed)}; END"),
        "job_tallies_update_new": (
            f"AFTER UPDATE OF {', '.join(TRACKED)} ON jobs WHEN ({_CHANGED}) AND NOT ({fresh('NEW', indexed)}) "
            f"BEGIN {add_row('NEW', '', indexed)}; END"),
    }


def postgresql_functions(indexed: tuple[str, ...]) -> dict[str, str]:
    tracked = ", ".join(TRACKED)
    if indexed == INDEXED_0003:
        unchanged = f"SELECT {tracked} FROM new_rows EXCEPT ALL SELECT {tracked} FROM old_rows"
    else:
        # No contribution changed (a claim of fresh jobs, a lease renewal): no lock, no write.
        unchanged = (f"SELECT {selected('n', '', indexed)} FROM new_rows AS n "
                     f"EXCEPT ALL SELECT {selected('o', '', indexed)} FROM old_rows AS o")
    return {
        "batchrun_job_tallies_statement": f"""
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        DELETE FROM job_tallies;
        RETURN NULL;
    END IF;
    IF NOT EXISTS ({unchanged}) THEN
        RETURN NULL;
    END IF;
    PERFORM pg_advisory_xact_lock({TALLY_LOCK});
    {add_aggregate(f"SELECT {selected('o', '-', indexed)} FROM old_rows AS o "
                   f"UNION ALL SELECT {selected('n', '', indexed)} FROM new_rows AS n")};
    RETURN NULL;
END""",
        "batchrun_job_tallies_delete": f"""
BEGIN
    PERFORM pg_advisory_xact_lock({TALLY_LOCK});
    {add_row('OLD', '-', indexed)};
    RETURN NULL;
END""",
    }


def postgresql_delete_trigger(indexed: tuple[str, ...]) -> str:
    return (f"CREATE TRIGGER job_tallies_delete AFTER DELETE ON jobs FOR EACH ROW WHEN (NOT ({fresh('OLD', indexed)})) "
            "EXECUTE FUNCTION batchrun_job_tallies_delete()")


def _switch(to: tuple[str, ...], running_jobs: str) -> None:
    """Triggers and functions for `to`, and the running tally rows' job counts set by `running_jobs`."""
    if op.get_bind().dialect.name == "postgresql":
        # CREATE OR REPLACE FUNCTION takes effect at once for the triggers that call it; the lock keeps a
        # runner's claim or result (and so its tally write) from falling between the function's change
        # and the count's. Taken first: the triggers take the tally lock only after their write to jobs.
        op.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        for name, body in postgresql_functions(to).items():
            op.execute(f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $${body}$$")
        op.execute("DROP TRIGGER IF EXISTS job_tallies_delete ON jobs")
        op.execute(postgresql_delete_trigger(to))
    else:
        for name in ("job_tallies_update", "job_tallies_update_old", "job_tallies_update_new", "job_tallies_delete"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        for name, definition in sqlite_triggers(to).items():
            op.execute(f"CREATE TRIGGER {name} {definition}")
    op.execute(running_jobs)


def upgrade() -> None:
    _switch(INDEXED, "UPDATE job_tallies SET jobs = 0 WHERE state = 'running'")
    leased = sa.text("lease_owner IS NOT NULL")
    op.drop_index("ix_jobs_lease_owner", table_name="jobs")
    op.create_index("ix_jobs_lease_owner", "jobs", ["lease_owner"], sqlite_where=leased, postgresql_where=leased)


def downgrade() -> None:
    op.drop_index("ix_jobs_lease_owner", table_name="jobs")
    op.create_index("ix_jobs_lease_owner", "jobs", ["lease_owner"])
    _switch(INDEXED_0003, add_aggregate(
        f"SELECT batch_id, state, '' AS key_id, '' AS model, '' AS error_code, 1 AS jobs, 0 AS attempts, "
        "0 AS prompt_tokens, 0 AS completion_tokens, 0 AS total_tokens, 0.0 AS cost, 0 AS priced, "
        "0 AS unverified, 0 AS truncated, 0 AS fallbacks FROM jobs WHERE state = 'running'"))
