"""The per-key rate controller as a pure object: answers and a fake clock in, a rate out.

Most cases drive it with a small model of a provider (`Provider`): a sliding-window limit per key and
429s at random that no rate causes, both on a fake clock. The key sends at the controller's rate, pauses
when told, and every answer comes back `LATENCY` later. Each case asserts the rate the controller
settles at, and what the provider admitted.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

import pytest

from batchrun.adaptive import MIN_SPAN, RateController, describe

LATENCY = 0.2


@dataclass
class Provider:
    """A key's quota at a provider: `limit` requests per sliding `period`, and `noise` of the answers
    429 at random (not counted in the window). `limit` may change mid-run."""

    limit: float
    period: float = 1.0
    noise: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    admitted: deque[float] = field(default_factory=deque)

    def answer(self, now: float) -> bool:
        """True for a 429."""
        if self.rng.random() < self.noise:
            return True
        while self.admitted and self.admitted[0] <= now - self.period:
            self.admitted.popleft()
        if len(self.admitted) >= self.limit * self.period:
            return True
        self.admitted.append(now)
        return False


@dataclass
class Trace:
    sends: list[tuple[float, bool]] = field(default_factory=list)  # (time, 429)
    changes: list[str] = field(default_factory=list)

    def admitted_rate(self, start: float, end: float) -> float:
        return sum(1 for t, limited in self.sends if start <= t < end and not limited) / (end - start)

    def share_429(self, start: float = 0.0, end: float = float("inf")) -> float:
        window = [limited for t, limited in self.sends if start <= t < end]
        return sum(window) / len(window)


def drive(controller: RateController, provider: Provider, seconds: float, start: float = 0.0,
          trace: Trace | None = None, until_change: bool = False) -> Trace:
    """Send at the controller's rate for `seconds` of fake time; answers arrive LATENCY later."""
    trace = trace or Trace()
    pending: deque[tuple[float, float, bool]] = deque()  # (answer at, sent at, limited)
    now, paused_until = start, start
    while now < start + seconds:
        while pending and pending[0][0] <= now:
            answered_at, sent_at, limited = pending.popleft()
            change = controller.answered(sent_at, answered_at, limited)
            if change is not None:
                trace.changes.append(change.message)
                paused_until = max(paused_until, answered_at + change.pause)
                if until_change:
                    return trace
        rate = controller.effective
        if rate is None:
            break  # no limit any more: nothing left to drive
        if now >= paused_until:
            limited = provider.answer(now)
            trace.sends.append((now, limited))
            pending.append((now + LATENCY, now, limited))
        now += 1.0 / rate
    return trace


# --- describe ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "text"), [
    (20.0, "20/s"), (20, "20/s"), (11.25, "11.2/s"), (11.2500001, "11.3/s"), (15.0, "15/s"),
    (2.5, "2.5/s"), (0.05, "0.05/s"), (0.123456, "0.123/s"), (100.0, "100/s"), (1234.5, "1230/s"),
    (99.96, "100/s"), (None, "no limit"),
])
def test_describe_uses_up_to_three_significant_digits(rate: float | None, text: str) -> None:
    assert describe(rate) == text


def test_starts_at_the_configured_rate() -> None:
    controller = RateController(20.0)
    assert (controller.configured, controller.adapted, controller.effective) == (20.0, None, 20.0)
    assert controller.span == MIN_SPAN == 10.0
    assert RateController(600 / 60, period=60.0).span == 60.0
    assert RateController(None).effective is None


@pytest.mark.parametrize("kwargs", [
    {"configured": 0.0}, {"configured": -1.0}, {"period": 0.0}, {"threshold": 0.0}, {"threshold": 1.0},
    {"early_samples": 1}, {"early_samples": 60}, {"probe_step": 0.0}, {"probe_step": 0.6}, {"max_hold": 0},
])
def test_rejects_nonsense_settings(kwargs: dict[str, float]) -> None:
    args = {"configured": 20.0, **kwargs}
    configured = args.pop("configured")
    with pytest.raises(ValueError):
        RateController(configured, **args)  # type: ignore[arg-type]


# --- the table: what the rate settles at -----------------------------------------------------------------


@pytest.mark.parametrize("noise", [0.05, 0.20])
def test_random_429s_do_not_lower_the_rate_for_good(noise: float) -> None:
    """429s at a share that does not depend on the rate: the key keeps (or goes back to) its
    configured rate. At 20 % — above the 15 % threshold — one lowering is tried, the 429s do not go
    away at the lower rate, and the controller learns they are noise."""
    controller = RateController(20.0)
    trace = drive(controller, Provider(limit=20.0, noise=noise), 300.0)
    assert controller.effective == 20.0, trace.changes
    assert trace.admitted_rate(100, 300) >= 0.97 * 20.0 * (1 - noise) - 0.3
    if noise < controller._threshold:  # noqa: SLF001 - below the threshold nothing is ever tried
        assert trace.changes == []
    else:
        assert len(trace.changes) == 2 and "noise" in trace.changes[1]
        assert controller.noise == pytest.approx(noise, abs=0.06)


