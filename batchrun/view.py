"""What `status` reads — batches, their counts and usage, keys, runners — as plain SQL on any DB-API
connection, so that `status` on a SQLite file can run without SQLAlchemy.

Importing SQLAlchemy takes ≈ 0.2–0.45 s here, most of the 0.5 s `status` may take on a large queue;
the reads themselves take a few tens of milliseconds (the counts come from `job_tallies`, kept by
triggers, and from the claim index). So these reads are written once, in plain SQL with `?`
placeholders, and run either by the `Store` (through its SQLAlchemy connection: the same SQL on
SQLite and PostgreSQL) or, by `open_sqlite_view`, through the bare `sqlite3` driver — only on a SQLite
file that is already at the current schema revision (`driver.SqliteFile`; otherwise the `Store`
migrates it first). Like the store, it translates driver errors into `StoreError`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from batchrun.driver import SqliteFile
from batchrun.records import (
    BatchCounts,
    EndpointCounts,
    KeyRecord,
    ProviderBatch,
    RunnerActivity,
    RunnerRecord,
    UsageRow,
)

#: runs one statement (with `?` placeholders) and returns its rows
Query = Callable[[str, Sequence[Any]], Sequence[Sequence[Any]]]

JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
_RUNNER = "owner, host, pid, started_at, heartbeat_at, ended_at, exit_code, outcome, requests, latency_p50, latency_p99, id"
_KEY = "id, state, reason, since, requests, rate_limited, errors, last_run_at, rate_configured, rate_adapted"
_USAGE_NAMES = {"key": "key_id", "model": "model"}
_PROVIDER_BATCH = ("id, batch_id, endpoint, model, key_id, state, requests, input_file_id, provider_batch_id, "
                   "provider_status, completed, failed, output_file_id, error_file_id, created_at, updated_at, message, "
                   "cancel_requested")


class QueueView:
    """Read-only queries; each method reads in one transaction (`read` opens it), so its numbers agree."""

    def __init__(self, url: str, read: Callable[[], AbstractContextManager[Query]],
                 close: Callable[[], None] = lambda: None) -> None:
        self.url = url
        self._read = read
        self.close = close

    def batch_names(self) -> dict[int, str]:
        with self._read() as query:
            return {int(bid): name for bid, name in query("SELECT id, name FROM batches ORDER BY id", ())}

    def batch_id(self, name: str) -> int | None:
        with self._read() as query:
            rows = query("SELECT id FROM batches WHERE name = ?", (name,))
        return int(rows[0][0]) if rows else None

    def counts(self, batch_id: int | None = None) -> list[BatchCounts]:
        """Jobs by state, attempts, tokens, cost and flags per batch: from the tallies the triggers keep
        (migrations 0003, 0008) and, for queued and running jobs, the claim index — never a scan of the jobs."""
        scope, params = ("", ()) if batch_id is None else (" AND batch_id = ?", (batch_id,))
        tally: dict[int, dict[str, Any]] = {}
        with self._read() as query:
            names = {int(bid): name for bid, name in query("SELECT id, name FROM batches ORDER BY id", ())}
            for (bid, state, count, attempts, prompt, completion, total, unverified, truncated, fallbacks,
                 cost, priced) in query(
                    "SELECT batch_id, state, sum(jobs), sum(attempts), sum(prompt_tokens), sum(completion_tokens), "
                    "sum(total_tokens), sum(unverified), sum(truncated), sum(fallbacks), sum(cost), sum(priced) "
                    f"FROM job_tallies WHERE 1 = 1{scope} GROUP BY batch_id, state", params):
                entry = tally.setdefault(int(bid), _empty_tally())
                if state in JOB_STATES:
                    entry[state] = int(count)
                entry["attempts"] += int(attempts)
                entry["prompt_tokens"] += int(prompt)
                entry["completion_tokens"] += int(completion)
                entry["total_tokens"] += int(total)
                entry["cost"] += float(cost)
                if state == "succeeded":
                    entry.update(unverified=int(unverified), truncated=int(truncated), fallbacks=int(fallbacks),
                                 priced=int(priced))
            # Queued and running jobs count 0 in the tallies (submitting and claiming do no trigger work):
            # the claim index has them.
            for bid, state, count in query(
                    f"SELECT batch_id, state, count(*) FROM jobs WHERE state IN ('queued', 'running'){scope} "
                    "GROUP BY batch_id, state", params):
                tally.setdefault(int(bid), _empty_tally())[state] = int(count)
            for bid, code, count in query(
                    f"SELECT batch_id, error_code, sum(jobs) FROM job_tallies WHERE state = 'failed'{scope} "
                    "GROUP BY batch_id, error_code HAVING sum(jobs) <> 0", params):
                by_code = tally.setdefault(int(bid), _empty_tally())["failed_by_code"]
                by_code[code or "unknown"] = by_code.get(code or "unknown", 0) + int(count)
            endpoints: dict[int, list[str]] = {}
            for bid, endpoint in query(f"SELECT batch_id, endpoint FROM batch_endpoints WHERE 1 = 1{scope} "
                                       "ORDER BY batch_id, endpoint", params):
                endpoints.setdefault(int(bid), []).append(endpoint)
            result = []
            for bid in [batch_id] if batch_id is not None else list(names):
                entry = tally.get(bid, _empty_tally())
                total = sum(entry[s] for s in JOB_STATES)
                mine = endpoints.get(bid, [])
                if len(mine) == 1:
                    entry["endpoints"] = (_endpoint_counts(mine[0], entry, (
                        entry["prompt_tokens"], entry["completion_tokens"], entry["total_tokens"])),)
                elif mine:
                    entry["endpoints"] = _by_endpoint(query, bid)
                result.append(BatchCounts(name=names.get(bid, str(bid)), total=total, **entry))
        return result

    def usage(self, by: str, batch_id: int | None = None) -> list[UsageRow]:
        """Usage of succeeded jobs per key (`by="key"`) or per model served (`by="model"`: the model
        the provider says served it, else the one sent, else the one requested), sorted by name."""
        name = _USAGE_NAMES.get(by)
        if name is None:
            raise ValueError(f"usage by {by!r}: expected 'key' or 'model'")
        scope, params = ("", ()) if batch_id is None else (" AND batch_id = ?", (batch_id,))
        with self._read() as query:
            rows = query(f"SELECT {name}, sum(jobs), sum(prompt_tokens), sum(completion_tokens), sum(total_tokens), "
                         f"sum(cost), sum(priced) FROM job_tallies WHERE state = 'succeeded'{scope} "
                         f"GROUP BY {name} HAVING sum(jobs) <> 0", params)
        # Sorted here: SQLite and PostgreSQL collate differently.
        return sorted((UsageRow(name=row[0], requests=int(row[1]), prompt_tokens=int(row[2]),
                                completion_tokens=int(row[3]), total_tokens=int(row[4]), cost=float(row[5]),
                                priced=int(row[6])) for row in rows), key=lambda row: row.name)

    def open_provider_batches(self, batch_id: int | None = None) -> list[ProviderBatch]:
        """Batches at the provider's Batch API not collected yet (`run --via batch-api`), oldest first."""
        scope, params = ("", ()) if batch_id is None else (" AND batch_id = ?", (batch_id,))
        with self._read() as query:
            rows = query(f"SELECT {_PROVIDER_BATCH} FROM provider_batches WHERE state <> 'collected'{scope} "
                         "ORDER BY id", params)
        return [ProviderBatch(*row) for row in rows]

    def key_records(self) -> dict[str, KeyRecord]:
        with self._read() as query:
            return {row[0]: KeyRecord(*row) for row in query(f"SELECT {_KEY} FROM api_keys ORDER BY id", ())}

    def last_runner(self, ended: bool = False) -> RunnerRecord | None:
        """The runner that started last (with `ended`: the last one that has ended)."""
        order = "WHERE ended_at IS NOT NULL ORDER BY ended_at DESC" if ended else "ORDER BY id DESC"
        with self._read() as query:
            rows = query(f"SELECT {_RUNNER} FROM runners {order} LIMIT 1", ())
        return RunnerRecord(*rows[0]) if rows else None

    def live_runners(self, stale_after: float, now: float | None = None) -> list[RunnerRecord]:
        """Runners that have not ended and whose heartbeat is fresher than `stale_after` seconds."""
        with self._read() as query:
            return _live_runners(query, stale_after, time.time() if now is None else now)

    def runner_activity(self, stale_after: float, now: float | None = None) -> list[RunnerActivity]:
        """Runners alive now (not ended, heartbeat within `stale_after`): jobs in flight and keys held."""
        now = time.time() if now is None else now
        with self._read() as query:
            alive = _live_runners(query, stale_after, now)
            if not alive:
                return []
            owners = [r.owner for r in alive]
            marks = ", ".join("?" * len(owners))
            in_flight = {owner: int(count) for owner, count in query(
                f"SELECT lease_owner, count(*) FROM jobs WHERE state = 'running' AND lease_owner IN ({marks}) "
                "GROUP BY lease_owner", owners)}
            held: dict[str, list[str]] = {}
            for key_id, owner in query(f"SELECT id, lease_owner FROM api_keys WHERE lease_owner IN ({marks}) "
                                       "AND lease_expires >= ? ORDER BY id", (*owners, now)):
                held.setdefault(owner, []).append(key_id)
        return [RunnerActivity(r, in_flight.get(r.owner, 0), tuple(held.get(r.owner, ()))) for r in alive]


