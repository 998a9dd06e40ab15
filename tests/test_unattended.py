"""Unattended runs (cron at 01:00, read at 08:00): SIGKILL and resume many times, SIGTERM within the
grace period, deadlines, spend caps, and a second runner that finds every key taken."""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path

from conftest import Cli, batch_status, export, finish, make_keys, provider_env, submit_jobs, wait_for, write_jobs

from batchrun.simulator import RunningSimulator


def exported(cli: Cli, tmp_path: Path) -> list[dict]:
    results, _ = export(cli, tmp_path)
    return results


def test_five_sigkills_at_random_moments_then_resume_lose_and_repeat_nothing(
        cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    sim.config.latency = 0.02
    sim.config.latency_jitter = 0.02
    prompts = submit_jobs(cli, tmp_path, 600)
    env = provider_env(sim, make_keys(2))
    concurrency = 8
    args = ("run", "--no-progress", "--concurrency", str(concurrency))
    rng = random.Random()

    for _ in range(5):
        before = sim.state.snapshot()["completions_ok"]
        process = cli.popen(*args, env=env)
        # at a random moment once the run is under load
        wait_for(lambda: sim.state.snapshot()["completions_ok"] >= before + rng.randint(5, 60), timeout=60)
        assert process.poll() is None  # killed mid-run, not after it had finished
        process.send_signal(signal.SIGKILL)
        finish(process, 10)
        assert batch_status(cli)["running"] > 0  # its claimed jobs stay leased to the dead process

    final = cli("-v", *args, env=env)

    assert final.returncode == 0, final.stderr
    # the next run takes the dead runner's jobs back at once (the runs before it did the same)
    assert "requeued the jobs of 1 runner(s) that died" in final.stderr
    results = exported(cli, tmp_path)
    assert sorted(row["custom_id"] for row in results) == sorted(prompts)  # each exactly once
    for row in results:
        assert row["response"]["body"]["choices"][0]["message"]["content"] == "echo: " + prompts[row["custom_id"]]
    stats = sim.state.snapshot()
    # only what was not checkpointed at a kill can have been answered twice: the requests in flight
    # (≤ concurrency) and the answers already back but waiting for the group commit under way
    # (a commit's worth, ≤ concurrency at this pace) — a run of 42 over 5 kills was seen
    assert stats["duplicates"] <= 5 * 2 * concurrency, stats["duplicates"]
    assert stats["prompts_served"] == 600  # the provider answered each job's prompt, and no other


def test_sigterm_waits_for_requests_in_flight_up_to_the_grace_period(cli: Cli, sim: RunningSimulator,
                                                                      tmp_path: Path) -> None:
    sim.config.latency = 60.0  # answers take far longer than the grace period
    prompts = submit_jobs(cli, tmp_path, 12)
    env = provider_env(sim, make_keys(1))

    process = cli.popen("run", "--no-progress", "--concurrency", "4", "--grace", "1s", env=env)
    wait_for(lambda: sim.state.snapshot()["in_flight"] == 4, timeout=30)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    out, err = finish(process, 30)
    took = time.monotonic() - started

    assert process.returncode == 3, err
    # waited for the grace period (1 s; a busy machine only makes it later), not for the 60 s answers
    assert 0.9 <= took < 30, took
    assert "interrupted by SIGTERM" in err and "exit 3" in out and "grace" in err
    status = json.loads(cli("status", "--json").stdout)
    assert (status["batches"][0]["queued"], status["batches"][0]["running"]) == (12, 0)
    assert status["last_run"]["exit_code"] == 3 and status["last_run"]["ended_at"] is not None

    sim.config.latency = 0.0
    assert cli("run", "--no-progress", env=env).returncode == 0
    assert sorted(r["custom_id"] for r in exported(cli, tmp_path)) == sorted(prompts)


def test_max_duration_stops_near_the_deadline_and_the_next_run_finishes(cli: Cli, sim: RunningSimulator,
                                                                        tmp_path: Path) -> None:
    sim.config.latency = 0.5
    prompts = submit_jobs(cli, tmp_path, 200)  # ~25 s at concurrency 4
    env = provider_env(sim, make_keys(1))

    started = time.monotonic()
    first = cli("run", "--no-progress", "--concurrency", "4", "--max-duration", "3s", env=env)
    took = time.monotonic() - started

    assert first.returncode == 3, first.stderr
    # it worked until near its deadline (stopping to claim at deadline − drain), and not to the end
    assert took >= 2.0, took
    assert "deadline" in first.stdout + first.stderr
    done = batch_status(cli)
    assert 0 < done["succeeded"] < 100 and done["running"] == 0

    sim.config.latency = 0.0
    second = cli("run", "--no-progress", env=env)
    assert second.returncode == 0, second.stderr
    assert sorted(r["custom_id"] for r in exported(cli, tmp_path)) == sorted(prompts)
    assert sim.state.snapshot()["duplicates"] == 0


def test_the_cost_cap_stops_the_run_before_it_is_crossed(cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    # sim-small: $0.10 / M prompt tokens, $0.40 / M completion tokens; each job reserves
    # 7 prompt + 50 max_tokens ≈ $0.0000207 and really spends less.
    submit_jobs(cli, tmp_path, 300, extra={"max_tokens": 50})
    env = provider_env(sim, make_keys(1))

    result = cli("run", "--no-progress", "--concurrency", "8", "--max-cost", "0.001", env=env)

    assert result.returncode == 3, result.stderr
    assert "spend cap reached" in result.stdout + result.stderr
    batch = json.loads(cli("status", "--json").stdout)["batches"][0]
    assert 0 < batch["succeeded"] < 300 and batch["cost"] <= 0.001
    assert sim.state.snapshot()["completions_ok"] == batch["succeeded"]


def test_the_cost_cap_counts_models_without_a_price_as_free_and_says_so(cli: Cli, sim: RunningSimulator,
                                                                        tmp_path: Path) -> None:
    # sim-mini has no price in the catalogue; fast (sim-small) has one
    write_jobs(tmp_path / "mini.jsonl", 20, model="sim-mini", prefix="mini")
    write_jobs(tmp_path / "fast.jsonl", 300, extra={"max_tokens": 50})
    for name in ("mini", "fast"):
        assert cli("submit", str(tmp_path / f"{name}.jsonl")).returncode == 0

    result = cli("run", "--no-progress", "--concurrency", "8", "--max-cost", "0.001", env=provider_env(sim, make_keys(1)))

    assert result.returncode == 3, result.stderr
    assert "--max-cost: model(s) sim-mini have no price in the catalogue" in result.stderr
    assert "spend cap reached" in result.stdout + result.stderr
    mini, fast = batch_status(cli, "mini"), batch_status(cli, "fast")
    # the cap stopped the priced jobs, within it; the unpriced ones cost nothing it could count
    assert mini["succeeded"] == 20 and mini["cost"] is None and mini["unpriced"] == 20
    assert 0 < fast["succeeded"] < 300 and fast["cost"] <= 0.001


def test_the_token_cap_counts_requests_in_flight(cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    submit_jobs(cli, tmp_path, 300, extra={"max_tokens": 40})
    env = provider_env(sim, make_keys(1))

    result = cli("run", "--no-progress", "--concurrency", "16", "--max-tokens", "1500", env=env)

    assert result.returncode == 3, result.stderr
    batch = json.loads(cli("status", "--json").stdout)["batches"][0]
    assert 0 < batch["succeeded"] < 300
    assert batch["usage"]["total_tokens"] <= 1500
    assert "--max-tokens 1500" in result.stdout + result.stderr


def test_a_second_runner_finds_every_key_held_and_names_the_holder(cli: Cli, sim: RunningSimulator,
                                                                   tmp_path: Path) -> None:
    sim.config.latency = 0.5
    submit_jobs(cli, tmp_path, 40)
    env = provider_env(sim, make_keys(1))
    first = cli.popen("run", "--no-progress", "--concurrency", "2", env=env)
    wait_for(lambda: sim.state.snapshot()["completions_ok"] >= 1, timeout=30)

    no_wait = cli("run", "--no-progress", "--no-wait", env=env)
    waits = cli("run", "--no-progress", "--max-duration", "2s", env=env)
    first.send_signal(signal.SIGTERM)
    finish(first, 30)

    assert no_wait.returncode == 3, no_wait.stderr
    assert f"pid {first.pid}" in no_wait.stderr and "held by another runner" in no_wait.stderr
    assert waits.returncode == 3, waits.stderr
    assert "waiting for a key" in waits.stderr and "deadline" in waits.stdout + waits.stderr
    # the key was only ever used by the first runner: its window stayed within one runner's pace
    assert sim.state.snapshot()["max_in_flight"] <= 2

