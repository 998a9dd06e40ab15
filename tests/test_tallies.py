"""The tallies behind `status` (migration 0003) never drift from the jobs.

`Store.counts` and `Store.usage` read per-batch tallies that triggers on `jobs` keep up to date; here they
must equal a full scan of the jobs table (the aggregate `status` used to compute, in plain SQL) after real
runs with successes, failures of several codes and retries, `batchrun retry`, `batchrun cancel`, a lost
lease, concurrent runners, updates and deletes made outside batchrun, and an upgrade of a database that
already holds jobs — on SQLite and on PostgreSQL. `status` on a SQLite file reads the same through bare
sqlite3.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from conftest import FAST_RETRY, Cli, database_at, in_threads, job_specs, make_keys, migrate, provider_env
from sqlalchemy import text

from batchrun.jobfile import JobSpec
from batchrun.records import BatchCounts, Failed, Outcome, Retry, Succeeded, UsageRow
from batchrun.schema import SCHEMA_REVISION
from batchrun.simulator import RunningSimulator
from batchrun.database import alembic_config as _alembic_config
from batchrun.store import Store
from batchrun.view import open_sqlite_view

# --- the full scan: what the tallies must equal ---------------------------------------------------------

PER_STATE = """
SELECT b.id, b.name, j.state, count(j.id), coalesce(sum(j.attempts), 0), coalesce(sum(j.prompt_tokens), 0),
       coalesce(sum(j.completion_tokens), 0), coalesce(sum(j.total_tokens), 0),
       sum(CASE WHEN j.request_id IS NULL THEN 1 ELSE 0 END),
       sum(CASE WHEN j.finish_reason = 'length' THEN 1 ELSE 0 END),
       sum(CASE WHEN j.fallback_reason IS NOT NULL THEN 1 ELSE 0 END),
       coalesce(sum(j.cost), 0.0), count(j.cost)
FROM batches AS b LEFT JOIN jobs AS j ON j.batch_id = b.id
GROUP BY b.id, b.name, j.state
"""
PER_CODE = ("SELECT batch_id, coalesce(error_code, 'unknown'), count(*) FROM jobs WHERE state = 'failed' "
            "GROUP BY batch_id, coalesce(error_code, 'unknown')")
USAGE = """
SELECT {name}, count(*), coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0),
       coalesce(sum(total_tokens), 0), coalesce(sum(cost), 0.0), count(cost)