def _live_runners(query: Query, stale_after: float, now: float) -> list[RunnerRecord]:
    return [RunnerRecord(*row) for row in query(
        f"SELECT {_RUNNER} FROM runners WHERE ended_at IS NULL AND heartbeat_at >= ? ORDER BY id",
        (now - stale_after,))]


def _by_endpoint(query: Query, batch_id: int) -> tuple[EndpointCounts, ...]:
    """A batch of several endpoints, broken down: the one count that scans the batch's jobs (a batch of
    one endpoint is its own breakdown), so only mixed batches pay for it."""
    found: dict[str, dict[str, Any]] = {}
    for endpoint, state, count, prompt, completion, total, cost in query(
            "SELECT endpoint, state, count(*), sum(COALESCE(prompt_tokens, 0)), sum(COALESCE(completion_tokens, 0)), "
            "sum(COALESCE(total_tokens, 0)), sum(COALESCE(cost, 0.0)) FROM jobs WHERE batch_id = ? "
            "GROUP BY endpoint, state", (batch_id,)):
        entry = found.setdefault(endpoint, {"tokens": [0, 0, 0], "cost": 0.0, **{s: 0 for s in JOB_STATES}})
        if state in JOB_STATES:
            entry[state] += int(count)
        entry["tokens"] = [a + int(b) for a, b in zip(entry["tokens"], (prompt, completion, total))]
        entry["cost"] += float(cost)
    return tuple(_endpoint_counts(endpoint, e, e["tokens"]) for endpoint, e in sorted(found.items()))


