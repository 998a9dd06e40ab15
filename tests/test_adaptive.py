"""The per-key rate adapter as a pure policy: sends, 429s, successes and a fake clock in, a rate out.

Sends are fed in bursts at whole seconds so that the measured rate is an exact number: N sends at each
of t = 1 … 8 measured at t = 9 is 8·N requests over the 8 s since the oldest of them.
"""

from __future__ import annotations

import pytest

from batchrun.adaptive import MIN_SPAN, RateAdapter, describe


def burst_sends(adapter: RateAdapter, per_second: int, start: int = 1, end: int = 8) -> None:
    for second in range(start, end + 1):
        for _ in range(per_second):
            adapter.sent(float(second))


def lowered(configured: float | None = 20.0, per_second: int = 20, **kwargs: float) -> RateAdapter:
    """An adapter lowered at t = 9 after sending `per_second` a second from t = 1 to 8."""
    adapter = RateAdapter(configured, **kwargs)  # type: ignore[arg-type]
    burst_sends(adapter, per_second)
    assert adapter.rate_limited(9.0) is None
    assert adapter.rate_limited(9.0) is not None
    return adapter


# --- describe ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "text"), [
    (20.0, "20/s"), (20, "20/s"), (11.25, "11.2/s"), (11.2500001, "11.3/s"), (15.0, "15/s"),
    (2.5, "2.5/s"), (0.05, "0.05/s"), (0.123456, "0.123/s"), (100.0, "100/s"), (1234.5, "1230/s"),
    (99.96, "100/s"), (None, "no limit"),
])
def test_describe_uses_up_to_three_significant_digits(rate: float | None, text: str) -> None:
    assert describe(rate) == text


# --- measuring --------------------------------------------------------------------------------------


def test_starts_unadapted() -> None:
    adapter = RateAdapter(20.0)
    assert adapter.configured == 20.0
    assert adapter.adapted is None
    assert adapter.effective == 20.0
    assert adapter.span == MIN_SPAN == 10.0
    assert adapter.lowerings == 0
    assert RateAdapter(None).effective is None


def test_span_is_the_period_when_that_is_longer_than_ten_seconds() -> None:
    assert RateAdapter(600 / 60, period=60.0).span == 60.0
    assert RateAdapter(20.0, period=0.5).span == 10.0


def test_measured_rate_over_the_last_span() -> None:
    adapter = RateAdapter(None)
    assert adapter.measured(0.0) is None
    burst_sends(adapter, 20)
    assert adapter.measured(9.0) == 20.0           # 160 sends since t = 1
    assert adapter.measured(10.0) == 160 / 9       # the oldest burst is 9 s old
    assert adapter.measured(11.0) == 140 / 9       # the burst at t = 1 left the span at exactly 11
    assert adapter.measured(17.5) == 20 / 9.5      # only the burst at t = 8 is left
    assert adapter.measured(18.0) is None          # and it leaves at exactly one span


def test_a_burst_counts_per_period_not_per_instant() -> None:
    adapter = RateAdapter(None)
    for _ in range(40):
        adapter.sent(100.0)
    assert adapter.measured(100.1) == 40.0


def test_an_idle_start_of_the_span_does_not_dilute_the_rate() -> None:
    adapter = RateAdapter(None)
    adapter.sent(0.0)
    for tenth in range(20):                           # 10/s from t = 20 to 21.9
        adapter.sent(20.0 + tenth / 10)
    assert adapter.measured(22.0) == pytest.approx(10.0)


# --- lowering ---------------------------------------------------------------------------------------


def test_a_single_429_does_not_lower() -> None:
    adapter = RateAdapter(20.0)
    burst_sends(adapter, 20)
    assert adapter.rate_limited(9.0) is None
    assert adapter.adapted is None
    assert adapter.effective == 20.0
    # another success changes nothing either
    assert adapter.succeeded(9.5) is None


def test_two_429s_within_the_span_lower_the_rate() -> None:
    adapter = RateAdapter(20.0)
    burst_sends(adapter, 15)                          # 15/s actually sent
    assert adapter.rate_limited(8.5) is None
    assert adapter.rate_limited(9.0) == "key rate lowered from 20/s to 11.2/s after repeated 429s"
    assert adapter.adapted == 0.75 * 15.0
    assert adapter.effective == 11.25
    assert adapter.lowerings == 1


