"""How runners share keys: one runner per key at a time, the keys shared out fairly among the live
runners, and a handover that keeps each key's limit at the provider.

A key's lease lives in the `api_keys` table (`Store.acquire_keys`, `extend_leases`, `release_keys`).
The handover rule: the runner that takes a key sends nothing with it before the last request the
previous holder sent with it has left the provider's window. That is counted from the previous
holder's last *answer* on the key — a request reaches the provider before its answer comes back,
however late the socket write on a loaded machine — never from the moment the lease was given up:

- giving a key up, a runner first stops sending on it, waits for its requests in flight (bounded:
  each has the request timeout), and releases it with `free_at` = its last answer + the key's window;
- a runner never sends on a key past the time its lease is known to be valid (minus `margin`): a
  runner whose heartbeat is late pauses the key, and a lease it lost is never used again;
- so a lease that ran out unreleased (its runner died or hangs) is taken only after its expiry + the
  key's window (stored with the lease, `api_keys.window_seconds`), and a dead runner found on this
  host frees its keys one window after it was found dead (`Store.release_dead_runners`).

Times in the table are wall-clock seconds: runners on several machines need their clocks in step
(NTP) to well within `margin`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from batchrun.errors import BatchrunError
from batchrun.keys import KeyLane
from batchrun.runstate import RunOptions
from batchrun.store import Store
from batchrun.units import format_clock
from batchrun.waits import wait_for_event

log = logging.getLogger(__name__)
T = TypeVar("T")

#: how often a runner checks that the keys are fairly shared with the other live runners
KEY_BALANCE_INTERVAL = 1.0
#: the longest a runner waits for a key's requests in flight before it gives the key up anyway (then
#: counted from that moment): the default request timeout, which ends each of them by itself
DRAIN_LIMIT = 600.0

#: runs a store method in the database thread: `await call(store.method, *args)`
StoreCall = Callable[..., Awaitable[Any]]


# --- the decisions, as pure functions ------------------------------------------------------------

def fair_share(usable_keys: int, live_runners: int) -> int:
    """The most keys one runner should hold: ceil(keys / runners), and at least one."""
    return max(1, -(-usable_keys // max(1, live_runners)))


def over_share(held: Sequence[str], share: int) -> list[str]:
    """The keys to hand over: those past the first `share` (held in order, the longest-held first)."""
    return list(held[share:])


def kept_after_lease(before: Sequence[str], now_held: Sequence[str], share: int) -> tuple[list[str], list[str]]:
    """After a lease attempt: (the keys to keep, the ones just taken to give back at once) so that no
    more than `share` are held — the keys held before come first (their limiters are warm)."""
    newly = [key for key in now_held if key not in before]
    ordered = [key for key in before if key in now_held] + newly
    keep = ordered[:max(share, len([key for key in before if key in now_held]))]
    return keep, [key for key in newly if key not in keep]


def free_at(last_answer: float | None, in_flight: int, window: float, now: float) -> float:
    """When another runner may take a key given up at `now`: its last request has left the window.

    The last answer bounds every request that had been answered; one still in flight (the wait for it
    ran out) may reach the provider as late as now. A key never used by this runner is free now: the
    previous holder's requests had left the window when this one took it.
    """
    if in_flight:
        return now + window
    if last_answer is None:
        return now
    return last_answer + window


@dataclass(slots=True)
class LeaseState:
    """What this runner knows about its lease of one key."""

    #: wall-clock time until which the lease is known to be valid (-inf: not leased)
    valid_until: float = float("-inf")
    #: wall-clock time the lease was last taken (not renewed): a heartbeat begun before it knows nothing of it
    taken_at: float = float("-inf")
    #: requests sent on the key whose answer has not come back
    in_flight: int = 0
    #: wall-clock time of the last answer (or error) on the key
    last_answer: float | None = None
    #: being handed over to another runner: not to be leased again until that is done
    handing: bool = False


# --- sharing the keys ----------------------------------------------------------------------------

class KeySharing:
    """This runner's side of the key leases: take, renew, balance, hand over, release.

    The runner asks `may_send(lane)` before each request and reports each request with `track`; the
    rest runs in its own coroutines (`lease_keys`, `wait_for_keys` before the work, `heartbeat` and
    `balance_loop` during it, `release_all` at the end).
    """

    def __init__(self, store: Store, call: StoreCall, lanes: list[KeyLane], owner: str, options: RunOptions,
                 drain_limit: float = DRAIN_LIMIT) -> None:
        self._store = store
        self._call = call
        self.lanes = lanes
        self.owner = owner
        self._lease = options.lease
        self._deadline = options.deadline
        self._wait_for_keys = options.wait_for_keys
        self._drain_limit = drain_limit
        #: a lease is not used in its last third: one late heartbeat pauses a key, it never oversteps
        self.margin = options.lease / 3
        self.states: dict[str, LeaseState] = {lane.key.id: LeaseState() for lane in lanes}
        self._started_with = options.started_with  # counted by the first lease only
        #: set when this runner's keys change (taken, lost, renewed): lanes that wait for a key look again
        self.changed = asyncio.Event()
        self._drained = asyncio.Event()

    # --- asked by the lanes ---

    def holds(self, lane: KeyLane) -> bool:
        """Whether this runner holds the key's lease (`lane.held` is also true of a key not leased yet)."""
        return lane.held and self.states[lane.key.id].valid_until > float("-inf")

    def may_send(self, lane: KeyLane, now: float | None = None) -> bool:
        """Whether a request may go out on this key now: its lease is held and surely still valid."""
        now = time.time() if now is None else now
        return lane.held and now < self.states[lane.key.id].valid_until - self.margin

    def track(self, lane: KeyLane) -> LeaseState:
        """A request on this key has just been started: counted in flight until `answered(state)`
        (called by the runner's one done callback of the request's task)."""
        state = self.states[lane.key.id]
        state.in_flight += 1
        return state

    def answered(self, state: LeaseState) -> None:
        state.in_flight -= 1
        state.last_answer = time.time()
        if not state.in_flight:
            self._drained.set()

    # --- taking keys ---

    async def lease_keys(self) -> bool:
        """Take the leases of the usable keys no other live runner holds, up to this runner's fair
        share; True if this runner holds any."""
        live = await self._call(self._store.live_runners, self._lease)
        runners, self._started_with = max(len(live), self._started_with), 1
        share = fair_share(len([lane for lane in self.lanes if lane.usable]), runners)
        wanted = [lane for lane in self.lanes if lane.usable and not self.states[lane.key.id].handing]
        before = [lane.key.id for lane in wanted if self.holds(lane)]
        started = time.time()
        now_held = await self._call(self._store.acquire_keys, self.owner, {lane.key.id: lane.window for lane in wanted},
                                    self._lease)
        keep, extra = kept_after_lease(before, now_held, share)
        if extra:  # never sent on: given back at once
            await self._call(self._store.release_keys, self.owner, self._free_times(extra))
        changed = False
        for lane in wanted:
            state = self.states[lane.key.id]
            now_held = lane.key.id in keep
            if now_held and not self.holds(lane):
                state.taken_at = started
            state.valid_until = started + self._lease if now_held else float("-inf")
            if now_held and not lane.held:
                log.info("key %s is now leased to this runner", lane.key.id)
                changed = True
            lane.held = now_held
        if changed:
            self.changed.set()
        return bool(keep)

    async def wait_for_keys(self, batch_id: int | None, stop: asyncio.Event,
                            request_stop: Callable[[str], None]) -> bool:
        """Every usable key is leased to another live runner. Wait until one is free (or there is
        nothing left to do, or the run is stopped). False if this run should not go on."""
        wanted = [lane.key.id for lane in self.lanes if lane.usable]
        holders = await self._call(self._store.key_holders, wanted)
        names = sorted({f"{r.host} pid {r.pid} (running since {format_clock(r.started_at)})"
                        for r in holders.values()})
        if names:
            message = (f"every usable key ({', '.join(wanted)}) is held by another runner: {'; '.join(names)}"
                       " — one key serves one runner at a time so its rate limit holds")
        else:  # given up (or its runner died) moments ago: its last requests still count at the provider
            message = (f"every usable key ({', '.join(wanted)}) was used by another runner moments ago — a key "
                       "passes to the next runner one rate window after the last request sent with it")
        if not self._wait_for_keys:
            request_stop(f"{message}; --no-wait: not waiting")
            return False
        log.warning("%s; waiting for a key to be free", message)
        interval = min(KEY_BALANCE_INTERVAL, self._lease / 3)
        deadline = self._deadline
        while not stop.is_set():
            if deadline is not None and time.time() >= deadline:
                request_stop(f"deadline {format_clock(deadline)} reached while waiting for a key")
                return False
            timeout = interval if deadline is None else max(0.0, min(interval, deadline - time.time()))
            await wait_for_event(stop, timeout, clear=False)
            await self._call(self._store.heartbeat, self.owner)  # alive: the others make room for it
            pending = await self._call(self._store.pending, batch_id)
            if pending.empty:
                log.warning("the other runner(s) finished the work; nothing left for this run")
                return False
            if await self.lease_keys():
                return True
        return False

    # --- keeping them ---

    async def heartbeat(self) -> None:
        """Renew this runner's leases (jobs and keys); a key whose lease turns out lost is not used again."""
        started = time.time()
        still = set(await self._call(self._store.extend_leases, self.owner, self._lease))
        for lane in self.lanes:
            state = self.states[lane.key.id]
            if lane.key.id in still:
                if state.valid_until - self.margin <= started and lane.held:
                    self.changed.set()  # a key paused by a late heartbeat may send again
                state.valid_until = max(state.valid_until, started + self._lease)
            elif self.holds(lane) and state.taken_at < started:
                lane.held = False
                state.valid_until = float("-inf")
                log.warning("key %s: this runner's lease on it was lost (its heartbeat came too late); "
                            "no more requests on it", lane.key.id)

    async def balance_loop(self) -> None:
        """Share the keys with the other live runners: hold at most ceil(keys / runners), so a runner
        that started later (cron fired again, another machine) gets keys; take free ones when under."""
        while True:
            await asyncio.sleep(KEY_BALANCE_INTERVAL)
            usable = [lane for lane in self.lanes if lane.usable]
            if not usable:
                continue
            live = await self._call(self._store.live_runners, self._lease)
            share = fair_share(len(usable), len(live))
            held = [lane for lane in usable if self.holds(lane)]
            extra = set(over_share([lane.key.id for lane in held], share))
            if extra:
                await self.hand_over([lane for lane in held if lane.key.id in extra], len(live) - 1)
            elif len(held) < share:
                await self.lease_keys()

    async def hand_over(self, lanes: list[KeyLane], others: int) -> None:
        """Give these keys up for the other runners: stop sending on them, let their requests in flight
        come back, then release each free from its last answer + its window."""
        states = [self.states[lane.key.id] for lane in lanes]
        for lane, state in zip(lanes, states):
            lane.held = False
            state.handing = True
        try:
            drain_until = time.monotonic() + self._drain_limit
            while any(state.in_flight for state in states) and (left := drain_until - time.monotonic()) > 0:
                self._drained.clear()
                await wait_for_event(self._drained, min(left, 1.0), clear=False)
            await self._call(self._store.release_keys, self.owner, self._free_times(lane.key.id for lane in lanes))
            for state in states:
                state.valid_until = float("-inf")
        finally:
            for state in states:
                state.handing = False
        log.info("handed key(s) %s over to the %d other runner(s)", ", ".join(lane.key.id for lane in lanes), others)

    async def release_all(self) -> None:
        """At the end of the run (its requests are over): give every key up, each free from this
        runner's last answer on it + its window."""
        for lane in self.lanes:
            lane.held = False
        try:
            await self._call(self._store.release_keys, self.owner, self._free_times(self.states))
        except BatchrunError as exc:
            log.warning("could not release the key leases (they expire by themselves): %s", exc)

    def _free_times(self, key_ids: Any) -> dict[str, float]:
        now = time.time()
        windows = {lane.key.id: lane.window for lane in self.lanes}
        return {key_id: free_at(self.states[key_id].last_answer, self.states[key_id].in_flight, windows[key_id], now)
                for key_id in key_ids}
