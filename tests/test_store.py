"""The queue store on real databases: SQLite files and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from alembic import command
from conftest import PG_ADMIN_URL, _outside, in_threads, job_specs as specs, make_keys, provider_env, write_jobs

from batchrun.catalog import ModelInfo
from batchrun.records import Failed, Retry, Succeeded
from batchrun.simulator import RunningSimulator
from batchrun.database import alembic_config as _alembic_config
from batchrun.store import Store
from batchrun.driver import placeholders


def success(job_id: int) -> Succeeded:
    return Succeeded(job_id, 1, "k1", 200, "req", '{"ok": true}', "m", "stop", 1, 2, 3)


@pytest.fixture
def store(any_db_url: str):  # type: ignore[no-untyped-def]
    with Store.open(any_db_url) as opened:
        yield opened


def test_claims_come_in_input_order_and_are_leased_once(store: Store) -> None:
    batch = store.ensure_batch("b")
    store.add_jobs(batch, specs(10))

    first = store.claim("runner-a", 4, lease_seconds=30)
    second = store.claim("runner-b", 100, lease_seconds=30)

    assert [job.custom_id for job in first] == ["c0000", "c0001", "c0002", "c0003"]
    assert [job.custom_id for job in second] == [f"c{i:04d}" for i in range(4, 10)]
    assert store.claim("runner-c", 10, lease_seconds=30) == []
    assert store.pending().running == 10


def test_concurrent_claimers_never_get_the_same_job(any_db_url: str) -> None:
    with Store.open(any_db_url) as setup:
        setup.add_jobs(setup.ensure_batch("b"), specs(400))
    got: dict[str, list[int]] = {}
    # Each claims once before any claims again: without that, one claimer could take every job before
    # the others had opened the database (a claim takes ≈ 50 µs), and nothing would have competed.
    first_claims = threading.Barrier(4, timeout=60)

    def claimer(owner: str) -> None:
        with Store.open(any_db_url) as mine:
            ids = got.setdefault(owner, [])
            ids.extend(job.id for job in mine.claim(owner, 7, lease_seconds=30))
            first_claims.wait()
            while batch := mine.claim(owner, 7, lease_seconds=30):
                ids.extend(job.id for job in batch)

    in_threads(claimer, [f"r{i}" for i in range(4)])

    every = [job_id for ids in got.values() for job_id in ids]
    assert len(every) == 400 and len(set(every)) == 400
    assert len(got) == 4 and all(got.values())  # they really competed


def test_a_finished_result_is_never_overwritten(store: Store) -> None:
    store.add_jobs(store.ensure_batch("b"), specs(2))
    job, other = store.claim("a", 2, lease_seconds=30)
    assert store.record("a", [success(job.id)]) == 1

    # A stale runner (its lease lost) reports a failure for the same job, and for one it never held.
    landed = store.record("a", [Failed(job.id, 2, "k1", 500, None, "transient", "late")])
    stolen = store.record("b", [Failed(other.id, 1, "k1", 500, None, "transient", "not mine")])

    assert (landed, stolen) == (0, 0)
    rows = {row.custom_id: row for row in store.export_rows(["succeeded", "failed", "running"])}
    assert rows[job.custom_id].state == "succeeded" and rows[job.custom_id].response == '{"ok": true}'
    assert rows[other.custom_id].state == "running"


def test_expired_leases_return_to_the_queue_and_retries_wait_their_turn(store: Store) -> None:
    store.add_jobs(store.ensure_batch("b"), specs(3))
    now = time.time()
    dead = store.claim("dead-runner", 2, lease_seconds=5, now=now)
    assert store.requeue_expired(now=now + 1) == 0
    assert store.requeue_expired(now=now + 6) == 2

    again = store.claim("live", 3, lease_seconds=30, now=now + 6)
    assert {job.id for job in dead} <= {job.id for job in again}
    store.record("live", [Retry(again[0].id, 1, now + 100, "k1", 503, None, "transient", "busy")], now=now + 6)
    pending = store.pending(now=now + 7)
    assert (pending.queued_now, pending.queued_later, pending.next_not_before) == (0, 1, now + 100)
    assert store.claim("live", 3, lease_seconds=30, now=now + 7) == []
    assert [job.id for job in store.claim("live", 3, lease_seconds=30, now=now + 101)] == [again[0].id]


def test_jobs_of_a_dead_process_are_released_at_once(store: Store) -> None:
    store.add_jobs(store.ensure_batch("b"), specs(3))
    store.register_runner("host:999999:dead")
    store.claim("host:999999:dead", 3, lease_seconds=600)

    released = store.release_dead_runners(lambda pid: False)

    assert released == ["host:999999:dead"]
    assert store.pending().queued_now == 3
    last = store.last_runner()
    assert last is not None and last.outcome and "died" in last.outcome


def test_counts_and_tokens_per_batch(store: Store) -> None:
    one, two = store.ensure_batch("one"), store.ensure_batch("two")
    store.add_jobs(one, specs(3))
    store.add_jobs(two, specs(2, start=100))
    jobs = store.claim("r", 10, lease_seconds=30, batch_id=one)
    store.record("r", [success(jobs[0].id), Failed(jobs[1].id, 1, "k1", 422, "{}", "validation_error", "bad")])

    counts = {c.name: c for c in store.counts()}

    assert (counts["one"].succeeded, counts["one"].failed, counts["one"].running, counts["one"].total) == (1, 1, 1, 3)
    assert counts["one"].total_tokens == 3 and counts["one"].failed_by_code == {"validation_error": 1}
    assert (counts["two"].queued, counts["two"].total) == (2, 2)


def test_migrations_produce_exactly_the_models(any_db_url: str) -> None:
    with Store.open(any_db_url) as store:
        config = _alembic_config(store._engine)
    command.check(config)  # raises if autogenerate would find any difference


def test_the_schema_revision_constant_is_the_newest_migration(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from alembic.script import ScriptDirectory

    from batchrun.schema import SCHEMA_REVISION

    with Store.open(f"sqlite:///{tmp_path / 'x.db'}") as store:
        head = ScriptDirectory.from_config(_alembic_config(store._engine)).get_current_head()
    assert head == SCHEMA_REVISION


# --- SQL written with `?` placeholders, on a `%s` driver -------------------------------------------------

def test_placeholders_leave_literals_names_and_comments_alone_and_escape_percent() -> None:
    sql = "SELECT '?', \"a?b\", 'it''s ?', x FROM t WHERE y = ? AND z LIKE 'p%' -- why?\nAND w = ?"
    assert placeholders(sql, "%s") == (
        "SELECT '?', \"a?b\", 'it''s ?', x FROM t WHERE y = %s AND z LIKE 'p%%' -- why?\nAND w = %s")
    assert placeholders(sql, "?") == sql  # SQLite's own placeholder: nothing to do


def test_a_question_mark_or_percent_in_a_literal_reads_right_on_both_databases(any_db_url: str) -> None:
    with Store.open(any_db_url) as store, store._reading() as query:
        rows = query("SELECT '?' || CAST(? AS TEXT), 'a%b', 'it''s?' -- any question?\n", ("x",))
    assert [tuple(row) for row in rows] == [("?x", "a%b", "it's?")]


def test_runners_saving_the_catalogue_at_once_leave_one_whole_catalogue(any_db_url: str) -> None:
    """Runners started together each save the catalogue they fetched (seen on PostgreSQL: a
    delete-all-then-insert met the other saver's rows as a duplicate key, and the run stopped)."""
    catalogues = [[ModelInfo(f"m{i}", context_length=1000 * n) for i in range(20)] for n in range(1, 5)]
    with Store.open(any_db_url):
        pass  # migrated once, before the savers start
    errors: list[BaseException] = []
    start = threading.Barrier(len(catalogues), timeout=60)

    def saver(entries: list[ModelInfo]) -> None:
        with Store.open(any_db_url) as mine:
            start.wait()
            for _ in range(15):
                try:
                    mine.save_catalog(entries)
                except BaseException as exc:  # noqa: BLE001  (reported below)
                    errors.append(exc)
                    return

    in_threads(saver, catalogues, timeout=120)

    assert errors == []
    with Store.open(any_db_url) as store:
        saved = store.load_catalog()
    lengths = {entry.context_length for entry in saved.entries.values()}
    assert len(saved.entries) == 20 and len(lengths) == 1  # one saver's catalogue, whole


# --- SQLAlchemy only where it is needed -------------------------------------------------------------------

def test_run_and_status_on_a_sqlite_file_at_the_current_schema_never_import_sqlalchemy(
        tmp_path: Path, sim: RunningSimulator) -> None:
    """Its import alone is ≈ 0.13 s of CPU (`driver.py`): a run on a file at the current schema goes
    through the bare driver. A new file needs migrating, so `submit` imports it, and the two agree."""
    watched = ("import atexit, sys; atexit.register(lambda: print('sqlalchemy imported:', 'sqlalchemy' in "
               "sys.modules, file=sys.stderr)); from batchrun.cli import main; main()")
    env = {**{k: v for k, v in os.environ.items() if not _outside(k)}, **provider_env(sim, make_keys(2))}

    def batchrun(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", watched, *args, "--db", "sqlite:///q.db"], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=120)

    write_jobs(tmp_path / "jobs.jsonl", 12)
    submitted = batchrun("submit", "jobs.jsonl")
    ran = batchrun("run", "--no-progress")
    status = batchrun("status", "--json")

    assert submitted.returncode == 0 and "sqlalchemy imported: True" in submitted.stderr, submitted.stderr
    assert ran.returncode == 0 and "sqlalchemy imported: False" in ran.stderr, ran.stderr
    assert status.returncode == 0 and "sqlalchemy imported: False" in status.stderr, status.stderr
    batch = json.loads(status.stdout)["batches"][0]
    assert (batch["succeeded"], batch["queued"], batch["running"]) == (12, 0, 0)
    stats = sim.state.snapshot()
    assert stats["completions_ok"] == 12 and stats["duplicates"] == 0  # each job sent once


# --- the PostgreSQL driver is an extra ---------------------------------------------------------------------

def test_without_the_postgresql_extra_sqlite_works_and_a_postgresql_url_names_the_extra(tmp_path: Path) -> None:
    """As after `pip install batchrun` (no extras): psycopg cannot be imported."""
    without_psycopg = "import sys; sys.modules['psycopg'] = None; from batchrun.cli import main; main()"
    env = {k: v for k, v in os.environ.items() if not _outside(k)}

    def batchrun(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", without_psycopg, *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)

    write_jobs(tmp_path / "jobs.jsonl", 3)
    submitted = batchrun("submit", "jobs.jsonl", "--db", "sqlite:///q.db")
    status = batchrun("status", "--db", "sqlite:///q.db")
    postgres = batchrun("status", "--db", PG_ADMIN_URL)

    assert submitted.returncode == 0, submitted.stderr
    assert status.returncode == 0 and "queued" in status.stdout, status.stderr
    assert postgres.returncode == 1, postgres.stderr
    assert "pip install 'batchrun[postgresql]'" in postgres.stderr and "Traceback" not in postgres.stderr
