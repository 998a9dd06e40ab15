"""A key's request rate, learned from the provider's answers: a pure policy, fake-clock tested.

A configured rate is what the user believes the key may do. Two kinds of 429 reach a client:

- **noise**: 429s that no rate of ours causes (an overloaded provider, a gateway in front of a GPU
  pool, OpenAI's "overloaded" answers). They come at a share of the answers that does not depend on
  how fast the key sends. Lowering the rate for them is what collapses AIMD-style clients: their rate
  ends up set by the loss rate, not by the limit (TCP's 1/√p law). The right answer is to retry the
  request after its `Retry-After` and leave the rate alone.
- **a limit**: the key's real quota is below what it sends. Then the share of 429s grows with the
  send rate, and what the provider *admits* (answers that were not 429, per second) stays flat
  whatever the key sends.

`RateController` tells them apart by rounds. A round counts the answers to the requests sent since it
began (answers to older requests speak of an older rate). It ends once it spans `span` seconds and
holds `min_samples` answers (sooner when nearly every answer is a 429). Then:

- a 429 share at or above the threshold — `threshold`, or the measured noise plus a margin, whichever is
  higher — is a limit: the rate becomes what the provider admitted over the round (BBR's delivery
  rate), not a fraction of what was sent; the next round *verifies* it: if the 429s stay as common at
  the lower rate, they were noise after all, the rate goes back and their share becomes the noise
  floor;
- below the configured rate, the controller probes upward by `probe_step` (≤ 5 %) per round, and keeps
  the step only if the provider admitted more; a probe that bought nothing goes back and the next one
  waits longer (`hold`, doubling up to `max_hold` rounds), so a key at its real limit spends few rounds
  above it; a limit the provider raises is found again by the next probes.

The rate never banks unused credit: it is a pace, applied by the key's pacer (`keys.KeyLane`).
Rates are requests per second; time comes in as `now` (monotonic seconds): no clock, sleep or I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: The shortest span of a round: over 1 s, "keeps hitting 429" cannot be told from one unlucky burst.
MIN_SPAN = 10.0
#: 429s saying `x-ratelimit-remaining-*: 0` in one round that make it a limit whatever their share:
#: the provider names the cause, so there is nothing to tell from noise.
EXHAUSTED_EVIDENCE = 3


def describe(rate: float | None) -> str:
    """`20/s`, `11.2/s`, `0.05/s`: up to 3 significant digits, no exponent; None is `no limit`."""
    if rate is None:
        return "no limit"
    rounded = float(f"{rate:.3g}")
    text = f"{rounded:.10f}".rstrip("0").rstrip(".")
    return f"{text or '0'}/s"


@dataclass(frozen=True, slots=True)
class RoundStats:
    """The answers to the requests sent during one round."""

    answers: int
    limited: int
    sent_rate: float  # requests per second the key sent during the round
    #: 429s that came with `x-ratelimit-remaining-*: 0`: the provider's own word that the window is spent
    exhausted: int = 0

    @property
    def share(self) -> float:
        return self.limited / self.answers if self.answers else 0.0

    @property
    def admitted(self) -> float:
        """Requests per second the provider let through (every answer but a 429)."""
        return self.sent_rate * (1.0 - self.share)


@dataclass(frozen=True, slots=True)
class Change:
    """What the controller changed: the new rate (None: the configured rate, or no limit, applies),
    how long the key should send nothing (the provider's window still holds the overshoot), and a
    line for the log."""

    rate: float | None
    pause: float
    message: str


class RateController:
    """The learned request rate of one key (see the module docstring for the model)."""

    __slots__ = ("_configured", "_period", "_span", "_threshold", "_min_samples", "_early_samples",
                 "_probe_step", "_max_hold", "_floor", "_rate", "_noise", "_phase", "_round_start",
                 "_answers", "_limited", "_exhausted", "_first_sent", "_last_sent", "_before_lowering",
                 "_lowered_share", "_target", "_baseline", "_before_probe", "_hold", "_hold_left", "_lowerings")

    def __init__(self, configured: float | None, period: float = 1.0, *, threshold: float = 0.15,
                 min_samples: int = 50, early_samples: int = 20, probe_step: float = 0.05,
                 max_hold: int = 8, floor: float = 0.05) -> None:
        if configured is not None and configured <= 0:
            raise ValueError(f"configured rate must be positive or None, not {configured}")
        if period <= 0:
            raise ValueError(f"period must be positive, not {period}")
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), not {threshold}")
        if not 2 <= early_samples <= min_samples:
            raise ValueError(f"need 2 <= early_samples <= min_samples, not {early_samples}, {min_samples}")
        if not 0 < probe_step <= 0.5:
            raise ValueError(f"probe_step must be in (0, 0.5], not {probe_step}")
        if max_hold < 1 or floor <= 0:
            raise ValueError("max_hold must be at least 1 and floor positive")
        self._configured = configured
        self._period = period
        self._span = max(period, MIN_SPAN)
        self._threshold = threshold
        self._min_samples = min_samples
        self._early_samples = early_samples
        self._probe_step = probe_step
        self._max_hold = max_hold
        self._floor = floor
        self._rate: float | None = None           # the learned rate; None: the configured one applies
        self._noise = 0.0                          # the share of 429s that comes whatever the rate
        self._phase = "steady"                     # steady · verifying (just lowered) · probing (just raised)
        self._round_start = float("-inf")
        self._answers = self._limited = self._exhausted = 0
        self._first_sent = math.inf
        self._last_sent = -math.inf
        self._target = configured                  # the rate probes climb back to
        self._before_lowering: float | None = None
        self._lowered_share = 0.0
        self._baseline: RoundStats | None = None   # the round before a probe
        self._before_probe: float | None = None    # the rate before it
        self._hold = 1                             # rounds to wait before the next probe
        self._hold_left = 1
        self._lowerings = 0

    # --- what the key applies ---

    @property
    def configured(self) -> float | None:
        return self._configured

    @property
    def adapted(self) -> float | None:
        """The learned rate in force, or None while the configured rate (or no limit) applies."""
        return self._rate

    @property
    def effective(self) -> float | None:
        return self._rate if self._rate is not None else self._configured

    @property
    def noise(self) -> float:
        """The share of 429s measured to come whatever the rate (0 until seen)."""
        return self._noise

    @property
    def span(self) -> float:
        return self._span

    @property
    def lowerings(self) -> int:
        return self._lowerings

    # --- what the key reports ---

    def answered(self, sent_at: float, now: float, limited: bool, exhausted: bool = False) -> Change | None:
        """The answer to a request sent at `sent_at` arrived at `now`: a 429 (`limited`; `exhausted`
        when its headers said the key's window is spent) or anything else (a success, a 503 or a 400
        all passed the provider's rate limiter). Returns the change of rate it led to, if any."""
        if self._round_start == -math.inf:
            self._round_start = sent_at
        if sent_at < self._round_start:
            return None  # sent at an older rate
        self._answers += 1
        self._limited += limited
        self._exhausted += limited and exhausted
        self._first_sent = min(self._first_sent, sent_at)
        self._last_sent = max(self._last_sent, sent_at)
        if not self._round_over(now):
            return None
        stats = self._close_round(now)
        return self._decide(stats)

    # --- rounds ---

    def _round_over(self, now: float) -> bool:
        if self._answers < self._early_samples:
            return False
        share = self._limited / self._answers
        if share >= max(2 * self._threshold, self._noise + 0.3) or self._exhausted >= EXHAUSTED_EVIDENCE:
            return True  # many 429s, or the provider says it is a limit: no need to wait out the span
        return self._answers >= self._min_samples and now - self._round_start >= self._span

    def _close_round(self, now: float) -> RoundStats:
        spread = self._last_sent - self._first_sent
        # n send times span n - 1 gaps; never less than one period (a burst is counted per period)
        sent_rate = (self._answers - 1) / max(spread, self._period) if self._answers > 1 else 0.0
        stats = RoundStats(self._answers, self._limited, sent_rate, self._exhausted)
        self._new_round(now)
        return stats

    def _new_round(self, now: float) -> None:
        self._round_start = now
        self._answers = self._limited = self._exhausted = 0
        self._first_sent = math.inf
        self._last_sent = -math.inf

    def _limit_threshold(self, answers: int) -> float:
        """The 429 share that stands well above the noise: 3 σ of it, and at least 5 points."""
        sigma = math.sqrt(self._noise * (1 - self._noise) / max(1, answers))
        return max(self._threshold, self._noise + max(0.05, 3 * sigma))

    # --- decisions ---

    def _is_limit(self, stats: RoundStats) -> bool:
        return stats.share >= self._limit_threshold(stats.answers) or stats.exhausted >= EXHAUSTED_EVIDENCE

    def _decide(self, stats: RoundStats) -> Change | None:
        if self._phase == "verifying":
            return self._verify(stats)
        if self._is_limit(stats):
            return self._lower(stats)
        if self._phase == "probing":
            return self._judge_probe(stats)
        if self._rate is None:
            return None
        self._hold_left -= 1
        if self._hold_left > 0:
            return None
        return self._probe(stats)

    def _lower(self, stats: RoundStats) -> Change | None:
        current = self.effective
        lowered = max(self._floor, stats.admitted)
        if current is not None and lowered >= current * 0.99:
            # at or below this rate already (few jobs, or the floor): nothing to lower
            self._phase = "steady"
            return None
        if self._phase == "probing":
            self._hold = min(self._max_hold, self._hold * 2)
        if self._target is None:
            self._target = stats.sent_rate  # no configured rate: climb back to what it sent
        self._before_lowering = current
        self._lowered_share = stats.share
        self._rate = lowered
        self._phase = "verifying"
        self._lowerings += 1
        before = describe(current) if current is not None else f"no limit ({describe(stats.sent_rate)} sent)"
        return Change(lowered, self._period, (
            f"key rate lowered from {before} to {describe(lowered)}, what the provider admitted: "
            f"{stats.limited} of {stats.answers} answers were 429 ({stats.share:.0%})"))

    def _verify(self, stats: RoundStats) -> Change | None:
        """The round after a lowering: did the 429s go away at the admitted rate?"""
        self._phase = "steady"
        if stats.exhausted >= EXHAUSTED_EVIDENCE:
            return self._lower(stats)  # still over the provider's window, by its own word: lower again
        if stats.limited and stats.share >= 0.6 * self._lowered_share:
            # As many 429s at a lower rate: they do not come from our rate. Back to where it was.
            self._noise = max(self._noise, stats.share)
            restored = self._before_lowering
            self._rate = restored if restored != self._configured else None
            self._hold = self._hold_left = 1
            return Change(self._rate, 0.0, (
                f"429s go on at {stats.share:.0%} of the answers at a lower rate: they are the provider's "
                f"noise, not our rate; key rate back to {describe(restored)}"))
        self._hold_left = self._hold
        return None

    def _probe(self, stats: RoundStats) -> Change | None:
        before = self.effective
        if before is None:
            return None
        target = self._target if self._target is not None else before
        # after failed probes, smaller steps: each one that fails costs fewer 429s
        raised = min(target, before * (1 + max(0.01, self._probe_step / self._hold)))
        self._baseline = stats
        self._before_probe = before
        self._phase = "probing"
        if raised >= target * (1 - 1e-9):
            self._rate = None
            if self._configured is None:
                self._target = None
                return Change(None, 0.0, f"key rate back to {describe(target)} (no limit)")
            return Change(None, 0.0, f"key rate back to {describe(target)}")
        self._rate = raised
        return Change(raised, 0.0, f"key rate raised from {describe(before)} to {describe(raised)} (probing)")

    def _judge_probe(self, stats: RoundStats) -> Change | None:
        """The round after a raise: keep it only if the provider admitted more."""
        baseline = self._baseline
        self._phase = "steady"
        if baseline is None:
            return None
        extra_sent = stats.sent_rate - baseline.sent_rate
        gained = stats.admitted - baseline.admitted
        # Over a sliding window, sending a little too fast wastes slots (a refused request leaves a gap),
        # so a probe past the limit admits no more, or less; and its 429s rise above the noise.
        more_429s = stats.limited >= 3 and stats.share > baseline.share + 0.02
        probed = self.effective if self.effective is not None else stats.sent_rate
        kept_up = stats.sent_rate >= 0.97 * probed  # else the key had too few jobs to tell anything
        if kept_up and (more_429s or gained < 0.5 * max(0.0, extra_sent) * (1 - self._noise)):
            # The extra requests were turned away: the limit is where we were. Go back, wait longer.
            before = self.effective
            back = self._before_probe if self._before_probe is not None else baseline.sent_rate
            self._rate = back
            self._hold = min(self._max_hold, self._hold * 2)
            self._hold_left = self._hold
            return Change(back, 0.0, (
                f"key rate back from {describe(before)} to {describe(back)}: the provider admitted no more "
                f"({describe(stats.admitted)}); next probe in {self._hold} round(s) of {self._span:g} s"))
        self._hold = 1
        if self._rate is None:
            return None  # the probe reached the configured rate
        return self._probe(stats)
