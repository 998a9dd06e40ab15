"""The store's key leases with a fake `now`, on a SQLite file and on PostgreSQL: one runner per key, and
a key passes to another runner only once the last request sent with it has left the key's window."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from batchrun.keys import KeyLane, KeyLimits
from batchrun.keys import ApiKey
from batchrun.store import Store
from batchrun.units import Rate

T0 = 1_000_000.0


@pytest.fixture
def store(any_db_url: str) -> Iterator[Store]:
    with Store.open(any_db_url) as opened:
        yield opened


def window_of(rate: str) -> float:
    """The window a runner stores for a key of this rate limit (what `KeyLane.window` says)."""
    count, period = rate.split("/")
    seconds = {"1s": 1.0, "0.5s": 0.5, "1m": 60.0}[period]
    return KeyLane(ApiKey("k", "s"), KeyLimits(Rate(int(count), seconds))).window


def test_a_key_serves_one_owner_and_a_released_key_is_free_for_another_only_from_free_at(store: Store) -> None:
    assert store.acquire_keys("a", {"k1": 1.0, "k2": 1.0}, 30, now=T0) == ["k1", "k2"]
    assert store.acquire_keys("b", {"k1": 1.0, "k2": 1.0}, 30, now=T0 + 1) == []

    store.release_keys("a", {"k1": T0 + 10}, now=T0 + 2)  # a's last answer on k1 + its window

    assert store.acquire_keys("b", {"k1": 1.0, "k2": 1.0}, 30, now=T0 + 9.9) == []
    assert store.acquire_keys("b", {"k1": 1.0, "k2": 1.0}, 30, now=T0 + 10) == ["k1"]
    assert store.acquire_keys("a", {"k1": 1.0}, 30, now=T0 + 11) == []  # b holds it now


def test_the_owner_may_take_back_a_key_it_released(store: Store) -> None:
    store.acquire_keys("a", {"k1": 60.0}, 30, now=T0)
    store.release_keys("a", {"k1": T0 + 60}, now=T0 + 1)

    # its own requests are in its own limiter: no need to wait for them
    assert store.acquire_keys("a", {"k1": 60.0}, 30, now=T0 + 2) == ["k1"]
    assert store.acquire_keys("b", {"k1": 60.0}, 30, now=T0 + 61) == []  # leased again, not released


def test_an_expired_unreleased_lease_is_taken_only_after_its_expiry_plus_the_keys_window(store: Store) -> None:
    store.acquire_keys("a", {"k1": 60.0}, 30, now=T0)  # expires at T0 + 30; its owner hangs

    assert store.acquire_keys("b", {"k1": 1.0}, 30, now=T0 + 31) == []
    assert store.acquire_keys("b", {"k1": 1.0}, 30, now=T0 + 89.9) == []
    assert store.acquire_keys("b", {"k1": 1.0}, 30, now=T0 + 90) == ["k1"]


def test_a_dead_runners_per_minute_key_is_not_reused_inside_its_window(store: Store) -> None:
    window = window_of("600/1m")
    dead = "host:999999:dead"
    store.register_runner(dead, now=T0)
    store.acquire_keys(dead, {"k1": window}, 600, now=T0)

    assert store.release_dead_runners(lambda pid: False, now=T0 + 5) == [dead]

    assert store.key_holders(["k1"], now=T0 + 6) == {}
    assert store.acquire_keys("b", {"k1": window}, 30, now=T0 + 6) == []
    assert store.acquire_keys("b", {"k1": window}, 30, now=T0 + 5 + 59) == []  # a minute of its sends still counts
    assert store.acquire_keys("b", {"k1": window}, 30, now=T0 + 5 + window) == ["k1"]


def test_the_heartbeat_renews_only_the_keys_still_held_and_says_which(store: Store) -> None:
    store.register_runner("a", now=T0)
    store.acquire_keys("a", {"k1": 1.0, "k2": 1.0, "k3": 1.0}, 30, now=T0)
    store.release_keys("a", {"k2": T0 + 6}, now=T0 + 5)

    assert store.extend_leases("a", 30, now=T0 + 10) == ["k1", "k3"]  # k2 was given up
    # a late heartbeat still renews a lease nobody took meanwhile (k1, k3 ran out at T0 + 40)...
    assert store.acquire_keys("b", {"k3": 1.0}, 30, now=T0 + 41.5) == ["k3"]
    # ...but not one another runner has taken after its expiry + window
    assert store.extend_leases("a", 30, now=T0 + 42) == ["k1"]
    assert store.acquire_keys("b", {"k1": 1.0}, 30, now=T0 + 43) == []


def test_key_holders_are_the_live_leases(store: Store) -> None:
    store.register_runner("a", now=T0)
    store.acquire_keys("a", {"k1": 1.0, "k2": 1.0}, 30, now=T0)

    assert sorted(store.key_holders(["k1", "k2", "k9"], now=T0 + 1)) == ["k1", "k2"]
    assert store.key_holders(["k1"], now=T0 + 1)["k1"].owner == "a"
    store.release_keys("a", {"k2": T0 + 3}, now=T0 + 2)
    assert sorted(store.key_holders(["k1", "k2"], now=T0 + 2)) == ["k1"]
    assert store.key_holders(["k1"], now=T0 + 31) == {}  # its lease ran out


def test_live_runners_are_those_not_ended_with_a_fresh_heartbeat(store: Store) -> None:
    for owner in ("a", "b", "c"):
        store.register_runner(owner, now=T0)
    store.heartbeat("a", now=T0 + 50)
    store.extend_leases("b", 30, now=T0 + 50)  # the run's heartbeat
    store.finish_runner("b", 0, "all jobs succeeded", now=T0 + 55)

    assert [r.owner for r in store.live_runners(30, now=T0 + 25)] == ["a", "c"]
    assert [r.owner for r in store.live_runners(30, now=T0 + 60)] == ["a"]
    assert store.live_runners(30, now=T0 + 81) == []
