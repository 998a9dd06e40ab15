"""`run --via batch-api`: the queue sent through the provider's Batch API instead of live requests.

The second way of working the queue, beside the live `runner.Runner`, over the same store, the same
classification of failures (`provider.classify`, `retry.RetryPolicy`) and the same results: a line of
the provider's output becomes the `Succeeded` / `Failed` / `Retry` a live answer would have been.

Each step is recorded before the next is taken (`batchstore.ProviderBatches`):

    assigned   jobs chosen (one batch, endpoint and model; at most --batch-max-requests and -bytes)
      → upload the JSONL (streamed from the store through a temporary file)  → uploaded (input_file_id)
      → create the batch, tagged with our id in its metadata                 → created (provider_batch_id)
      → poll until completed / failed / expired / cancelled
      → download output and error files (streamed), record every line      → collected

A run killed between any two steps is taken up by the next: an upload not recorded is done again (a
stray file at the provider, no more); a create not recorded is found by its metadata before another
is made, so no provider batch is created twice for the same jobs; a collection cut short is done
again, and `Store.record` writes only jobs still at the provider, so nothing is written twice.

One dispatcher at a time per database: a run takes the "batch-api" lock (`locks`, renewed while it
works, given back at the end; taken over from a process on this host that has died, or once it has run
out) and a second run exits 3 saying who holds it — two cron runs never advance the same batch.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from batchrun.catalog import Catalog
from batchrun.endpoints import ENDPOINTS, Endpoint
from batchrun.errors import KeyUnusable, NoUsableKey, ProviderError
from batchrun.keys import ApiKey
from batchrun.provider import ProviderClient, classify, parse_completion
from batchrun.records import ClaimedJob, Failed, Outcome, ProviderBatch, Retry, Succeeded
from batchrun.retry import FAIL, RETRY, RetryPolicy
from batchrun.processes import pid_alive
from batchrun.store import Store
from batchrun.units import format_clock

log = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["BatchApiOptions", "BatchApiReport", "BatchDispatcher", "TERMINAL", "cancel_provider_batches", "live_switch"]

#: provider statuses after which nothing more will happen to a batch
TERMINAL = frozenset(("completed", "failed", "expired", "cancelled"))
#: the metadata key that ties a provider batch to our row
METADATA_KEY = "batchrun_provider_batch"
_RECORD_CHUNK = 500
#: the first pause between polls with --wait, growing by half each time up to --poll-interval
FIRST_POLL = 1.0
#: how long the batch-API lock holds without being renewed (it is renewed at every step and poll)
LOCK_SECONDS = 300.0


@dataclass(frozen=True)
class BatchApiOptions:
    batch: str | None = None
    max_requests: int = 50_000
    max_bytes: int = 200 * 1024 * 1024
    #: the share of the live price a batch costs (OpenAI: half)
    discount: float = 0.5
    #: poll until every provider batch is collected (else: submit, collect what is ready, exit 3)
    wait: bool = False
    poll_interval: float = 30.0
    deadline: float | None = None
    #: epoch seconds after which what the provider has not finished is cancelled there and handed to
    #: live dispatch (`live_switch`); None: never
    live_at: float | None = None
    policy: RetryPolicy = field(default_factory=RetryPolicy)


def live_switch(start: float, deadline: float | None, live_after: float | None) -> float | None:
    """When a `--wait` run hands what is left to live dispatch: `--live-after` from the start, else
    with a deadline, when three quarters of the time to it have gone (the last quarter is for live
    requests under the keys' limits); None without either."""
    if live_after is not None:
        return start + live_after
    if deadline is not None:
        return start + 0.75 * max(0.0, deadline - start)
    return None


@dataclass
class BatchApiReport:
    exit_code: int
    reason: str
    created: int = 0
    collected: int = 0
    succeeded: int = 0
    failed: int = 0
    requeued: int = 0
    cost: float = 0.0
    open: list[ProviderBatch] = field(default_factory=list)
    #: the provider did not finish in time: what is left is for live dispatch (the CLI runs it)
    hand_over: bool = False

    def lines(self) -> list[str]:
        lines = [f"batch API: {self.created} provider batch(es) created, {self.collected} collected; "
                 f"{self.succeeded} succeeded, {self.failed} failed, {self.requeued} back in the queue; "
                 f"cost ${self.cost:.4f}"]
        for batch in self.open:
            lines.append(f"  provider batch {batch.provider_batch_id or '(not created yet)'}: {batch.requests} "
                         f"jobs of {batch.endpoint} {batch.model}, {batch.provider_status or batch.state} "
                         f"({batch.completed} completed, {batch.failed} failed) since {format_clock(batch.created_at)}"
                         + (f" — {batch.message}" if batch.message else ""))
        lines.append(f"exit {self.exit_code}: {self.reason}")
        return lines


class BatchDispatcher:
    def __init__(self, store: Store, client: ProviderClient, keys: list[ApiKey], options: BatchApiOptions) -> None:
        self._store = store
        self._client = client
        self._keys = {key.id: key for key in keys}
        self._options = options
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batchrun-db")
        self._batch_id: int | None = None
        self.catalog = Catalog([])
        self.report = BatchApiReport(0, "")
        self._memory: dict[Any, Any] = {}
        self._owner = f"{socket.gethostname()}:{os.getpid()}"

    async def run(self) -> BatchApiReport:
        try:
            holder = await self._call(self._store.provider_batches.lock, self._owner, LOCK_SECONDS, _owner_alive)
            if holder is not None:
                return self._finish(3, f"another `run --via batch-api` is at work on this database ({holder}): "
                                       "it collects the provider's batches; nothing done")
            try:
                return await self._run()
            finally:
                await self._call(self._store.provider_batches.unlock, self._owner)
        finally:
            self._db.shutdown(wait=True)

    async def _renew_lock(self) -> None:
        seconds = max(LOCK_SECONDS, 2 * self._options.poll_interval + 60)  # it must outlast a poll's sleep
        await self._call(self._store.provider_batches.lock, self._owner, seconds, _owner_alive)

    async def _run(self) -> BatchApiReport:
        options = self._options
        if options.batch is not None:
            self._batch_id = await self._call(self._store.batch_id, options.batch)
            if self._batch_id is None:
                return self._finish(0, f"no batch named {options.batch!r}")
        records = await self._call(self._store.key_records)
        usable = [key for key_id, key in self._keys.items()
                  if key_id not in records or records[key_id].state in ("active", "cooling")]
        if not usable:
            raise NoUsableKey("no usable API key for the batch API")
        self.catalog = await self._client.fetch_catalog(usable)
        key = usable[0]
        for batch in await self._call(self._store.provider_batches.open, self._batch_id):
            await self._advance(batch)
        while True:
            assigned = await self._call(self._store.provider_batches.assign, key.id, options.max_requests,
                                        options.max_bytes, self._batch_id)
            if assigned is None:
                break
            await self._advance(assigned)
        polls = 0
        while options.wait:
            still = await self._call(self._store.provider_batches.open, self._batch_id)
            if not still or (options.deadline is not None and time.time() >= options.deadline):
                break
            if options.live_at is not None and time.time() >= options.live_at:
                await self._take_back(still)
                self.report.hand_over = True
                return self._finish(3, "the provider did not finish in time: the rest goes live")
            await self._renew_lock()
            # backoff: soon after a submit (a small batch may be done in seconds), then every poll_interval
            pause = min(options.poll_interval, FIRST_POLL * 1.5 ** polls)
            polls += 1
            await asyncio.sleep(min(pause, max(0.05, (options.live_at or float("inf")) - time.time())))
            for batch in still:
                await self._advance(batch)
        open_batches = await self._call(self._store.provider_batches.open, self._batch_id)
        self.report.open = open_batches
        if open_batches:
            return self._finish(3, f"{len(open_batches)} provider batch(es) still at the provider: run again "
                                   "to collect them (or --wait)")
        counts = await self._call(self._store.counts, self._batch_id)
        left = sum(c.queued + c.running for c in counts)
        if left:
            return self._finish(3, f"{left} job(s) left")
        if any(c.failed for c in counts):
            return self._finish(1, f"{sum(c.failed for c in counts)} job(s) failed")
        return self._finish(0, "all jobs succeeded")

    def _finish(self, code: int, reason: str) -> BatchApiReport:
        self.report.exit_code, self.report.reason = code, reason
        return self.report

    # --- one provider batch, one step at a time ---

    async def _advance(self, batch: ProviderBatch) -> None:
        await self._renew_lock()
        key = self._keys.get(batch.key_id)
        if key is None:
            log.warning("provider batch %s was made with key %s, which this run does not have: left as it is",
                        batch.provider_batch_id or batch.id, batch.key_id)
            return
        batches = self._store.provider_batches
        try:
            if batch.state == "assigned":
                file_id = await self._upload(batch, key)
                await self._call(batches.update, batch.id, state="uploaded", input_file_id=file_id)
                batch = await self._call(batches.get, batch.id)
            if batch.state == "uploaded":
                assert batch.input_file_id is not None
                tag = {METADATA_KEY: str(batch.id)}
                found = await self._client.find_batch(key, tag)  # made by a run that died before recording it
                created = found or await self._client.create_batch(key, batch.input_file_id, batch.endpoint, tag)
                if found is None:
                    self.report.created += 1
                await self._call(batches.update, batch.id, state="created", provider_batch_id=created["id"],
                                 provider_status=created.get("status"))
                batch = await self._call(batches.get, batch.id)
            if batch.state == "created":
                assert batch.provider_batch_id is not None
                polled = await self._client.get_batch(key, batch.provider_batch_id)
                counts = polled.get("request_counts") or {}
                await self._call(batches.update, batch.id, provider_status=polled.get("status"),
                                 completed=int(counts.get("completed") or 0), failed=int(counts.get("failed") or 0),
                                 output_file_id=polled.get("output_file_id"), error_file_id=polled.get("error_file_id"),
                                 message=_errors_text(polled.get("errors")))
                if polled.get("status") in TERMINAL:
                    await self._collect(await self._call(batches.get, batch.id), key)
        except KeyUnusable as exc:
            # The key that made the batch cannot reach it any more: said, with the batch, not lost.
            await self._call(self._store.set_key_state, key.id, exc.key_state or "invalid", str(exc))
            await self._call(batches.update, batch.id, message=f"its key {key.id} was refused: {exc}")
            log.warning("provider batch %s belongs to key %s, which the provider refused (%s): reset the key "
                        "(batchrun keys reset) to collect it", batch.provider_batch_id or batch.id, key.id, exc)
        except ProviderError as exc:
            log.warning("provider batch %s (%s): %s; tried again on the next run", batch.id,
                        batch.provider_batch_id or batch.state, exc)

    async def _take_back(self, batches: list[ProviderBatch]) -> None:
        """Cancel at the provider what it has not finished; collect what it did; the rest is queued."""
        for batch in batches:
            key = self._keys.get(batch.key_id)
            if batch.state == "created" and batch.provider_batch_id and key is not None:
                try:
                    await self._client.cancel_batch(key, batch.provider_batch_id)
                except ProviderError as exc:
                    log.warning("could not cancel provider batch %s: %s", batch.provider_batch_id, exc)
        deadline = time.time() + 60  # a cancel takes a little while to settle (cancelling -> cancelled)
        while time.time() < deadline:
            left = [b for b in await self._call(self._store.provider_batches.open, self._batch_id)
                    if b.state == "created"]
            if not left:
                break
            for batch in left:
                await self._advance(batch)
            await asyncio.sleep(0.2)
        for batch in await self._call(self._store.provider_batches.open, self._batch_id):
            # never created at the provider (or it would not settle): its jobs go back to the queue
            jobs = await self._call(self._store.provider_batches.jobs, batch.id)
            now = time.time()
            await self._record(batch, [Retry(job.id, job.attempts, now, batch.key_id, None, None, "batch_taken_back",
                                             "taken back from the provider's Batch API to finish live", job.transient_since)
                                       for job in jobs.values()])
            self.report.requeued += len(jobs)
            await self._call(self._store.provider_batches.update, batch.id, state="collected",
                             message="taken back to finish live")

    async def _upload(self, batch: ProviderBatch, key: ApiKey) -> str:
        handle, path = tempfile.mkstemp(prefix="batchrun-batch-", suffix=".jsonl")

        def write() -> None:  # in the database thread, chunk by chunk: memory stays flat
            with os.fdopen(handle, "wb") as out:
                for custom_id, body in self._store.provider_batches.lines(batch.id):
                    out.write(orjson.dumps({"custom_id": custom_id, "method": "POST", "url": batch.endpoint,
                                            "body": orjson.Fragment(body)}) + b"\n")

        try:
            await self._call(write)
            uploaded = await self._client.upload_batch_file(key, path, f"batchrun-{batch.id}.jsonl")
        finally:
            os.unlink(path)
        log.info("provider batch %d: uploaded %d request(s) as %s", batch.id, batch.requests, uploaded.get("id"))
        return str(uploaded["id"])

    async def _collect(self, batch: ProviderBatch, key: ApiKey) -> None:
        jobs = await self._call(self._store.provider_batches.jobs, batch.id)
        endpoint = ENDPOINTS[batch.endpoint]
        pending: list[Outcome] = []
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            async for raw in self._client.file_lines(key, file_id):
                outcome = self._outcome(raw, jobs, endpoint, batch)
                if outcome is not None:
                    pending.append(outcome)
                if len(pending) >= _RECORD_CHUNK:
                    await self._record(batch, pending)
                    pending = []
        if batch.cancel_requested:  # `batchrun cancel`: what it did not answer is cancelled
            await self._record(batch, pending)
            cancelled = await self._call(self._store.provider_batches.cancel_unanswered, batch.id)
            await self._call(self._store.provider_batches.update, batch.id, state="collected")
            self.report.collected += 1
            log.info("provider batch %d (%s) collected after a cancel: %d job(s) cancelled", batch.id,
                     batch.provider_batch_id, cancelled)
            return
        # What the provider did not answer (a failed or cancelled batch, a line it lost) goes back to the queue.
        now = time.time()
        message = f"provider batch {batch.provider_batch_id} ended {batch.provider_status} without an answer for it"
        for job in jobs.values():
            pending.append(Retry(job.id, job.attempts, now, batch.key_id, None, None, "batch_unanswered", message,
                                 job.transient_since))
            self.report.requeued += 1
        await self._record(batch, pending)
        await self._call(self._store.provider_batches.update, batch.id, state="collected")
        self.report.collected += 1
        log.info("provider batch %d (%s) collected: %s", batch.id, batch.provider_batch_id, batch.provider_status)

    async def _record(self, batch: ProviderBatch, outcomes: list[Outcome]) -> None:
        if outcomes:
            await self._call(self._store.record, batch.owner, outcomes)

    def _outcome(self, raw: bytes, jobs: dict[str, ClaimedJob], endpoint: Endpoint,
                 batch: ProviderBatch) -> Outcome | None:
        """One line of an output or error file as the outcome of its job (None: not one of ours, or
        already written)."""
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            log.warning("provider batch %s: a line that is not JSON, skipped: %.200r", batch.provider_batch_id, raw)
            return None
        job = jobs.pop(str(line.get("custom_id")), None) if isinstance(line, dict) else None
        if job is None:
            return None
        attempt = job.attempts + 1
        response = line.get("response") if isinstance(line.get("response"), dict) else None
        error = line.get("error") if isinstance(line.get("error"), dict) else None
        if response is None:
            code = str((error or {}).get("code") or "batch_error")
            message = str((error or {}).get("message") or "the provider gave no answer for this line")
            if code == "batch_expired":  # not tried: back to the queue, no attempt spent
                self.report.requeued += 1
                return Retry(job.id, job.attempts, time.time(), batch.key_id, None, None, code, message,
                             job.transient_since)
            self.report.failed += 1
            return Failed(job.id, attempt, batch.key_id, None, None, code, message, batch.model)
        status = response.get("status_code")
        body = response.get("body")
        text = orjson.dumps(body).decode()
        try:
            if status != 200:
                raise classify(int(status) if isinstance(status, int) else 500, {}, text)
            completion = parse_completion(text, endpoint=endpoint, request=job.body.encode(), memory=self._memory)
        except ProviderError as failure:
            return self._failure(job, attempt, batch, failure, text)
        request_id = response.get("request_id")
        served = completion.model or batch.model
        model = self.catalog.resolve(served) or self.catalog.resolve(batch.model)
        cost = model.cost(completion.prompt_tokens, completion.completion_tokens) if model else None
        cost = cost * self._options.discount if cost is not None else None
        self.report.succeeded += 1
        self.report.cost += cost or 0.0
        return Succeeded(job.id, attempt, batch.key_id, 200, request_id if isinstance(request_id, str) else None,
                         text, completion.model, completion.finish_reason, completion.prompt_tokens,
                         completion.completion_tokens, completion.total_tokens, cost=cost, model_sent=batch.model)

    def _failure(self, job: ClaimedJob, attempt: int, batch: ProviderBatch, error: ProviderError,
                 text: str) -> Outcome:
        """A line the provider answered with an error: the live run's policy decides."""
        decision = self._options.policy.decide(error, attempt)
        if decision.job == FAIL:
            self.report.failed += 1
            return Failed(job.id, attempt, batch.key_id, error.status, text, decision.code or error.code, str(error),
                          batch.model)
        self.report.requeued += 1
        spent = attempt if decision.job == RETRY else job.attempts
        return Retry(job.id, spent, time.time() + decision.delay, batch.key_id, error.status, text, error.code,
                     str(error), job.transient_since)

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._db, functools.partial(fn, *args, **kwargs))