def _endpoint_counts(endpoint: str, entry: dict[str, Any], tokens: Sequence[int]) -> EndpointCounts:
    return EndpointCounts(endpoint=endpoint, total=sum(entry[s] for s in JOB_STATES), queued=entry["queued"],
                          running=entry["running"], succeeded=entry["succeeded"], failed=entry["failed"],
                          cancelled=entry["cancelled"], prompt_tokens=tokens[0], completion_tokens=tokens[1],
                          total_tokens=tokens[2], cost=entry["cost"])


def _empty_tally() -> dict[str, Any]:
    tally: dict[str, Any] = {state: 0 for state in JOB_STATES}
    tally.update(attempts=0, prompt_tokens=0, completion_tokens=0, total_tokens=0, failed_by_code={},
                 unverified=0, truncated=0, fallbacks=0, cost=0.0, priced=0)
    return tally


# --- the bare sqlite3 path ----------------------------------------------------------------------------

def open_sqlite_view(url: str) -> QueueView | None:
    """A view of the SQLite file at `url` through the bare driver, or None where the `Store` must be
    used instead: not a plain `sqlite:///PATH` URL, no such file yet, or not at the current revision."""
    file = SqliteFile.open(url)
    if file is None:
        return None

    @contextmanager
    def read() -> Iterator[Query]:
        with file.read() as tx:  # one snapshot for the whole method
            yield tx.rows

    return QueueView(url, read, file.close)
