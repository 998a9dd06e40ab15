"""The circuit breaker as a pure policy: outcomes and a fake clock in, a concurrency limit out.

No test sleeps: `now` is a number the test chooses, so the timing edges are exact.
"""

from __future__ import annotations

import pytest

from batchrun.breaker import CircuitBreaker


def feed(breaker: CircuitBreaker, outcomes: list[bool], now: float) -> list[str | None]:
    return [breaker.record(failed, now) for failed in outcomes]


def trip(breaker: CircuitBreaker, now: float) -> str:
    """Trip the breaker from a fresh window with min_samples failures in a row."""
    messages = feed(breaker, [True] * 10, now)
    assert messages[:-1] == [None] * 9
    assert messages[-1] is not None
    return messages[-1]


def test_starts_closed_at_full_concurrency() -> None:
    breaker = CircuitBreaker(32)
    assert breaker.limit == 32
    assert breaker.max_concurrency == 32
    assert not breaker.tripped
    assert breaker.failure_share == 0.0
    assert breaker.trips == 0


def test_successes_and_non_transient_errors_keep_it_closed() -> None:
    breaker = CircuitBreaker(32)
    assert feed(breaker, [False] * 200, now=5.0) == [None] * 200
    assert breaker.limit == 32
    assert not breaker.tripped
    assert breaker.trips == 0


def test_trips_at_exactly_the_threshold() -> None:
    breaker = CircuitBreaker(32)
    messages = feed(breaker, [True] * 5 + [False] * 5, now=1.0)
    assert messages[:9] == [None] * 9
    assert messages[9] == ("5 of the last 10 requests failed (the provider is overloaded or down); "
                           "concurrency 32 → 8 for 2 s")
    assert breaker.limit == 8
    assert breaker.tripped
    assert breaker.trips == 1


def test_does_not_trip_just_below_the_threshold() -> None:
    breaker = CircuitBreaker(32)
    assert feed(breaker, [True] * 4 + [False] * 6, now=1.0) == [None] * 10
    assert breaker.failure_share == pytest.approx(0.4)

    breaker = CircuitBreaker(32)
    # 9 of 19, then 9 of 20: still below half
    assert feed(breaker, [False] * 10 + [True] * 9 + [False], now=1.0) == [None] * 20
    assert breaker.failure_share == pytest.approx(0.45)
    assert breaker.limit == 32
    assert breaker.trips == 0
    # the next failure pushes the oldest success out: 10 of 20
    assert breaker.record(True, now=1.0) is not None
    assert breaker.limit == 8


def test_needs_min_samples_before_it_can_trip() -> None:
    breaker = CircuitBreaker(32)
    assert feed(breaker, [True] * 9, now=1.0) == [None] * 9
    assert breaker.failure_share == 1.0
    assert breaker.limit == 32
    assert breaker.record(True, now=1.0) is not None
    assert breaker.limit == 8


def test_window_slides_over_the_last_outcomes() -> None:
    breaker = CircuitBreaker(32)
    feed(breaker, [False] * 20, now=1.0)
    # the 10th failure makes it 10 of the last 20
    assert feed(breaker, [True] * 9, now=1.0) == [None] * 9
    message = breaker.record(True, now=1.0)
    assert message is not None and message.startswith("10 of the last 20 requests failed")
    assert breaker.limit == 8


def test_below_min_samples_no_share_trips_even_far_above_the_threshold() -> None:
    breaker = CircuitBreaker(32, window=20, min_samples=20)
    assert feed(breaker, [True] * 19, now=0.0) == [None] * 19
    assert breaker.record(False, now=0.0) == (
        "19 of the last 20 requests failed (the provider is overloaded or down); concurrency 32 → 8 for 2 s")


def test_brief_example_message() -> None:
    breaker = CircuitBreaker(32, window=20, min_samples=20)
    messages = feed(breaker, [True] * 14 + [False] * 6, now=0.0)
    assert messages[:-1] == [None] * 19
    assert messages[-1] == ("14 of the last 20 requests failed (the provider is overloaded or down); "
                            "concurrency 32 → 8 for 2 s")