async def cancel_provider_batches(store: Store, client: ProviderClient, keys: list[ApiKey],
                                  batch_id: int | None = None) -> tuple[int, int]:
    """`batchrun cancel` for the provider's batches: (batches cancelled at the provider, jobs cancelled
    here). A batch not created there yet is dropped here and its jobs cancelled; one at the provider is
    asked to cancel and marked, so that the next `run --via batch-api` collects what it finished and
    cancels the rest."""
    by_id = {key.id: key for key in keys}
    at_provider = cancelled = 0
    batches = store.provider_batches
    for batch in await asyncio.to_thread(batches.open, batch_id):
        if batch.state != "created" or not batch.provider_batch_id:
            cancelled += await asyncio.to_thread(batches.cancel_unanswered, batch.id)
            await asyncio.to_thread(batches.update, batch.id, state="collected", message="cancelled before it was created")
            continue
        key = by_id.get(batch.key_id)
        if key is None:
            log.warning("provider batch %s was made with key %s, which is not given: not cancelled",
                        batch.provider_batch_id, batch.key_id)
            continue
        try:
            await client.cancel_batch(key, batch.provider_batch_id)
        except ProviderError as exc:  # it finished meanwhile (400 "cannot cancel"): its results stand
            log.warning("provider batch %s not cancelled: %s", batch.provider_batch_id, exc)
            continue
        at_provider += 1
        await asyncio.to_thread(batches.update, batch.id, cancel_requested=True)
    return at_provider, cancelled


def _owner_alive(owner: str) -> bool:
    """Whether the holder of a lock ("host:pid") may still be at work: on another host, it may."""
    host, _, pid = owner.rpartition(":")
    return host != socket.gethostname() or not pid.isdigit() or pid_alive(int(pid))


def _errors_text(errors: Any) -> str | None:
    """The provider's `errors` of a batch that failed validation, in one line."""
    data = errors.get("data") if isinstance(errors, dict) else None
    if not isinstance(data, list) or not data:
        return None
    parts = [f"line {e.get('line')}: {e.get('message')}" if isinstance(e, dict) else str(e) for e in data[:5]]
    return "; ".join(parts) + (f" (and {len(data) - 5} more)" if len(data) > 5 else "")



