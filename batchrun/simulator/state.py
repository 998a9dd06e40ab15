"""The provider simulator's counters: what clients did to it, for tests, benchmarks and `/_sim/stats`.

Separate from the server so the rate-limit arithmetic (`SlidingWindow`) is a small pure object that
tests drive with explicit times, and so the thread-safety rules live in one place: the server
updates the counters from its event loop while a test may read them from another thread.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from batchrun.units import Rate

__all__ = ["BatchLedger", "KeyStats", "SimulatorState", "SlidingWindow"]


class SlidingWindow:
    """Admission and peak-load bookkeeping for one key under a `count per period` limit.

    Two queues, because they answer different questions: `admitted` decides 429s the way the
    provider does (only admitted requests use quota), while `arrivals` records every request so
    `max_window` can prove whether a client stayed under the limit, refused or not. A request at
    time t stays in the window while `t > now - period`. Times are passed in, not read, so the
    arithmetic is tested with a fake clock.

    Each request weighs `amount` units: 1 for a request limit, its tokens for a token limit, so
    one class serves both windows. A request heavier than the whole limit can never be admitted;
    `arrive` says so with `math.inf`.
    """

    __slots__ = ("admitted", "arrivals", "max_window", "_admitted_total", "_arrivals_total")

    def __init__(self) -> None:
        self.admitted: deque[tuple[float, int]] = deque()
        self.arrivals: deque[tuple[float, int]] = deque()
        self.max_window = 0
        self._admitted_total = 0
        self._arrivals_total = 0

    def arrive(self, now: float, rate: Rate, amount: int = 1) -> float | None:
        """Record a request of `amount` units at `now`; None if admitted, else seconds until it fits."""
        horizon = now - rate.period
        self._arrivals_total -= _forget_until(self.arrivals, horizon)
        self.arrivals.append((now, amount))
        self._arrivals_total += amount
        self.max_window = max(self.max_window, self._arrivals_total)
        self._admitted_total -= _forget_until(self.admitted, horizon)
        excess = self._admitted_total + amount - rate.count
        if excess > 0:
            return self._wait_to_free(excess, now, rate)
        self.admitted.append((now, amount))
        self._admitted_total += amount
        return None

    def remaining(self, now: float, rate: Rate) -> int:
        """Units the key may still use in the current window."""
        self._admitted_total -= _forget_until(self.admitted, now - rate.period)
        return max(0, rate.count - self._admitted_total)

    def reset_in(self, now: float, rate: Rate) -> float:
        """Seconds until the oldest admitted request leaves the window (0 when none is in it)."""
        self._admitted_total -= _forget_until(self.admitted, now - rate.period)
        return max(0.0, self.admitted[0][0] + rate.period - now) if self.admitted else 0.0

    def _wait_to_free(self, excess: int, now: float, rate: Rate) -> float:
        """Seconds until the oldest admitted requests leaving the window free `excess` units."""
        freed = 0
        for time_, amount in self.admitted:
            freed += amount
            if freed >= excess:
                return time_ + rate.period - now
        return math.inf  # more than the whole limit: no wait makes it fit


#: float slack in the client's favour, so a client pacing exactly at the limit (one request every
#: period/count seconds) is not refused, or counted over the limit, by a rounding error
_WINDOW_SLACK = 1e-9


def _forget_until(entries: deque[tuple[float, int]], horizon: float) -> int:
    """Drop the entries at or before `horizon`; returns the units they weighed."""
    dropped = 0
    while entries and entries[0][0] <= horizon + _WINDOW_SLACK:
        dropped += entries.popleft()[1]
    return dropped


@dataclass
class KeyStats:
    """What one key did: completion requests, successes, statuses, and its busiest windows.

    `max_window` counts the requests that reached the rate limiter (every one a key with budget
    left sent, admitted or refused); 401s, 402s and random 429s are answered before it and are not
    counted. It stays 0 while no rate limit is configured. `max_token_window` is the same for the
    token limit: the most tokens of requests that reached it inside any one window.
    """

    requests: int = 0
    ok: int = 0
    random_429s: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    window: SlidingWindow = field(default_factory=SlidingWindow, repr=False)
    token_window: SlidingWindow = field(default_factory=SlidingWindow, repr=False)

    @property
    def max_window(self) -> int:
        return self.window.max_window

    @property
    def max_token_window(self) -> int:
        return self.token_window.max_window

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "ok": self.ok,
            "random_429s": self.random_429s,
            "by_status": {str(status): n for status, n in sorted(self.by_status.items())},
            "max_window": self.max_window,
            "max_token_window": self.max_token_window,
        }


@dataclass
class _BatchEntry:
    """What the ledger knows of one batch: where it came from, the custom_ids it holds, how it stands."""

    id: str
    input_file_id: str
    endpoint: str
    status: str = "validating"
    model: str | None = None
    custom_ids: tuple[str, ...] = ()  # sorted; empty until the input file passes validation
    total: int = 0
    completed: int = 0
    failed: int = 0

    def snapshot(self) -> dict[str, Any]:
        digest = hashlib.sha256("\n".join(self.custom_ids).encode()).hexdigest()
        return {
            "id": self.id,
            "input_file_id": self.input_file_id,
            "endpoint": self.endpoint,
            "model": self.model,
            "status": self.status,
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "custom_ids": list(self.custom_ids),
            "custom_ids_sha256": digest,
        }


class BatchLedger:
    """The Files and Batches API's counters, the `batches` section of `GET /_sim/stats`.

    Made so a test can prove a client never sent the same work twice through the batch API: every
    batch with the sorted custom_ids of its input file (and their digest), how many batches held each
    custom_id (`custom_id_batches`, only those held by more than one; `duplicate_custom_ids` counts
    them), and `redone_custom_ids`, the custom_ids answered successfully by more than one batch. A
    custom_id in two batches is not always a fault (resubmitting a failed or expired line is the point
    of a retry); one answered twice is. A batch's custom_ids are recorded once its file passes
    validation. Its own lock, for the same reason as `SimulatorState`'s.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.files_uploaded = 0
            self.file_bytes_uploaded = 0
            self.files_deleted = 0
            self._entries: dict[str, _BatchEntry] = {}
            self._batches_of: dict[str, int] = {}  # custom_id -> batches that held it
            self._answers_of: dict[str, int] = {}  # custom_id -> successful output lines for it

    def count_upload(self, size: int) -> None:
        with self._lock:
            self.files_uploaded += 1
            self.file_bytes_uploaded += size

    def count_delete(self) -> None:
        with self._lock:
            self.files_deleted += 1

    def created(self, batch_id: str, input_file_id: str, endpoint: str) -> None:
        with self._lock:
            self._entries[batch_id] = _BatchEntry(batch_id, input_file_id, endpoint)

    def validated(self, batch_id: str, model: str | None, custom_ids: list[str]) -> None:
        with self._lock:
            entry = self._entries.get(batch_id)
            if entry is None:  # created before a reset
                return
            entry.model = model
            entry.custom_ids = tuple(sorted(custom_ids))
            for custom_id in custom_ids:
                self._batches_of[custom_id] = self._batches_of.get(custom_id, 0) + 1

    def progress(self, batch_id: str, status: str, total: int, completed: int, failed: int) -> None:
        with self._lock:
            entry = self._entries.get(batch_id)
            if entry is not None:
                entry.status, entry.total, entry.completed, entry.failed = status, total, completed, failed

    def answered(self, batch_id: str, custom_id: str) -> None:
        """A line of the batch went to its output file (a 200)."""
        with self._lock:
            if batch_id in self._entries:
                self._answers_of[custom_id] = self._answers_of.get(custom_id, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            entries = list(self._entries.values())
            by_status: dict[str, int] = {}
            for entry in entries:
                by_status[entry.status] = by_status.get(entry.status, 0) + 1
            shared = {custom_id: n for custom_id, n in sorted(self._batches_of.items()) if n > 1}
            return {
                "files_uploaded": self.files_uploaded,
                "file_bytes_uploaded": self.file_bytes_uploaded,
                "files_deleted": self.files_deleted,
                "created": len(entries),
                "by_status": dict(sorted(by_status.items())),
                "requests": {
                    "total": sum(entry.total for entry in entries),
                    "completed": sum(entry.completed for entry in entries),
                    "failed": sum(entry.failed for entry in entries),
                },
                "items": [entry.snapshot() for entry in entries],
                "custom_id_batches": shared,
                "duplicate_custom_ids": len(shared),
                "redone_custom_ids": sum(1 for n in self._answers_of.values() if n > 1),
            }


class SimulatorState:
    """The simulator's counters, for tests and `GET /_sim/stats`.

    The server mutates them from its event loop while a test may read them from another thread
    (`SimulatorThread`), so every change and `snapshot()` hold one `threading.Lock`; the handlers
    never await while holding it. `requests_total` and `by_status` count the requests of every
    `POST /v1/...` endpoint; `by_endpoint` splits them by endpoint (requests and successes);
    catalogue requests are `models_requests`. A batch line answered 200 counts as a success
    (`completions_ok`, `ok`, `duplicates`, budgets) but not as a request; the Files and Batches API
    keeps its own counters, `batches` (a `BatchLedger`).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        #: the clock rate limiting runs on; monotonic, the same one the event loop uses
        self.clock = clock
        self._lock = threading.Lock()
        self._completion_ids = 0  # never reset, so ids stay unique for the life of the server
        self.batches = BatchLedger()
        self.reset()

    def reset(self) -> None:
        """Zero every counter, the rate-limit windows and budget usage included."""
        with self._lock:
            self.requests_total = 0
            self.by_status: dict[int, int] = {}
            self.keys: dict[str, KeyStats] = {}
            self.completions_ok = 0
            self.random_429s = 0
            self.duplicates = 0
            self.models_requests = 0
            self.by_endpoint: dict[str, dict[str, int]] = {}
            self.resets = 0
            self.in_flight = 0
            self.max_in_flight = 0
            self._served: set[bytes] = set()
        self.batches.reset()

    @property
    def prompts_served(self) -> int:
        """Distinct pieces of work (a chat's `messages`, an embedding's `input`, ...) answered successfully."""
        return len(self._served)

    @property
    def max_window(self) -> dict[str, int]:
        """Key id -> the most requests that key sent inside any one rate-limit period."""
        with self._lock:
            return {key: stats.max_window for key, stats in self.keys.items()}

    def key(self, key: str) -> KeyStats:
        """The counters of one key (zeros for a key never seen)."""
        with self._lock:
            return self.keys.get(key) or KeyStats()

    def snapshot(self) -> dict[str, Any]:
        """All counters as a JSON-able dict (status codes as string keys)."""
        with self._lock:
            return {
                "requests_total": self.requests_total,
                "by_status": {str(status): n for status, n in sorted(self.by_status.items())},
                "keys": {key: stats.snapshot() for key, stats in sorted(self.keys.items())},
                "max_window": {key: stats.max_window for key, stats in sorted(self.keys.items())},
                "max_token_window": {key: stats.max_token_window for key, stats in sorted(self.keys.items())},
                "completions_ok": self.completions_ok,
                "random_429s": self.random_429s,
                "duplicates": self.duplicates,
                "prompts_served": len(self._served),
                "models_requests": self.models_requests,
                "by_endpoint": {name: dict(counts) for name, counts in sorted(self.by_endpoint.items())},
                "resets": self.resets,
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
                "batches": self.batches.snapshot(),
            }

    # -- updates, called by the handlers -------------------------------------------------------

    def begin_completion(self) -> None:
        with self._lock:
            self.requests_total += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def end_completion(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def count_endpoint_request(self, endpoint: str) -> None:
        """Count a request to `endpoint` (an `Endpoint.name`: chat, embeddings, ...)."""
        with self._lock:
            self.by_endpoint.setdefault(endpoint, {"requests": 0, "ok": 0})["requests"] += 1

    def count_key_request(self, key: str) -> int:
        """Count a completion request from `key`; returns that key's total so far."""
        with self._lock:
            stats = self.keys.setdefault(key, KeyStats())
            stats.requests += 1
            return stats.requests

    def count_models_request(self) -> None:
        with self._lock:
            self.models_requests += 1

    def count_random_429(self, key: str) -> None:
        with self._lock:
            self.random_429s += 1
            self.keys.setdefault(key, KeyStats()).random_429s += 1

    def count_reset(self) -> None:
        with self._lock:
            self.resets += 1

    def record_status(self, key: str | None, status: int) -> None:
        with self._lock:
            self.by_status[status] = self.by_status.get(status, 0) + 1
            if key is not None:
                stats = self.keys.setdefault(key, KeyStats())
                stats.by_status[status] = stats.by_status.get(status, 0) + 1

    def successes(self, key: str) -> tuple[int, int]:
        """(successful answers in total, successful answers of `key`): what budgets spend."""
        with self._lock:
            stats = self.keys.get(key)
            return self.completions_ok, stats.ok if stats else 0

    def admit(self, key: str, rate: Rate) -> float | None:
        """Pass one request of `key` through its sliding window; seconds to wait if refused."""
        now = self.clock()
        with self._lock:
            return self.keys.setdefault(key, KeyStats()).window.arrive(now, rate)

    def admit_tokens(self, key: str, rate: Rate, tokens: int) -> float | None:
        """Pass `tokens` of `key` through its token window; seconds to wait if refused (inf: never fits)."""
        now = self.clock()
        with self._lock:
            return self.keys.setdefault(key, KeyStats()).token_window.arrive(now, rate, tokens)

    def rate_headers(self, key: str, requests: Rate | None, tokens: Rate | None) -> dict[str, str]:
        """The `x-ratelimit-*` headers a rate- or token-limited key gets on every response."""
        now = self.clock()
        headers: dict[str, str] = {}
        with self._lock:
            stats = self.keys.setdefault(key, KeyStats())
            for name, rate, window in (("requests", requests, stats.window), ("tokens", tokens, stats.token_window)):
                if rate is not None:
                    headers[f"x-ratelimit-limit-{name}"] = str(rate.count)
                    headers[f"x-ratelimit-remaining-{name}"] = str(window.remaining(now, rate))
                    headers[f"x-ratelimit-reset-{name}"] = _format_seconds(window.reset_in(now, rate))
        return headers

    def record_success(self, key: str, served: Any, endpoint: str = "chat") -> int:
        """Count a successful answer; returns its sequence number for the answer's id.

        `served` is what identifies the work (a chat's `messages`, an embedding's `input`); a success
        whose work was already answered on the same endpoint is a duplicate: the client redid work.
        """
        work = served if endpoint == "chat" else [endpoint, served]
        fingerprint = hashlib.sha256(orjson.dumps(work, option=orjson.OPT_SORT_KEYS)).digest()
        with self._lock:
            self.completions_ok += 1
            self.keys.setdefault(key, KeyStats()).ok += 1
            self.by_endpoint.setdefault(endpoint, {"requests": 0, "ok": 0})["ok"] += 1
            if fingerprint in self._served:
                self.duplicates += 1
            else:
                self._served.add(fingerprint)
            self._completion_ids += 1
            return self._completion_ids


def _format_seconds(seconds: float) -> str:
    """`0.35s`, `1s`: the form of `x-ratelimit-reset-requests`."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
