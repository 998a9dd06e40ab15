"""API keys: parsing, safe naming, and each key's limiters and state during a run.

The token window runs on a fake clock that moves only when a reservation waits (`FakeClock`), so its
tests check exact times. The lane's request limiters (aiolimiter's pacer and the `RequestWindow`) run
on short real windows (0.2–0.5 s) and check the real `time.monotonic()` stamps of what was let
through: no sliding window may ever hold more than the limit; how long it took is bounded only far
from the expected value (a busy machine is only ever later).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from conftest import FakeClock

from batchrun.errors import ConfigError
from batchrun.keyid import key_id
from batchrun.keys import JITTER_SLACK, ApiKey, KeyLane, KeyLimits, RequestWindow, TokenWindow, lanes_for, parse_keys, read_keys_file
from batchrun.units import Rate

SECRET = "Zx81secretAAAAAAAAAAAAAAAAAAAAAA"
OTHER_SECRET = "Qv27secretBBBBBBBBBBBBBBBBBBBBBB"


T = TypeVar("T")


def at_once(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to its end without letting it wait: fails if it has to sleep even once.

    This checks "let through immediately" without a wall-clock threshold that a busy machine could break.
    """
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise AssertionError("had to wait")


def max_in_any_window(stamps: Sequence[float], amounts: Sequence[float], period: float) -> float:
    """The largest total of `amounts` whose stamps fall in one half-open window [t, t + period)."""
    events = sorted(zip(stamps, amounts))
    return max(sum(a for t, a in events if start <= t < start + period) for start, _ in events)


# --- parse_keys ----------------------------------------------------------------------------------------


def test_parse_keys_splits_on_commas_and_newlines_and_skips_comments_and_blanks() -> None:
    text = (
        "# production keys\n"
        f"  a:{SECRET}1 , b:{SECRET}2\n"
        "\n"
        "   \n"
        f"c:{SECRET}3   # the backup key, d:{SECRET}4 is commented out\n"
        f"\td:{SECRET}5\t\r\n"
        ",,\n"
    )
    keys = parse_keys(text, "keys.txt")
    assert [key.id for key in keys] == ["a", "b", "c", "d"]
    assert [key.token for key in keys] == [f"a:{SECRET}1", f"b:{SECRET}2", f"c:{SECRET}3", f"d:{SECRET}5"]


def test_parse_keys_of_nothing_is_no_keys() -> None:
    assert parse_keys("", "env") == []
    assert parse_keys("# only a comment\n\n", "env") == []


def test_a_key_with_an_access_id_is_named_by_it() -> None:
    assert key_id(f"team-a:{SECRET}") == "team-a"
    assert parse_keys(f"team-a:{SECRET}", "env")[0].id == "team-a"


@pytest.mark.parametrize("raw", [f"sk-{SECRET}", f":{SECRET}", f"{SECRET}:"])
def test_any_other_key_is_named_by_a_fingerprint_that_does_not_contain_it(raw: str) -> None:
    name = key_id(raw)
    assert name.startswith("key-")
    assert len(name) == len("key-") + 10
    assert SECRET not in name
    assert SECRET[:6] not in name
    assert key_id(raw) == name  # stable across runs
    assert parse_keys(raw, "env")[0].id == name


def test_different_keys_get_different_fingerprints() -> None:
    assert key_id(f"sk-{SECRET}") != key_id(f"sk-{OTHER_SECRET}")


def test_whitespace_inside_a_key_names_the_key_id_and_not_the_secret() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_keys(f"k1:{SECRET} {OTHER_SECRET}", "keys.txt")
    message = str(caught.value)
    assert message.startswith("keys.txt: key k1 has whitespace inside it")
    assert SECRET not in message
    assert OTHER_SECRET not in message


def test_whitespace_inside_a_key_without_access_id_is_named_by_fingerprint() -> None:
    raw = f"sk-{SECRET}\t{OTHER_SECRET}"
    with pytest.raises(ConfigError) as caught:
        parse_keys(raw, "BATCHRUN_API_KEYS")
    message = str(caught.value)
    assert f"key {key_id(raw)} has whitespace" in message
    assert SECRET not in message
    assert OTHER_SECRET not in message


