"""The run loop: claim jobs, spread them over the keys, send, checkpoint every outcome.

Shape of a run (all in one event loop; the database in one dedicated thread, the single writer):

    feeder ──claims chunks──▶ job queue ──▶ one lane per key ──▶ request tasks ──▶ outcome queue ──▶ writer
      ▲  (leased to this runner)            (cool-down, rate and      (≤ concurrency)     (batched commits)
      └──────────────── heartbeat extends the leases; expired leases of dead runners are requeued

Each key's lane takes the next job only when its own limiter lets it send, so a key that can send
sooner takes more of the work, and a 429 slows that key alone. Outcomes are committed in small
batches; a job whose process dies keeps a lease that expires (or is released at once when the
next run on this host sees the process is gone), and it is sent again by the next run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import orjson

from batchrun.attempts import AttemptLog, AttemptRecord, EventRecord, refused_attempt, sent_attempt
from batchrun.budget import Reservation, SpendCap
from batchrun.breaker import CircuitBreaker
from batchrun.catalog import Catalog, ModelInfo, parse_catalog
from batchrun.endpoints import ENDPOINTS
from batchrun.errors import (
    BatchrunError,
    ConfigError,
    EndpointNotFound,
    EndpointNotServed,
    KeyModelForbidden,
    KeyUnusable,
    NoUsableKey,
    ProviderError,
    ProviderUnreachable,
    RateLimited,
    TransientError,
)
from batchrun.keys import KeyLane
from batchrun.keyshare import KeySharing, LeaseState
from batchrun.units import format_clock as _clock
from batchrun.processes import pid_alive
from batchrun.prechecks import UNKNOWN_ENDPOINT, Prepared, Refused, prepare
from batchrun.provider import Completion, ProviderClient, RateHint, plain_success
from batchrun.records import ClaimedJob, Failed, Outcome, Retry, Succeeded
from batchrun.retry import FAIL, REQUEUE, RETRY, Decision
from batchrun.runstate import RunOptions, RunReport, RunStats
from batchrun.store import Store
from batchrun.waits import wait_for_event

log = logging.getLogger(__name__)
summary_log = logging.getLogger("batchrun.progress")
T = TypeVar("T")

#: however many requests meet a vanished model at once, the catalogue is fetched at most this often
CATALOG_REFRESH_INTERVAL = 5.0
#: the opening summary prechecks every queued job when there are at most this many (a few seconds)
OPENING_PRECHECK_LIMIT = 20_000


class Runner:
    def __init__(self, store: Store, client: ProviderClient, lanes: list[KeyLane], options: RunOptions,
                 rng: random.Random | None = None, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        #: the wall clock the deadline (--max-duration / --until) is read on: a test can move it
        self._now = clock
        self._client = client
        self.lanes = lanes
        self._options = options
        self._rng = rng or random.Random()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stats = RunStats()
        #: every attempt and event of this run, until the writer commits them; and their counts
        self.attempt_log = AttemptLog()
        self.runner_id: int | None = None  # its row in `runners`, once registered
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batchrun-db")
        #: this runner's key leases: shared with the other runners, handed over within each key's window
        self._keys = KeySharing(store, self._call, lanes, self.owner, options)
        self._batch_id: int | None = None
        self._jobs: asyncio.Queue[ClaimedJob] = asyncio.Queue()
        self._outcomes: asyncio.Queue[Outcome] = asyncio.Queue()
        self._unwritten = 0
        self._written = asyncio.Event()
        self._need_jobs = asyncio.Event()
        self._stop = asyncio.Event()
        self._stop_error: BatchrunError | None = None
        self._stop_reason = ""
        #: requests in flight: their tasks, and the lease state of the key each went out on
        self._in_flight: dict[asyncio.Task[None], LeaseState] = {}
        self._slots = asyncio.Semaphore(options.concurrency)
        self._slot_freed = asyncio.Event()
        # Cuts concurrency when most recent requests fail transiently (an outage), then ramps back.
        self.breaker = CircuitBreaker(options.concurrency)
        self.catalog = Catalog([])
        #: models the provider said are gone (404 / unknown model) during this run, catalogue or not
        self._gone: set[str] = set()
        #: endpoint URL -> why the provider does not serve it (a 404 for it): its jobs fail without a request
        self._unserved: dict[str, str] = {}
        #: job id -> what the opening count prepared for it (`_count_refusals`), taken by its first
        #: send instead of preparing it again, while the catalogue it was prepared against holds
        self._prepared: dict[int, Prepared] = {}
        self._prepared_against: Catalog | None = None
        self._refreshing: asyncio.Task[None] | None = None
        self._last_refresh = float("-inf")
        self.cap = SpendCap(options.max_cost, options.max_tokens)
        self._grace_timer: asyncio.TimerHandle | None = None
        #: a moving average of request latency: how long in-flight requests need to drain
        self._latency = 0.0

    # --- public ---

    def request_stop(self, reason: str, error: BatchrunError | None = None, grace: float | None = None) -> None:
        """Stop claiming and sending; in-flight requests get `grace` seconds (--grace) to finish and
        be checkpointed, then they are abandoned (their jobs go back to the queue)."""
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop_error = error
            self._stop.set()
            log.warning("stopping: %s", error or reason)
            self.attempt_log.event("stop", str(error or reason))
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            wait = self._options.grace if grace is None else max(0.0, grace)
            self._grace_timer = loop.call_later(wait, self._grace_over, wait)

    def _grace_over(self, wait: float) -> None:
        if self._in_flight:
            log.warning("%d request(s) still in flight after %.1f s of grace", len(self._in_flight), wait)
            self.abort()

    def abort(self) -> None:
        """Stop now: also cancel the requests in flight. Their jobs go back to the queue unanswered."""
        self.request_stop("stopped at once")
        log.warning("stopped at once: %d request(s) in flight abandoned; their jobs go back to the queue",
                    len(self._in_flight))
        for task in list(self._in_flight):
            task.cancel()

    async def run(self, on_start: Callable[[RunStats], None] | None = None) -> RunReport:
        started = time.monotonic()
        try:
            await self._prepare()
            if on_start:
                on_start(self.stats)
            if not self._stop.is_set():
                await self._work()
            return await self._finish(started)
        except BatchrunError as exc:
            # The run ends here (wrong base URL, unknown batch...): `status` should say so, not "running".
            self.attempt_log.event("stop", str(exc))
            await self._call(self._write_log_now)
            await self._call(self._store.finish_runner, self.owner, exc.exit_code, str(exc))
            raise
        finally:
            if self._grace_timer is not None:
                self._grace_timer.cancel()
            await self._keys.release_all()
            self._db.shutdown(wait=True)

    # --- phases ---

    async def _prepare(self) -> None:
        if self._options.batch is not None:
            self._batch_id = await self._call(self._store.batch_id, self._options.batch)
            if self._batch_id is None:
                raise ConfigError(f"no batch named {self._options.batch!r} in {self._store.url} "
                                  "(see `batchrun status`)")
        dead = await self._call(self._store.release_dead_runners, pid_alive)
        if dead:
            log.info("requeued the jobs of %d runner(s) that died: %s", len(dead), ", ".join(dead))
        await self._call(self._store.requeue_expired)
        described = orjson.dumps(dict(self._options.described)).decode()
        self.runner_id = await self._call(self._store.register_runner, self.owner, None, described)
        # index-only counts: a full aggregate of a million-job table would delay the first request
        self.stats.total, self.stats.done_before = await self._call(self._store.progress, self._batch_id)
        known = await self._call(self._store.key_records)
        for lane in self.lanes:
            record = known.get(lane.key.id)
            if lane.usable and record is not None and record.state != "active":
                # `budget` is tried again each run (caps get raised, org budgets reset)
                await self._call(self._store.set_key_state, lane.key.id, "active", None)
            if not lane.usable:
                log.warning("key %s is %s (%s); not used — `batchrun keys reset %s` brings it back",
                            lane.key.id, lane.state, lane.reason or "no reason recorded", lane.key.id)
        if self.stats.total == self.stats.done_before:
            return  # nothing queued or running (the same index-only counts as the progress totals)
        if self._options.deadline is not None and self._options.deadline <= self._now():
            self.request_stop(f"the deadline {_clock(self._options.deadline)} has passed; nothing was started")
            return
        if not await self._keys.lease_keys() and any(lane.usable for lane in self.lanes):
            if not await self._keys.wait_for_keys(self._batch_id, self._stop, self.request_stop):
                return
        await self._check_provider()
        if self.catalog and not self._stop.is_set():
            await self._opening_summary()

    async def _check_provider(self) -> None:
        """One cheap request before any job: a wrong base URL or a dead host stops the run here,
        before a single job is marked failed."""
        for lane in self.lanes:
            if not lane.usable or not lane.held:
                continue
            try:
                await self._probe(lane)
                return
            except KeyUnusable as exc:
                await self._retire(lane, exc)
            except (ProviderUnreachable, EndpointNotFound) as exc:
                raise ProviderUnreachable(str(exc)) from exc
            except ProviderError as exc:
                # Some servers have no /models: that is not a reason to refuse to run.
                log.info("GET %s/models failed (%s); carrying on", self._client.base_url, exc)
                return
        if not any(lane.usable for lane in self.lanes):
            self.request_stop("no usable API key", self._no_key_error())

    async def _probe(self, lane: KeyLane) -> None:
        """The start-up catalogue request, tried again with the retry backoff while it fails
        transiently (a timeout, a reset, a 5xx), for `probe_patience` seconds: one network blip
        must not cost a whole night. A 404 (a wrong base URL) or a refused key is final at once."""
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                await self._refresh_catalog(lane)
                return
            except (ProviderUnreachable, TransientError) as exc:
                if not (isinstance(exc, TransientError) or isinstance(exc.__cause__, TransientError)):
                    raise  # not a blip: an invalid URL
                attempt += 1
                left = self._options.probe_patience - (time.monotonic() - started)
                if left <= 0:
                    raise
                delay = min(left, self._options.policy.backoff.delay(attempt, self._rng))
                log.warning("GET %s/models failed (%s); trying again in %.1f s", self._client.base_url, exc, delay)
                await self._wait(self._stop, delay, False)  # (a stop flag: not cleared)
                if self._stop.is_set():
                    return  # a signal came while waiting: the run stops with its jobs queued

    async def _refresh_catalog(self, lane: KeyLane) -> None:
        entries = await self._client.list_models(lane.key)
        self.catalog = parse_catalog(entries, time.time())
        self.stats.catalog_refreshes += 1
        if self.catalog:
            await self._call(self._store.save_catalog, list(self.catalog.entries.values()))
            log.info("catalogue: %s", self.catalog.describe())
            self.attempt_log.event("catalog", f"catalogue: {self.catalog.describe()}")

    async def _opening_summary(self) -> None:
        """Before the first request: which requested models are served, fall back or will fail, and
        how many jobs fail the prechecks (counted exactly for batches of a reasonable size)."""
        per_model = await self._call(self._store.queued_by_model, self._batch_id)
        for model, count in sorted(per_model.items()):
            if model in self.catalog:
                target = self.catalog.resolve(model)
                served = f" (served by {target.id})" if target is not None and target.id != model else ""
                summary_log.info("model %s: %d job(s)%s", model, count, served)
                continue
            chain = [name for name in self._options.fallbacks.chain(model) if name in self.catalog]
            if chain:
                summary_log.warning("model %s is not in the provider's catalogue: %d job(s) fall back to %s",
                                    model, count, chain[0])
            else:
                summary_log.warning("model %s is not in the provider's catalogue and has no fallback: %d job(s) "
                                    "will fail as model_not_found (catalogue: %s; add --fallback MODEL)",
                                    model, count, self.catalog.describe())
        if self.cap.max_cost is not None:
            unpriced = sorted(model for model in per_model
                              if model in self.catalog and not _priced(self.catalog.resolve(model)))
            if unpriced:
                summary_log.warning("--max-cost: model(s) %s have no price in the catalogue: their jobs count "
                                    "as $0 against the cap (--max-tokens caps them)", ", ".join(unpriced))
        if sum(per_model.values()) <= OPENING_PRECHECK_LIMIT:
            refused = await self._call(self._count_refusals)
            if refused:
                summary_log.warning("prechecks: %s will fail before sending",
                                    ", ".join(f"{n} job(s) {code}" for code, n in sorted(refused.items())))

    def _count_refusals(self) -> dict[str, int]:
        refused: dict[str, int] = {}
        prepared: dict[int, Prepared] = {}
        for job in self._store.unfinished_jobs(self._batch_id):
            result = self._prepare_job(job)
            if isinstance(result, Refused):
                refused[result.code] = refused.get(result.code, 0) + 1
            else:
                prepared[job.id] = result
        self._prepared, self._prepared_against = prepared, self.catalog
        return refused

    def _prepare_job(self, job: ClaimedJob) -> Prepared | Refused:
        endpoint = ENDPOINTS.get(job.endpoint)
        if endpoint is None:  # written by a newer batchrun
            return Refused(UNKNOWN_ENDPOINT, f"this batchrun does not send {job.endpoint}: upgrade it to run "
                                             "this job")
        unserved = self._unserved.get(job.endpoint)
        if unserved is not None:  # one 404 said so: no request more
            return Refused(EndpointNotServed.code, unserved)
        if self._prepared:
            if self.catalog is self._prepared_against and not self._gone:
                known = self._prepared.pop(job.id, None)
                if known is not None:
                    return known
            else:  # the catalogue was fetched again, or a model it lists has gone: prepare afresh
                self._prepared.clear()
        return prepare(job.model, job.body, job.input_tokens, job.max_tokens, self.catalog,
                       self._options.fallbacks, self._options.drop_unsupported, self._gone, endpoint)

    def _schedule_refresh(self) -> None:
        """Single-flight: one refresh at a time, and at most one per CATALOG_REFRESH_INTERVAL."""
        if self._refreshing is not None and not self._refreshing.done():
            return
        now = time.monotonic()
        if now - self._last_refresh < CATALOG_REFRESH_INTERVAL:
            return
        self._last_refresh = now
        self._refreshing = asyncio.create_task(self._refresh_now(), name="catalog-refresh")

    async def _refresh_now(self) -> None:
        lane = next((lane for lane in self.lanes if lane.usable), None)
        if lane is None:
            return
        try:
            await self._refresh_catalog(lane)
        except BatchrunError as exc:
            log.warning("could not refresh the catalogue: %s", exc)

    async def _work(self) -> None:
        writer = asyncio.create_task(self._write_loop(), name="writer")
        feeder = asyncio.create_task(self._feed_loop(), name="feeder")
        heartbeat = asyncio.create_task(self._heartbeat_loop(), name="heartbeat")
        deadline = (asyncio.create_task(self._deadline_loop(self._options.deadline), name="deadline")
                    if self._options.deadline is not None else None)
        balance = asyncio.create_task(self._keys.balance_loop(), name="balance")
        lanes = [asyncio.create_task(self._lane_loop(lane), name=f"lane-{lane.key.id}") for lane in self.lanes]
        stopped = asyncio.create_task(self._stop.wait(), name="stop")
        try:
            done, _ = await asyncio.wait({stopped, writer, feeder, heartbeat}, return_when=asyncio.FIRST_COMPLETED)
            for task in done - {stopped}:
                self._fail_on_crash(task)
        finally:
            stopped.cancel()
            for task in [feeder, *lanes]:
                task.cancel()
            await asyncio.gather(feeder, *lanes, return_exceptions=True)
            if self._in_flight:
                await asyncio.gather(*self._in_flight, return_exceptions=True)
            if not writer.done():
                await self._flush(writer)
            writer.cancel()
            heartbeat.cancel()
            others = [task for task in (self._refreshing, deadline, balance) if task is not None]
            for task in others:
                task.cancel()
            await asyncio.gather(writer, heartbeat, *others, return_exceptions=True)
            # Whatever this runner still holds was never sent: back to the queue, no attempt spent.
            await self._call(self._store.release_owned, self.owner)

    async def _finish(self, started: float) -> RunReport:
        counts = await self._call(self._store.counts, self._batch_id)
        left = sum(c.queued + c.running for c in counts)
        failed = sum(c.failed for c in counts)
        error = self._stop_error
        if error is not None and error.exit_code in (4, 5):
            code, reason = error.exit_code, str(error)
        elif left:
            code, reason = 3, self._stop_reason or f"{left} job(s) left"
        elif failed:
            code, reason = 1, f"{failed} job(s) failed"
        elif self.stats.finished or any(c.succeeded for c in counts):
            code, reason = 0, "all jobs succeeded"
        else:
            code, reason = 0, "nothing to do: no queued job"
        for lane in self.lanes:
            if lane.requests:
                await self._call(self._store.save_key_run, lane.key.id, lane.requests, lane.rate_limited,
                                 lane.errors, lane.rate_configured, lane.rate_adapted)
        await self._call(self._write_log_now)
        await self._call(self._store.finish_runner, self.owner, code, reason)
        return RunReport(code, reason, self.stats, time.monotonic() - started, left, tuple(self.lanes))

    # --- loops ---

    async def _feed_loop(self) -> None:
        low_water = max(self._options.concurrency, 16)
        chunk = max(2 * self._options.concurrency, 64)
        while not self._stop.is_set():
            if self._jobs.qsize() >= low_water:
                await self._wait(self._need_jobs, 1.0)
                continue
            claimed = await self._call(self._store.claim, self.owner, chunk, self._options.lease, self._batch_id)
            for job in claimed:
                self._jobs.put_nowait(job)
            if claimed:
                continue
            if self._in_flight or not self._jobs.empty() or self._unwritten:
                await self._wait(self._need_jobs, 0.5)
                continue
            pending = await self._call(self._store.pending, self._batch_id)
            if pending.empty:
                self._stop.set()
                return
            if pending.queued_now:
                continue
            now = time.time()
            wake = [t for t in (pending.next_not_before, pending.next_lease_expiry) if t is not None]
            await self._wait(self._need_jobs, max(0.01, min([now + 1.0, *wake]) - now))
            if pending.next_lease_expiry is not None and pending.next_lease_expiry <= time.time():
                await self._call(self._store.requeue_expired)

    async def _lane_loop(self, lane: KeyLane) -> None:
        while lane.usable and not self._stop.is_set():
            if not self._keys.may_send(lane):
                await self._wait(self._keys.changed, 1.0)  # another runner holds this key for now
                continue
            # Whether this turn may have waited (given way to other tasks): then what was checked before
            # is checked again before sending (below).
            waited = bool(lane.cooling_until) or not self._jobs.qsize()
            if lane.cooling_until:  # (cooled down at some point: wait out what is left of it)
                await lane.wait_until_warm()
            job = self._jobs.get_nowait() if self._jobs.qsize() else await self._jobs.get()
            if self._jobs.qsize() < self._options.concurrency:
                self._need_jobs.set()
            prepared = self._prepare_job(job)
            if isinstance(prepared, Refused):
                self._refuse(job, prepared.code, prepared.message)
                continue
            model = prepared.model_sent
            if model in lane.forbidden_models or not lane.usable:
                if not self._someone_may_serve(model):
                    self._fail_unservable(job, model)
                    continue
                self._jobs.put_nowait(job)
                await asyncio.sleep(0.05)
                continue
            # The breaker is open: fewer requests at once. (Closed, the slots alone bound the requests in
            # flight, and a freed slot wakes this loop at once: waiting for the task's end as well took
            # three more turns of the loop, so the answers of a wave were all read before any slot was
            # used again, and thousands of slots stayed idle for most of a second.)
            while self.breaker.tripped and len(self._in_flight) >= self.breaker.limit and not self._stop.is_set():
                waited = True
                await self._wait(self._slot_freed, 0.5)
            waited = waited or self._slots.locked() or lane.limited
            try:
                await self._slots.acquire()
            except BaseException:
                self._jobs.put_nowait(job)
                raise
            try:
                reservation = await lane.acquire(self._estimate_tokens(job)) if lane.limited else None
            except BaseException:
                self._slots.release()
                self._jobs.put_nowait(job)
                raise
            if waited and (not lane.usable or not self._keys.may_send(lane) or lane.cooling
                           or model in lane.forbidden_models or self._stop.is_set()):
                # A 429, 401 or 403 arrived while this lane waited for its limiter, or the run is stopping.
                self._slots.release()
                self._jobs.put_nowait(job)
                continue
            unserved = self._unserved.get(job.endpoint) if waited else None
            if unserved is not None:  # a 404 for the endpoint came while this job waited for its turn
                self._slots.release()
                self._refuse(job, EndpointNotServed.code, unserved, prepared)
                continue
            spend = self._reserve_spend(job, prepared) if self.cap.active else True
            if spend is False:
                self._slots.release()
                self._jobs.put_nowait(job)
                continue
            task = asyncio.create_task(self._attempt(lane, job, prepared, reservation,
                                                      spend if isinstance(spend, Reservation) else None))
            self._in_flight[task] = self._keys.track(lane)
            task.add_done_callback(self._request_done)

    def _request_done(self, task: asyncio.Task[None]) -> None:
        state = self._in_flight.pop(task, None)
        if state is not None:
            self._keys.answered(state)
        self._slot_freed.set()

    def _reserve_spend(self, job: ClaimedJob, prepared: Prepared) -> Reservation | bool:
        """Reserve this request's estimated cost and tokens against --max-cost / --max-tokens.
        True when there is no cap; False (and the run stops claiming) when it would cross one."""
        if not self.cap.active:
            return True
        prompt, completion = ENDPOINTS[job.endpoint].budget(job.input_tokens, job.max_tokens,
                                                            self._options.assumed_completion)
        model = self.catalog.resolve(prepared.model_sent)
        cost = (model.cost(prompt, completion) if model else None) or 0.0
        spend = self.cap.reserve(cost, prompt + completion)
        if spend is None:
            self.request_stop(f"spend cap reached: {self.cap.describe()}; the next request could cross it")
            return False
        return spend

    async def _attempt(self, lane: KeyLane, job: ClaimedJob, prepared: Prepared,
                       reservation: list[float] | None, spend: Reservation | None = None) -> None:
        attempt = job.attempts + 1
        sent_at = lane.sent()
        self.stats.requests += 1
        outcome: Outcome | None = None
        endpoint = ENDPOINTS[job.endpoint]
        slot_held, interrupted = True, False
        try:
            exchange = await self._client.exchange(lane.key, prepared.body, endpoint)
            # A success that cannot hold the next request back (no limit to keep on this key, nothing said
            # of one) frees its slot before it is read. Any other answer is read first: a 404, a 402 or a
            # rate-limit header must stop or slow the next request.
            if not lane.limited and plain_success(exchange):
                slot_held = False
                interrupted = await self._send_next_first()
            completion = self._client.read(exchange, prepared.body, endpoint)
        except ProviderError as error:
            outcome = await self._on_error(lane, job, prepared, attempt, error, sent_at)
        except Exception:  # a bug must not lose the job: it stays leased and is released at the end
            log.exception("unexpected error sending job %s", job.custom_id)
        else:
            outcome = self._on_success(lane, job, prepared, attempt, completion, reservation, sent_at)
            if spend is not None and isinstance(outcome, Succeeded):
                self.cap.settle(spend, outcome.cost, completion.total_tokens)
                spend = None
        finally:
            if spend is not None:
                self.cap.release(spend)  # no answer, no spend
            self._latency = 0.9 * self._latency + 0.1 * (time.monotonic() - sent_at)
            # released before the outcome is queued: the slot is for requests in flight, not for writes
            # (holding it until the commit was measured ~15 % slower at zero latency)
            if slot_held:
                self._slots.release()
        if outcome is not None:
            self._queue_outcome(outcome)
        if interrupted:
            raise asyncio.CancelledError

    async def _send_next_first(self) -> bool:
        """Free this request's slot and let the next request go out before its answer is read and written
        down (two turns of the loop: the lane loop's, then the new request's). When a wave of answers
        comes back at once, each next request no longer waits for the bookkeeping of every answer ahead
        of it (500 ms × 1,000 in flight: 0.95 → 0.98 of the ideal at the server, bench 2). True if the
        run was stopped meanwhile: the caller writes its answer down first, then stops."""
        self._slots.release()
        try:
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            return True
        return False

    def _queue_outcome(self, outcome: Outcome) -> None:
        self._unwritten += 1
        self._outcomes.put_nowait(outcome)

    def _on_success(self, lane: KeyLane, job: ClaimedJob, prepared: Prepared, attempt: int,
                    completion: Completion, reservation: list[float] | None, sent_at: float) -> Succeeded:
        change = lane.on_answer(sent_at, succeeded=True)
        if change:
            self._note_key_change(lane, change)
        if completion.rate_hint is not None:
            self._obey_hint(lane, completion.rate_hint)
        self._note_breaker(False, sent_at)
        if reservation is not None:
            lane.settle_tokens(reservation, completion.total_tokens or self._estimate_tokens(job))
        served = completion.model or prepared.model_sent
        model = self.catalog.resolve(served) or self.catalog.resolve(prepared.model_sent)
        cost = model.cost(completion.prompt_tokens, completion.completion_tokens) if model else None
        self.stats.succeeded += 1
        self.stats.add_usage(served, completion, cost)
        self._log_attempt(lane, job, prepared, sent_at, completion.status, "ok", completion, cost)
        if completion.request_id is None:
            self.stats.unverified += 1
        if completion.truncated:
            self.stats.truncated += 1
        if prepared.fallback_reason:
            self.stats.fallbacks += 1
        log.debug("job %s succeeded on key %s (attempt %d)", job.custom_id, lane.key.id, attempt)
        return Succeeded(job.id, attempt, lane.key.id, completion.status, completion.request_id,
                         completion.body, completion.model, completion.finish_reason,
                         completion.prompt_tokens, completion.completion_tokens, completion.total_tokens,
                         cost, prepared.model_sent, prepared.fallback_reason,
                         ",".join(prepared.dropped) if prepared.dropped else None)

    async def _on_error(self, lane: KeyLane, job: ClaimedJob, prepared: Prepared, attempt: int,
                        error: ProviderError, sent_at: float) -> Outcome | None:
        self._log_attempt(lane, job, prepared, sent_at, error.status, error.code, message=str(error))
        if isinstance(error, RateLimited):
            self.stats.rate_limited += 1
            exhausted = error.rate_hint is not None and error.rate_hint.exhausted_for is not None
            self._note_key_change(lane, lane.on_rate_limited(sent_at, exhausted))
        elif error.status is not None:  # an answer: it passed the provider's rate limiter
            self._note_key_change(lane, lane.on_answer(sent_at, succeeded=False))
        self._obey_hint(lane, error.rate_hint)
        # A 429 is the key's business (its rate adapts), not a sign the provider is down.
        self._note_breaker(isinstance(error, TransientError) and not isinstance(error, RateLimited), sent_at)
        transient_since = job.transient_since
        if isinstance(error, TransientError) and transient_since is None:
            transient_since = time.time()
        failing_for = time.time() - transient_since if transient_since is not None else 0.0
        decision = self._options.policy.decide(error, attempt, self._rng, key_strikes=lane.consecutive_429,
                                               failing_for=failing_for)
        log.debug("job %s attempt %d on key %s: %s -> %s", job.custom_id, attempt, lane.key.id, error, decision.job)
        lane.errors += 1
        await self._act_on_key(lane, prepared.model_sent, error, decision)
        if decision.stop_run:
            self.request_stop(str(error), error)
        if isinstance(error, EndpointNotServed):
            self._unserved.setdefault(job.endpoint, str(error))
        if decision.refresh_catalog:
            if prepared.model_sent not in self._gone:
                log.warning("model %s is gone (%s); its jobs are resolved again against a fresh catalogue",
                            prepared.model_sent, error)
                self.attempt_log.event("catalog", f"model {prepared.model_sent} is gone ({error})")
            self._gone.add(prepared.model_sent)
            self._schedule_refresh()
        response = _response_text(error)
        if decision.key_action == "forbid" and not self._someone_may_serve(prepared.model_sent):
            return self._failed(job, attempt, lane.key.id, error.status, response, error.code,
                                self._unservable_message(prepared.model_sent, error), prepared)
        if decision.job == FAIL:
            message = str(error)
            if isinstance(error, TransientError):
                message = (f"{error} — gave up after {attempt} attempt(s) over {failing_for:.0f} s "
                           "(--max-attempts, --transient-patience)")
            return self._failed(job, attempt, lane.key.id, error.status, response, decision.code or error.code,
                                message, prepared)
        if decision.job == RETRY:
            self.stats.retried += 1
            return Retry(job.id, attempt, time.time() + decision.delay, lane.key.id, error.status, response,
                         error.code, str(error), transient_since)
        assert decision.job == REQUEUE
        return Retry(job.id, job.attempts, time.time(), lane.key.id, error.status, response, error.code, str(error),
                     job.transient_since)

    def _failed(self, job: ClaimedJob, attempts: int, key_id: str | None, status: int | None,
                response: str | None, code: str, message: str, prepared: Prepared | None = None) -> Failed:
        self.stats.failed += 1
        self.stats.failed_by_code[code] = self.stats.failed_by_code.get(code, 0) + 1
        if prepared is None:
            return Failed(job.id, attempts, key_id, status, response, code, message)
        return Failed(job.id, attempts, key_id, status, response, code, message, prepared.model_sent,
                      prepared.fallback_reason, ",".join(prepared.dropped) or None)

    def _fail_unservable(self, job: ClaimedJob, model: str) -> None:
        """Every usable key got a 403 for this job's model: fail it without another request."""
        self._refuse(job, KeyModelForbidden.code, self._unservable_message(model, None), status=403)

    def _refuse(self, job: ClaimedJob, code: str, message: str, prepared: Prepared | None = None,
                status: int | None = None) -> None:
        """Fail a job without sending it (a precheck, an endpoint or model no key may use)."""
        self.attempt_log.add(refused_attempt(job.batch_id, job.id, job.endpoint, job.model,
                                             prepared.model_sent if prepared else None, code, message))
        self._queue_outcome(self._failed(job, job.attempts, None, status, None, code, message, prepared))

    def _log_attempt(self, lane: KeyLane, job: ClaimedJob, prepared: Prepared, sent_at: float, status: int | None,
                     outcome: str, completion: Completion | None = None, cost: float | None = None,
                     message: str | None = None) -> None:
        """An attempt ended (`sent_at`: monotonic): into the attempts log."""
        if completion is None:
            record = sent_attempt(job.batch_id, job.id, time.monotonic() - sent_at, lane.key.id, job.endpoint,
                                  job.model, prepared.model_sent, None, status, outcome,
                                  fallback_reason=prepared.fallback_reason, message=message)
        else:
            record = sent_attempt(job.batch_id, job.id, time.monotonic() - sent_at, lane.key.id, job.endpoint,
                                  job.model, prepared.model_sent, completion.model, status, outcome,
                                  completion.prompt_tokens, completion.completion_tokens, cost,
                                  prepared.fallback_reason)
        self.attempt_log.add(record)

    def _unservable_message(self, model: str, error: ProviderError | None) -> str:
        refused = ", ".join(lane.key.id for lane in self.lanes if model in lane.forbidden_models)
        text = (f"no key may use model {model!r} (403 for key(s) {refused}; the model is not in their "
                f"allowed list). The catalogue offers: {self.catalog.describe()}")
        return f"{text}. Last answer: {error}" if error is not None else text

    def _note_key_change(self, lane: KeyLane, change: str | None) -> None:
        if change:
            log.warning("key %s: %s", lane.key.id, change)
            self.attempt_log.event("key_rate", change, lane.key.id)

    def _obey_hint(self, lane: KeyLane, hint: RateHint | None) -> None:
        wait = hint.exhausted_for if hint is not None else None
        if wait is not None:
            lane.pause(wait)

    def _note_breaker(self, failed: bool, sent_at: float) -> None:
        before = self.breaker.trips
        change = self.breaker.record(failed, time.monotonic(), started=sent_at)
        if change:
            self.stats.breaker_trips = self.breaker.trips
            (log.warning if self.breaker.trips > before else log.info)("%s", change)
            self.attempt_log.event("breaker", change)
            self._slot_freed.set()

    async def _act_on_key(self, lane: KeyLane, model: str, error: ProviderError, decision: Decision) -> None:
        if decision.key_action == "cool":
            lane.cool_down(decision.key_cooldown)
            log.info("key %s: %d 429s in a row; cooling down for %.1f s", lane.key.id, lane.consecutive_429,
                     decision.key_cooldown)
            self.attempt_log.event("key_cooling", f"{lane.consecutive_429} 429s in a row: cooling down for "
                                   f"{decision.key_cooldown:.1f} s", lane.key.id)
        elif decision.key_action == "retire" and lane.usable:
            await self._retire(lane, error)
        elif decision.key_action == "forbid":
            lane.forbidden_models.add(model)
            log.warning("key %s may not use model %s (403); other keys will take its jobs", lane.key.id, model)
            self.attempt_log.event("key_state", f"may not use model {model} (403)", lane.key.id)

    async def _retire(self, lane: KeyLane, error: ProviderError) -> None:
        state = getattr(error, "key_state", "invalid")
        lane.retire(state, str(error))
        hint = ("raise that key's budget cap in Settings → API Keys" if state == "budget"
                else "check the key list in Settings → API Keys")
        log.warning("key %s taken out of rotation: %s — %s", lane.key.id, error, hint)
        self.attempt_log.event("key_state", f"{state}: {error}", lane.key.id)
        await self._call(self._store.set_key_state, lane.key.id, state, str(error))
        if not any(other.usable for other in self.lanes):
            self.request_stop("no usable API key left", self._no_key_error())

    def _no_key_error(self) -> NoUsableKey:
        states = ", ".join(f"{lane.key.id}: {lane.state}" for lane in self.lanes)
        if all(lane.state == "budget" for lane in self.lanes):
            return NoUsableKey(
                f"every key's budget is spent (402 for each: {states}): the organisation's monthly budget "
                "may be spent (talk to your org admin) or each key's cap is reached (raise it in "
                "Settings → API Keys); the remaining jobs stay queued")
        return NoUsableKey(f"no usable API key left ({states}); the remaining jobs stay queued — "
                           "check the keys in Settings → API Keys, then `batchrun keys reset ID`")

    def _someone_may_serve(self, model: str) -> bool:
        return any(lane.usable and model not in lane.forbidden_models for lane in self.lanes)

    async def _write_loop(self) -> None:
        while True:
            # Group commit: take whatever has arrived; while one commit runs, the next batch gathers.
            # A commit has a fixed cost (a transaction, a WAL write, a hand-off to the DB thread), so
            # the first outcome waits `commit_gather` for company: at thousands of answers a second
            # that is a few large commits instead of hundreds of small ones, and a crash loses only
            # that much more work (the jobs are redone, never lost).
            batch = [await self._outcomes.get()]
            if self._options.commit_gather > 0 and self._outcomes.qsize() < self._options.flush_size:
                await asyncio.sleep(self._options.commit_gather)
            while not self._outcomes.empty() and len(batch) < self._options.flush_size:
                batch.append(self._outcomes.get_nowait())
            await self._call(self._commit, batch, *self.attempt_log.take())
            self._unwritten -= len(batch)
            self._written.set()
            self._need_jobs.set()

    def _commit(self, outcomes: list[Outcome], attempts: list[AttemptRecord], events: list[EventRecord]) -> None:
        """In the database thread: outcomes, and the attempts and events that came with them, in one commit."""
        self._store.record(self.owner, outcomes, runner_id=self.runner_id, attempts=attempts, events=events)

    def _write_log_now(self) -> None:
        """In the database thread: what is left of the attempts log, and the run's figures."""
        if self.runner_id is None:
            return
        attempts, events = self.attempt_log.take()
        if attempts or events:
            self._store.record(self.owner, [], runner_id=self.runner_id, attempts=attempts, events=events)
        self._save_figures()

    def _save_figures(self) -> None:
        counters = self.attempt_log.counters
        self._store.runner_figures(self.owner, counters.sent, counters.latency_percentile(0.5),
                                   counters.latency_percentile(0.99))

    async def _flush(self, writer: asyncio.Task[None]) -> None:
        """Wait until every outcome so far is committed (or the writer has died trying)."""
        while self._unwritten and not writer.done():
            self._written.clear()
            await self._wait(self._written, 0.5)
        if writer.done():
            self._fail_on_crash(writer)

    def _fail_on_crash(self, task: asyncio.Task[Any]) -> None:
        """A loop that should run until cancelled has ended: stop the run with its error."""
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            if task.get_name() == "feeder":
                return  # the feeder ends when the queue is empty
            error = RuntimeError(f"{task.get_name()} stopped")
        log.error("%s failed: %s", task.get_name(), error)
        wrapped = error if isinstance(error, BatchrunError) else BatchrunError(
            f"internal error in {task.get_name()}: {type(error).__name__}: {error}")
        self._stop_error = self._stop_error or wrapped
        self.request_stop(str(wrapped), wrapped)

    async def _heartbeat_loop(self) -> None:
        interval = self._options.lease / 3
        while True:
            await asyncio.sleep(interval)
            await self._keys.heartbeat()
            await self._call(self._store.requeue_expired)
            await self._call(self._save_figures)

    async def _deadline_loop(self, deadline: float) -> None:
        """Stop claiming early enough that the requests in flight finish by the deadline."""
        while True:
            drain = min(self._options.grace, max(0.5, 2 * self._latency))
            left = deadline - drain - self._now()
            if left <= 0:
                break
            await asyncio.sleep(min(left, 1.0))
        self.request_stop(f"deadline {_clock(deadline)} reached", grace=deadline - self._now())

    # --- helpers ---

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._db, fn, *args)

    _wait = staticmethod(wait_for_event)

    def _estimate_tokens(self, job: ClaimedJob) -> int:
        """Input plus output tokens at most (`Endpoint.budget`): what a token limit reserves."""
        prompt, completion = ENDPOINTS[job.endpoint].budget(job.input_tokens, job.max_tokens,
                                                            self._options.assumed_completion)
        return prompt + completion


def _priced(model: ModelInfo | None) -> bool:
    """Whether the catalogue gives this model (None: not in it) both prices."""
    return model is not None and model.prompt_price is not None and model.completion_price is not None


def _response_text(error: ProviderError) -> str | None:
    if error.body is None:
        return None
    if isinstance(error.body, str):
        return error.body
    return orjson.dumps(error.body).decode()




