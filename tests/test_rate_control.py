"""Rate control end to end, as a user sees it: `batchrun run` as a subprocess against the simulator,
asserting the exit code, the export, `keys --json` and what the simulator received.

Random 429s that no rate causes, a `Retry-After` longer than the backoff, a token limit, and an outage
that outlasts a job's attempts but not the patience.
"""

from __future__ import annotations

import random
import subprocess
import time
from pathlib import Path
from typing import Any

from conftest import FAST_RETRY, Cli, keys_json, make_keys, provider_env, read_jsonl, submit_jobs

from batchrun.simulator import RunningSimulator, SimulatorConfig, SimulatorThread
from batchrun.units import Rate


def exported(cli: Cli, tmp_path: Path) -> dict[str, dict[str, Any]]:
    result = cli("export", "--output", str(tmp_path / "results.jsonl"))
    assert result.returncode == 0, result.stderr
    rows = read_jsonl(tmp_path / "results.jsonl")
    by_id = {row["custom_id"]: row for row in rows}
    assert len(by_id) == len(rows), "a custom_id was exported twice"
    return by_id


def assert_every_job_answered(rows: dict[str, dict[str, Any]], prompts: dict[str, str]) -> None:
    assert sorted(rows) == sorted(prompts)
    for custom_id, row in rows.items():
        assert row["response"]["status_code"] == 200, row
        assert row["response"]["body"]["choices"][0]["message"]["content"] == "echo: " + prompts[custom_id]


def finish(process: subprocess.Popen[str], timeout: float = 90.0) -> tuple[str, str]:
    """Let the run end (killed if it does not within `timeout`); its stdout and stderr."""
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.communicate()


