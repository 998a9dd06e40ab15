"""The store's side of API keys: their sticky state (revoked, budget, ...), the last run's counts, and
their leases to one runner at a time (`schema.api_keys`). A part of `Store` (which it is mixed into) of
its own, so that store.py keeps to the queue.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from batchrun.records import RunnerRecord
from batchrun.schema import api_keys, runners

__all__ = ["LEGACY_KEY_WINDOW", "KeyLeases", "key_window"]

#: the window assumed for a key whose row has none (leased by a batchrun from before migration 0004)
LEGACY_KEY_WINDOW = 60.0


class KeyLeases:
    """Key state and leases; `Store` provides the transactions."""

    _write: Callable[[], AbstractContextManager[Connection]]
    _read: Callable[[], AbstractContextManager[Connection]]

    def set_key_state(self, key_id: str, state: str, reason: str | None, now: float | None = None) -> None:
        """Record a key's state (revoked, budget, ...); the last run's counts are kept."""
        now = time.time() if now is None else now
        with self._write() as conn:
            _upsert_key(conn, key_id, {"state": state, "reason": reason, "since": now}, {})

    def save_key_run(self, key_id: str, requests: int, rate_limited: int, errors: int,
                     rate_configured: str | None, rate_adapted: str | None, now: float | None = None) -> None:
        """Record what the last run did with a key; its state (revoked, ...) is left as it is."""
        now = time.time() if now is None else now
        with self._write() as conn:
            _upsert_key(conn, key_id, {
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
        key = api_keys.c
        takeable = or_(
            key.lease_owner == owner,
            and_(key.free_at.is_not(None), key.free_at <= now),
            and_(key.free_at.is_(None), or_(key.lease_owner.is_(None), key.lease_expires.is_(None),
                                            key.lease_expires + key_window() <= now)),
        )
        held: list[str] = []
        with self._write() as conn:
            known = set(conn.execute(select(key.id).where(key.id.in_(list(windows)))).scalars())
            for key_id in windows:
                if key_id not in known:
                    _upsert_key(conn, key_id, {"since": now}, {"state": "active", "reason": None})
            for key_id, window in windows.items():
                held.extend(conn.execute(
                    update(api_keys).where(key.id == key_id, takeable)
                    .values(lease_owner=owner, lease_expires=now + lease_seconds, free_at=None,
                            window_seconds=window).returning(key.id)).scalars())
        return sorted(held)

    def release_keys(self, owner: str, free_at: Mapping[str, float], now: float | None = None) -> None:
        """Give up this owner's leases of these keys (id -> when another runner may take it: the
        owner's last answer on the key plus its window). Keys it no longer holds are left alone."""
        now = time.time() if now is None else now
        with self._write() as conn:
            for key_id, free in free_at.items():
                conn.execute(update(api_keys).where(api_keys.c.id == key_id, api_keys.c.lease_owner == owner,
                                                    api_keys.c.free_at.is_(None))
                             .values(lease_expires=now, free_at=free))

    def key_holders(self, key_ids: Sequence[str], now: float | None = None) -> dict[str, RunnerRecord]:
        """Which live runner holds each of these keys (keys nobody holds are left out)."""
        now = time.time() if now is None else now
        with self._read() as conn:
            rows = conn.execute(
                select(api_keys.c.id, runners.c.owner, runners.c.host, runners.c.pid, runners.c.started_at,
                       runners.c.heartbeat_at, runners.c.ended_at, runners.c.exit_code, runners.c.outcome)
                .join(runners, runners.c.owner == api_keys.c.lease_owner)
                .where(api_keys.c.id.in_(list(key_ids)), api_keys.c.free_at.is_(None),
                       api_keys.c.lease_expires >= now)).all()
        return {row[0]: RunnerRecord(*row[1:]) for row in rows}

    def reset_key(self, key_id: str, now: float | None = None) -> bool:
        """Put a key back into rotation (after revoked, expired, ...) and forget its adapted rate; the
        last run's counts are kept. False if the key is unknown."""
        now = time.time() if now is None else now
        with self._write() as conn:
            return bool(conn.execute(
                update(api_keys).where(api_keys.c.id == key_id)
                .values(state="active", reason=None, since=now, rate_adapted=None)).rowcount)


def key_window() -> Any:
    """A key's stored window in SQL (for a row from before migration 0004: `LEGACY_KEY_WINDOW`)."""
    return func.coalesce(api_keys.c.window_seconds, LEGACY_KEY_WINDOW)


def _upsert_key(conn: Connection, key_id: str, changes: dict[str, Any], fresh: dict[str, Any]) -> None:
    """Update `changes` on a key's row, or insert it with `fresh` values as well if it is not there.

    Portable (no dialect-specific ON CONFLICT): a concurrent insert of the same key by another runner
    (PostgreSQL; SQLite writers are serialised) fails inside a savepoint and becomes an update.
    """
    if conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(**changes)).rowcount:
        return
    try:
        with conn.begin_nested():
            conn.execute(insert(api_keys).values(id=key_id, **{**fresh, **changes}))
    except IntegrityError:
        conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(**changes))
