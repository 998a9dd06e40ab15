"""A key's request rate, lowered while the provider keeps answering 429: a pure policy, fake-clock tested.

A configured rate is what the user believes the key may do. When the provider's real limit is lower
(a smaller plan, a limit shared with other clients, a key without any configured rate), every 429 costs
an attempt and a cooldown, and the key keeps running into the wall at the same speed after each
cooldown. `RateAdapter` lowers the key's rate below what it actually sent when 429s keep coming, and
raises it back slowly once they stop, until the configured rate applies again.

Rates are requests per second. Time comes in as `now` (monotonic seconds): no clock, sleep or I/O.
"""

from __future__ import annotations

from collections import deque

#: The shortest span over which the adapter measures: a 1 s period is too short to tell "keeps
#: hitting 429" from one unlucky burst, or to measure a send rate of a few requests a second.
MIN_SPAN = 10.0


def describe(rate: float | None) -> str:
    """`20/s`, `11.2/s`, `0.05/s`: up to 3 significant digits, no exponent; None is `no limit`."""
    if rate is None:
        return "no limit"
    rounded = float(f"{rate:.3g}")
    text = f"{rounded:.10f}".rstrip("0").rstrip(".")
    return f"{text or '0'}/s"


class RateAdapter:
    """The adapted request rate of one key.

    Lowering: when `lower_after` 429s arrived within one span (`max(period, 10 s)`), the key keeps
    hitting its limit rather than having met one unlucky burst. The adapted rate becomes
    `factor × min(effective rate, rate actually sent over the last span)`, at least `floor`. The sent
    rate matters: a key that sends below its configured rate (slow jobs, or no configured rate at all)
    and still gets 429s has a real limit below what it sends, not below what it may send.
    For one span after a lowering, 429s do not lower again: they mostly answer requests sent at the
    old rate, before the lowering could have any effect.

    Raising: once a whole span passed without a 429 since the last change, each success may raise the
    adapted rate by `raise_step × target` (additive, at most once per span), where the target is the
    configured rate, or for a key without one, the rate it sent at the first lowering. Reaching the
    target ends the adaptation: the configured rate (or no limit) applies again.

    `rate_limited` and `succeeded` return a message exactly when `effective` changed, so the runner
    can rebuild the key's limiter then and log the message.
    """

    __slots__ = ("_configured", "_period", "_span", "_lower_after", "_factor", "_raise_step",
                 "_floor", "_sends", "_hits", "_adapted", "_target",
                 "_changed_at", "_lowered_at", "_last_429", "_lowerings")

    def __init__(self, configured: float | None, period: float = 1.0, lower_after: int = 2,
                 factor: float = 0.75, raise_step: float = 0.05, floor: float = 0.05) -> None:
        if configured is not None and configured <= 0:
            raise ValueError(f"configured rate must be positive or None, not {configured}")
        if period <= 0:
            raise ValueError(f"period must be positive, not {period}")
        if lower_after < 1:
            raise ValueError(f"lower_after must be at least 1, not {lower_after}")
        if not 0 < factor < 1:
            raise ValueError(f"factor must be in (0, 1), not {factor}")
        if raise_step <= 0:
            raise ValueError(f"raise_step must be positive, not {raise_step}")
        if floor <= 0:
            raise ValueError(f"floor must be positive, not {floor}")
        self._configured = configured
        self._period = period
        self._span = max(period, MIN_SPAN)
        self._lower_after = lower_after
        self._factor = factor
        self._raise_step = raise_step
        self._floor = floor
        self._sends: deque[float] = deque()     # send times within the last span, oldest first
        self._hits: deque[float] = deque()      # 429 times within the last span that may lower
        self._adapted: float | None = None
        self._target: float | None = None       # the rate to raise back to while adapted
        self._changed_at = float("-inf")
        self._lowered_at = float("-inf")
        self._last_429 = float("-inf")
        self._lowerings = 0

    @property
    def configured(self) -> float | None:
        return self._configured

    @property
    def adapted(self) -> float | None:
        """The lowered rate, or None while the key is not adapted."""
        return self._adapted

    @property
    def effective(self) -> float | None:
        """The rate to apply now: the adapted one if any, else the configured one (None: no limit)."""
        return self._adapted if self._adapted is not None else self._configured

    @property
    def span(self) -> float:
        """The span (seconds) over which 429s are counted and the send rate is measured."""
        return self._span

    @property
    def lowerings(self) -> int:
        """How many times the rate was lowered in total."""
        return self._lowerings

    def measured(self, now: float) -> float | None:
        """Requests per second sent over the last span (None before any send in it).

        Measured from the oldest send within the span, so that a key that was idle (or cooling down)
        for most of the span and then sent a burst is not taken for a slow one; but never over less
        than one `period`: 40 requests in 0.1 s are 40 per period, which is how the provider's limit
        counts them, not 400/s.
        """
        self._purge(self._sends, now)
        if not self._sends:
            return None
        elapsed = min(self._span, max(self._period, now - self._sends[0]))
        return len(self._sends) / elapsed

    def sent(self, now: float) -> None:
        """A request was sent with this key at `now`."""
        self._sends.append(now)
        self._purge(self._sends, now)

    def rate_limited(self, now: float) -> str | None:
        """A 429 arrived for this key at `now`. Returns a message when the rate was lowered."""
        self._last_429 = now
        if now - self._lowered_at < self._span:
            return None  # answers to requests sent before the last lowering
        self._hits.append(now)
        self._purge(self._hits, now)
        if len(self._hits) < self._lower_after:
            return None
        current = self.effective
        measured = self.measured(now)
        basis = [rate for rate in (current, measured) if rate is not None]
        if not basis:
            return None  # no limit and nothing sent: nothing to lower from
        lowered = max(self._floor, self._factor * min(basis))
        if current is not None and lowered >= current:
            return None  # already at the floor
        if self._adapted is None:
            self._target = self._configured if self._configured is not None else measured
        self._adapted = lowered
        self._hits.clear()
        self._lowered_at = self._changed_at = now
        self._lowerings += 1
        before = describe(current) if current is not None else f"no limit ({describe(measured)} sent)"
        return f"key rate lowered from {before} to {describe(lowered)} after repeated 429s"

    def succeeded(self, now: float) -> str | None:
        """A request of this key succeeded at `now`. Returns a message when the rate was raised."""
        if self._adapted is None or self._target is None:
            return None
        if now - max(self._changed_at, self._last_429) < self._span:
            return None
        before = self._adapted
        raised = before + self._raise_step * self._target
        self._changed_at = now
        if raised >= self._target * (1 - 1e-9):  # float steps must not stop a hair short
            target = self._target
            self._adapted = self._target = None
            if self._configured is None:
                return f"key rate back to {describe(target)} (no limit)"
            return f"key rate back to {describe(target)}"
        self._adapted = raised
        return f"key rate raised from {describe(before)} to {describe(raised)}"

    def _purge(self, times: deque[float], now: float) -> None:
        horizon = now - self._span
        while times and times[0] <= horizon:
            times.popleft()
