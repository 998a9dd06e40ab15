"""The queue database: with `schema.py` and `database.py` (which opens, tunes and migrates it), the only
module that imports SQLAlchemy. The reads `status`
makes (`counts`, `usage`, keys, runners) are plain SQL in `view.py`, run here through the same
connection (and, on a SQLite file, by `status` through bare sqlite3).

Operations are named after what they do (`add_jobs`, `claim`, `record`, `release`, `counts`, ...) and
return the frozen dataclasses of `records.py` (re-exported here); rows never leave this module. Every
SQLAlchemy error is translated into `StoreError` here.

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
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import (
    Connection,
    Engine,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError

from batchrun.attemptstore import AttemptStore
from batchrun.attempts import AttemptRecord, EventRecord
from batchrun.batchstore import ProviderBatches
from batchrun.catalog import Catalog, ModelInfo
from batchrun.database import alembic_config as _alembic_config  # noqa: F401  (tests use it)
from batchrun.database import (
    create_store_engine,
    current_revision,
    driver_cursor,
    failure_reason,
    insert_rows,
    migrate_to_head,
)
from batchrun.errors import ConfigError, StoreError
from batchrun.keystore import LEGACY_KEY_WINDOW, KeyLeases, key_window
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
from batchrun.schema import api_keys, batches, jobs, models, runners, submitted_chunks
from batchrun.view import Query, QueueView, placeholders

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

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._writer = engine.execution_options(batchrun_write=True)
        self.url = engine.url.render_as_string(hide_password=True)
        self._claim_statements: dict[bool, str] = {}
        self._postgresql = engine.dialect.name == "postgresql"
        #: the driver's errors, from statements run through `driver_cursor`
        self._driver_errors: tuple[type[Exception], ...] = (engine.dialect.loaded_dbapi.Error,)

    @classmethod
    def open(cls, url: str, *, migrate: bool = True) -> Store:
        """Open (and, unless told not to, bring up to date) the database at `url`."""
        engine = create_store_engine(url)
        store = cls(engine)
        if migrate:
            store.upgrade()
        return store

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- schema ---

    def upgrade(self) -> None:
        """Run pending Alembic migrations; cheap when the database is already at head."""
        migrate_to_head(self._engine, self.url)

    def _current_revision(self) -> str | None:
        return current_revision(self._engine)

    # --- transactions ---

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        try:
            with self._writer.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StoreError(f"database {self.url}: {failure_reason(exc)}") from exc
        except self._driver_errors as exc:
            raise StoreError(f"database {self.url}: {failure_reason(exc)}") from exc

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        try:
            with self._engine.connect() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StoreError(f"database {self.url}: {failure_reason(exc)}") from exc

    @property
    def provider_batches(self) -> ProviderBatches:
        """Batches at the provider's Batch API (`batchstore.py`)."""
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
        mark = self._mark
        with self._read() as conn:
            yield lambda sql, params: conn.exec_driver_sql(placeholders(sql, mark), tuple(params)).all()

    # --- submitting ---

    def ensure_batch(self, name: str, conn: Connection | None = None) -> int:
        if conn is None:
            with self._write() as own:
                return self.ensure_batch(name, own)
        found = conn.execute(select(batches.c.id).where(batches.c.name == name)).scalar()
        if found is not None:
            return int(found)
        return int(conn.execute(
            insert(batches).values(name=name, created_at=time.time()).returning(batches.c.id)
        ).scalar_one())

    def known_chunk(self, batch_id: int, first_line: int, line_count: int, digest: str,
                    conn: Connection | None = None) -> int | None:
        """The number of jobs of a clean chunk submitted before with these exact bytes, else None."""
        query = select(submitted_chunks.c.jobs).where(
            submitted_chunks.c.batch_id == batch_id, submitted_chunks.c.first_line == first_line,
            submitted_chunks.c.line_count == line_count, submitted_chunks.c.digest == digest)
        if conn is not None:
            return conn.execute(query).scalar()
        with self._read() as own:
            return own.execute(query).scalar()

    def record_chunk(self, batch_id: int, first_line: int, line_count: int, digest: str, job_count: int,
                     conn: Connection) -> None:
        """Remember a chunk that loaded cleanly (in the transaction that loaded it)."""
        key = {"batch_id": batch_id, "first_line": first_line, "line_count": line_count, "digest": digest}
        if conn.execute(select(submitted_chunks.c.jobs).filter_by(**key)).first() is None:
            conn.execute(insert(submitted_chunks).values(**key, jobs=job_count))

    def batch_id(self, name: str) -> int | None:
        return self.view.batch_id(name)

    def add_jobs(self, batch_id: int, new_jobs: Sequence[NewJob], conn: Connection | None = None) -> AddResult:
        """Queue the jobs not there yet; the same custom_id with the same body is a duplicate, with
        another body a conflict (not loaded)."""
        return self.insert_jobs(batch_id, JobRows.of(new_jobs), conn)

    def insert_jobs(self, batch_id: int, new: JobRows, conn: Connection | None = None) -> AddResult:
        """`add_jobs` of rows built beforehand (`JobRows.of`), outside the write transaction."""
        if conn is None:
            with self._write() as own:
                return self.insert_jobs(batch_id, new, own)
        if not new.rows:
            return AddResult(loaded=0, duplicates=new.duplicates, conflicts=tuple(new.conflicts))
        # The driver's executemany with plain tuples (SQLAlchemy's per-row parameter processing was a
        # third of `submit`'s time), `_ROWS_PER_INSERT` rows to a statement (one statement a row cost
        # SQLite ≈ 2 µs a row more: it runs the statement's set-up again for each), and no lookup first:
        # rows already queued are skipped by the unique index, and only when some were skipped do we
        # look at what was there.
        rows = new.rows
        inserted = insert_rows(conn, lambda count: self._insert_jobs_sql(batch_id, count), rows, _ROWS_PER_INSERT)
        if inserted:
            self._note_endpoints(conn, batch_id, {row[-1] for row in rows})
        conflicts = list(new.conflicts)
        duplicates = new.duplicates
        if inserted < len(new.rows):
            by_id = new.by_id()
            stored = self._stored_hashes(conn, batch_id, list(by_id))
            # rows inserted just now carry our own hash: a different stored hash is a conflict
            clashing = [job for custom_id, job in by_id.items() if stored.get(custom_id) != job.body_hash]
            conflicts.extend(clashing)
            duplicates += len(new.rows) - inserted - len(clashing)
        return AddResult(loaded=inserted, duplicates=duplicates, conflicts=tuple(conflicts))

    def _note_endpoints(self, conn: Connection, batch_id: int, endpoints: set[str]) -> None:
        """Remember which endpoints the batch's jobs go to (`batch_endpoints`)."""
        mark = self._mark
        conn.exec_driver_sql(
            f"INSERT INTO batch_endpoints (batch_id, endpoint) VALUES ({int(batch_id)}, {mark}) "
            "ON CONFLICT (batch_id, endpoint) DO NOTHING", [(endpoint,) for endpoint in sorted(endpoints)])

    @property
    def _mark(self) -> str:
        """The driver's positional placeholder, for SQL handed to it directly."""
        return "?" if self._engine.dialect.paramstyle == "qmark" else "%s"

    def _stored_hashes(self, conn: Connection, batch_id: int, custom_ids: list[str]) -> dict[str, str]:
        mark = self._mark
        found: dict[str, str] = {}
        for start in range(0, len(custom_ids), 500):
            chunk = custom_ids[start:start + 500]
            sql = (f"SELECT custom_id, body_hash FROM jobs WHERE batch_id = {mark} "
                   f"AND custom_id IN ({', '.join([mark] * len(chunk))})")
            found.update(conn.exec_driver_sql(sql, (batch_id, *chunk)).all())  # type: ignore[arg-type]
        return found

    def _insert_jobs_sql(self, batch_id: int, rows: int) -> str:
        # The values every new job shares are literals: fewer parameters to bind per row, and the rows
        # need no batch id, so they can be built before the batch exists.
        mark = self._mark
        values = f"({', '.join([mark] * len(_JOB_ROW))}, {int(batch_id)}, '{QUEUED}', 0, 0.0)"
        return (f"INSERT INTO jobs ({', '.join(_JOB_ROW)}, batch_id, state, attempts, not_before) "
                f"VALUES {', '.join([values] * rows)} ON CONFLICT (batch_id, custom_id) DO NOTHING")

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
        try:
            with self._writer.connect() as conn:
                if conn.dialect.name == "sqlite":
                    # Both for this connection only, and set outside a transaction: temp_store cannot
                    # change inside one (and SQLAlchemy would begin one for its own execute).
                    driver: Any = conn.connection.driver_connection
                    driver.execute("PRAGMA temp_store=MEMORY")
                    driver.execute(f"PRAGMA wal_autocheckpoint={0 if in_turn else _WAL_AUTOCHECKPOINT}")
                with conn.begin():
                    yield conn
        except SQLAlchemyError as exc:
            raise StoreError(f"database {self.url}: {failure_reason(exc)}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"database {self.url}: {exc}") from exc

    def checkpoint(self) -> None:
        """SQLite: copy the WAL's committed pages into the database file without waiting for (or holding up)
        readers and writers; the next write transaction then starts the WAL afresh if nothing is left in it.
        Nothing to do on PostgreSQL."""
        if self._engine.dialect.name == "sqlite":
            with self._read() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    # --- working ---

    def claim(self, owner: str, limit: int, lease_seconds: float, batch_id: int | None = None,
              now: float | None = None) -> list[ClaimedJob]:
        """Lease up to `limit` due queued jobs to `owner`, in input order."""
        now = time.time() if now is None else now
        scope = () if batch_id is None else (batch_id,)
        sql = self._claim_sql(batch_id is not None)
        with self._write() as conn:
            cursor = driver_cursor(conn)
            cursor.execute(sql, (owner, now + lease_seconds, now, *scope, limit))
            rows = cursor.fetchall()
            cursor.close()
        claimed = [ClaimedJob._make(row) for row in rows]
        claimed.sort(key=_INPUT_ORDER)
        return claimed

    def _claim_sql(self, one_batch: bool) -> str:
        sql = self._claim_statements.get(one_batch)
        if sql is None:
            mark = self._mark
            scope = f" AND batch_id = {mark}" if one_batch else ""
            # PostgreSQL: concurrent runners skip each other's rows instead of waiting for them
            skip_locked = " FOR UPDATE SKIP LOCKED" if self._engine.dialect.name == "postgresql" else ""
            sql = self._claim_statements[one_batch] = (
                f"UPDATE jobs SET state = '{RUNNING}', lease_owner = {mark}, lease_expires = {mark} "
                f"WHERE id IN (SELECT id FROM jobs WHERE state = '{QUEUED}' AND not_before <= {mark}{scope} "
                f"ORDER BY batch_id, id LIMIT {mark}{skip_locked}) RETURNING {', '.join(ClaimedJob._fields)}")
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
                done.append((*outcome[1:], outcome[0], owner))  # (its fields after job_id: _SUCCEEDED_COLUMNS)
            elif isinstance(outcome, Failed):
                failed.append((*_FAILED_VALUES(outcome), outcome.job_id, owner))
            else:
                retried.append((*_RETRY_VALUES(outcome), outcome.job_id, owner))
        # Plain tuples to the driver (`driver_cursor`): SQLAlchemy's per-row parameter processing of these
        # updates cost the dispatch loop ≈ 2–3 % of its CPU at thousands of answers a second.
        mark = self._mark
        landed = 0
        with self._write() as conn:
            cursor = driver_cursor(conn)
            if self._postgresql:
                # The rows first, then the tally lock (which the triggers below take): a claimer may hold
                # one of these rows for a moment — PostgreSQL keeps the lock of a row its claim looked at
                # and passed over, on READ COMMITTED — while it waits for the tally lock. Taken in that
                # order by every writer, the tally lock's holder never waits for a row: no deadlock.
                cursor.execute("SELECT id FROM jobs WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
                               (sorted(row[-2] for rows in (done, failed, retried) for row in rows),))
            if done:
                cursor.executemany(_held_update(
                    f"state = '{SUCCEEDED}', finished_at = {now!r}, error_code = NULL, error_message = NULL",
                    _SUCCEEDED_COLUMNS, mark), done)
                landed += cursor.rowcount
            if failed:
                cursor.executemany(_held_update(
                    f"state = '{FAILED}', finished_at = {now!r}, request_id = NULL", _FAILED_COLUMNS, mark),
                    failed)
                landed += cursor.rowcount
            if retried:
                cursor.executemany(_held_update(f"state = '{QUEUED}'", _RETRY_COLUMNS, mark), retried)
                landed += cursor.rowcount
            cursor.close()
            if runner_id is not None and (attempts or events):
                self.attempts.write(conn, runner_id, attempts, events)
        expected = len(done) + len(failed) + len(retried)
        if landed != expected:
            log.warning("%d outcome(s) not recorded: their lease had been lost to another runner",
                        expected - landed)
        return landed

    def requeue_failed(self, batch_id: int | None = None, code: str | None = None) -> int:
        """Failed jobs (all, or those of one error code) back to the queue with fresh attempts.
        Succeeded results are never touched."""
        where = [jobs.c.state == FAILED]
        if batch_id is not None:
            where.append(jobs.c.batch_id == batch_id)
        if code is not None:
            where.append(jobs.c.error_code == code)
        with self._write() as conn:
            return int(conn.execute(update(jobs).where(*where).values(
                state=QUEUED, attempts=0, not_before=0.0, finished_at=None, lease_owner=None,
                lease_expires=None)).rowcount)

    def cancel_queued(self, batch_id: int | None = None) -> int:
        """Queued jobs become cancelled (a run skips them); finished results and jobs in flight stay."""
        where = [jobs.c.state == QUEUED]
        if batch_id is not None:
            where.append(jobs.c.batch_id == batch_id)
        with self._write() as conn:
            return int(conn.execute(update(jobs).where(*where).values(state=CANCELLED)).rowcount)

    def release_owned(self, owner: str) -> int:
        """Give back every job this owner still holds (at the end of a run: none of them was sent)."""
        with self._write() as conn:
            return int(conn.execute(
                update(jobs).where(jobs.c.lease_owner == owner, jobs.c.state == RUNNING)
                .values(state=QUEUED, lease_owner=None, lease_expires=None)).rowcount)

    def extend_leases(self, owner: str, lease_seconds: float, now: float | None = None) -> list[str]:
        """The heartbeat: renew this owner's job and key leases for `lease_seconds` from `now`.
        Returns the ids of the keys it still holds (a lease given up, or taken over after it ran out,
        is not renewed): the runner must not send on any other."""
        now = time.time() if now is None else now
        with self._write() as conn:
            conn.execute(update(jobs).where(jobs.c.lease_owner == owner, jobs.c.state == RUNNING)
                         .values(lease_expires=now + lease_seconds))
            # An own lease that ran out unnoticed is renewed too: nobody else has taken it meanwhile.
            keys = conn.execute(update(api_keys).where(api_keys.c.lease_owner == owner, api_keys.c.free_at.is_(None))
                                .values(lease_expires=now + lease_seconds).returning(api_keys.c.id)).scalars().all()
            conn.execute(update(runners).where(runners.c.owner == owner).values(heartbeat_at=now))
        return sorted(keys)

    def requeue_expired(self, now: float | None = None) -> int:
        """Put jobs whose lease ran out (their runner died) back in the queue."""
        now = time.time() if now is None else now
        with self._write() as conn:
            return int(conn.execute(
                update(jobs).where(jobs.c.state == RUNNING, jobs.c.lease_expires < now)
                .values(state=QUEUED, lease_owner=None, lease_expires=None)).rowcount)

    def pending(self, batch_id: int | None = None, now: float | None = None) -> Pending:
        now = time.time() if now is None else now
        scope = [] if batch_id is None else [jobs.c.batch_id == batch_id]
        with self._read() as conn:
            queued_now, queued_later, next_due = conn.execute(
                select(
                    func.count().filter(jobs.c.not_before <= now),
                    func.count().filter(jobs.c.not_before > now),
                    func.min(jobs.c.not_before).filter(jobs.c.not_before > now),
                ).where(jobs.c.state == QUEUED, *scope)
            ).one()
            # Jobs at a provider's Batch API (leased without expiry, `batchstore.py`) are not a live
            # run's to wait for: their results come when that batch is collected.
            running, next_expiry = conn.execute(
                select(func.count(), func.min(jobs.c.lease_expires))
                .where(jobs.c.state == RUNNING, jobs.c.lease_expires.is_not(None), *scope)
            ).one()
        return Pending(int(queued_now), int(queued_later), next_due, int(running), next_expiry)

    # --- runners ---

    def register_runner(self, owner: str, now: float | None = None, options: str | None = None) -> int:
        """A run begins: its row in `runners` (`options`: what it was started with, JSON). Returns its id."""
        now = time.time() if now is None else now
        with self._write() as conn:
            key = conn.execute(insert(runners).values(
                owner=owner, host=socket.gethostname(), pid=os.getpid(), started_at=now, heartbeat_at=now,
                options=options)).inserted_primary_key
            assert key is not None
            return int(key[0])

    def runner_figures(self, owner: str, requests: int, p50: float | None, p99: float | None) -> None:
        """A run's figures so far, for `status`."""
        with self._write() as conn:
            conn.execute(update(runners).where(runners.c.owner == owner)
                         .values(requests=requests, latency_p50=p50, latency_p99=p99))

    def finish_runner(self, owner: str, exit_code: int, outcome: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._write() as conn:
            conn.execute(update(runners).where(runners.c.owner == owner)
                         .values(ended_at=now, exit_code=exit_code, outcome=outcome, heartbeat_at=now))

    def release_dead_runners(self, is_alive: Callable[[int], bool], now: float | None = None) -> list[str]:
        """Requeue the jobs of runners on this host whose process is gone (killed, crashed).

        Their leases would expire anyway; this lets a run started right after a crash carry on at
        once instead of waiting out the lease. Their keys are free one window of each key after now:
        the last requests a dead runner sent still count at the provider until then.
        """
        now = time.time() if now is None else now
        host = socket.gethostname()
        with self._write() as conn:
            rows = conn.execute(select(runners.c.owner, runners.c.pid)
                                .where(runners.c.host == host, runners.c.ended_at.is_(None))).all()
            dead = [owner for owner, pid in rows if not is_alive(pid)]
            for owner in dead:
                conn.execute(update(jobs).where(jobs.c.lease_owner == owner, jobs.c.state == RUNNING)
                             .values(state=QUEUED, lease_owner=None, lease_expires=None))
                conn.execute(update(api_keys).where(api_keys.c.lease_owner == owner, api_keys.c.free_at.is_(None))
                             .values(lease_expires=now, free_at=now + key_window()))
                conn.execute(update(runners).where(runners.c.owner == owner)
                             .values(ended_at=now, outcome="died (process gone)"))
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
        with self._write() as conn:
            conn.execute(update(runners).where(runners.c.owner == owner).values(heartbeat_at=now))

    # --- the model catalogue ---

    def save_catalog(self, entries: Sequence[ModelInfo], now: float | None = None) -> None:
        """Replace the stored catalogue with these entries (one per id: the last one wins)."""
        now = time.time() if now is None else now
        by_id = {entry.id: entry for entry in entries}
        rows = [{
            "id": entry.id, "alias_for": entry.alias_for, "context_length": entry.context_length,
            "supported_parameters": (None if entry.supported_parameters is None
                                     else orjson.dumps(list(entry.supported_parameters)).decode()),
            "response_format": entry.response_format, "prompt_price": entry.prompt_price,
            "completion_price": entry.completion_price, "fetched_at": now,
        } for entry in by_id.values()]
        with self._write() as conn:
            conn.execute(models.delete())
            if rows:
                conn.execute(insert(models), rows)

    def load_catalog(self) -> Catalog:
        """The catalogue as last saved; empty (fetched_at None) if none was."""
        with self._read() as conn:
            rows = conn.execute(select(
                models.c.id, models.c.alias_for, models.c.context_length, models.c.supported_parameters,
                models.c.response_format, models.c.prompt_price, models.c.completion_price,
                models.c.fetched_at,
            ).order_by(models.c.id)).all()
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
            return report_data(query, runner_id, batch_id, batch, self._engine.dialect.name == "sqlite",
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
        columns = (jobs.c.id, jobs.c.custom_id, jobs.c.state, jobs.c.model, jobs.c.model_served,
                   jobs.c.attempts, jobs.c.key_id, jobs.c.status_code, jobs.c.request_id, jobs.c.response,
                   jobs.c.error_code, jobs.c.error_message, jobs.c.finish_reason, jobs.c.model_sent,
                   jobs.c.fallback_reason, jobs.c.cost, jobs.c.prompt_tokens, jobs.c.completion_tokens,
                   jobs.c.total_tokens, jobs.c.dropped_parameters, jobs.c.endpoint)
        last = -1
        while True:
            query = (select(*columns).where(jobs.c.state.in_(states), jobs.c.batch_id == batch_id, jobs.c.id > last)
                     .order_by(jobs.c.id).limit(chunk))
            with self._read() as conn:
                rows = conn.execute(query).all()
            if not rows:
                return
            for row in rows:
                yield ExportRow(*row)  # type: ignore[call-arg]
            last = rows[-1][0]

    def unfinished_jobs(self, batch_id: int | None = None, chunk: int = 2000) -> Iterator[ClaimedJob]:
        """Queued and running jobs, in id order, read in chunks: what a run would still send."""
        last = -1
        while True:
            query = (select(jobs.c.id, jobs.c.batch_id, jobs.c.custom_id, jobs.c.body, jobs.c.model,
                            jobs.c.input_tokens, jobs.c.max_tokens, jobs.c.attempts, jobs.c.transient_since,
                            jobs.c.endpoint)
                     .where(jobs.c.state.in_((QUEUED, RUNNING)), jobs.c.id > last)
                     .order_by(jobs.c.id).limit(chunk))
            if batch_id is not None:
                query = query.where(jobs.c.batch_id == batch_id)
            with self._read() as conn:
                rows = conn.execute(query).all()
            if not rows:
                return
            for row in rows:
                yield ClaimedJob(*row)  # type: ignore[call-arg]
            last = rows[-1][0]

    def progress(self, batch_id: int | None = None) -> tuple[int, int]:
        """(jobs not cancelled, jobs finished) — counted from indexes only, fast at any size."""
        scope = [] if batch_id is None else [jobs.c.batch_id == batch_id]
        with self._read() as conn:
            total = conn.execute(select(func.count()).select_from(jobs).where(*scope)).scalar_one()
            by_state: dict[str, int] = dict(conn.execute(
                select(jobs.c.state, func.count()).where(jobs.c.state.in_((QUEUED, RUNNING, CANCELLED)), *scope)
                .group_by(jobs.c.state)).all())
        cancelled = int(by_state.get(CANCELLED, 0))
        unfinished = int(by_state.get(QUEUED, 0)) + int(by_state.get(RUNNING, 0))
        return int(total) - cancelled, int(total) - cancelled - unfinished

    def queued_by_model(self, batch_id: int | None = None) -> dict[str, int]:
        """Unfinished jobs per requested model: the run's opening summary."""
        query = (select(jobs.c.model, func.count()).where(jobs.c.state.in_((QUEUED, RUNNING)))
                 .group_by(jobs.c.model))
        if batch_id is not None:
            query = query.where(jobs.c.batch_id == batch_id)
        with self._read() as conn:
            return {model: int(count) for model, count in conn.execute(query)}


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


def _held_update(fixed: str, columns: Sequence[str], mark: str) -> str:
    """An UPDATE of one job still leased to its runner (the last two parameters: its id, the owner)."""
    values = ", ".join(f"{column} = {mark}" for column in columns)
    return (f"UPDATE jobs SET {fixed}, lease_owner = NULL, lease_expires = NULL, {values} "
            f"WHERE id = {mark} AND state = '{RUNNING}' AND lease_owner = {mark}")


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