def test_lowering_starts_from_the_configured_rate_when_more_was_sent() -> None:
    adapter = lowered(configured=12.0, per_second=20)
    assert adapter.adapted == 9.0


def test_two_429s_further_apart_than_the_span_do_not_lower() -> None:
    adapter = RateAdapter(20.0)
    burst_sends(adapter, 20, start=1, end=20)
    assert adapter.rate_limited(5.0) is None
    assert adapter.rate_limited(15.0) is None         # exactly one span later: the first one is gone
    assert adapter.adapted is None
    assert adapter.rate_limited(24.999) is not None   # within a span of the one at 15
    assert adapter.adapted is not None


def test_lower_after_is_configurable() -> None:
    adapter = RateAdapter(20.0, lower_after=3)
    burst_sends(adapter, 20)
    assert adapter.rate_limited(9.0) is None
    assert adapter.rate_limited(9.0) is None
    assert adapter.rate_limited(9.0) is not None


def test_no_second_lowering_within_a_span_of_the_first() -> None:
    adapter = lowered()                               # at t = 9, to 15/s
    assert adapter.adapted == 15.0
    burst_sends(adapter, 15, start=9, end=19)
    for now in (9.0, 9.5, 12.0, 18.999):
        assert adapter.rate_limited(now) is None      # answers to requests sent at the old rate
    assert adapter.adapted == 15.0
    # from one span after the lowering, 429s count again; those of the blocked span do not
    assert adapter.rate_limited(19.0) is None
    assert adapter.rate_limited(19.5) == "key rate lowered from 15/s to 11.2/s after repeated 429s"
    assert adapter.adapted == 0.75 * 15.0
    assert adapter.lowerings == 2


def test_unconfigured_key_is_lowered_relative_to_what_it_sent() -> None:
    adapter = lowered(configured=None, per_second=20)
    assert adapter.adapted == 15.0
    assert adapter.effective == 15.0


def test_unconfigured_message_names_the_measured_rate() -> None:
    adapter = RateAdapter(None)
    burst_sends(adapter, 8)
    adapter.rate_limited(9.0)
    assert adapter.rate_limited(9.0) == "key rate lowered from no limit (8/s sent) to 6/s after repeated 429s"


def test_unconfigured_key_without_sends_is_not_lowered() -> None:
    adapter = RateAdapter(None)
    assert adapter.rate_limited(1.0) is None
    assert adapter.rate_limited(1.0) is None
    assert adapter.effective is None


def test_lowering_stops_at_the_floor() -> None:
    adapter = RateAdapter(0.06)
    adapter.sent(1.0)
    adapter.rate_limited(1.5)
    assert adapter.rate_limited(2.0) == "key rate lowered from 0.06/s to 0.05/s after repeated 429s"
    assert adapter.adapted == 0.05
    adapter.sent(12.0)
    adapter.rate_limited(12.5)
    assert adapter.rate_limited(13.0) is None         # already at the floor: nothing changes
    assert adapter.adapted == 0.05
    assert adapter.lowerings == 1


def test_floor_is_configurable() -> None:
    adapter = lowered(configured=1.0, per_second=1, floor=0.9)
    assert adapter.adapted == 0.9


# --- raising ----------------------------------------------------------------------------------------


def test_raises_after_a_quiet_span_by_a_step_of_the_configured_rate() -> None:
    adapter = lowered(configured=20.0, per_second=10)  # 0.75 × 10 = 7.5; step 0.05 × 20 = 1
    assert adapter.adapted == 7.5
    assert adapter.succeeded(18.999) is None
    assert adapter.succeeded(19.0) == "key rate raised from 7.5/s to 8.5/s"
    assert adapter.adapted == 8.5
    # at most once per span
    assert adapter.succeeded(19.0) is None
    assert adapter.succeeded(28.999) is None
    assert adapter.succeeded(29.0) == "key rate raised from 8.5/s to 9.5/s"


def test_a_429_restarts_the_quiet_span_even_when_it_does_not_lower() -> None:
    adapter = lowered(configured=20.0, per_second=10)  # lowered at 9 to 7.5
    assert adapter.rate_limited(15.0) is None         # in the blocked span: no lowering
    assert adapter.succeeded(19.0) is None            # but not quiet since 15
    assert adapter.succeeded(25.0) == "key rate raised from 7.5/s to 8.5/s"
    assert adapter.rate_limited(30.0) is None         # a single 429 after the block: no lowering
    assert adapter.adapted == 8.5
    assert adapter.succeeded(35.0) is None
    assert adapter.succeeded(39.999) is None
    assert adapter.succeeded(40.0) == "key rate raised from 8.5/s to 9.5/s"