def test_window_is_cleared_and_outcomes_in_the_hold_are_ignored() -> None:
    breaker = CircuitBreaker(32)
    trip(breaker, now=10.0)
    assert breaker.failure_share == 0.0
    assert breaker.hold_until == 12.0
    # in-flight failures of the old concurrency: no second trip
    assert feed(breaker, [True] * 50, now=11.999) == [None] * 50
    # and successes in the hold do not ramp up either
    assert feed(breaker, [False] * 50, now=11.999) == [None] * 50
    assert breaker.limit == 8
    assert breaker.trips == 1
    assert breaker.failure_share == 0.0
    # the hold ends at exactly 12.0: from then on outcomes count
    assert feed(breaker, [True] * 9, now=12.0) == [None] * 9
    assert breaker.failure_share == 1.0
    message = breaker.record(True, now=12.0)
    assert message == ("10 of the last 10 requests failed (the provider is overloaded or down); "
                       "concurrency 8 → 2 for 4 s")


def test_repeated_trips_go_down_to_one_and_the_hold_doubles_up_to_the_cap() -> None:
    breaker = CircuitBreaker(32)
    now = 0.0
    expected = [(8, 2.0, "32 → 8"), (2, 4.0, "8 → 2"), (1, 8.0, "2 → 1"), (1, 16.0, "stays at 1"),
                (1, 30.0, "stays at 1"), (1, 30.0, "stays at 1")]
    for number, (limit, hold, change) in enumerate(expected, start=1):
        message = trip(breaker, now)
        assert message == ("10 of the last 10 requests failed (the provider is overloaded or down); "
                           f"concurrency {change} for {hold:g} s")
        assert breaker.limit == limit
        assert breaker.hold_until == now + hold
        assert breaker.trips == number
        assert breaker.tripped
        now += hold


def test_hold_and_cap_are_configurable() -> None:
    breaker = CircuitBreaker(1000, hold=1.5, max_hold=5.0)
    holds = []
    now = 0.0
    for _ in range(4):
        trip(breaker, now)
        holds.append(breaker.hold_until - now)
        now = breaker.hold_until
    assert holds == [1.5, 3.0, 5.0, 5.0]
    assert breaker.limit == 1000 // 4 // 4 // 4 // 4


def test_ramps_back_up_after_the_hold_doubling_to_the_maximum() -> None:
    breaker = CircuitBreaker(32)
    trip(breaker, now=0.0)
    assert breaker.limit == 8
    assert feed(breaker, [False] * 9, now=2.0) == [None] * 9
    assert breaker.limit == 8
    assert breaker.record(False, now=2.0) == "requests succeed again; concurrency 8 → 16"
    assert breaker.limit == 16 and breaker.tripped
    # another min_samples since the change are needed
    assert feed(breaker, [False] * 9, now=3.0) == [None] * 9
    assert breaker.record(False, now=3.0) == "requests succeed again; concurrency 16 → 32"
    assert breaker.limit == 32
    assert not breaker.tripped
    # at the maximum: nothing more to say
    assert feed(breaker, [False] * 30, now=4.0) == [None] * 30
    assert breaker.trips == 1


def test_ramp_up_is_capped_at_the_maximum() -> None:
    breaker = CircuitBreaker(10)
    trip(breaker, now=0.0)
    assert breaker.limit == 2
    feed(breaker, [False] * 10, now=2.0)
    assert breaker.limit == 4
    feed(breaker, [False] * 10, now=2.0)
    assert breaker.limit == 8
    messages = feed(breaker, [False] * 10, now=2.0)
    assert messages[-1] == "requests succeed again; concurrency 8 → 10"
    assert breaker.limit == 10
    assert not breaker.tripped


def test_ramp_up_needs_fewer_than_half_the_trip_share_failed() -> None:
    breaker = CircuitBreaker(32)
    trip(breaker, now=0.0)
    # 3 of 10 failed = 0.3, not below 0.25: no ramp-up (and far from a trip)
    assert feed(breaker, [True] * 3 + [False] * 7, now=2.0) == [None] * 10
    assert breaker.limit == 8
    # 3 of 11, 3 of 12 = 0.25: still not below
    assert feed(breaker, [False] * 2, now=2.0) == [None, None]
    # 3 of 13 < 0.25
    assert breaker.record(False, now=2.0) == "requests succeed again; concurrency 8 → 16"


def test_ramp_up_with_a_few_failures_below_half_the_trip_share() -> None:
    breaker = CircuitBreaker(32)
    trip(breaker, now=0.0)
    messages = feed(breaker, [True] * 2 + [False] * 8, now=2.0)
    assert messages == [None] * 9 + ["requests succeed again; concurrency 8 → 16"]


def test_ramp_up_share_looks_at_the_last_window_since_the_change() -> None:
    breaker = CircuitBreaker(32)
    trip(breaker, now=0.0)
    # a bad start after the hold (4 of 10), then only successes: once the failures are more than
    # `window` outcomes ago they no longer hold the ramp-up back
    feed(breaker, [True] * 4 + [False] * 6, now=2.0)
    assert breaker.limit == 8
    messages = feed(breaker, [False] * 7, now=2.0)
    # 4 of 17 = 0.235 < 0.25: ramps on the 7th
    assert messages == [None] * 6 + ["requests succeed again; concurrency 8 → 16"]


