"""The store's side of `run --via batch-api`: which jobs go in which provider batch, and every id the
provider gives, each written before the next step is taken (`schema.provider_batches`).

A job in a provider batch is `running`, leased to "provider-batch:<id>" with no expiry: no live runner
claims it, no expired-lease sweep takes it back; it leaves the lease when its result (or its failure,
or its return to the queue) is recorded from the provider's output — `Store.record` with that owner,
which writes only jobs still so leased, so collecting a batch twice writes nothing twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from batchrun.records import ClaimedJob, ProviderBatch, provider_batch_owner
from batchrun.schema import jobs, locks, provider_batches

if TYPE_CHECKING:
    from batchrun.store import Store

__all__ = ["ProviderBatches"]

_QUEUED, _RUNNING = "queued", "running"
_LOCK = "batch-api"
COLLECTED = "collected"


class ProviderBatches:
    """Provider batches in one queue database (`Store.provider_batches`)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def lock(self, owner: str, seconds: float, is_alive: Callable[[str], bool], now: float | None = None) -> str | None:
        """Take (or renew) the batch-API lock for `owner` ("host:pid") for `seconds`; None if taken,
        else the owner that holds it. A holder that is gone (`is_alive` false: its process on this host
        has died) or whose lock has run out loses it."""
        now = time.time() if now is None else now
        with self._store._write() as conn:
            held = conn.execute(select(locks.c.owner, locks.c.expires).where(locks.c.name == _LOCK)).first()
            if held is not None and held.owner != owner and held.expires > now and is_alive(held.owner):
                return str(held.owner)
            if held is None:
                try:
                    with conn.begin_nested():
                        conn.execute(insert(locks).values(name=_LOCK, owner=owner, expires=now + seconds))
                except IntegrityError:  # taken between our look and our insert
                    return self.lock(owner, seconds, is_alive, now)
            else:
                conn.execute(update(locks).where(locks.c.name == _LOCK).values(owner=owner, expires=now + seconds))
        return None

    def unlock(self, owner: str) -> None:
        with self._store._write() as conn:
            conn.execute(delete(locks).where(locks.c.name == _LOCK, locks.c.owner == owner))

    def open(self, batch_id: int | None = None) -> list[ProviderBatch]:
        """Those not collected yet, oldest first."""
        query = select(provider_batches).where(provider_batches.c.state != COLLECTED)
        if batch_id is not None:
            query = query.where(provider_batches.c.batch_id == batch_id)
        with self._store._read() as conn:
            return [ProviderBatch(*row) for row in conn.execute(query.order_by(provider_batches.c.id))]

    def get(self, provider_batch: int) -> ProviderBatch:
        with self._store._read() as conn:
            row = conn.execute(select(provider_batches).where(provider_batches.c.id == provider_batch)).one()
        return ProviderBatch(*row)

    def assign(self, key_id: str, max_requests: int, max_bytes: int, batch_id: int | None = None,
               now: float | None = None) -> ProviderBatch | None:
        """Put the next queued jobs of one batch, endpoint and model (at most `max_requests` of them and
        `max_bytes` of bodies) in a new provider batch made with `key_id`; None when nothing is queued."""
        now = time.time() if now is None else now
        due = [jobs.c.state == _QUEUED, jobs.c.not_before <= now]
        if batch_id is not None:
            due.append(jobs.c.batch_id == batch_id)
        with self._store._write() as conn:
            first = conn.execute(select(jobs.c.batch_id, jobs.c.endpoint, jobs.c.model).where(*due)
                                 .order_by(jobs.c.batch_id, jobs.c.id).limit(1)).first()
            if first is None:
                return None
            group = [*due, jobs.c.batch_id == first[0], jobs.c.endpoint == first[1], jobs.c.model == first[2]]
            chosen: list[int] = []
            size = 0
            for job_id, length in conn.execute(select(jobs.c.id, func.length(jobs.c.body)).where(*group)
                                               .order_by(jobs.c.id).limit(max_requests)):
                if chosen and size + length + 200 > max_bytes:  # ~200 bytes of envelope a line
                    break
                chosen.append(job_id)
                size += length + 200
            provider_batch = conn.execute(insert(provider_batches).values(
                batch_id=first[0], endpoint=first[1], model=first[2], key_id=key_id, state="assigned",
                requests=len(chosen), completed=0, failed=0, created_at=now, updated_at=now,
            ).returning(provider_batches.c.id)).scalar_one()
            for start in range(0, len(chosen), 500):
                conn.execute(update(jobs).where(jobs.c.id.in_(chosen[start:start + 500]), jobs.c.state == _QUEUED)
                             .values(state=_RUNNING, lease_owner=provider_batch_owner(provider_batch),
                                     lease_expires=None, provider_batch_id=provider_batch))
        return self.get(provider_batch)

    def update(self, provider_batch: int, **changes: Any) -> None:
        """Record what the provider said (ids, status, counts) before the next step."""
        with self._store._write() as conn:
            conn.execute(update(provider_batches).where(provider_batches.c.id == provider_batch)
                         .values(**changes, updated_at=time.time()))

    def cancel_unanswered(self, provider_batch: int, now: float | None = None) -> int:
        """Cancel its jobs still at the provider (`batchrun cancel` asked for it): they are not requeued."""
        now = time.time() if now is None else now
        with self._store._write() as conn:
            return int(conn.execute(update(jobs).where(jobs.c.lease_owner == provider_batch_owner(provider_batch),
                                                       jobs.c.state == _RUNNING)
                                    .values(state="cancelled", lease_owner=None, lease_expires=None,
                                            finished_at=now)).rowcount)

    def lines(self, provider_batch: int, chunk: int = 500) -> Iterator[tuple[str, str]]:
        """(custom_id, body) of its jobs still at the provider, in id order, read in chunks."""
        owner = provider_batch_owner(provider_batch)
        last = -1
        while True:
            with self._store._read() as conn:
                rows = conn.execute(select(jobs.c.id, jobs.c.custom_id, jobs.c.body)
                                    .where(jobs.c.lease_owner == owner, jobs.c.state == _RUNNING, jobs.c.id > last)
                                    .order_by(jobs.c.id).limit(chunk)).all()
            if not rows:
                return
            for _, custom_id, body in rows:
                yield custom_id, body
            last = rows[-1][0]

    def jobs(self, provider_batch: int) -> dict[str, ClaimedJob]:
        """Its jobs still at the provider, by custom_id (with their bodies: an answer is judged against
        its request, e.g. one embedding per input)."""
        owner = provider_batch_owner(provider_batch)
        with self._store._read() as conn:
            rows = conn.execute(select(jobs.c.id, jobs.c.batch_id, jobs.c.custom_id, jobs.c.body, jobs.c.model,
                                       jobs.c.input_tokens, jobs.c.max_tokens, jobs.c.attempts,
                                       jobs.c.transient_since, jobs.c.endpoint)
                                .where(jobs.c.lease_owner == owner, jobs.c.state == _RUNNING)).all()
        return {row.custom_id: ClaimedJob(row.id, row.batch_id, row.custom_id, row.body, row.model, row.input_tokens,
                                          row.max_tokens, row.attempts, row.transient_since, row.endpoint)
                for row in rows}