FROM jobs WHERE state = 'succeeded' GROUP BY {name}
"""
USAGE_NAMES = {"key": "coalesce(key_id, '')", "model": "coalesce(model_served, model_sent, model)"}


def scanned_counts(store: Store) -> list[BatchCounts]:
    batches: dict[int, dict[str, Any]] = {}
    with store.transaction() as conn:
        for (bid, name, state, count, attempts, prompt, completion, total, unverified, truncated, fallbacks,
             cost, priced) in conn.execute(text(PER_STATE)):
            entry = batches.setdefault(bid, {
                "name": name, "queued": 0, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0,
                "attempts": 0, "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0,
                "failed_by_code": {}, "unverified": 0, "truncated": 0, "fallbacks": 0, "cost": 0.0, "priced": 0})
            if state is None:  # a batch without jobs
                continue
            entry[state] = int(count)
            for field, value in (("attempts", attempts), ("prompt_tokens", prompt),
                                 ("completion_tokens", completion), ("total_tokens", total)):
                entry[field] += int(value)
            entry["cost"] += float(cost)
            if state == "succeeded":
                entry.update(unverified=int(unverified), truncated=int(truncated), fallbacks=int(fallbacks),
                             priced=int(priced))
        for bid, code, count in conn.execute(text(PER_CODE)):
            batches[bid]["failed_by_code"][code] = int(count)
    states = ("queued", "running", "succeeded", "failed", "cancelled")
    return [BatchCounts(total=sum(entry[s] for s in states), **entry) for _, entry in sorted(batches.items())]


def scanned_usage(store: Store, by: str) -> list[UsageRow]:
    with store.transaction() as conn:
        rows = conn.execute(text(USAGE.format(name=USAGE_NAMES[by]))).all()
    return sorted((UsageRow(row[0], int(row[1]), int(row[2]), int(row[3]), int(row[4]), float(row[5]),
                            int(row[6])) for row in rows), key=lambda row: row.name)


def with_approximate_cost(values: list[Any]) -> list[dict[str, Any]]:
    """Cost is a float summed in another order by the tallies: equal up to rounding."""
    return [{**dataclasses.asdict(value), "cost": pytest.approx(value.cost)} for value in values]


def assert_tallies_match_a_full_scan(store: Store) -> list[BatchCounts]:
    counts = store.counts()
    for c in counts:  # the breakdown by endpoint (one endpoint here) is the batch's own counts
        if c.endpoints:  # (jobs inserted by hand, outside batchrun, leave their batch without one)
            assert [(e.total, e.queued, e.succeeded, e.failed, e.total_tokens) for e in c.endpoints] == \
                [(c.total, c.queued, c.succeeded, c.failed, c.total_tokens)]
    assert [dataclasses.asdict(dataclasses.replace(c, endpoints=())) for c in counts] == \
        with_approximate_cost(scanned_counts(store))
    for by in ("key", "model"):
        assert [dataclasses.asdict(u) for u in store.usage(by)] == with_approximate_cost(scanned_usage(store, by))
    for one in counts:  # one batch at a time reads the same
        batch_id = store.batch_id(one.name)
        assert store.counts(batch_id) == [one]
        assert sum(u.requests for u in store.usage("key", batch_id)) == one.succeeded
    return counts


# --- through the CLI, against the simulator -------------------------------------------------------------

def line(custom_id: str, model: str = "fast", **extra: Any) -> str:
    return json.dumps({"custom_id": custom_id, "model": model,
                       "messages": [{"role": "user", "content": f"question {custom_id}"}], **extra}) + "\n"


def submit(cli: Cli, path: Path, lines: list[str], batch: str) -> None:
    path.write_text("".join(lines))
    result = cli("submit", str(path), "--batch", batch)
    assert result.returncode == 0, result.stderr


def test_runs_retry_cancel_and_a_lost_lease_keep_the_tallies_equal_to_a_full_scan(
        any_db_url: str, tmp_path: Path, sim: RunningSimulator) -> None:
    cli = Cli(tmp_path, {"BATCHRUN_DB": any_db_url})
    env = provider_env(sim, make_keys(2))
    mixed = [line(f"fast-{i}") for i in range(12)] + [line(f"large-{i}", "reasoning") for i in range(3)]
    mixed += [line(f"mini-{i}", "sim-mini") for i in range(2)]  # no price: unpriced results
    mixed += [line(f"cut-{i}", max_tokens=1) for i in range(2)]  # finish_reason length
    mixed += [line(f"gone-{i}", "retired-model") for i in range(2)]  # sent to the fallback
    mixed += [line("too-hot", temperature=7), line("no-json-mode", "sim-mini", response_format={"type": "json_object"})]
    submit(cli, tmp_path / "mixed.jsonl", mixed, "mixed")

    # 1. A flaky provider: successes, retries, no_capacity after two attempts, and invalid jobs.
    sim.config.fail_rate = 0.5
    first = cli("run", "--no-progress", "--max-attempts", "2", "--transient-patience", "0", "--fallback", "fast",
                *FAST_RETRY, env=env)
    assert first.returncode == 1, first.stdout + first.stderr
    with Store.open(any_db_url) as store:
        (after_run,) = assert_tallies_match_a_full_scan(store)
    assert len(after_run.failed_by_code) >= 2 and "no_capacity" in after_run.failed_by_code, after_run
    assert after_run.retries > 0 and after_run.succeeded > 0, after_run

    # 2. `batchrun retry` of one code, then `batchrun cancel` of another batch.
    assert cli("retry", "--code", "no_capacity").returncode == 0
    submit(cli, tmp_path / "later.jsonl", [line(f"later-{i}") for i in range(5)], "later")
    assert cli("cancel", "--batch", "later").returncode == 0
    with Store.open(any_db_url) as store:
        counts = {c.name: c for c in assert_tallies_match_a_full_scan(store)}
        assert counts["mixed"].queued == after_run.failed_by_code["no_capacity"]
        assert "no_capacity" not in counts["mixed"].failed_by_code
        assert counts["later"].cancelled == 5

        # 3. A runner that dies holding jobs (one of them already back once): its leases expire.
        submit(cli, tmp_path / "ghost.jsonl", [line(f"ghost-{i}") for i in range(4)], "ghost")
        ghost = store.batch_id("ghost")
        held = store.claim("ghost-runner", 4, lease_seconds=30, batch_id=ghost)
        assert len(held) == 4
        store.record("ghost-runner", [Retry(held[0].id, 1, 0.0, "key1", 429, None, "rate_limited", "slow down")])
        assert_tallies_match_a_full_scan(store)
        store.claim("ghost-runner", 1, lease_seconds=30, batch_id=ghost)
        assert store.requeue_expired(now=time.time() + 60) == 4
        assert_tallies_match_a_full_scan(store)

    # 4. The provider is back (without request ids): everything queued succeeds, unverified.
    sim.config.fail_rate = 0.0
    sim.config.omit_request_id = True
    second = cli("run", "--no-progress", "--fallback", "fast", *FAST_RETRY, env=env)
    assert "failed: 0" in second.stdout and "left: 0" in second.stdout, second.stdout + second.stderr

    # 5. A job in flight when status looks.
    submit(cli, tmp_path / "tail.jsonl", [line(f"tail-{i}") for i in range(2)], "tail")
    with Store.open(any_db_url) as store:
        store.register_runner("busy-runner")
        store.claim("busy-runner", 1, lease_seconds=30, batch_id=store.batch_id("tail"))
        counts = {c.name: c for c in assert_tallies_match_a_full_scan(store)}
    finished = counts["mixed"]
    assert finished.queued == 0 and finished.unverified > 0 and finished.fallbacks == 2, finished
    assert finished.truncated == 2 and 0 < finished.priced < finished.succeeded, finished
    assert counts["ghost"].succeeded == 4 and counts["ghost"].attempts == 4 + 1, counts["ghost"]
    assert (counts["tail"].running, counts["tail"].queued, counts["tail"].total) == (1, 1, 2)
    shown = json.loads(cli("status", "--json").stdout)
    assert [b["succeeded"] for b in shown["batches"]] == [c.succeeded for c in counts.values()]
    assert_the_bare_driver_reads_what_the_store_reads(any_db_url)


def assert_the_bare_driver_reads_what_the_store_reads(url: str) -> None:
    """`status` on a SQLite file reads through sqlite3 alone (no SQLAlchemy): the same answers."""
    bare = open_sqlite_view(url)
    if not url.startswith("sqlite"):
        assert bare is None  # PostgreSQL: through the store
        return
    assert bare is not None
    try:
        with Store.open(url) as store:
            for name in store.batch_names().values():
                batch_id = store.batch_id(name)
                assert bare.batch_id(name) == batch_id and bare.counts(batch_id) == store.counts(batch_id)
                assert bare.usage("model", batch_id) == store.usage("model", batch_id)
            assert (bare.batch_names(), bare.counts(), bare.usage("key"), bare.key_records()) == \
                (store.batch_names(), store.counts(), store.usage("key"), store.key_records())
            assert (bare.last_runner(ended=True), bare.runner_activity(180, now=time.time())) == \
                (store.last_runner(ended=True), store.runner_activity(180, now=time.time()))
            assert bare.runner_activity(180) != []  # the busy runner of step 5 holds a job
    finally:
        bare.close()


def test_status_brings_an_older_database_up_to_date_and_reports_an_empty_one(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    with database_at(url, "0002") as conn:
        conn.execute(text("INSERT INTO batches (name, created_at) VALUES ('old', 1.0)"))
    assert open_sqlite_view(url) is None  # not at the current revision: the store migrates first
    cli = Cli(tmp_path, {"BATCHRUN_DB": url})

    shown, missing = cli("status", "--json"), cli("status", env={"BATCHRUN_DB": f"sqlite:///{tmp_path / 'new.db'}"})

    assert shown.returncode == 0 and json.loads(shown.stdout)["batches"][0]["name"] == "old", shown.stderr
    with Store.open(url, migrate=False) as upgraded:
        assert upgraded._current_revision() == SCHEMA_REVISION
    assert missing.returncode == 0 and missing.stdout.startswith("no batches in sqlite:///"), missing.stderr


# --- through the store --------------------------------------------------------------------------------

def specs(count: int, start: int = 0, model: str = "m") -> list[JobSpec]:
    return job_specs(count, start, model, content="question {custom_id}")


def test_concurrent_runners_keep_the_tallies_right_and_never_deadlock(any_db_url: str) -> None:
    with Store.open(any_db_url) as setup:
        setup.add_jobs(setup.ensure_batch("b"), specs(240))
    errors: list[BaseException] = []

    def runner(owner: str) -> None:
        try:
            with Store.open(any_db_url) as mine:
                while claimed := mine.claim(owner, 6, lease_seconds=30):
                    # One transaction that moves jobs to every state a result can take.
                    outcomes: list[Outcome] = []
                    for job in claimed:
                        if job.attempts == 0 and job.id % 3 == 0:
                            outcomes.append(Retry(job.id, 1, 0.0, owner, 503, None, "no_capacity", "busy"))
                        elif job.id % 5 == 0:
                            outcomes.append(Failed(job.id, job.attempts + 1, owner, 422, "{}", "validation_error", "x"))
                        else:
                            outcomes.append(Succeeded(job.id, job.attempts + 1, owner, 200, f"r{job.id}", "{}",
                                                      "m-2025", "stop", 1, 2, 3, cost=0.001))
                    mine.record(owner, outcomes)
        except BaseException as exc:  # reported below: a deadlock would surface here
            errors.append(exc)

    in_threads(runner, [f"runner-{i}" for i in range(4)], timeout=None)

    assert errors == []
    with Store.open(any_db_url) as store:
        (counts,) = assert_tallies_match_a_full_scan(store)
    assert (counts.queued, counts.running, counts.succeeded + counts.failed) == (0, 0, 240)
    assert counts.attempts == 240 + 80  # every third job was sent twice


def test_updates_and_deletes_made_outside_batchrun_are_tallied_too(any_db_url: str) -> None:
    with Store.open(any_db_url) as store:
        one, two = store.ensure_batch("one"), store.ensure_batch("two")
        store.add_jobs(one, specs(6))
        with store.transaction() as conn:
            # Submitting writes nothing to the tallies: a fresh job contributes nothing.
            assert conn.execute(text("SELECT count(*) FROM job_tallies")).scalar_one() == 0
        store.claim("r", 3, lease_seconds=30)
        store.record("r", [Succeeded(1, 1, "k1", 200, "q1", "{}", "m", "stop", 5, 5, 10, cost=0.5)])
        with store.transaction() as conn:
            # Jobs enter the queue fresh (there is no insert trigger); what happens to them next is tallied.
            conn.execute(text(
                "INSERT INTO jobs (batch_id, line, custom_id, body_hash, body, model, input_tokens, state, attempts, "
                "not_before) VALUES (:two, 1, 'imported', 'h', '{}', 'm', 1, 'queued', 0, 0.0), "
                "(:two, 2, 'tried', 'h', '{}', 'm', 1, 'queued', 0, 0.0)"), {"two": two})
            conn.execute(text("UPDATE jobs SET state = 'succeeded', attempts = 2, key_id = 'k9', prompt_tokens = 7, "
                              "completion_tokens = 3, total_tokens = 10, cost = 0.25 WHERE custom_id = 'imported'"))
            conn.execute(text("UPDATE jobs SET attempts = 3 WHERE custom_id = 'tried'"))
            conn.execute(text("UPDATE jobs SET lease_expires = lease_expires + 5 WHERE state = 'running'"))
        assert_tallies_match_a_full_scan(store)
        with store.transaction() as conn:
            conn.execute(text("UPDATE jobs SET batch_id = :two WHERE custom_id IN ('c0000', 'c0005')"), {"two": two})
            conn.execute(text("UPDATE jobs SET model_served = 'm-new', key_id = NULL WHERE custom_id = 'imported'"))
            conn.execute(text("DELETE FROM jobs WHERE custom_id IN ('c0001', 'tried', 'c0004')"))
        counts = {c.name: c for c in assert_tallies_match_a_full_scan(store)}
        assert [u.name for u in store.usage("key")] == ["", "k1"]
        assert (counts["one"].total, counts["two"].total) == (2, 3)
        with store.transaction() as conn:
            conn.execute(text("TRUNCATE jobs" if conn.dialect.name == "postgresql" else "DELETE FROM jobs"))
        assert [c.total + c.attempts for c in assert_tallies_match_a_full_scan(store)] == [0, 0]


# --- the migration ------------------------------------------------------------------------------------

JOBS_AT_0002 = [
    # custom_id, state, attempts, key, model served, error code, finish reason, request id, tokens, cost, fallback
    ("q", "queued", 0, None, None, None, None, None, None, None, None),
    ("q2", "queued", 2, "k1", None, "no_capacity", None, None, None, None, None),
    ("r", "running", 1, None, None, None, None, None, None, None, None),
    ("s1", "succeeded", 1, "k1", "m-1", None, "stop", "req1", 10, 0.5, None),
    ("s2", "succeeded", 3, "k2", None, None, "length", None, 4, None, "m: gone"),
    ("f1", "failed", 2, "k1", None, "no_capacity", None, None, None, None, None),
    ("f2", "failed", 1, "k2", None, None, None, None, None, None, None),
    ("c", "cancelled", 1, None, None, None, None, None, None, None, None),
]


def test_a_database_at_0002_with_jobs_upgrades_to_the_right_counts_and_downgrades(any_db_url: str) -> None:
    with database_at(any_db_url, "0002") as conn:
        conn.execute(text("INSERT INTO batches (name, created_at) VALUES ('old', 1.0), ('empty', 2.0)"))
        batch = conn.execute(text("SELECT id FROM batches WHERE name = 'old'")).scalar_one()
        for i, (custom_id, state, attempts, key, served, code, finish, request, tokens, cost, fallback) in \
                enumerate(JOBS_AT_0002):
            conn.execute(text(
                "INSERT INTO jobs (batch_id, line, custom_id, body_hash, body, model, prompt_chars, state, "
                "attempts, not_before, key_id, model_served, error_code, finish_reason, request_id, "
                "prompt_tokens, completion_tokens, total_tokens, cost, fallback_reason) VALUES (:batch, :line, "
                ":custom_id, 'h', '{}', 'm', 1, :state, :attempts, 0.0, :key, :served, :code, :finish, :request, "
                ":tokens, :tokens, :total, :cost, :fallback)"), {
                    "batch": batch, "line": i + 1, "custom_id": custom_id, "state": state, "attempts": attempts,
                    "key": key, "served": served, "code": code, "finish": finish, "request": request,
                    "tokens": tokens, "total": None if tokens is None else 2 * tokens, "cost": cost,
                    "fallback": fallback})

    with Store.open(any_db_url) as store:
        assert store._current_revision() == SCHEMA_REVISION
        old, empty = assert_tallies_match_a_full_scan(store)
        assert (old.queued, old.running, old.succeeded, old.failed, old.cancelled, old.total) == (2, 1, 2, 2, 1, 8)
        assert (old.attempts, old.total_tokens, old.cost, old.priced) == (11, 28, 0.5, 1)
        assert (old.unverified, old.truncated, old.fallbacks) == (1, 1, 1)
        assert old.failed_by_code == {"no_capacity": 1, "unknown": 1}
        assert empty == BatchCounts("empty", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, {})
        assert [(u.name, u.requests) for u in store.usage("model")] == [("m", 1), ("m-1", 1)]

        migrate(store, "0002", command.downgrade)
        with store.transaction() as conn:
            conn.execute(text("UPDATE jobs SET state = 'failed', error_code = 'late' WHERE custom_id = 'r'"))
            tables = ("SELECT name FROM sqlite_master WHERE type IN ('table', 'trigger') AND name LIKE 'job_tallies%'"
                      if conn.dialect.name == "sqlite" else
                      "SELECT tgname FROM pg_trigger WHERE tgname LIKE 'job_tallies%' "
                      "UNION ALL SELECT tablename FROM pg_tables WHERE tablename = 'job_tallies'")
            assert conn.execute(text(tables)).all() == []
        store.upgrade()  # the backfill sees the change made while there were no triggers
        (old, _) = assert_tallies_match_a_full_scan(store)
        assert old.failed_by_code == {"no_capacity": 1, "unknown": 1, "late": 1}
        config = _alembic_config(store._engine)
    command.check(config)  # the upgraded database is exactly the models