def test_raises_back_to_the_configured_rate_and_ends_the_adaptation() -> None:
    adapter = lowered(configured=20.0, per_second=20)  # 15/s
    messages = [adapter.succeeded(9.0 + 10 * step) for step in range(1, 6)]
    assert messages == [
        "key rate raised from 15/s to 16/s",
        "key rate raised from 16/s to 17/s",
        "key rate raised from 17/s to 18/s",
        "key rate raised from 18/s to 19/s",
        "key rate back to 20/s",
    ]
    assert adapter.adapted is None
    assert adapter.effective == 20.0
    assert adapter.succeeded(100.0) is None


def test_the_last_step_never_overshoots_the_configured_rate() -> None:
    adapter = lowered(configured=20.0, per_second=20, raise_step=0.15)  # 15 → 18 → (21) 20
    assert adapter.succeeded(19.0) == "key rate raised from 15/s to 18/s"
    assert adapter.succeeded(29.0) == "key rate back to 20/s"
    assert adapter.effective == 20.0


def test_unconfigured_key_is_raised_back_to_no_limit() -> None:
    adapter = lowered(configured=None, per_second=20)  # target 20/s (sent), at 15/s; step 1/s
    for step in range(1, 5):
        assert adapter.succeeded(9.0 + 10 * step) is not None
    assert adapter.adapted == 19.0
    assert adapter.succeeded(59.0) == "key rate back to 20/s (no limit)"
    assert adapter.adapted is None
    assert adapter.effective is None


def test_the_raise_target_is_the_rate_before_the_first_lowering() -> None:
    adapter = lowered(configured=None, per_second=20)  # 15/s, target 20/s
    burst_sends(adapter, 15, start=19, end=26)
    adapter.rate_limited(27.0)
    assert adapter.rate_limited(27.0) == "key rate lowered from 15/s to 11.2/s after repeated 429s"
    # steps are still 5 % of 20/s, not of the 15/s sent before the second lowering
    assert adapter.succeeded(37.0) == "key rate raised from 11.2/s to 12.2/s"
    assert adapter.adapted == 12.25


def test_a_new_adaptation_after_the_end_measures_afresh() -> None:
    adapter = lowered(configured=None, per_second=20)
    for step in range(1, 6):
        adapter.succeeded(9.0 + 10 * step)
    assert adapter.adapted is None
    burst_sends(adapter, 8, start=101, end=108)
    adapter.rate_limited(109.0)
    message = adapter.rate_limited(109.0)
    assert message == "key rate lowered from no limit (8/s sent) to 6/s after repeated 429s"
    assert adapter.succeeded(119.0) == "key rate raised from 6/s to 6.4/s"  # 5 % of 8/s


def test_messages_come_exactly_when_the_effective_rate_changes() -> None:
    adapter = RateAdapter(20.0)
    burst_sends(adapter, 20)
    seen = []
    events = [("429", 9.0), ("ok", 9.1), ("429", 9.2), ("ok", 12.0), ("429", 13.0), ("ok", 19.2),
              ("ok", 20.0), ("429", 25.0), ("ok", 30.0), ("ok", 35.0)]
    for kind, now in events:
        before = adapter.effective
        message = adapter.rate_limited(now) if kind == "429" else adapter.succeeded(now)
        assert (message is not None) == (adapter.effective != before), (kind, now)
        seen.append(message is not None)
    assert seen == [False, False, True, False, False, False, False, False, False, True]


@pytest.mark.parametrize("kwargs", [
    {"configured": 0.0}, {"configured": -1.0}, {"configured": 1.0, "period": 0.0},
    {"configured": 1.0, "lower_after": 0}, {"configured": 1.0, "factor": 1.0},
    {"configured": 1.0, "factor": 0.0}, {"configured": 1.0, "raise_step": 0.0},
    {"configured": 1.0, "floor": 0.0},
])
def test_rejects_unusable_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RateAdapter(**kwargs)  # type: ignore[arg-type]