def test_the_same_key_twice_is_kept_once() -> None:
    keys = parse_keys(f"k1:{SECRET}\nk1:{SECRET}, k1:{SECRET}", "env")
    assert keys == [ApiKey("k1", f"k1:{SECRET}")]


def test_two_different_keys_with_the_same_id_are_an_error_without_secrets() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_keys(f"k1:{SECRET}\nk1:{OTHER_SECRET}", "keys.txt")
    assert str(caught.value) == "keys.txt: two different keys share the id k1"
    assert caught.value.exit_code == 2


def test_repr_and_str_of_a_key_never_show_the_secret() -> None:
    for key in (ApiKey("k1", f"k1:{SECRET}"), parse_keys(f"sk-{SECRET}", "env")[0]):
        for text in (repr(key), str(key), f"{key}", f"{key!r}", repr([key]), repr((key,)), repr({key.id: key})):
            assert SECRET not in text
            assert key.id in text
    assert repr(ApiKey("k1", f"k1:{SECRET}")) == "ApiKey('k1')"
    assert str(ApiKey("k1", f"k1:{SECRET}")) == "k1"


def test_read_keys_file_reads_one_key_a_line(tmp_path: Path) -> None:
    path = tmp_path / "keys.txt"
    path.write_text(f"# comment\nk1:{SECRET}\nk2:{OTHER_SECRET}\n", encoding="utf-8")
    assert [key.id for key in read_keys_file(str(path))] == ["k1", "k2"]


