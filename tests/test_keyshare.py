"""Key sharing between runners: the balance decisions as pure functions, `KeySharing` against a real
SQLite store, and two `batchrun run` processes handing keys over at the simulator without a window
above the limit."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Cli, finish, make_keys, provider_env, read_jsonl, submit_jobs, wait_for
from test_multi_runner import done_by

from batchrun.keys import ApiKey, KeyLane, KeyLimits
from batchrun.keyshare import KeySharing, fair_share, free_at, kept_after_lease, over_share
from batchrun.runstate import RunOptions
from batchrun.simulator import RunningSimulator
from batchrun.store import Store
from batchrun.units import Rate


# --- the decisions ---

@pytest.mark.parametrize(("keys", "runners", "share"), [
    (2, 1, 2), (2, 2, 1), (2, 3, 1), (3, 2, 2), (5, 2, 3), (1, 4, 1), (0, 1, 1), (4, 0, 4),
])
def test_the_fair_share_is_keys_over_runners_rounded_up(keys: int, runners: int, share: int) -> None:
    assert fair_share(keys, runners) == share


def test_a_runner_over_its_share_hands_over_the_keys_past_it() -> None:
    assert over_share(["k1", "k2", "k3"], 1) == ["k2", "k3"]
    assert over_share(["k1", "k2"], 2) == []


def test_a_lease_attempt_keeps_the_keys_held_before_and_gives_back_the_new_ones_past_the_share() -> None:
    assert kept_after_lease([], ["k1", "k2", "k3"], 2) == (["k1", "k2"], ["k3"])
    assert kept_after_lease(["k3"], ["k1", "k3"], 1) == (["k3"], ["k1"])
    # over its share already: the keys it held are handed over by the balance (after their requests), not here
    assert kept_after_lease(["k1", "k2"], ["k1", "k2", "k3"], 1) == (["k1", "k2"], ["k3"])
    assert kept_after_lease(["k1", "k2"], ["k1"], 2) == (["k1"], [])  # k2 was lost


def test_a_key_is_free_one_window_after_its_last_answer() -> None:
    assert free_at(last_answer=100.0, in_flight=0, window=60.0, now=130.0) == 160.0
    assert free_at(last_answer=100.0, in_flight=1, window=60.0, now=130.0) == 190.0  # one may still arrive now
    assert free_at(last_answer=None, in_flight=0, window=60.0, now=130.0) == 130.0  # never sent on: free now


# --- KeySharing on a real store ---

@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(f"sqlite:///{tmp_path / 'keys.db'}") as opened:
        yield opened


def lanes(*ids: str, rate: Rate = Rate(10, 0.5)) -> list[KeyLane]:
    return [KeyLane(ApiKey(key_id, "secret"), KeyLimits(rate)) for key_id in ids]


def sharing(store: Store, owner: str, keys: list[KeyLane], lease: float = 3.0) -> KeySharing:
    store.register_runner(owner)

    async def call(fn: Any, *args: Any) -> Any:
        return fn(*args)

    return KeySharing(store, call, keys, owner, RunOptions(lease=lease))


async def test_a_key_is_not_sent_on_in_the_last_third_of_its_lease(store: Store) -> None:
    keys = sharing(store, "a", lanes("k1"))
    [lane] = keys.lanes

    assert await keys.lease_keys()

    now = time.time()
    assert keys.may_send(lane, now) and keys.may_send(lane, now + 1.9)
    assert not keys.may_send(lane, now + 2.1)  # valid for 3 s, but not used in the last second
    await keys.heartbeat()
    # renewed from the heartbeat on: a runner whose heartbeat stalls stops sending a third of a lease early
    assert keys.states["k1"].valid_until - keys.margin >= now + 2


async def test_a_lease_lost_to_another_runner_is_never_used_again(store: Store) -> None:
    keys = sharing(store, "a", lanes("k1", "k2"))
    assert await keys.lease_keys()
    later = time.time() + 100  # a's leases ran out long ago (its heartbeat stalled): b takes k1
    assert store.acquire_keys("b", {"k1": 0.56}, 30, now=later) == ["k1"]

    await keys.heartbeat()

    k1, k2 = keys.lanes
    assert not k1.held and not keys.may_send(k1)
    assert keys.may_send(k2)


async def test_a_runner_takes_no_more_than_its_share_when_another_is_alive(store: Store) -> None:
    store.register_runner("b")
    keys = sharing(store, "a", lanes("k1", "k2"))

    assert await keys.lease_keys()

    assert [lane.key.id for lane in keys.lanes if keys.holds(lane)] == ["k1"]
    assert store.acquire_keys("b", {"k2": 0.56}, 30) == ["k2"]  # given back at once: never sent on


async def test_a_handover_waits_for_the_requests_in_flight_and_frees_the_key_a_window_after_the_last_answer(
        store: Store) -> None:
    keys = sharing(store, "a", lanes("k1", "k2"))
    assert await keys.lease_keys()
    k1, k2 = keys.lanes
    in_flight = keys.track(k2)  # a request went out on k2

    handing = asyncio.create_task(keys.hand_over([k2], 1))
    await asyncio.sleep(0.05)
    assert not handing.done() and not keys.may_send(k2)  # stopped sending, waiting for its answer
    assert store.acquire_keys("b", {"k2": k2.window}, 30) == []
    keys.answered(in_flight)
    await handing

    answered = keys.states["k2"].last_answer
    assert answered is not None
    assert store.acquire_keys("b", {"k2": k2.window}, 30, now=answered + k2.window - 0.01) == []
    assert store.acquire_keys("b", {"k2": k2.window}, 30, now=answered + k2.window) == ["k2"]
    assert keys.may_send(k1)


async def test_at_the_end_every_key_is_released_from_its_last_answer(store: Store) -> None:
    keys = sharing(store, "a", lanes("k1", "k2"))
    assert await keys.lease_keys()
    keys.answered(keys.track(keys.lanes[0]))
    await asyncio.sleep(0)

    await keys.release_all()

    answered = keys.states["k1"].last_answer
    assert answered is not None
    windows = {"k1": 0.56, "k2": 0.56}
    assert store.acquire_keys("b", windows, 30, now=answered + 0.01) == ["k2"]  # k2 was never sent on
    assert store.acquire_keys("c", {"k1": 0.56}, 30, now=answered + keys.lanes[0].window) == ["k1"]


# --- two runners at the simulator ---

def test_a_runner_started_mid_run_gets_a_key_without_a_window_over_the_limit(
        any_db_url: str, sim: RunningSimulator, tmp_path: Path) -> None:
    cli = Cli(tmp_path, {"BATCHRUN_DB": any_db_url})
    sim.config.rate_limit = Rate(10, 0.5)
    sim.config.latency = 0.02
    # 600 jobs at 2 × 18/s: ≈ 17 s of work, so the first runner is still at it when the second has started,
    # registered and asked for its share, even on a machine where starting a runner takes seconds
    jobs = 600
    prompts = submit_jobs(cli, tmp_path, jobs)
    env = provider_env(sim, make_keys(2))
    # 9 a window against the provider's 10: the client counts a window by its send times, the provider by
    # arrivals, and on a loaded machine one request can arrive late enough to share a window with the
    # next window's sends (seen once with two test suites at once). A key sent on by both runners at once
    # would still go far over 10.
    args = ("-v", "run", "--no-progress", "--rate-limit", "9/0.5s", "--concurrency", "4", "--lease", "3s")

    first = cli.popen(*args, env=env)
    wait_for(lambda: sim.state.snapshot()["completions_ok"] >= 10, timeout=30)
    second = cli.popen(*args, env=env)
    outputs = [finish(runner, 90) for runner in (first, second)]

    for runner, (_, err) in zip((first, second), outputs):
        assert runner.returncode == 0, err
    # a key changed hands (the second runner may find every job claimed by then: it need not send)
    assert "handed key(s) key" in outputs[0][1], outputs[0][1]
    assert "is now leased to this runner" in outputs[1][1], outputs[1][1]
    assert sum(done_by(out) for out, _ in outputs) == jobs
    stats = sim.state.snapshot()
    key_lines = [line for _, err in outputs for line in err.splitlines() if "key" in line or "429" in line]
    # no 429, each job once
    assert stats["by_status"] == {"200": jobs} and stats["duplicates"] == 0, (stats, key_lines)
    assert max(stats["max_window"].values()) <= 10, (stats["max_window"], key_lines)
    cli("export", "--output", str(tmp_path / "results.jsonl"))
    results = read_jsonl(tmp_path / "results.jsonl")
    assert sorted(r["custom_id"] for r in results) == sorted(prompts)
    status = json.loads(cli("status", "--json").stdout)
    assert status["runners"] == []
