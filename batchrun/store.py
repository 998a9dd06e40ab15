"""The queue database. Every statement is plain SQL with `?` placeholders, the same on SQLite and
PostgreSQL, run through the driver (`driver.Tx`); SQLAlchemy (`database.py`, `schema.py`) opens
PostgreSQL and any SQLite file that needs migrating, and is imported only then: on a SQLite file at the
current schema, the store opens it with the bare driver (`driver.SqliteFile`), so `run` and `status`
start without it. The reads `status` makes (`counts`, `usage`, keys, runners) are in `view.py`.

Operations are named after what they do (`add_jobs`, `claim`, `record`, `release`, `counts`, ...) and
return the frozen dataclasses of `records.py` (re-exported here); rows never leave this module. Every
driver or SQLAlchemy error is translated into `StoreError` here.

Portability: the same statements run on SQLite (the embedded default) and PostgreSQL. A claim is one
`UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED) RETURNING …`: PostgreSQL skips rows other
runners are claiming; SQLite takes its single write lock (`BEGIN IMMEDIATE`) so two processes never
claim the same row. SQLite runs in WAL mode so readers (`status`, `export`) never block the runner.
"""

from __future__ import annotations

import logging
import operator
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from batchrun.attemptstore import AttemptStore
from batchrun.attempts import AttemptRecord, EventRecord
from batchrun.catalog import Catalog, ModelInfo
from batchrun.driver import SqliteFile, Tx, failure_reason
from batchrun.errors import ConfigError, StoreError
from batchrun.keystore import KEY_WINDOW, LEGACY_KEY_WINDOW, KeyLeases
from batchrun.records import (
    AddResult,
    BatchCounts,
    ClaimedJob,
    ExportRow,
    Failed,
    KeyRecord,
    NewJob,
    Outcome,
    Pending,
    Retry,
    RunnerActivity,
    RunnerRecord,
    Succeeded,
    UsageRow,
)
from batchrun.reportdata import ReportData
from batchrun.reportquery import find_run, report_data
from batchrun.view import Query, QueueView

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

    from batchrun.batchstore import ProviderBatches

__all__ = [
    "CANCELLED",
    "FAILED",
    "JOB_STATES",
    "LEGACY_KEY_WINDOW",
    "QUEUED",
    "RUNNING",
    "SUCCEEDED",
    "JobRows",
    "Store",
    # the values, from records.py
    "AddResult",
    "BatchCounts",
    "ClaimedJob",
    "ExportRow",
    "Failed",
    "KeyRecord",
    "NewJob",
    "Outcome",
    "Pending",
    "Retry",
    "RunnerActivity",
    "RunnerRecord",
    "Succeeded",
    "UsageRow",
]

log = logging.getLogger(__name__)

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
JOB_STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)


# --- new jobs as rows ---------------------------------------------------------------------------

#: SQLite's default: pages in the WAL past which a commit copies them into the database file
_WAL_AUTOCHECKPOINT = 1000
#: rows a statement of `Store.insert_jobs` inserts: ×8 parameters stays under SQLite's oldest limit (999)
_ROWS_PER_INSERT = 100
#: the columns of a new job's row, in the order of `jobfile.JobSpec`'s fields: a JobSpec is its own row
_JOB_ROW = ("line", "custom_id", "model", "body", "body_hash", "input_tokens", "max_tokens", "endpoint")
#: the attributes of a `NewJob` that fill those columns
_ROW_FIELDS = ("line", "custom_id", "model", "body_json", "body_hash", "input_tokens", "max_tokens", "endpoint")
_row_of = operator.attrgetter(*_ROW_FIELDS)
_custom_id = operator.attrgetter("custom_id")


def _rows_of(jobs: Sequence[NewJob]) -> list[Any]:
    """The rows of `jobs`: NamedTuples whose fields are the row's (`jobfile.JobSpec`) as they are, with
    no copy (≈ 0.8 µs a job of `submit`); any other `NewJob` through its attributes."""
    kind = type(jobs[0]) if jobs else None
    if getattr(kind, "_fields", None) == _ROW_FIELDS and all(type(job) is kind for job in jobs):
        return list(jobs)
    return list(map(_row_of, jobs))