def test_read_keys_file_names_the_file_in_a_parse_error(tmp_path: Path) -> None:
    path = tmp_path / "keys.txt"
    path.write_text(f"k1:{SECRET} x\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=f"^{path}: key k1 has whitespace"):
        read_keys_file(str(path))


def test_read_keys_file_of_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "missing.txt"
    with pytest.raises(ConfigError) as caught:
        read_keys_file(str(path))
    assert str(caught.value) == f"cannot read keys file {path}: No such file or directory"


# --- TokenWindow ---------------------------------------------------------------------------------------


#: a window of the token tests, as the provider counts it and as the TokenWindow keeps it (with slack)
TOKENS = Rate(100, 0.3)
SPAN = TOKENS.period + JITTER_SLACK


def token_window(clock: FakeClock) -> TokenWindow:
    return TokenWindow(TOKENS, clock=clock, sleep=clock.sleep)


def approx(expected: Any) -> Any:
    """Fake seconds, equal but for float rounding (which can add one of the window's 1 ms re-checks)."""
    return pytest.approx(expected, abs=2e-3)


async def test_token_window_never_holds_more_than_the_limit_in_any_window() -> None:
    clock = FakeClock()
    window = token_window(clock)
    amounts = [60, 30, 30, 50, 10, 40]
    start = clock()
    # 60 + 30 fit at once; the third has to wait for a full window
    entries = [at_once(window.reserve(60)), at_once(window.reserve(30))]
    entries += [await window.reserve(amount) for amount in amounts[2:]]
    stamps = [entry[0] for entry in entries]
    assert max_in_any_window(stamps, amounts, TOKENS.period) <= 100
    # 220 tokens need three windows: 60 + 30, then 30 + 50 + 10 one span later, then 40 one more span later
    assert [t - start for t in stamps] == approx([0, 0, SPAN, SPAN, SPAN, 2 * SPAN])


async def test_token_window_holds_under_concurrent_reservations() -> None:
    clock = FakeClock()
    window = token_window(clock)
    start = clock()
    entries = await asyncio.gather(*(window.reserve(25) for _ in range(8)))
    stamps = [e[0] - start for e in entries]
    assert max_in_any_window(stamps, [25] * 8, TOKENS.period) <= 100
    assert sorted(stamps) == approx([0] * 4 + [SPAN] * 4)  # 200 tokens: exactly two windows


def test_token_window_delay_is_the_time_until_the_oldest_entry_leaves() -> None:
    window = TokenWindow(TOKENS, slack=0.0)
    window.take(70, 10.0)
    window.take(20, 10.1)
    assert window.delay(10, 10.2) == 0.0  # 100 fits
    assert window.delay(11, 10.2) == pytest.approx(0.1)  # until the 70 of 10.0 leaves at 10.3
    assert window.delay(11, 10.3) == 0.0
    assert window.delay(500, 10.3) == pytest.approx(0.1)  # too big for the window: waits to go alone
    assert window.delay(500, 10.4) == 0.0


async def test_settling_below_the_estimate_frees_room_at_once() -> None:
    window = TokenWindow(Rate(100, 0.3))
    entry = await window.reserve(90)
    window.settle(entry, 10)
    at_once(window.reserve(80))  # 10 + 80 fits
    with pytest.raises(AssertionError, match="had to wait"):
        at_once(window.reserve(11))  # 10 + 80 + 11 does not


async def test_settling_above_the_estimate_makes_the_next_reservation_wait() -> None:
    clock = FakeClock()
    window = token_window(clock)
    first = await window.reserve(10)
    window.settle(first, 90)
    second = await window.reserve(20)  # 90 + 20 does not fit until the first leaves the window
    assert second[0] - first[0] == approx(SPAN)
    assert first[1] == 90


async def test_settling_an_entry_that_left_the_window_does_not_free_room_twice() -> None:
    clock = FakeClock()
    window = token_window(clock)
    first = await window.reserve(100)
    second = await window.reserve(10)  # waits until `first` has left the window
    assert second[0] - first[0] == approx(SPAN)
    window.settle(first, 0)   # too late: it no longer counts
    third = await window.reserve(91)  # 10 + 91 > 100: must wait for the 10 to leave
    assert third[0] - second[0] == approx(SPAN)


async def test_a_single_oversized_reservation_passes_alone() -> None:
    clock = FakeClock()
    window = token_window(clock)
    big = at_once(window.reserve(250))  # not "never"
    small = await window.reserve(1)  # but nothing rides along with it
    assert small[0] - big[0] == approx(SPAN)


# --- request limits: pacer + RequestWindow ---------------------------------------------------------------


async def test_a_rate_limited_lane_keeps_every_sliding_window_at_the_limit_with_slack() -> None:
    rate = Rate(20, 0.2)
    lane = KeyLane(KEY, KeyLimits(rate=rate))
    stamps: list[float] = []
    start = time.monotonic()
    for _ in range(70):
        await lane.acquire(1)
        stamps.append(time.monotonic())
    total = stamps[-1] - start
    assert max_in_any_window(stamps, [1] * len(stamps), rate.period) <= 20
    # any 21 requests span a window plus the jitter slack: a late send cannot squeeze 21 into one window
    assert min(b - a for a, b in zip(stamps, stamps[20:])) >= rate.period + JITTER_SLACK
    # spread out, not a burst of 20 followed by a pause: 19 gaps of 0.2 s / 20 / 1.1 = 0.17 s
    assert stamps[19] - stamps[0] >= 0.16
    # 70 requests need three windows of 0.23 s after the first 20 (≈ 0.86 s); a busy machine may only
    # make it later, never sooner (the bound above is far from it: the limit is what is tested)
    assert 0.69 <= total < 5.0


async def test_request_window_makes_up_for_a_late_request_at_once() -> None:
    window = RequestWindow(Rate(3, 1.0), slack=0.0)
    window.record(10.0)
    window.record(10.2)
    assert window.delay(10.3) == 0.0  # room for a third
    window.record(10.9)  # sent late
    assert window.delay(11.0) == 0.0  # the first left the window at 11.0: the next may go at once
    assert window.delay(10.95) == pytest.approx(0.05)
    window.record(11.0)
    assert window.delay(11.1) == pytest.approx(0.1)  # the one of 10.2 leaves at 11.2


async def test_request_window_slack_widens_the_span() -> None:
    window = RequestWindow(Rate(2, 1.0), slack=0.03)
    window.record(0.0)
    window.record(0.5)
    assert window.delay(1.0) == pytest.approx(0.03)


async def test_request_window_keeps_only_the_send_times_of_its_span() -> None:
    """A generous limit (100000/1s) sent at a few hundred a second holds that second's sends, not 100,000."""
    window = RequestWindow(Rate(100_000, 1.0), slack=0.0)
    for i in range(5_000):
        window.record(i * 0.01)  # 100 a second for 50 s
    assert len(window._sent) <= 101
    assert window.delay(50.0) == 0.0
    full = RequestWindow(Rate(3, 1.0), slack=0.0)
    for sent in (0.0, 0.1, 0.2):
        full.record(sent)
    assert full.delay(0.5) == pytest.approx(0.5)  # the limit still holds


# --- KeyLane -------------------------------------------------------------------------------------------


KEY = ApiKey("k1", f"k1:{SECRET}")


async def test_lane_without_limits_acquires_at_once_and_has_nothing_to_settle() -> None:
    lane = KeyLane(KEY, KeyLimits())
    assert lane.usable and lane.state == "active"
    assert await lane.acquire(1000) is None
    lane.settle_tokens(None, 5)  # nothing to settle, and nothing in the way afterwards:
    for _ in range(1000):
        assert at_once(lane.acquire(10**9)) is None  # no pacing, no window, never a wait


async def test_lane_with_a_rate_limit_spaces_its_requests() -> None:
    lane = KeyLane(KEY, KeyLimits(rate=Rate(10, 0.5)))
    assert at_once(lane.acquire(1)) is None  # no token limit: nothing to settle
    first = time.monotonic()
    await lane.acquire(1)
    assert time.monotonic() - first >= 0.04  # 0.5 s / 10 requests, paced 10 % faster


async def test_lane_with_a_token_limit_returns_a_reservation_it_can_settle() -> None:
    lane = KeyLane(KEY, KeyLimits(tokens=Rate(100, 0.3)))
    reservation = at_once(lane.acquire(90))
    assert reservation is not None and reservation[1] == 90
    lane.settle_tokens(reservation, 10)
    assert at_once(lane.acquire(80)) is not None  # the settled 10 + 80 fit in the window


async def test_a_cooling_lane_warms_up_again() -> None:
    lane = KeyLane(KEY, KeyLimits())
    lane.cool_down(0.05)
    assert lane.state == "cooling"
    assert lane.cooling and lane.usable
    start = time.monotonic()
    await lane.wait_until_warm()
    assert time.monotonic() - start >= 0.04
    assert lane.state == "active"
    assert not lane.cooling


def test_cool_down_never_shortens_a_longer_cool_down() -> None:
    lane = KeyLane(KEY, KeyLimits())
    lane.cool_down(30)
    lane.cool_down(1)
    assert lane.cooling_until - time.monotonic() > 29


@pytest.mark.parametrize("state", ["revoked", "expired", "invalid", "budget"])
def test_a_retired_lane_is_not_usable(state: str) -> None:
    lane = KeyLane(KEY, KeyLimits())
    lane.retire(state, "the provider rejected the key")
    assert not lane.usable
    assert (lane.state, lane.reason) == (state, "the provider rejected the key")


def test_cool_down_does_not_revive_a_retired_key() -> None:
    lane = KeyLane(KEY, KeyLimits())
    lane.retire("revoked", "API key revoked")
    lane.cool_down(1.0)
    assert lane.state == "revoked"
    assert not lane.usable


def test_lanes_for_keeps_sticky_states_and_resets_the_others() -> None:
    keys = [ApiKey(name, f"{name}:{SECRET}") for name in ("a", "b", "c", "d")]
    default = KeyLimits(rate=Rate(10, 1.0))
    special = KeyLimits(rate=Rate(1, 1.0))
    lanes = lanes_for(keys, default, {"b": special},
                      {"a": ("revoked", "API key revoked"), "b": ("budget", "spent"), "c": ("cooling", None)})
    assert [(lane.key.id, lane.state, lane.reason) for lane in lanes] == [
        ("a", "revoked", "API key revoked"), ("b", "active", None), ("c", "active", None), ("d", "active", None),
    ]
    assert [lane.limits for lane in lanes] == [default, special, default, default]
