"""The store's side of the attempts log (`schema.attempts`, `schema.run_events`): written in the runner's
group commits, read back aggregated by `reportquery`, pruned by `batchrun prune`.

Rows go in through the driver's executemany with plain tuples, as `Store.insert_jobs` does: at thousands
of answers a second, SQLAlchemy's per-row parameter processing would cost the dispatch loop more than the
insert itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sqlalchemy import delete, select
from sqlalchemy.engine import Connection

from batchrun.attempts import ATTEMPT_COLUMNS, AttemptRecord, EventRecord
from batchrun.database import insert_rows
from batchrun.schema import attempts, run_events, runners

if TYPE_CHECKING:
    from batchrun.store import Store

__all__ = ["AttemptStore"]

#: attempts a statement inserts: several rows to a statement cost SQLite ≈ 2 µs a row less (as in
#: `Store.insert_jobs`); × 18 parameters stays under SQLite's oldest limit of 999
_ROWS_PER_INSERT = 50
_EVENT_COLUMNS = ("runner_id", "at", "kind", "key_id", "message")


class AttemptStore:
    """Attempts and run events in one queue database (`Store.attempts`)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def write(self, conn: Connection, runner_id: int, attempt_rows: Sequence[AttemptRecord],
              event_rows: Sequence[EventRecord]) -> None:
        """Add attempts and events of runner `runner_id` in the caller's transaction."""
        mark = self._store._mark
        insert_rows(conn, lambda count: _insert_attempts_sql(runner_id, count, mark), attempt_rows, _ROWS_PER_INSERT)
        if event_rows:
            conn.exec_driver_sql(_insert_sql("run_events", _EVENT_COLUMNS, mark), [
                (runner_id, e.at, e.kind, e.key_id, e.message) for e in event_rows])

    def prune(self, before: float) -> tuple[int, int]:
        """Drop the attempts and events of runs that ended (or were last heard of) before `before`
        (epoch seconds); returns (attempts, events) dropped. The runs themselves stay listed."""
        with self._store._write() as conn:
            old = select(runners.c.id).where(
                (runners.c.ended_at < before) | (runners.c.ended_at.is_(None) & (runners.c.heartbeat_at < before)))
            dropped_attempts = conn.execute(delete(attempts).where(attempts.c.runner_id.in_(old))).rowcount
            dropped_events = conn.execute(delete(run_events).where(run_events.c.runner_id.in_(old))).rowcount
        return dropped_attempts, dropped_events


def _insert_attempts_sql(runner_id: int, rows: int, mark: str) -> str:
    values = f"({int(runner_id)}, {', '.join([mark] * len(ATTEMPT_COLUMNS))})"
    return (f"INSERT INTO attempts (runner_id, {', '.join(ATTEMPT_COLUMNS)}) "
            f"VALUES {', '.join([values] * rows)}")


def _insert_sql(table: str, columns: Sequence[str], mark: str) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join([mark] * len(columns))})"