def test_no_ramp_up_during_the_hold_however_many_successes() -> None:
    breaker = CircuitBreaker(32)
    trip(breaker, now=0.0)
    feed(breaker, [False] * 100, now=1.0)
    assert breaker.limit == 8
    # the successes in the hold did not count towards the next min_samples
    assert feed(breaker, [False] * 9, now=2.5) == [None] * 9
    assert breaker.record(False, now=2.5) is not None
    assert breaker.limit == 16


def test_consecutive_trips_keep_doubling_until_the_maximum_is_reached_again() -> None:
    breaker = CircuitBreaker(32)
    trip(breaker, now=0.0)                      # hold 2 s
    feed(breaker, [False] * 10, now=2.0)        # 8 → 16, not yet the maximum
    assert breaker.limit == 16
    message = trip(breaker, now=3.0)
    assert message.endswith("concurrency 16 → 4 for 4 s")
    assert breaker.hold_until == 7.0
    feed(breaker, [False] * 30, now=7.0)        # 4 → 8 → 16 → 32
    assert breaker.limit == 32
    message = trip(breaker, now=8.0)
    assert message.endswith("concurrency 32 → 8 for 2 s")  # the streak ended at the maximum
    assert breaker.hold_until == 10.0
    assert breaker.trips == 3


def test_trips_while_ramping_up() -> None:
    breaker = CircuitBreaker(32)
    trip(breaker, now=0.0)
    feed(breaker, [False] * 10, now=2.0)
    assert breaker.limit == 16
    # the trip window was not cleared by the ramp-up: 10 successes + 10 failures = half of 20
    messages = feed(breaker, [True] * 10, now=2.5)
    assert messages[:9] == [None] * 9
    assert messages[9] == ("10 of the last 20 requests failed (the provider is overloaded or down); "
                           "concurrency 16 → 4 for 4 s")


def test_outcomes_of_requests_started_before_the_trip_are_ignored() -> None:
    breaker = CircuitBreaker(32)
    trip(breaker, now=10.0)
    # slow timeouts of requests sent at the old concurrency arrive after the hold
    assert [breaker.record(True, 15.0, started=9.5) for _ in range(30)] == [None] * 30
    assert breaker.failure_share == 0.0
    assert breaker.limit == 8
    # a request sent at (or after) the trip counts
    messages = [breaker.record(True, 15.0, started=10.0) for _ in range(10)]
    assert messages[-1] is not None and messages[-1].endswith("concurrency 8 → 2 for 4 s")


def test_started_is_only_compared_with_the_last_trip_not_with_ramp_ups() -> None:
    breaker = CircuitBreaker(32)
    trip(breaker, now=0.0)
    feed(breaker, [False] * 10, now=2.0)
    assert breaker.limit == 16
    # sent after the trip but before the ramp-up: still evidence
    messages = [breaker.record(False, 3.0, started=1.0) for _ in range(10)]
    assert messages[-1] == "requests succeed again; concurrency 16 → 32"


def test_a_single_slot_breaker_never_counts_as_tripped_but_still_holds() -> None:
    breaker = CircuitBreaker(1)
    message = trip(breaker, now=0.0)
    assert message.endswith("concurrency stays at 1 for 2 s")
    assert breaker.limit == 1
    assert not breaker.tripped
    assert breaker.trips == 1
    assert breaker.hold_until == 2.0


def test_zero_hold_can_trip_again_at_once() -> None:
    breaker = CircuitBreaker(64, hold=0.0, max_hold=0.0)
    trip(breaker, now=0.0)
    message = trip(breaker, now=0.0)
    assert message.endswith("concurrency 16 → 4 for 0 s")


@pytest.mark.parametrize("kwargs", [
    {"max_concurrency": 0},
    {"max_concurrency": 4, "window": 0},
    {"max_concurrency": 4, "min_samples": 0},
    {"max_concurrency": 4, "window": 5, "min_samples": 6},
    {"max_concurrency": 4, "trip_share": 0.0},
    {"max_concurrency": 4, "trip_share": 1.5},
    {"max_concurrency": 4, "hold": -1.0},
    {"max_concurrency": 4, "hold": 10.0, "max_hold": 5.0},
])
def test_rejects_unusable_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(**kwargs)  # type: ignore[arg-type]