@dataclass(frozen=True, slots=True)
class JobRows:
    """New jobs as rows for `Store.insert_jobs`: the first job of each custom_id, in the order given;
    a later one with the same body is a duplicate, with another body a conflict.

    Built outside the write transaction, so that a loader can build them while another process holds
    the database's write lock.
    """

    rows: list[Any]
    jobs: Sequence[NewJob]  # the job of each row, in the same order
    duplicates: int
    conflicts: list[NewJob]

    @classmethod
    def of(cls, new_jobs: Sequence[NewJob]) -> JobRows:
        if len(set(map(_custom_id, new_jobs))) == len(new_jobs):  # the common case, every custom_id once
            return cls(_rows_of(new_jobs), new_jobs, 0, [])
        by_id: dict[str, NewJob] = {}
        duplicates = 0
        conflicts: list[NewJob] = []
        for job in new_jobs:
            seen = by_id.setdefault(job.custom_id, job)
            if seen is job:
                continue
            if seen.body_hash == job.body_hash:
                duplicates += 1
            else:
                conflicts.append(job)
        firsts = list(by_id.values())
        return cls(_rows_of(firsts), firsts, duplicates, conflicts)

    def by_id(self) -> dict[str, NewJob]:
        """custom_id -> its job (needed only when some rows were already queued)."""
        return {job.custom_id: job for job in self.jobs}


# --- the store ----------------------------------------------------------------------------------

