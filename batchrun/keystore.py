"""The store's side of API keys: their sticky state (revoked, budget, ...), the last run's counts, and
their leases to one runner at a time (`schema.api_keys`). A part of `Store` (which it is mixed into) of
its own, so that store.py keeps to the queue.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from batchrun.driver import Tx
from batchrun.records import RunnerRecord

__all__ = ["KEY_WINDOW", "LEGACY_KEY_WINDOW", "KeyLeases"]

#: the window assumed for a key whose row has none (leased by a batchrun from before migration 0004)
LEGACY_KEY_WINDOW = 60.0
#: a key's stored window in SQL (for a row from before migration 0004: `LEGACY_KEY_WINDOW`)
KEY_WINDOW = f"COALESCE(window_seconds, {LEGACY_KEY_WINDOW!r})"


class KeyLeases:
    """Key state and leases; `Store` provides the transactions."""

    _tx: Callable[..., AbstractContextManager[Tx]]

    def set_key_state(self, key_id: str, state: str, reason: str | None, now: float | None = None) -> None:
        """Record a key's state (revoked, budget, ...); the last run's counts are kept."""
        now = time.time() if now is None else now
        with self._tx() as tx:
            _upsert_key(tx, key_id, {"state": state, "reason": reason, "since": now}, {})

    def save_key_run(self, key_id: str, requests: int, rate_limited: int, errors: int,
                     rate_configured: str | None, rate_adapted: str | None, now: float | None = None) -> None:
        """Record what the last run did with a key; its state (revoked, ...) is left as it is."""
        now = time.time() if now is None else now
        with self._tx() as tx:
            _upsert_key(tx, key_id, {
                "requests": requests, "rate_limited": rate_limited, "errors": errors, "last_run_at": now,
                "rate_configured": rate_configured, "rate_adapted": rate_adapted,
            }, {"state": "active", "reason": None, "since": now})

    def acquire_keys(self, owner: str, windows: Mapping[str, float], lease_seconds: float,
                     now: float | None = None) -> list[str]:
        """Lease these keys (id -> the key's window in seconds) to `owner` where that is safe; returns
        the ids it now holds, each until `now + lease_seconds`.

        One runner per key at a time keeps each key's rate limit true across runners. A key is taken
        from another runner only once that runner's last request with it has left the provider's
        window: from `free_at` when it gave the lease up, from `lease_expires` + the key's window when
        the lease ran out unreleased (its runner died or hangs; a runner never sends past its lease).
        The owner's own keys it may take back at once: it keeps its own send times.
        """
        now = time.time() if now is None else now
        held: list[str] = []
        with self._tx() as tx:
            for key_id in windows:
                _upsert_key(tx, key_id, {}, {"state": "active", "reason": None, "since": now})
            for key_id, window in windows.items():
                held.extend(taken for taken, in tx.rows(_TAKE_KEY, (
                    owner, now + lease_seconds, window, key_id, owner, now, now)))
        return sorted(held)

    def release_keys(self, owner: str, free_at: Mapping[str, float], now: float | None = None) -> None:
        """Give up this owner's leases of these keys (id -> when another runner may take it: the
        owner's last answer on the key plus its window). Keys it no longer holds are left alone."""
        now = time.time() if now is None else now
        with self._tx() as tx:
            tx.many("UPDATE api_keys SET lease_expires = ?, free_at = ? "
                    "WHERE id = ? AND lease_owner = ? AND free_at IS NULL",
                    [(now, free, key_id, owner) for key_id, free in free_at.items()])

    def key_holders(self, key_ids: Sequence[str], now: float | None = None) -> dict[str, RunnerRecord]:
        """Which live runner holds each of these keys (keys nobody holds are left out)."""
        if not key_ids:
            return {}
        now = time.time() if now is None else now
        with self._tx(write=False) as tx:
            rows = tx.rows(
                "SELECT k.id, r.owner, r.host, r.pid, r.started_at, r.heartbeat_at, r.ended_at, r.exit_code, "
                "r.outcome FROM api_keys k JOIN runners r ON r.owner = k.lease_owner "
                f"WHERE k.id IN ({', '.join('?' * len(key_ids))}) AND k.free_at IS NULL AND k.lease_expires >= ?",
                (*key_ids, now))
        return {row[0]: RunnerRecord(*row[1:]) for row in rows}

    def reset_key(self, key_id: str, now: float | None = None) -> bool:
        """Put a key back into rotation (after revoked, expired, ...) and forget its adapted rate; the
        last run's counts are kept. False if the key is unknown."""
        now = time.time() if now is None else now
        with self._tx() as tx:
            return bool(tx.run("UPDATE api_keys SET state = 'active', reason = NULL, since = ?, rate_adapted = NULL "
                               "WHERE id = ?", (now, key_id)))


#: a key this owner may lease now (parameters: owner, lease expiry, window, key id, owner, now, now)
_TAKE_KEY = (
    "UPDATE api_keys SET lease_owner = ?, lease_expires = ?, free_at = NULL, window_seconds = ? "
    "WHERE id = ? AND (lease_owner = ? OR (free_at IS NOT NULL AND free_at <= ?) "
    f"OR (free_at IS NULL AND (lease_owner IS NULL OR lease_expires IS NULL OR lease_expires + {KEY_WINDOW} <= ?))) "
    "RETURNING id")


def _upsert_key(tx: Tx, key_id: str, changes: dict[str, Any], fresh: dict[str, Any]) -> None:
    """Update `changes` on a key's row, or insert it with `fresh` values as well if it is not there (one
    statement on both databases: a concurrent insert of the same key by another runner becomes the update)."""
    values = {**fresh, **changes}
    columns = ", ".join(["id", *values])
    on_conflict = (f"DO UPDATE SET {', '.join(f'{name} = excluded.{name}' for name in changes)}" if changes
                   else "DO NOTHING")
    tx.run(f"INSERT INTO api_keys ({columns}) VALUES ({', '.join('?' * (len(values) + 1))}) "
           f"ON CONFLICT (id) {on_conflict}", (key_id, *values.values()))
