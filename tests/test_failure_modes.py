"""How `batchrun run` copes with a misbehaving provider, seen from outside: the exit code, what it
prints, `status --json`, `keys --json`, the export files, and what the simulator received.

Each scenario is one failure mode of a real provider: a rate limit lower than configured, rate-limit
headers, a total outage, flaky 503s and dropped connections, 200s without `request_id`, completions
cut at `max_tokens`, and the usage and spend of a batch over priced and unpriced models.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
from chaos_proxy import ChaosProxy, Fault
from conftest import (FAST_RETRY, Cli, batch_status, export, keys_json, make_keys, provider_env, status_json,
                      submit_jobs)

from batchrun.simulator import RunningSimulator
from batchrun.simulator.catalog import default_models
from batchrun.units import Rate


def write_lines(path: Path, lines: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def tokens(text: str) -> int:
    """The simulator bills four ASCII characters a token, rounded up (batchrun.tokens)."""
    return math.ceil(len(text) / 4)


# -- 1. a provider limit below the configured one: the key's rate adapts --------------------------

def test_a_configured_rate_above_the_providers_limit_is_lowered_and_every_job_finishes(
        cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    # The user believes 30/1s; the provider allows 10/1s per key. At 30/s a key fills its window in
    # 0.33 s; answers take 0.5 s, so the x-ratelimit-remaining: 0 of the first answer comes too late to
    # stop the 11th request: only the 429s (and the adapted rate) can slow the key down.
    sim.config.rate_limit = Rate(10, 1.0)
    sim.config.latency = 0.5
    jobs = 160
    submit_jobs(cli, tmp_path, jobs)

    result = cli("run", "--no-progress", "--rate-limit", "30/1s", "--max-attempts", "30", *FAST_RETRY,
                 env=provider_env(sim, make_keys(2)))

    assert result.returncode == 0, result.stdout + result.stderr
    stats = sim.state.snapshot()
    assert "rate lowered" in result.stderr, (result.stderr, stats)
    assert stats["by_status"]["200"] == jobs and stats["duplicates"] == 0, stats
    assert json.loads(cli("status", "--json").stdout)["batches"][0]["succeeded"] == jobs
    too_many = stats["by_status"].get("429", 0)
    assert too_many > 0, stats  # the provider's limit was really hit: this is what the adaptation reacts to
    keys = keys_json(cli)
    for key_id, sim_key in stats["keys"].items():
        entry = keys[key_id]
        assert entry["rate_limit"]["configured"] == "30/1s", entry
        assert entry["last_run"]["rate_limited"] == sim_key["by_status"].get("429", 0), (entry, sim_key)
        assert entry["last_run"]["requests"] == sim_key["requests"], (entry, sim_key)
    assert any(keys[key_id]["rate_limit"]["adapted"] for key_id in stats["keys"]), keys
    # Without adaptation each key runs into its window again after every pause until the reset: with
    # 0.5 s answers, ~14 429s per key (measured: 28 in all). Adapted, a key is lowered once three 429s
    # say its window is spent — plus the requests already in flight at 30/s — then sends within the limit.
    assert too_many <= 14, stats


# -- 2. x-ratelimit-remaining-requests: 0 pauses the key until the window resets ------------------

def test_ratelimit_headers_pause_the_key_before_it_gets_a_429(cli: Cli, sim: RunningSimulator,
                                                              tmp_path: Path) -> None:
    sim.config.rate_limit = Rate(10, 1.0)
    jobs = 40
    submit_jobs(cli, tmp_path, jobs)

    result = cli("run", "--no-progress", "--concurrency", "1", *FAST_RETRY, env=provider_env(sim, make_keys(1)))

    assert result.returncode == 0, result.stdout + result.stderr
    stats = sim.state.snapshot()
    # Told no limit and sending one request at a time with no latency, a client deaf to the headers
    # would fill each window in a few ms and take a 429 every tenth request (3 here).
    assert stats["by_status"].get("429", 0) <= 1, stats
    assert stats["by_status"]["200"] == jobs, stats
    assert stats["max_window"]["key1"] <= 11, stats
    assert json.loads(cli("status", "--json").stdout)["batches"][0]["succeeded"] == jobs
    assert "rate lowered" not in result.stderr
    entry = keys_json(cli)["key1"]
    assert entry["rate_limit"]["configured"] is None and entry["rate_limit"]["adapted"] is None, entry
    assert entry["last_run"]["rate_limited"] == stats["by_status"].get("429", 0)


# -- 3. a total outage: the circuit breaker cuts concurrency, jobs fail after --max-attempts ------

def test_a_permanent_outage_trips_the_breaker_and_fails_every_job_as_no_capacity(
        cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    sim.config.fail_rate = 1.0
    sim.config.latency = 0.05  # so requests overlap and the simulator can see how many are in flight
    in_flight_at_arrival: list[int] = []
    begin = sim.state.begin_completion

    def counting_begin() -> None:
        begin()
        in_flight_at_arrival.append(sim.state.in_flight)

    sim.state.begin_completion = counting_begin  # type: ignore[method-assign]
    jobs = 40
    submit_jobs(cli, tmp_path, jobs)

    result = cli("run", "--no-progress", "--concurrency", "16", "--max-attempts", "3", *FAST_RETRY,
                 "--transient-patience", "0", env=provider_env(sim, make_keys(1)))

    assert result.returncode == 1, result.stdout + result.stderr
    stats = sim.state.snapshot()
    assert stats["requests_total"] == 3 * jobs and stats["by_status"] == {"503": 3 * jobs}, stats
    assert "concurrency 16 → 4" in result.stderr, result.stderr
    assert f"the provider had no capacity (503) for {jobs} job(s)" in result.stdout, result.stdout
    assert "concurrency was reduced" in result.stdout, result.stdout
    assert f"failed: {jobs} (no_capacity: {jobs})" in result.stdout, result.stdout
    # The breaker trips on the 10th failure; by then at most 16 + 9 requests were sent. Every request
    # sent after the trip waits until fewer than 4 are in flight.
    assert len(in_flight_at_arrival) == 3 * jobs
    assert max(in_flight_at_arrival[:25]) > 4, in_flight_at_arrival  # before it, up to 16 at once
    assert max(in_flight_at_arrival[40:]) <= 4, in_flight_at_arrival
    results, errors = export(cli, tmp_path)
    assert results == [] and len(errors) == jobs
    assert len({row["custom_id"] for row in errors}) == jobs
    for row in errors:
        assert row["error"]["code"] == "no_capacity", row
        assert "no capacity" in row["error"]["message"], row
        assert "gave up after 3 attempt" in row["error"]["message"], row
        assert row["response"]["status_code"] == 503 and row["batchrun"]["attempts"] == 3
    status = status_json(cli)["batches"][0]
    assert status["failed"] == jobs and status["failed_by_code"] == {"no_capacity": jobs}


# -- 4. flaky provider: 503s and dropped connections; nothing lost, nothing done twice -----------

def test_503s_and_connection_resets_end_with_every_job_succeeded_exactly_once(
        cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    sim.config.fail_rate = 0.2
    sim.config.reset_rate = 0.03
    jobs = 150
    prompts = submit_jobs(cli, tmp_path, jobs)

    result = cli("run", "--no-progress", "--max-attempts", "20", *FAST_RETRY, env=provider_env(sim, make_keys(2)))

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"succeeded: {jobs}  failed: 0" in result.stdout, result.stdout
    stats = sim.state.snapshot()
    assert stats["by_status"].get("503", 0) > 0 and stats["resets"] > 0, stats  # the faults did happen
    assert stats["duplicates"] == 0, stats
    assert stats["completions_ok"] == jobs and stats["prompts_served"] == jobs, stats
    status = status_json(cli)["batches"][0]
    assert status["succeeded"] == jobs and status["failed"] == 0 and status["queued"] == 0
    assert status["retries"] == stats["by_status"]["503"] + stats["resets"], (status, stats)
    results, errors = export(cli, tmp_path)
    assert errors == []
    assert [row["custom_id"] for row in results] == sorted(prompts)  # 150 distinct, in input order
    for row in results:
        assert row["response"]["body"]["choices"][0]["message"]["content"] == "echo: " + prompts[row["custom_id"]]


# -- 5. a 200 without request_id: unverified by default, retried with --require-request-id -------

def test_a_200_without_request_id_is_accepted_and_marked_unverified(cli: Cli, sim: RunningSimulator,
                                                                     tmp_path: Path) -> None:
    sim.config.omit_request_id = True
    jobs = 6
    submit_jobs(cli, tmp_path, jobs)

    result = cli("run", "--no-progress", *FAST_RETRY, env=provider_env(sim, make_keys(1)))

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"unverified (no request_id): {jobs}" in result.stdout, result.stdout
    assert sim.state.snapshot()["requests_total"] == jobs
    status = status_json(cli)["batches"][0]
    assert status["succeeded"] == jobs and status["unverified"] == jobs, status
    results, errors = export(cli, tmp_path)
    assert errors == [] and len(results) == jobs
    for row in results:
        assert row["batchrun"]["unverified"] is True, row
        assert row["response"]["request_id"] is None
        assert row["batchrun"]["attempts"] == 1


def test_require_request_id_retries_a_200_without_one_then_fails_it_as_unverified(
        cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    sim.config.omit_request_id = True
    jobs = 6
    submit_jobs(cli, tmp_path, jobs)

    result = cli("run", "--no-progress", "--require-request-id", "--max-attempts", "2", *FAST_RETRY, "--transient-patience", "0",
                 env=provider_env(sim, make_keys(1)))

    assert result.returncode == 1, result.stdout + result.stderr
    stats = sim.state.snapshot()
    assert stats["requests_total"] == 2 * jobs and stats["by_status"] == {"200": 2 * jobs}, stats
    # every prompt was answered exactly twice: once, then once more as the retry
    assert stats["prompts_served"] == jobs and stats["duplicates"] == jobs, stats
    status = status_json(cli)["batches"][0]
    assert status["succeeded"] == 0 and status["failed"] == jobs and status["unverified"] == 0, status
    assert status["failed_by_code"] == {"unverified": jobs}
    results, errors = export(cli, tmp_path)
    assert results == [] and len(errors) == jobs
    for row in errors:
        assert row["error"]["code"] == "unverified", row
        assert "request_id" in row["error"]["message"] and "gave up after 2 attempt" in row["error"]["message"]
        assert row["batchrun"]["attempts"] == 2 and row["batchrun"]["unverified"] is False
        assert row["response"]["status_code"] == 200


# -- 6. finish_reason "length": a success, but marked truncated -----------------------------------

def test_a_completion_cut_at_max_tokens_succeeds_and_is_marked_truncated(cli: Cli, sim: RunningSimulator,
                                                                         tmp_path: Path) -> None:
    # The simulator answers "echo: <prompt>" (4 characters a token) and cuts it at max_tokens.
    lines, prompts = [], {}
    for i in range(4):
        for kind, extra in (("cut", {"max_tokens": 3}), ("roomy", {"max_tokens": 200}), ("plain", {})):
            custom_id = f"{kind}-{i}"
            prompts[custom_id] = f"please repeat this sentence number {i} in full"
            lines.append({"custom_id": custom_id, "model": "fast",
                          "messages": [{"role": "user", "content": prompts[custom_id]}], **extra})
    write_lines(tmp_path / "jobs.jsonl", lines)
    assert cli("submit", str(tmp_path / "jobs.jsonl")).returncode == 0

    result = cli("run", "--no-progress", *FAST_RETRY, env=provider_env(sim, make_keys(1)))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "truncated (finish_reason length): 4" in result.stdout, result.stdout
    status = status_json(cli)["batches"][0]
    assert status["succeeded"] == 12 and status["truncated"] == 4, status
    results, errors = export(cli, tmp_path)
    assert errors == [] and len(results) == 12
    for row in results:
        choice = row["response"]["body"]["choices"][0]
        full = "echo: " + prompts[row["custom_id"]]
        if row["custom_id"].startswith("cut-"):
            assert row["batchrun"]["truncated"] is True, row
            assert row["batchrun"]["finish_reason"] == "length" and choice["finish_reason"] == "length"
            assert choice["message"]["content"] == full[:12]
            assert row["response"]["body"]["usage"]["completion_tokens"] == 3
        else:
            assert row["batchrun"]["truncated"] is False, row
            assert row["batchrun"]["finish_reason"] == "stop" and choice["finish_reason"] == "stop"
            assert choice["message"]["content"] == full


# -- 7. usage and spend per model and per key ----------------------------------------------------

def test_usage_and_cost_by_model_and_key_with_a_priced_and_an_unpriced_model(
        cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    prices = {spec.id: (spec.prompt_price, spec.completion_price) for spec in default_models()}
    prompt_price, completion_price = prices["sim-small"]
    assert prompt_price and completion_price and prices["sim-mini"] == (None, None)
    lines, prompts = [], {}
    for i in range(24):
        model = "fast" if i % 2 == 0 else "sim-mini"
        custom_id = f"{model}-{i:02d}"
        prompts[custom_id] = f"summarise item {i}: " + "lorem ipsum dolor sit amet " * (1 + i % 5)
        lines.append({"custom_id": custom_id, "model": model,
                      "messages": [{"role": "user", "content": prompts[custom_id]}]})
    write_lines(tmp_path / "jobs.jsonl", lines)
    assert cli("submit", str(tmp_path / "jobs.jsonl")).returncode == 0
    keys = make_keys(2)

    result = cli("run", "--no-progress", *FAST_RETRY, env=provider_env(sim, keys))

    assert result.returncode == 0, result.stdout + result.stderr
    expected: dict[str, list[int]] = {"sim-small": [0, 0, 0], "sim-mini": [0, 0, 0]}  # results, prompt, completion
    for custom_id, prompt in prompts.items():
        entry = expected["sim-small" if custom_id.startswith("fast") else "sim-mini"]
        entry[0] += 1
        entry[1] += tokens(prompt)
        entry[2] += tokens("echo: " + prompt)
    small_cost = expected["sim-small"][1] * prompt_price + expected["sim-small"][2] * completion_price
    assert small_cost > 0

    payload = status_json(cli)
    by_model = {row["name"]: row for row in payload["usage"]["by_model"]}
    assert set(by_model) == {"sim-small", "sim-mini"}, by_model
    for name, (results_count, prompt_tokens, completion_tokens) in expected.items():
        row = by_model[name]
        assert (row["results"], row["prompt_tokens"], row["completion_tokens"]) == (
            results_count, prompt_tokens, completion_tokens), row
        assert row["total_tokens"] == prompt_tokens + completion_tokens
    assert by_model["sim-small"]["cost"] == pytest.approx(small_cost, rel=1e-9)
    assert by_model["sim-mini"]["cost"] is None
    batch = payload["batches"][0]
    assert batch["cost"] == pytest.approx(small_cost, rel=1e-9) and batch["unpriced"] == 12, batch
    used = {key_id for key_id, s in sim.state.snapshot()["keys"].items() if s["ok"]}
    by_key = {row["name"]: row for row in payload["usage"]["by_key"]}
    assert set(by_key) == used and used <= {"key1", "key2"}, (by_key, used)
    assert sum(row["results"] for row in by_key.values()) == 24
    assert sum(row["total_tokens"] for row in by_key.values()) == sum(e[1] + e[2] for e in expected.values())

    cost_lines = [line for line in result.stdout.splitlines() if "cost:" in line]
    assert len(cost_lines) == 1 and f"${small_cost:.4f}" in cost_lines[0], result.stdout
    assert "12 result(s) without a catalogue price" in cost_lines[0], cost_lines

    results, errors = export(cli, tmp_path)
    assert errors == [] and len(results) == 24
    for row in results:
        usage = row["response"]["body"]["usage"]
        if row["custom_id"].startswith("fast"):
            assert row["batchrun"]["model_sent"] == "fast" and row["batchrun"]["model_served"] == "sim-small"
            assert row["batchrun"]["cost"] == pytest.approx(
                usage["prompt_tokens"] * prompt_price + usage["completion_tokens"] * completion_price, rel=1e-9)
            assert row["batchrun"]["cost"] > 0
        else:
            assert row["batchrun"]["model_served"] == "sim-mini"
            assert row["batchrun"]["cost"] is None, row


# -- a request that does not answer in time, an answer cut off by the network ----------------------

def test_a_request_slower_than_the_request_timeout_fails_as_timeout(cli: Cli, sim: RunningSimulator,
                                                                   tmp_path: Path) -> None:
    sim.config.latency = 60.0  # an answer would come far too late
    submit_jobs(cli, tmp_path, 2)

    result = cli("run", "--no-progress", "--request-timeout", "500ms", "--max-attempts", "2",
                 "--transient-patience", "0", *FAST_RETRY, env=provider_env(sim, make_keys(1)))

    assert result.returncode == 1, result.stdout + result.stderr
    results, errors = export(cli, tmp_path)
    assert results == [] and len(errors) == 2
    for row in errors:
        assert row["error"]["code"] == "timeout", row
        assert "no answer within 0.5 s" in row["error"]["message"] and "--request-timeout" in row["error"]["message"]
        assert row["batchrun"]["attempts"] == 2
    assert sim.state.snapshot()["requests_total"] == 4


def test_a_200_cut_off_by_the_network_mid_body_is_retried_never_taken_for_a_result(
        cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    prompts = submit_jobs(cli, tmp_path, 6)
    # the first two answers: headers for the whole body, half of it, then the connection closes
    with ChaosProxy(sim.base_url, [Fault("/v1/chat/completions", "truncate", first=2)]) as proxy:
        result = cli("run", "--no-progress", "--concurrency", "1", *FAST_RETRY,
                     env={"BATCHRUN_BASE_URL": proxy.base_url, "BATCHRUN_API_KEYS": ",".join(make_keys(1))})
        record = proxy.record("/v1/chat/completions")

    assert result.returncode == 0, result.stdout + result.stderr
    assert dict(record.faults) == {"truncate": 2}
    results, errors = export(cli, tmp_path)
    assert errors == [] and sorted(row["custom_id"] for row in results) == sorted(prompts)
    for row in results:
        assert row["response"]["body"]["choices"][0]["message"]["content"] == "echo: " + prompts[row["custom_id"]]
    # the two cut answers were sent again (a transient failure: an attempt each), the others once
    assert sorted(row["batchrun"]["attempts"] for row in results) == [1, 1, 1, 1, 2, 2]
    assert sim.state.snapshot()["completions_ok"] == 8


# -- the catalogue at start: a blip is waited out, an outage is not --------------------------------

def test_a_blip_on_the_catalogue_at_start_is_retried_and_the_run_goes_on(cli: Cli, sim: RunningSimulator,
                                                                        tmp_path: Path) -> None:
    # a reset, a 503, a reset, then the catalogue (aiohttp itself sends a GET again once when the
    # connection drops: a reset batchrun sees is two drops in a row)
    sim.config.models_failures = [0, 0, 503, 0, 0]
    submit_jobs(cli, tmp_path, 5)

    result = cli("run", "--no-progress", *FAST_RETRY, env=provider_env(sim, make_keys(1)))

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.count("/models failed") == 3 and "trying again in" in result.stderr, result.stderr
    assert "closed the connection" in result.stderr and "no capacity (503)" in result.stderr
    assert "model fast: 5 job(s) (served by sim-small)" in result.stderr  # it had the catalogue
    assert sim.state.snapshot()["models_requests"] == 6
    assert batch_status(cli)["succeeded"] == 5


def test_a_catalogue_failing_with_5xx_throughout_the_probe_is_done_without(cli: Cli, sim: RunningSimulator,
                                                                          tmp_path: Path) -> None:
    sim.config.models_failures = [500] * 100_000  # some servers have no working /models
    submit_jobs(cli, tmp_path, 5)

    result = cli("run", "--no-progress", "--probe-patience", "1s", *FAST_RETRY, env=provider_env(sim, make_keys(1)))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "trying again in" in result.stderr and "model fast" not in result.stderr  # no catalogue
    assert sim.state.snapshot()["models_requests"] >= 2
    assert batch_status(cli)["succeeded"] == 5


def test_a_host_that_stays_unreachable_exits_5_once_the_probe_patience_is_spent(cli: Cli, tmp_path: Path) -> None:
    submit_jobs(cli, tmp_path, 2)

    started = time.monotonic()
    result = cli("run", "--no-progress", "--base-url", "http://127.0.0.1:9/v1", "--probe-patience", "1s",
                 *FAST_RETRY, env={"BATCHRUN_API_KEYS": "a:b"})
    took = time.monotonic() - started

    assert result.returncode == 5, result.stderr
    assert "trying again in" in result.stderr and "cannot reach the provider at http://127.0.0.1:9/v1" in result.stderr
    assert took >= 1.0  # it kept trying for the patience
    assert batch_status(cli)["queued"] == 2