def wait_for(condition: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the simulator"
        time.sleep(0.01)


#: The simulator's seed for the random-429 test, and the window its premise is checked over.
NOISE_SEED = 30
NOISE_WINDOW = 44


def most_faults_in_a_window(seed: int, probability: float, draws: int, window: int) -> int:
    """The most faults any `window` consecutive draws of the simulator's seeded source hold (its gateway
    draws `random.Random(seed).random() < probability`, once a request, for each configured fault)."""
    source = random.Random(seed)
    faults = [source.random() < probability for _ in range(draws)]
    return max(sum(faults[start:start + window]) for start in range(draws - window + 1))


def test_random_429s_are_retried_and_leave_every_keys_rate_alone(cli: Cli, tmp_path: Path) -> None:
    # 5 % of the answers are 429s that no rate causes (they do not touch the key's window). The old
    # controller lowered the rate for every two of them and never climbed back.
    # The premise is noise spread thin. The simulator draws its faults from one seeded source, so a seed
    # fixes where they fall; seed 1 put 6 of them in its first 36 draws (17 %), and a key that drew most of
    # those saw 6 of its first 20 answers refused (30 %): a round's early end, then, rightly judges a limit.
    # With two keys taking turns, a key's first 20 answers lie within about 44 draws: a seed with no
    # more than 4 faults in any 44 draws keeps every key's round under 30 % however the draws are shared.
    assert most_faults_in_a_window(NOISE_SEED, 0.05, 600, NOISE_WINDOW) <= 4
    config = SimulatorConfig(seed=NOISE_SEED, rate_limit=Rate(20, 1.0), random_429_rate=0.05,
                             random_429_retry_after=0.1)
    with SimulatorThread(config) as sim:
        jobs = 240
        prompts = submit_jobs(cli, tmp_path, jobs)
        result = cli("run", "--no-progress", "--rate-limit", "20/1s", *FAST_RETRY,
                     env=provider_env(sim, make_keys(2)))
        stats = sim.state.snapshot()

    assert result.returncode == 0, result.stdout + result.stderr
    assert_every_job_answered(exported(cli, tmp_path), prompts)
    assert stats["random_429s"] >= 3, stats  # they really came (≈ 12 expected)
    assert stats["by_status"]["429"] == stats["random_429s"], stats  # and none was the limit's
    assert max(stats["max_window"].values()) <= 20, stats
    assert "rate lowered" not in result.stderr, result.stderr
    for entry in keys_json(cli).values():
        assert entry["rate_limit"]["adapted"] is None, entry


def test_a_retry_after_longer_than_the_backoff_is_waited_out(cli: Cli, sim: RunningSimulator,
                                                             tmp_path: Path) -> None:
    # The backoff is 20 ms; the provider says 1.5 s. Ignoring it would resend the job at once.
    sim.config.random_429_rate = 1.0
    sim.config.random_429_retry_after = 1.5
    prompts = submit_jobs(cli, tmp_path, 1)

    process = cli.popen("run", "--no-progress", *FAST_RETRY, env=provider_env(sim, make_keys(1)))
    try:
        wait_for(lambda: sim.state.snapshot()["random_429s"] >= 1)
        refused_at = time.monotonic()
        sim.config.random_429_rate = 0.0
        wait_for(lambda: sim.state.snapshot()["completions_ok"] >= 1)
        answered_at = time.monotonic()
    finally:
        _, stderr = finish(process)

    assert process.returncode == 0, stderr
    # the second request came no sooner than the Retry-After (10 ms polling slack each side)
    assert answered_at - refused_at >= 1.5 - 0.05
    assert sim.state.snapshot()["requests_total"] == 2
    assert_every_job_answered(exported(cli, tmp_path), prompts)


def test_a_token_limit_holds_every_window_at_the_provider(cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    # The provider counts prompt + completion tokens per key in a sliding 1 s window. batchrun reserves
    # each request's estimate (prompt characters / 4 + max_tokens) before sending and settles it with
    # the answer's usage, so no window may hold more than the limit.
    sim.config.token_limit = Rate(400, 1.0)
    prompts = submit_jobs(cli, tmp_path, 60, extra={"max_tokens": 16})

    result = cli("run", "--no-progress", "--token-limit", "400/1s", *FAST_RETRY, env=provider_env(sim, make_keys(1)))

    assert result.returncode == 0, result.stdout + result.stderr
    assert_every_job_answered(exported(cli, tmp_path), prompts)
    stats = sim.state.snapshot()
    # Paced by its own clock, batchrun keeps every window under the limit; what the provider sees can
    # still differ by the network's jitter (on a machine with six runnable processes a core, CI saw
    # 5 429s of 65 requests). Sent without --token-limit, the same jobs meet 30 429s.
    assert stats["by_status"]["200"] == 60 and stats["by_status"].get("429", 0) <= 6, stats
    # The same jitter may move one request (≈ 20–30 tokens here) into a window it was not sent in; a
    # limiter that did not hold would put far more there (without it: 30 429s).
    assert 0 < stats["max_token_window"]["key1"] <= 400 + 40, stats
    # the limit really bound: the jobs held more than one window's worth of tokens
    assert sum(row["response"]["body"]["usage"]["total_tokens"]
               for row in exported(cli, tmp_path).values()) > 1.5 * 400


def test_an_outage_longer_than_a_jobs_attempts_does_not_fail_it(cli: Cli, sim: RunningSimulator,
                                                                tmp_path: Path) -> None:
    # Every request gets 503 until each job has spent far more than --max-attempts 2: with the default
    # --transient-patience (10 min) the jobs wait the outage out and all succeed once it ends.
    sim.config.fail_rate = 1.0
    jobs = 20
    prompts = submit_jobs(cli, tmp_path, jobs)

    process = cli.popen("run", "--no-progress", "--max-attempts", "2", *FAST_RETRY, env=provider_env(sim, make_keys(2)))
    try:
        wait_for(lambda: sim.state.snapshot()["by_status"].get("503", 0) >= 4 * jobs)
        sim.config.fail_rate = 0.0
    finally:
        _, stderr = finish(process)

    assert process.returncode == 0, stderr
    assert_every_job_answered(exported(cli, tmp_path), prompts)
    assert "gave up" not in stderr


def test_a_lowered_rate_really_slows_the_key(cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    # The key is told 20/1s; the provider allows 5/1s and sends no x-ratelimit headers, so only the
    # 429s can tell. Sending on at 20/s, three answers in four would be 429s; once the rate is lowered
    # to what the provider admits, the key sends at about 5/s.
    sim.config.rate_limit = Rate(5, 1.0)
    sim.config.rate_headers = False
    jobs = 60
    prompts = submit_jobs(cli, tmp_path, jobs)

    result = cli("run", "--no-progress", "--rate-limit", "20/1s", "--max-attempts", "30", *FAST_RETRY,
                 env=provider_env(sim, make_keys(1)))

    assert result.returncode == 0, result.stdout + result.stderr
    assert_every_job_answered(exported(cli, tmp_path), prompts)
    assert "key rate lowered from 20/s to" in result.stderr, result.stderr
    stats = sim.state.snapshot()
    assert stats["by_status"]["200"] == jobs, stats
    assert stats["by_status"]["429"] <= 0.4 * stats["requests_total"], stats
    assert keys_json(cli)["key1"]["rate_limit"]["adapted"] is not None