class Store(KeyLeases):
    """A connection to one queue database. Use from one thread at a time."""

    def __init__(self, url: str, *, engine: Engine | None = None, file: SqliteFile | None = None) -> None:
        """Open with `open`: `file` for a SQLite file at the current schema (SQLAlchemy's `engine` is then
        made only if an operation needs it: migrating, loading), else `engine`."""
        self._url = url
        self._file = file
        self._engine_made = engine
        self._writer_made: Engine | None = None
        self.url = url if engine is None else engine.url.render_as_string(hide_password=True)
        self._postgresql = engine is not None and engine.dialect.name == "postgresql"
        self._claim_statements: dict[bool, str] = {}

    @classmethod
    def open(cls, url: str, *, migrate: bool = True) -> Store:
        """Open (and, unless told not to, bring up to date) the database at `url`."""
        file = SqliteFile.open(url)
        if file is not None:  # a SQLite file at the current schema: no SQLAlchemy
            return cls(url, file=file)
        from batchrun.database import create_store_engine

        store = cls(url, engine=create_store_engine(url))
        if migrate:
            store.upgrade()
        return store

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._engine_made is not None:
            self._engine_made.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _engine(self) -> Engine:
        """SQLAlchemy's engine, made when first needed."""
        if self._engine_made is None:
            from batchrun.database import create_store_engine

            self._engine_made = create_store_engine(self._url)
        return self._engine_made

    @property
    def _writer(self) -> Engine:
        if self._writer_made is None:
            self._writer_made = self._engine.execution_options(batchrun_write=True)
        return self._writer_made

    # --- schema ---

    def upgrade(self) -> None:
        """Run pending Alembic migrations; cheap when the database is already at head."""
        from batchrun.database import migrate_to_head

        migrate_to_head(self._engine, self.url)

    def _current_revision(self) -> str | None:
        from batchrun.database import current_revision

        return current_revision(self._engine)

    # --- transactions ---

    @contextmanager
    def _tx(self, write: bool = True) -> Iterator[Tx]:
        """A transaction for plain SQL (`driver.Tx`): on the bare SQLite file if the store has one, else
        on a connection of SQLAlchemy's engine."""
        if self._file is not None:
            with self._file.write() if write else self._file.read() as tx:
                yield tx
            return
        with self._write() if write else self._read() as conn:
            yield _tx_of(conn)

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction of SQLAlchemy's (for migrations, loading and the tests)."""
        with self._translated():
            with self._writer.begin() as conn:
                yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._translated():
            with self._engine.begin() as conn:
                yield conn

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """SQLAlchemy's errors and the driver's (from statements of a `Tx`) as `StoreError`."""
        from sqlalchemy.exc import SQLAlchemyError

        try:
            yield
        except SQLAlchemyError as exc:
            raise StoreError(f"database {self.url}: {failure_reason(exc)}") from exc
        except self._engine.dialect.loaded_dbapi.Error as exc:
            raise StoreError(f"database {self.url}: {failure_reason(exc)}") from exc

    @property
    def provider_batches(self) -> ProviderBatches:
        """Batches at the provider's Batch API (`batchstore.py`)."""
        from batchrun.batchstore import ProviderBatches

        return ProviderBatches(self)

    @property
    def attempts(self) -> AttemptStore:
        """Every run's attempts and events (`attemptstore.py`)."""
        return AttemptStore(self)

    @property
    def view(self) -> QueueView:
        """The reads `status` makes, in plain SQL (shared with the SQLAlchemy-free path of `view`).
        Made on demand: a view kept on the store would tie the two in a reference cycle, and an
        unclosed store would then hold its connections until a garbage collection."""
        return QueueView(self.url, self._reading)

    @contextmanager
    def _reading(self) -> Iterator[Query]:
        """A read transaction for `view`: its SQL (`?` placeholders) handed to the driver."""
        with self._tx(write=False) as tx:
            yield tx.rows

    # --- submitting ---

    def ensure_batch(self, name: str, conn: Connection | None = None) -> int:
        if conn is None:
            with self._tx() as tx:
                return _ensure_batch(tx, name)
        return _ensure_batch(_tx_of(conn), name)

    def known_chunk(self, batch_id: int, first_line: int, line_count: int, digest: str,
                    conn: Connection | None = None) -> int | None:
        """The number of jobs of a clean chunk submitted before with these exact bytes, else None."""
        if conn is not None:
            return _known_chunk(_tx_of(conn), (batch_id, first_line, line_count, digest))
        with self._tx(write=False) as tx:
            return _known_chunk(tx, (batch_id, first_line, line_count, digest))

    def record_chunk(self, batch_id: int, first_line: int, line_count: int, digest: str, job_count: int,
                     conn: Connection) -> None:
        """Remember a chunk that loaded cleanly (in the transaction that loaded it)."""
        tx = _tx_of(conn)
        key = (batch_id, first_line, line_count, digest)
        if _known_chunk(tx, key) is None:
            tx.run("INSERT INTO submitted_chunks (batch_id, first_line, line_count, digest, jobs) "
                   "VALUES (?, ?, ?, ?, ?)", (*key, job_count))

    def batch_id(self, name: str) -> int | None:
        return self.view.batch_id(name)

    def add_jobs(self, batch_id: int, new_jobs: Sequence[NewJob], conn: Connection | None = None) -> AddResult:
        """Queue the jobs not there yet; the same custom_id with the same body is a duplicate, with
        another body a conflict (not loaded)."""
        return self.insert_jobs(batch_id, JobRows.of(new_jobs), conn)

    def insert_jobs(self, batch_id: int, new: JobRows, conn: Connection | None = None) -> AddResult:
        """`add_jobs` of rows built beforehand (`JobRows.of`), outside the write transaction."""
        if conn is None:
            with self._tx() as tx:
                return _insert_jobs(tx, batch_id, new)
        return _insert_jobs(_tx_of(conn), batch_id, new)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One write transaction for a caller that needs several operations to land together."""
        with self._write() as conn:
            yield conn

    @contextmanager
    def loading_transaction(self, *, in_turn: bool = False) -> Iterator[Connection]:
        """A write transaction for `insert_jobs` of many rows.

        On SQLite, each statement of several rows keeps a journal of its own (to undo just itself),
        which goes to a temporary file past 64 KiB: here it stays in memory (≈ 0.5 µs a row less).
        `in_turn` is for one of several processes loading in turn (`parallel_load`): the commit leaves
        the WAL alone, as copying the pages into the database file (and its fsyncs) would hold up the
        next process's commit; the process calls `checkpoint` once that one has the write lock.
        """
        with self._translated():
            with self._writer.connect() as conn:
                if conn.dialect.name == "sqlite":
                    # Both for this connection only, and set outside a transaction: temp_store cannot
                    # change inside one (and SQLAlchemy would begin one for its own execute).
                    driver: Any = conn.connection.driver_connection
                    driver.execute("PRAGMA temp_store=MEMORY")
                    driver.execute(f"PRAGMA wal_autocheckpoint={0 if in_turn else _WAL_AUTOCHECKPOINT}")
                with conn.begin():
                    yield conn

    def checkpoint(self) -> None:
        """SQLite: copy the WAL's committed pages into the database file without waiting for (or holding up)
        readers and writers; the next write transaction then starts the WAL afresh if nothing is left in it.
        Nothing to do on PostgreSQL."""
        if not self._postgresql:
            with self._tx(write=False) as tx:
                tx.rows("PRAGMA wal_checkpoint(PASSIVE)")

    # --- working ---

    def claim(self, owner: str, limit: int, lease_seconds: float, batch_id: int | None = None,
              now: float | None = None) -> list[ClaimedJob]:
        """Lease up to `limit` due queued jobs to `owner`, in input order."""
        now = time.time() if now is None else now
        scope = () if batch_id is None else (batch_id,)
        sql = self._claim_sql(batch_id is not None)
        with self._tx() as tx:
            rows = tx.rows(sql, (owner, now + lease_seconds, now, *scope, limit))
        claimed = [ClaimedJob._make(row) for row in rows]
        claimed.sort(key=_INPUT_ORDER)
        return claimed

    def _claim_sql(self, one_batch: bool) -> str:
        sql = self._claim_statements.get(one_batch)
        if sql is None:
            scope = " AND batch_id = ?" if one_batch else ""
            # PostgreSQL: concurrent runners skip each other's rows instead of waiting for them
            skip_locked = " FOR UPDATE SKIP LOCKED" if self._postgresql else ""
            sql = self._claim_statements[one_batch] = (
                f"UPDATE jobs SET state = '{RUNNING}', lease_owner = ?, lease_expires = ? "
                f"WHERE id IN (SELECT id FROM jobs WHERE state = '{QUEUED}' AND not_before <= ?{scope} "
                f"ORDER BY batch_id, id LIMIT ?{skip_locked}) RETURNING {', '.join(ClaimedJob._fields)}")
        return sql

    def record(self, owner: str, outcomes: Iterable[Outcome], now: float | None = None, *,
               runner_id: int | None = None, attempts: Sequence[AttemptRecord] = (),
               events: Sequence[EventRecord] = ()) -> int:
        """Write outcomes of jobs this owner holds, in one transaction (with the `attempts` and `events`
        of runner `runner_id` that came with them). Returns how many outcomes landed.

        A job whose lease was lost meanwhile (another runner reclaimed it) is not touched: a finished
        result is never overwritten.
        """
        now = time.time() if now is None else now
        done, failed, retried = [], [], []
        for outcome in outcomes:
            if isinstance(outcome, Succeeded):
                done.append((now, *outcome[1:], outcome[0], owner))  # its fields after job_id: _SUCCEEDED_COLUMNS
            elif isinstance(outcome, Failed):
                failed.append((now, *_FAILED_VALUES(outcome), outcome.job_id, owner))
            else:
                retried.append((*_RETRY_VALUES(outcome), outcome.job_id, owner))
        # Plain tuples to the driver (`driver.Tx`): SQLAlchemy's per-row parameter processing of these
        # updates cost the dispatch loop ≈ 2–3 % of its CPU at thousands of answers a second. `now` is a
        # parameter, not a literal: the same text every commit, so the driver reuses its prepared statement
        # (preparing one again, with the tally triggers it carries, cost ≈ 1.7 µs a job at 128 a commit).
        landed = 0
        with self._tx() as tx:
            if self._postgresql:
                # The rows first, then the tally lock (which the triggers below take): a claimer may hold
                # one of these rows for a moment — PostgreSQL keeps the lock of a row its claim looked at
                # and passed over, on READ COMMITTED — while it waits for the tally lock. Taken in that
                # order by every writer, the tally lock's holder never waits for a row: no deadlock.
                tx.rows("SELECT id FROM jobs WHERE id = ANY(?) ORDER BY id FOR UPDATE",
                        (sorted(row[-2] for rows in (done, failed, retried) for row in rows),))
            landed += tx.many(_RECORD_SUCCEEDED, done)
            landed += tx.many(_RECORD_FAILED, failed)
            landed += tx.many(_RECORD_RETRY, retried)
            if runner_id is not None and (attempts or events):
                self.attempts.write(tx, runner_id, attempts, events)
        expected = len(done) + len(failed) + len(retried)
        if landed != expected:
            log.warning("%d outcome(s) not recorded: their lease had been lost to another runner",
                        expected - landed)
        return landed

    def requeue_failed(self, batch_id: int | None = None, code: str | None = None) -> int:
        """Failed jobs (all, or those of one error code) back to the queue with fresh attempts.
        Succeeded results are never touched."""
        where, params = _scoped(f"state = '{FAILED}'", batch_id)
        if code is not None:
            where, params = f"{where} AND error_code = ?", (*params, code)
        with self._tx() as tx:
            return tx.run(f"UPDATE jobs SET state = '{QUEUED}', attempts = 0, not_before = 0.0, finished_at = NULL, "
                          f"lease_owner = NULL, lease_expires = NULL WHERE {where}", params)

    def cancel_queued(self, batch_id: int | None = None) -> int:
        """Queued jobs become cancelled (a run skips them); finished results and jobs in flight stay."""
        where, params = _scoped(f"state = '{QUEUED}'", batch_id)
        with self._tx() as tx:
            return tx.run(f"UPDATE jobs SET state = '{CANCELLED}' WHERE {where}", params)

    def release_owned(self, owner: str) -> int:
        """Give back every job this owner still holds (at the end of a run: none of them was sent)."""
        with self._tx() as tx:
            return tx.run(_RELEASE_OWNED, (owner,))

    def extend_leases(self, owner: str, lease_seconds: float, now: float | None = None) -> list[str]:
        """The heartbeat: renew this owner's job and key leases for `lease_seconds` from `now`.
        Returns the ids of the keys it still holds (a lease given up, or taken over after it ran out,
        is not renewed): the runner must not send on any other."""
        now = time.time() if now is None else now
        with self._tx() as tx:
            tx.run(f"UPDATE jobs SET lease_expires = ? WHERE lease_owner = ? AND state = '{RUNNING}'",
                   (now + lease_seconds, owner))
            # An own lease that ran out unnoticed is renewed too: nobody else has taken it meanwhile.
            keys = tx.rows("UPDATE api_keys SET lease_expires = ? WHERE lease_owner = ? AND free_at IS NULL "
                           "RETURNING id", (now + lease_seconds, owner))
            tx.run("UPDATE runners SET heartbeat_at = ? WHERE owner = ?", (now, owner))
        return sorted(key_id for key_id, in keys)

    def requeue_expired(self, now: float | None = None) -> int:
        """Put jobs whose lease ran out (their runner died) back in the queue."""
        now = time.time() if now is None else now
        with self._tx() as tx:
            return tx.run(f"UPDATE jobs SET state = '{QUEUED}', lease_owner = NULL, lease_expires = NULL "
                          f"WHERE state = '{RUNNING}' AND lease_expires < ?", (now,))

    def pending(self, batch_id: int | None = None, now: float | None = None) -> Pending:
        now = time.time() if now is None else now
        queued, scope = _scoped(f"state = '{QUEUED}'", batch_id)
        running_live, _ = _scoped(f"state = '{RUNNING}' AND lease_expires IS NOT NULL", batch_id)
        with self._tx(write=False) as tx:
            [(queued_now, queued_later, next_due)] = tx.rows(
                "SELECT count(*) FILTER (WHERE not_before <= ?), count(*) FILTER (WHERE not_before > ?), "
                f"min(not_before) FILTER (WHERE not_before > ?) FROM jobs WHERE {queued}", (now, now, now, *scope))
            # Jobs at a provider's Batch API (leased without expiry, `batchstore.py`) are not a live
            # run's to wait for: their results come when that batch is collected.
            [(running, next_expiry)] = tx.rows(f"SELECT count(*), min(lease_expires) FROM jobs WHERE {running_live}",
                                               scope)
        return Pending(int(queued_now), int(queued_later), next_due, int(running), next_expiry)

    # --- runners ---

    def register_runner(self, owner: str, now: float | None = None, options: str | None = None) -> int:
        """A run begins: its row in `runners` (`options`: what it was started with, JSON). Returns its id."""
        now = time.time() if now is None else now
        with self._tx() as tx:
            [(runner_id,)] = tx.rows(
                "INSERT INTO runners (owner, host, pid, started_at, heartbeat_at, options) VALUES (?, ?, ?, ?, ?, ?) "
                "RETURNING id", (owner, socket.gethostname(), os.getpid(), now, now, options))
        return int(runner_id)

    def runner_figures(self, owner: str, requests: int, p50: float | None, p99: float | None) -> None:
        """A run's figures so far, for `status`."""
        with self._tx() as tx:
            tx.run("UPDATE runners SET requests = ?, latency_p50 = ?, latency_p99 = ? WHERE owner = ?",
                   (requests, p50, p99, owner))

    def finish_runner(self, owner: str, exit_code: int, outcome: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._tx() as tx:
            tx.run("UPDATE runners SET ended_at = ?, exit_code = ?, outcome = ?, heartbeat_at = ? WHERE owner = ?",
                   (now, exit_code, outcome, now, owner))

    def release_dead_runners(self, is_alive: Callable[[int], bool], now: float | None = None) -> list[str]:
        """Requeue the jobs of runners on this host whose process is gone (killed, crashed).

        Their leases would expire anyway; this lets a run started right after a crash carry on at
        once instead of waiting out the lease. Their keys are free one window of each key after now:
        the last requests a dead runner sent still count at the provider until then.
        """
        now = time.time() if now is None else now
        host = socket.gethostname()
        with self._tx() as tx:
            rows = tx.rows("SELECT owner, pid FROM runners WHERE host = ? AND ended_at IS NULL", (host,))
            dead = [owner for owner, pid in rows if not is_alive(pid)]
            for owner in dead:
                tx.run(_RELEASE_OWNED, (owner,))
                tx.run(f"UPDATE api_keys SET lease_expires = ?, free_at = ? + {KEY_WINDOW} "
                       "WHERE lease_owner = ? AND free_at IS NULL", (now, now, owner))
                tx.run("UPDATE runners SET ended_at = ?, outcome = 'died (process gone)' WHERE owner = ?",
                       (now, owner))
        return dead

    def last_runner(self, ended: bool = False) -> RunnerRecord | None:
        """The runner that started last (with `ended`: the last one that has ended)."""
        return self.view.last_runner(ended)

    def runner_activity(self, stale_after: float, now: float | None = None) -> list[RunnerActivity]:
        """Runners alive now (not ended, heartbeat within `stale_after`): jobs in flight and keys held."""
        return self.view.runner_activity(stale_after, now)

    # --- keys ---

    def key_records(self) -> dict[str, KeyRecord]:
        return self.view.key_records()

    def live_runners(self, stale_after: float, now: float | None = None) -> list[RunnerRecord]:
        """Runners that have not ended and whose heartbeat is fresher than `stale_after` seconds."""
        return self.view.live_runners(stale_after, now)

    def heartbeat(self, owner: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._tx() as tx:
            tx.run("UPDATE runners SET heartbeat_at = ? WHERE owner = ?", (now, owner))

    # --- the model catalogue ---

    def save_catalog(self, entries: Sequence[ModelInfo], now: float | None = None) -> None:
        """Replace the stored catalogue with these entries (one per id: the last one wins).

        Runners starting together each save the catalogue they fetched: each entry is an upsert, in id
        order (so two savers lock rows in the same order and one waits for the other), then what this
        save did not write goes. A delete-all-then-insert let the second saver's insert meet the
        first's committed rows on PostgreSQL (a duplicate key)."""
        now = time.time() if now is None else now
        by_id = {entry.id: entry for entry in entries}
        rows = [(entry.id, entry.alias_for, entry.context_length,
                 None if entry.supported_parameters is None else orjson.dumps(list(entry.supported_parameters)).decode(),
                 entry.response_format, entry.prompt_price, entry.completion_price, now)
                for _, entry in sorted(by_id.items())]
        with self._tx() as tx:
            tx.many(_SAVE_MODEL, rows)
            tx.run("DELETE FROM models WHERE fetched_at <> ?", (now,))

    def load_catalog(self) -> Catalog:
        """The catalogue as last saved; empty (fetched_at None) if none was."""
        with self._tx(write=False) as tx:
            rows = tx.rows(f"SELECT {_MODEL_COLUMNS} FROM models ORDER BY id")
        entries = [ModelInfo(
            id=row[0], alias_for=row[1], context_length=row[2], supported_parameters=_parameters(row[3]),
            response_format=None if row[4] is None else bool(row[4]), prompt_price=row[5],
            completion_price=row[6],
        ) for row in rows]
        return Catalog(entries, max((row[7] for row in rows), default=None))

    # --- reading ---

    def report_data(self, run: str = "last", batch: str | None = None, now: float | None = None) -> ReportData:
        """What `batchrun report` shows of run `run` ("last" or a runner id), limited to `batch` if given."""
        batch_id = None
        if batch is not None:
            batch_id = self.batch_id(batch)
            if batch_id is None:
                raise ConfigError(f"no batch named {batch!r} in {self.url} (see `batchrun status`)")
        with self._reading() as query:
            runner_id = find_run(query, run, batch_id)
            return report_data(query, runner_id, batch_id, batch, not self._postgresql,
                               time.time() if now is None else now)

    def batch_names(self) -> dict[int, str]:
        return self.view.batch_names()

    def counts(self, batch_id: int | None = None) -> list[BatchCounts]:
        """Jobs by state, attempts, tokens and cost per batch (`QueueView.counts`: no scan of the jobs)."""
        return self.view.counts(batch_id)

    def usage(self, by: str, batch_id: int | None = None) -> list[UsageRow]:
        """Usage of succeeded jobs per key or per model served (`QueueView.usage`)."""
        return self.view.usage(by, batch_id)

    def export_rows(self, states: Sequence[str], batch_id: int | None = None,
                    chunk: int = 200) -> Iterator[ExportRow]:
        """Jobs in the given states, in input order (batch by batch), read in chunks: memory stays flat.
        200 rows: a chunk of embedding results is ≈ 4 MB (2,000 held 40 MB). Each chunk seeks on the
        claim index (state, batch_id, id) from where the last one ended — one batch at a time, as a
        keyset over (batch_id, id) together is not a seek and made every chunk scan from the start."""
        batch_ids = [batch_id] if batch_id is not None else sorted(self.batch_names())
        for one in batch_ids:
            yield from self._export_batch(states, one, chunk)

    def _export_batch(self, states: Sequence[str], batch_id: int, chunk: int) -> Iterator[ExportRow]:
        sql = (f"SELECT {_EXPORT_COLUMNS} FROM jobs WHERE state IN ({', '.join('?' * len(states))}) "
               f"AND batch_id = ? AND id > ? ORDER BY id LIMIT {int(chunk)}")
        last = -1
        while True:
            with self._tx(write=False) as tx:
                rows = tx.rows(sql, (*states, batch_id, last))
            if not rows:
                return
            for row in rows:
                yield ExportRow(*row)  # type: ignore[call-arg]
            last = rows[-1][0]

    def unfinished_jobs(self, batch_id: int | None = None, chunk: int = 2000) -> Iterator[ClaimedJob]:
        """Queued and running jobs, in id order, read in chunks: what a run would still send."""
        where, scope = _scoped(f"state IN ('{QUEUED}', '{RUNNING}') AND id > ?", batch_id)
        sql = f"SELECT {', '.join(ClaimedJob._fields)} FROM jobs WHERE {where} ORDER BY id LIMIT {int(chunk)}"
        last = -1
        while True:
            with self._tx(write=False) as tx:
                rows = tx.rows(sql, (last, *scope))
            if not rows:
                return
            yield from map(ClaimedJob._make, rows)
            last = rows[-1][0]

    def progress(self, batch_id: int | None = None) -> tuple[int, int]:
        """(jobs not cancelled, jobs finished) — counted from indexes only, fast at any size."""
        every, scope = _scoped("1 = 1", batch_id)
        some, _ = _scoped(f"state IN ('{QUEUED}', '{RUNNING}', '{CANCELLED}')", batch_id)
        with self._tx(write=False) as tx:
            [(total,)] = tx.rows(f"SELECT count(*) FROM jobs WHERE {every}", scope)
            by_state: dict[str, int] = dict(tx.rows(
                f"SELECT state, count(*) FROM jobs WHERE {some} GROUP BY state", scope))
        cancelled = int(by_state.get(CANCELLED, 0))
        unfinished = int(by_state.get(QUEUED, 0)) + int(by_state.get(RUNNING, 0))
        return int(total) - cancelled, int(total) - cancelled - unfinished

    def queued_by_model(self, batch_id: int | None = None) -> dict[str, int]:
        """Unfinished jobs per requested model: the run's opening summary."""
        where, scope = _scoped(f"state IN ('{QUEUED}', '{RUNNING}')", batch_id)
        with self._tx(write=False) as tx:
            rows = tx.rows(f"SELECT model, count(*) FROM jobs WHERE {where} GROUP BY model", scope)
        return {model: int(count) for model, count in rows}


#: what `Store.record` writes of each outcome, in this order (then the job id and the lease owner)
_SUCCEEDED_COLUMNS = ("attempts", "key_id", "status_code", "request_id", "response", "model_served", "finish_reason",
                      "prompt_tokens", "completion_tokens", "total_tokens", "cost", "model_sent", "fallback_reason",
                      "dropped_parameters")
_FAILED_COLUMNS = ("attempts", "key_id", "status_code", "response", "error_code", "error_message", "model_sent",
                   "fallback_reason", "dropped_parameters")
_RETRY_COLUMNS = ("attempts", "not_before", "key_id", "status_code", "response", "error_code", "error_message",
                  "transient_since")
assert Succeeded._fields[1:] == _SUCCEEDED_COLUMNS and Succeeded._fields[0] == "job_id"
_INPUT_ORDER = operator.itemgetter(1, 0)  # a ClaimedJob's (batch_id, id)
_FAILED_VALUES = operator.attrgetter(*_FAILED_COLUMNS)
_RETRY_VALUES = operator.attrgetter(*_RETRY_COLUMNS)


def _held_update(fixed: str, columns: Sequence[str]) -> str:
    """An UPDATE of one job still leased to its runner (the last two parameters: its id, the owner)."""
    values = ", ".join(f"{column} = ?" for column in columns)
    return (f"UPDATE jobs SET {fixed}, lease_owner = NULL, lease_expires = NULL, {values} "
            f"WHERE id = ? AND state = '{RUNNING}' AND lease_owner = ?")


_RECORD_SUCCEEDED = _held_update(
    f"state = '{SUCCEEDED}', finished_at = ?, error_code = NULL, error_message = NULL", _SUCCEEDED_COLUMNS)
_RECORD_FAILED = _held_update(f"state = '{FAILED}', finished_at = ?, request_id = NULL", _FAILED_COLUMNS)
_RECORD_RETRY = _held_update(f"state = '{QUEUED}'", _RETRY_COLUMNS)
_RELEASE_OWNED = (f"UPDATE jobs SET state = '{QUEUED}', lease_owner = NULL, lease_expires = NULL "
                  f"WHERE lease_owner = ? AND state = '{RUNNING}'")
_MODEL_COLUMNS = ("id, alias_for, context_length, supported_parameters, response_format, prompt_price, "
                  "completion_price, fetched_at")
_SAVE_MODEL = (f"INSERT INTO models ({_MODEL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
               + ", ".join(f"{name} = excluded.{name}" for name in _MODEL_COLUMNS.split(", ")[1:]))
#: an `ExportRow`'s columns, in its fields' order
_EXPORT_COLUMNS = ("id, custom_id, state, model, model_served, attempts, key_id, status_code, request_id, response, "
                   "error_code, error_message, finish_reason, model_sent, fallback_reason, cost, prompt_tokens, "
                   "completion_tokens, total_tokens, dropped_parameters, endpoint")


def _tx_of(conn: Connection) -> Tx:
    """A `Tx` on the driver connection under one of SQLAlchemy's (in its transaction)."""
    from batchrun.database import driver_tx

    return driver_tx(conn)


def _scoped(where: str, batch_id: int | None) -> tuple[str, tuple[Any, ...]]:
    """`where`, limited to one batch if `batch_id` is given, and the parameter that takes."""
    return (where, ()) if batch_id is None else (f"{where} AND batch_id = ?", (batch_id,))


def _insert_jobs(tx: Tx, batch_id: int, new: JobRows) -> AddResult:
    """`Store.insert_jobs` in the transaction `tx`."""
    if not new.rows:
        return AddResult(loaded=0, duplicates=new.duplicates, conflicts=tuple(new.conflicts))
    # The driver's executemany with plain tuples (SQLAlchemy's per-row parameter processing was a
    # third of `submit`'s time), `_ROWS_PER_INSERT` rows to a statement (one statement a row cost
    # SQLite ≈ 2 µs a row more: it runs the statement's set-up again for each), and no lookup first:
    # rows already queued are skipped by the unique index, and only when some were skipped do we
    # look at what was there.
    rows = new.rows
    inserted = tx.insert_rows(lambda count: _insert_jobs_sql(batch_id, count), rows, _ROWS_PER_INSERT)
    if inserted:
        tx.many("INSERT INTO batch_endpoints (batch_id, endpoint) VALUES (?, ?) "
                "ON CONFLICT (batch_id, endpoint) DO NOTHING",
                [(batch_id, endpoint) for endpoint in sorted({row[-1] for row in rows})])
    conflicts = list(new.conflicts)
    duplicates = new.duplicates
    if inserted < len(new.rows):
        by_id = new.by_id()
        stored = _stored_hashes(tx, batch_id, list(by_id))
        # rows inserted just now carry our own hash: a different stored hash is a conflict
        clashing = [job for custom_id, job in by_id.items() if stored.get(custom_id) != job.body_hash]
        conflicts.extend(clashing)
        duplicates += len(new.rows) - inserted - len(clashing)
    return AddResult(loaded=inserted, duplicates=duplicates, conflicts=tuple(conflicts))


def _ensure_batch(tx: Tx, name: str) -> int:
    found = tx.rows("SELECT id FROM batches WHERE name = ?", (name,))
    if found:
        return int(found[0][0])
    [(batch_id,)] = tx.rows("INSERT INTO batches (name, created_at) VALUES (?, ?) RETURNING id", (name, time.time()))
    return int(batch_id)


def _known_chunk(tx: Tx, key: tuple[int, int, int, str]) -> int | None:
    rows = tx.rows("SELECT jobs FROM submitted_chunks WHERE batch_id = ? AND first_line = ? AND line_count = ? "
                   "AND digest = ?", key)
    return int(rows[0][0]) if rows else None


def _stored_hashes(tx: Tx, batch_id: int, custom_ids: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for start in range(0, len(custom_ids), 500):
        chunk = custom_ids[start:start + 500]
        found.update(tx.rows(f"SELECT custom_id, body_hash FROM jobs WHERE batch_id = ? "
                             f"AND custom_id IN ({', '.join('?' * len(chunk))})", (batch_id, *chunk)))
    return found


def _insert_jobs_sql(batch_id: int, rows: int) -> str:
    # The values every new job shares are literals: fewer parameters to bind per row, and the rows
    # need no batch id, so they can be built before the batch exists.
    values = f"({', '.join('?' * len(_JOB_ROW))}, {int(batch_id)}, '{QUEUED}', 0, 0.0)"
    return (f"INSERT INTO jobs ({', '.join(_JOB_ROW)}, batch_id, state, attempts, not_before) "
            f"VALUES {', '.join([values] * rows)} ON CONFLICT (batch_id, custom_id) DO NOTHING")


def _parameters(stored: str | None) -> tuple[str, ...] | None:
    """A stored JSON list of parameter names; anything else is unknown."""
    if stored is None:
        return None
    try:
        value = orjson.loads(stored)
    except orjson.JSONDecodeError:
        return None
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    return None
