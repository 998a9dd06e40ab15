"""Run-wide concurrency under provider overload: a pure policy, tested with a fake clock.

Per-key limits (`keys.py`, `adaptive.py`) protect each key's quota. They do nothing when the provider
itself is overloaded or down: every key then gets 503s, 5xx, resets and timeouts, and retrying at full
concurrency only adds to the load and burns attempts. `CircuitBreaker` watches the outcomes of all
requests, whatever key sent them, and lowers the number of requests the runner keeps in flight when
most of the recent ones failed that way; once requests succeed again it ramps the limit back up.

The runner feeds it one `record` per finished request and applies `limit`; the messages it returns are
for the log. Time comes in as `now` (monotonic seconds), so there is no clock, sleep or I/O here.
"""

from __future__ import annotations

from collections import deque


class CircuitBreaker:
    """A concurrency limit that drops to a quarter when most recent requests fail transiently.

    Tripping: once at least `min_samples` of the last `window` outcomes are known and the failed share
    of them reaches `trip_share`, the limit becomes `max(1, limit // 4)` (a quarter, not a half: an
    overloaded provider needs a real pause, and repeated trips reach 1 quickly). The window is cleared
    and a hold starts: `hold` seconds, doubling with each trip in a row up to `max_hold`.

    During the hold nothing changes, and outcomes that arrive are ignored: most answer requests sent
    before the trip, at the old concurrency, which were acted on already; counting them would trip
    again the moment the hold ends. For the same reason an outcome whose `started` time (when given) is
    before the last trip is ignored at any time, e.g. a timeout that took longer than the hold.

    Ramp-up: after the hold, each time `min_samples` outcomes have been recorded since the last change
    and fewer than `trip_share / 2` of them failed (of the last `window` of them, if there are more),
    the limit doubles, up to `max_concurrency`. Half the trip share, so that a provider hovering near
    the threshold is not pushed back over it. Reaching `max_concurrency` ends the streak of trips:
    the next trip holds for `hold` again.

    "Failed" means a transient failure that speaks of the provider's state (503, other 5xx, connection
    reset, timeout). Successes and errors of the job or the key (400, 401, 403, …) count as not failed,
    and so should 429s: they are one key's quota, which that key's own rate handling deals with.
    """

    __slots__ = ("_max", "_window_size", "_min_samples", "_trip_share", "_hold", "_max_hold",
                 "_limit", "_window", "_window_failures", "_since_change", "_hold_until", "_tripped_at",
                 "_streak", "_trips")

    def __init__(self, max_concurrency: int, window: int = 20, min_samples: int = 10,
                 trip_share: float = 0.5, hold: float = 2.0, max_hold: float = 30.0) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, not {max_concurrency}")
        if window < 1:
            raise ValueError(f"window must be at least 1, not {window}")
        if not 1 <= min_samples <= window:
            # more samples than the window holds could never be reached: the breaker would never trip
            raise ValueError(f"min_samples must be between 1 and window ({window}), not {min_samples}")
        if not 0 < trip_share <= 1:
            raise ValueError(f"trip_share must be in (0, 1], not {trip_share}")
        if hold < 0 or max_hold < hold:
            raise ValueError(f"need 0 <= hold <= max_hold, not hold={hold}, max_hold={max_hold}")
        self._max = max_concurrency
        self._window_size = window
        self._min_samples = min_samples
        self._trip_share = trip_share
        self._hold = hold
        self._max_hold = max_hold
        self._limit = max_concurrency
        #: the last `window` outcomes (True = failed) since the last trip; decides tripping
        self._window: deque[bool] = deque(maxlen=window)
        self._window_failures = 0  # how many of `_window` failed: counted as they come and go
        #: the last `window` outcomes since the last change of the limit; decides ramping up
        self._since_change: deque[bool] = deque(maxlen=window)
        self._hold_until = float("-inf")
        self._tripped_at = float("-inf")
        self._streak = 0        # trips since the limit was last at max_concurrency
        self._trips = 0

    @property
    def limit(self) -> int:
        """How many requests may be in flight now (at least 1)."""
        return self._limit

    @property
    def max_concurrency(self) -> int:
        return self._max

    @property
    def tripped(self) -> bool:
        """True while the limit is below `max_concurrency` (held or still ramping up)."""
        return self._limit < self._max

    @property
    def failure_share(self) -> float:
        """The failed share of the current window (0.0 when it is empty, e.g. right after a trip)."""
        return self._window_failures / len(self._window) if self._window else 0.0

    @property
    def trips(self) -> int:
        """How many times the breaker tripped in total."""
        return self._trips

    @property
    def hold_until(self) -> float:
        """When the current hold ends (monotonic seconds; -inf before the first trip)."""
        return self._hold_until

    def record(self, failed: bool, now: float, started: float | None = None) -> str | None:
        """Record the outcome of one request that ended at `now`; `started` is when it was sent, if
        known. Returns a one-line message when the limit changed (or a trip at 1 extended the hold),
        else None."""
        if now < self._hold_until:
            return None
        if started is not None and started < self._tripped_at:
            return None
        window = self._window
        if len(window) == self._window_size and window[0]:
            self._window_failures -= 1  # the oldest outcome leaves the window
        window.append(failed)
        self._window_failures += failed
        if self._limit < self._max:  # (only while the limit is down does the ramp-up need them)
            self._since_change.append(failed)

        failures = self._window_failures
        samples = len(window)
        if samples >= self._min_samples and failures / samples >= self._trip_share:
            return self._trip(failures, samples, now)

        if self._limit < self._max and len(self._since_change) >= self._min_samples:
            if sum(self._since_change) / len(self._since_change) < self._trip_share / 2:
                before = self._limit
                self._limit = min(self._max, self._limit * 2)
                self._since_change.clear()
                if self._limit == self._max:
                    self._streak = 0
                return f"requests succeed again; concurrency {before} → {self._limit}"
        return None

    def _trip(self, failures: int, samples: int, now: float) -> str:
        before = self._limit
        self._limit = max(1, self._limit // 4)
        self._streak += 1
        self._trips += 1
        hold = min(self._max_hold, self._hold * 2 ** min(self._streak - 1, 60))
        self._hold_until = now + hold
        self._tripped_at = now
        self._window.clear()
        self._window_failures = 0
        self._since_change.clear()
        change = (f"concurrency {before} → {self._limit}" if self._limit != before
                  else f"concurrency stays at {self._limit}")
        return (f"{failures} of the last {samples} requests failed (the provider is overloaded or down); "
                f"{change} for {hold:g} s")
