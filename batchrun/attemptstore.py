"""The store's side of the attempts log (`schema.attempts`, `schema.run_events`): written in the runner's
group commits, read back aggregated by `reportquery`, pruned by `batchrun prune`.

Rows go in through the driver's executemany with plain tuples, as `Store.insert_jobs` does: at thousands
of answers a second, SQLAlchemy's per-row parameter processing would cost the dispatch loop more than the
insert itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from batchrun.attempts import ATTEMPT_COLUMNS, AttemptRecord, EventRecord
from batchrun.driver import Tx

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

    def write(self, tx: Tx, runner_id: int, attempt_rows: Sequence[AttemptRecord],
              event_rows: Sequence[EventRecord]) -> None:
        """Add attempts and events of runner `runner_id` in the caller's transaction."""
        tx.insert_rows(lambda count: _insert_attempts_sql(runner_id, count), attempt_rows, _ROWS_PER_INSERT)
        if event_rows:
            tx.many(_INSERT_EVENT, [(runner_id, e.at, e.kind, e.key_id, e.message) for e in event_rows])

    def prune(self, before: float) -> tuple[int, int]:
        """Drop the attempts and events of runs that ended (or were last heard of) before `before`
        (epoch seconds); returns (attempts, events) dropped. The runs themselves stay listed."""
        old = "SELECT id FROM runners WHERE ended_at < ? OR (ended_at IS NULL AND heartbeat_at < ?)"
        with self._store._tx() as tx:
            dropped_attempts = tx.run(f"DELETE FROM attempts WHERE runner_id IN ({old})", (before, before))
            dropped_events = tx.run(f"DELETE FROM run_events WHERE runner_id IN ({old})", (before, before))
        return dropped_attempts, dropped_events


def _insert_attempts_sql(runner_id: int, rows: int) -> str:
    values = f"({int(runner_id)}, {', '.join('?' * len(ATTEMPT_COLUMNS))})"
    return (f"INSERT INTO attempts (runner_id, {', '.join(ATTEMPT_COLUMNS)}) "
            f"VALUES {', '.join([values] * rows)}")


_INSERT_EVENT = f"INSERT INTO run_events ({', '.join(_EVENT_COLUMNS)}) VALUES ({', '.join('?' * len(_EVENT_COLUMNS))})"
