"""The simulator's token limit, its random 429s and limits changed mid-run, seen as a client sees them.

Real servers on free ports (`running_simulator`), real aiohttp requests; windows are half a second
or ten seconds long so nothing waits on the wall clock for more than a moment.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import subprocess
import sys
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner
from test_simulator import KEY, OTHER_KEY, ROOT, chat, error_code, post, simulator

from batchrun.simulator import RunningSimulator, SlidingWindow
from batchrun.simulator.cli import simulate_command
from batchrun.units import Rate


async def stats(sim: RunningSimulator, session: aiohttp.ClientSession) -> Any:
    async with session.get(f"{sim.base_url.removesuffix('/v1')}/_sim/stats") as response:
        return await response.json()


async def change(sim: RunningSimulator, session: aiohttp.ClientSession, changes: Any) -> int:
    async with session.post(f"{sim.base_url.removesuffix('/v1')}/_sim/config", json=changes) as response:
        return response.status


async def tokens_of(text: str) -> int:
    """What one `chat(text)` costs against a token limit: the usage the simulator answers with."""
    async with simulator() as (sim, session):
        _, body, _ = await post(sim, session, chat(text))
    return int(body["usage"]["total_tokens"])


# -- random 429s ---------------------------------------------------------------------------------


async def test_random_429_uses_no_quota_and_is_counted() -> None:
    async with simulator(random_429_rate=1.0, rate_limit=Rate(2, 10)) as (sim, session):
        refused = [await post(sim, session, chat(str(i))) for i in range(3)]
        assert await change(sim, session, {"random_429_rate": 0}) == 200
        after = [(await post(sim, session, chat(f"after {i}")))[0] for i in range(3)]
        snap = await stats(sim, session)
    for status, body, headers in refused:
        assert (status, error_code(body), body["error"]["type"]) == (429, "model_overloaded", "rate_limit_error")
        assert (headers["Retry-After"], headers["retry-after-ms"]) == ("1", "1000")
        assert headers["x-ratelimit-remaining-requests"] == "2"  # the window was not touched
    assert after == [200, 200, 429]  # the whole quota was still there
    assert snap["random_429s"] == 3 and snap["keys"]["team-a"]["random_429s"] == 3
    assert snap["max_window"] == {"team-a": 3}  # only the requests that reached the limiter
    assert snap["by_status"] == {"200": 2, "429": 4}


@pytest.mark.parametrize(("seconds", "retry_after", "ms"), [(0.25, "0.25", "250"), (2, "2", "2000"), ("1.5s", "1.5", "1500")])
async def test_random_429_retry_after_set_mid_run(seconds: Any, retry_after: str, ms: str) -> None:
    async with simulator() as (sim, session):
        assert await change(sim, session, {"random_429_rate": 1, "random_429_retry_after": seconds}) == 200
        status, _, headers = await post(sim, session)
    assert (status, headers["Retry-After"], headers["retry-after-ms"]) == (429, retry_after, ms)


async def test_seeded_random_429s_replay_identically() -> None:
    async def statuses() -> list[int]:
        async with simulator(random_429_rate=0.5, fail_rate=0.2, seed=7) as (sim, session):
            return [(await post(sim, session, chat(str(i))))[0] for i in range(40)]

    first, second = await statuses(), await statuses()
    assert first == second
    assert set(first) == {200, 429, 503}


# -- token limit ---------------------------------------------------------------------------------


def test_weighted_sliding_window_waits_until_enough_tokens_leave() -> None:
    rate = Rate(10, 1.0)
    window = SlidingWindow()
    assert [window.arrive(0.0, rate, 4), window.arrive(0.2, rate, 4)] == [None, None]
    assert window.arrive(0.5, rate, 4) == pytest.approx(0.5)  # 2 over: the 4 of t=0 leave at 1.0
    assert window.arrive(0.5, rate, 9) == pytest.approx(0.7)  # 7 over: both must leave, at 1.2
    assert window.arrive(0.5, rate, 11) == math.inf  # more than the whole limit never fits
    assert (window.remaining(0.5, rate), window.reset_in(0.5, rate)) == (2, pytest.approx(0.5))
    assert window.arrive(1.0, rate, 6) is None  # 4 + 6 = 10 in (0, 1.0]
    assert window.max_window == 4 + 4 + 9 + 11 + 6  # every arrival in (0, 1.0], refused or not


async def test_token_limit_429_with_retry_after_and_token_headers() -> None:
    cost = await tokens_of("hello")
    async with simulator(token_limit=Rate(3 * cost, 0.5)) as (sim, session):
        first = [await post(sim, session) for _ in range(3)]
        status, body, headers = await post(sim, session)
        other, _, _ = await post(sim, session, key=OTHER_KEY)  # each key has its own window
        too_big, big_body, big_headers = await post(sim, session, chat("x" * 4 * 3 * cost))
        await asyncio.sleep(0.55)
        later, _, _ = await post(sim, session)
        snap = await stats(sim, session)
    assert [s for s, _, _ in first] == [200, 200, 200]
    assert [h["x-ratelimit-remaining-tokens"] for _, _, h in first] == [str(2 * cost), str(cost), "0"]
    assert first[0][2]["x-ratelimit-limit-tokens"] == str(3 * cost)
    assert re.fullmatch(r"0\.\d+s", first[0][2]["x-ratelimit-reset-tokens"])
    assert "x-ratelimit-limit-requests" not in first[0][2]  # no request limit configured
    assert (status, error_code(body)) == (429, "tokens_rate_limit_exceeded")
    assert headers["Retry-After"] == "1"  # ceil of the < 0.5 s until the first request leaves
    assert headers["x-ratelimit-remaining-tokens"] == "0"
    assert (too_big, error_code(big_body), "Retry-After" in big_headers) == (429, "request_too_large", False)
    assert other == 200 and later == 200
    assert snap["keys"]["team-b"]["max_token_window"] == cost
    assert snap["max_token_window"]["team-a"] > 4 * cost  # four plus the big one reached the limit
    assert snap["max_window"] == {"team-a": 0, "team-b": 0}  # no request limit, no request window


async def test_token_limit_counts_the_answer_and_max_tokens_cuts_it() -> None:
    cost = await tokens_of("a longer question that gets a longer echo back")
    async with simulator(token_limit=Rate(1000, 10)) as (sim, session):
        _, body, headers = await post(sim, session, chat("a longer question that gets a longer echo back"))
        _, cut, cut_headers = await post(sim, session, chat("a longer question that gets a longer echo back",
                                                            max_tokens=1))
    assert body["usage"]["completion_tokens"] > 1 and body["usage"]["total_tokens"] == cost
    assert headers["x-ratelimit-remaining-tokens"] == str(1000 - cost)
    assert cut["usage"]["completion_tokens"] == 1
    assert cut_headers["x-ratelimit-remaining-tokens"] == str(1000 - cost - cut["usage"]["total_tokens"])


async def test_token_limit_set_and_removed_mid_run() -> None:
    cost = await tokens_of("hello")
    async with simulator() as (sim, session):
        assert await change(sim, session, {"token_limit": f"{cost}/10s"}) == 200
        statuses = [(await post(sim, session))[0] for _ in range(2)]
        assert await change(sim, session, {"token_limit": "many"}) == 400
        assert await change(sim, session, {"token_limit": None}) == 200
        freed, _, headers = await post(sim, session)
    assert statuses == [200, 429]
    assert freed == 200 and "x-ratelimit-limit-tokens" not in headers


# -- the request limit changed mid-run -------------------------------------------------------------


async def test_rate_limit_raised_and_lowered_mid_run_takes_effect() -> None:
    async with simulator(rate_limit=Rate(2, 10)) as (sim, session):
        before = [(await post(sim, session, chat(str(i))))[0] for i in range(3)]
        assert await change(sim, session, {"rate_limit": "5/10s"}) == 200  # the provider raises the limit
        raised = [await post(sim, session, chat(f"raised {i}")) for i in range(4)]
        assert await change(sim, session, {"rate_limit": "1/10s"}) == 200
        lowered, _, lowered_headers = await post(sim, session, key=OTHER_KEY)
        refused, _, _ = await post(sim, session, key=OTHER_KEY)
        assert await change(sim, session, {"rate_limit": None}) == 200
        unlimited, _, unlimited_headers = await post(sim, session)
    assert before == [200, 200, 429]
    assert [s for s, _, _ in raised] == [200, 200, 200, 429]  # 2 of the 5 were used before the change
    assert [h["x-ratelimit-limit-requests"] for _, _, h in raised] == ["5"] * 4
    assert [h["x-ratelimit-remaining-requests"] for _, _, h in raised] == ["2", "1", "0", "0"]
    assert (lowered, lowered_headers["x-ratelimit-limit-requests"], refused) == (200, "1", 429)
    assert unlimited == 200 and "x-ratelimit-limit-requests" not in unlimited_headers


# -- the command line ------------------------------------------------------------------------------


def test_cli_serves_token_limit_and_random_429s() -> None:
    code = "from batchrun.simulator.cli import simulate_command; simulate_command()"
    args = ["--port", "0", "--token-limit", "1000/1m", "--rate-limited-rate", "1", "--rate-limited-retry-after", "250ms"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, env=env) as process:
        try:
            assert process.stdout is not None
            base_url = process.stdout.readline().rsplit(" ", 1)[-1].strip()
            status, body, headers = asyncio.run(_post_once(base_url))
        finally:
            process.terminate()
        assert process.wait(timeout=10) == 0
    assert (status, error_code(body)) == (429, "model_overloaded")
    assert (headers["Retry-After"], headers["retry-after-ms"]) == ("0.25", "250")
    assert (headers["x-ratelimit-limit-tokens"], headers["x-ratelimit-remaining-tokens"]) == ("1000", "1000")


async def _post_once(base_url: str) -> tuple[int, Any, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base_url}/chat/completions", json=chat(),
                                headers={"Authorization": f"Bearer {KEY}"}) as response:
            return response.status, await response.json(), response.headers


@pytest.mark.parametrize(
    ("args", "fragment"),
    [(["--token-limit", "lots"], "--token-limit"), (["--rate-limited-rate", "2"], "--rate-limited-rate"),
     (["--rate-limited-retry-after", "soon"], "--rate-limited-retry-after")],
)
def test_cli_rejects_bad_limit_options(args: list[str], fragment: str) -> None:
    result = CliRunner().invoke(simulate_command, args)
    assert result.exit_code == 2
    assert fragment in result.output