@pytest.mark.parametrize("ratio", [0.5, 0.8])
def test_a_real_limit_below_the_configured_one_is_learned(ratio: float) -> None:
    """The key is told 20/s; the provider allows 20·ratio. The rate settles at the real limit (within
    the 5 % probe step), the provider admits ≥ 0.95 of it after the first 10 s, and few answers are 429."""
    controller = RateController(20.0)
    limit = 20.0 * ratio
    trace = drive(controller, Provider(limit=limit), 300.0)
    effective = controller.effective
    assert effective is not None and 0.93 * limit <= effective <= 1.06 * limit, trace.changes
    assert trace.admitted_rate(10, 300) >= 0.95 * limit
    assert trace.share_429(0, 300) <= 0.03
    assert "admitted" in trace.changes[0]


def test_a_real_limit_is_found_at_once_when_nearly_every_answer_is_a_429() -> None:
    """At a quarter of the configured rate, the first lowering comes after a few dozen answers, not
    after a whole 10 s round."""
    controller = RateController(20.0)
    trace = drive(controller, Provider(limit=5.0), 20.0, until_change=True)
    assert controller.effective is not None and controller.effective <= 5.5
    assert len(trace.sends) <= 40


def test_a_real_limit_under_random_429s_is_learned_and_the_noise_is_not_taken_for_it() -> None:
    controller = RateController(20.0)
    trace = drive(controller, Provider(limit=10.0, noise=0.05), 300.0)
    assert controller.effective is not None and 9.0 <= controller.effective <= 10.6, trace.changes
    assert trace.admitted_rate(10, 300) >= 0.9 * 10.0 * 0.95


def test_a_limit_the_provider_raises_mid_run_is_found_again() -> None:
    controller = RateController(20.0)
    provider = Provider(limit=10.0)
    trace = drive(controller, provider, 100.0)
    assert controller.effective is not None and controller.effective <= 10.6
    provider.limit = 25.0  # above the configured 20/s now
    drive(controller, provider, 600.0, start=100.0, trace=trace)
    assert controller.effective == 20.0, trace.changes[-3:]
    assert trace.admitted_rate(600, 700) >= 0.97 * 20.0


def test_probing_climbs_at_most_five_percent_a_round() -> None:
    controller = RateController(20.0)
    provider = Provider(limit=10.0)
    trace = drive(controller, provider, 60.0)
    provider.limit = 20.0
    before = len(trace.changes)
    drive(controller, provider, 400.0, start=60.0, trace=trace)
    raises = [message for message in trace.changes[before:] if "raised" in message]
    assert raises
    for message in raises:
        old, new = (float(part.split("/")[0]) for part in message.split("from ")[1].split(" (")[0].split(" to "))
        assert new <= old * 1.05 * 1.01  # as printed: 3 significant digits


def test_a_lowering_pauses_the_key_for_one_period_the_provider_still_counts() -> None:
    controller = RateController(10.0, period=60.0)
    change = None
    now = 0.0
    while change is None:
        change = controller.answered(now, now + 0.1, limited=now > 30)
        now += 0.1
    assert change.pause == 60.0
    assert change.rate is not None and change.rate < 10.0


def test_answers_to_requests_sent_before_a_change_do_not_count_against_the_new_rate() -> None:
    controller = RateController(20.0)
    change = None
    now = 0.0
    while change is None:  # every answer a 429: lowered early
        change = controller.answered(now, now + 0.2, limited=True)
        now += 0.05
    lowered = controller.effective
    for _ in range(500):  # late 429s answering requests sent at the old rate
        assert controller.answered(0.0, now, limited=True) is None
    assert controller.effective == lowered


def test_a_key_without_a_configured_rate_learns_one_and_climbs_back_to_no_limit() -> None:
    controller = RateController(None)
    provider = Provider(limit=5.0)
    trace = Trace()
    now = 0.0
    # no configured rate: the key sends as fast as its jobs come, 20/s here
    while controller.effective is None and now < 10:
        limited = provider.answer(now)
        trace.sends.append((now, limited))
        change = controller.answered(now, now + 0.2, limited)
        if change:
            trace.changes.append(change.message)
        now += 0.05
    assert controller.effective is not None and controller.effective <= 5.5
    assert "no limit" in trace.changes[0]
    provider.limit = 100.0
    drive(controller, provider, 900.0, start=now, trace=trace)
    assert controller.effective is None, trace.changes[-2:]
    assert trace.changes[-1].endswith("(no limit)")


def test_429s_saying_the_window_is_spent_are_a_limit_whatever_their_share() -> None:
    """Three 429s with `x-ratelimit-remaining-*: 0` in a round: the provider names the cause, so the
    rate goes down to what it admitted though the share (10 %) is below the 15 % threshold."""
    controller = RateController(30.0)
    change = None
    for i in range(30):
        limited = i % 10 == 9
        change = controller.answered(i / 30, i / 30 + 0.5, limited, exhausted=limited) or change
    assert change is not None and change.rate is not None
    assert change.rate == pytest.approx(29 / 1.0 * 0.9, rel=0.01)


def test_random_429s_without_the_header_are_not_taken_for_a_limit_below_the_threshold() -> None:
    controller = RateController(30.0)
    for i in range(300):
        assert controller.answered(i / 30, i / 30 + 0.5, limited=i % 10 == 9) is None
