"""`batchrun run` against the simulator as a real server, asserting what a user sees: the exported
rows, the exit code, the messages, and what the provider received."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import FAST_RETRY, Cli, export, make_keys, provider_env, submit_jobs, write_jobs

from batchrun.simulator import RunningSimulator
from batchrun.units import Rate

pytestmark = pytest.mark.both_databases


def test_three_keys_within_their_window_limit_finish_every_job(cli: Cli, sim: RunningSimulator,
                                                               tmp_path: Path) -> None:
    sim.config.rate_limit = Rate(10, 0.5)
    prompts = submit_jobs(cli, tmp_path, 120)

    result = cli("run", "--rate-limit", "10/500ms", "--no-progress", env=provider_env(sim, make_keys(3)))

    assert result.returncode == 0, result.stderr
    assert "succeeded: 120" in result.stdout and "exit 0" in result.stdout
    stats = sim.state.snapshot()
    assert stats["by_status"] == {"200": 120}, stats
    assert set(stats["max_window"]) == {"key1", "key2", "key3"}
    assert max(stats["max_window"].values()) <= 10, stats["max_window"]
    # Spread over the keys: each key did a fair share.
    assert min(s["requests"] for s in stats["keys"].values()) >= 30
    results, errors = export(cli, tmp_path)
    assert errors == []
    assert [row["custom_id"] for row in results] == sorted(prompts)  # input order
    for row in results:
        body = row["response"]["body"]
        assert row["response"]["status_code"] == 200 and row["error"] is None
        assert body["choices"][0]["message"]["content"] == "echo: " + prompts[row["custom_id"]]
        assert row["response"]["request_id"] == body["request_id"]
        assert row["batchrun"]["model_requested"] == "fast" and row["batchrun"]["model_served"] == "sim-small"
        assert row["batchrun"]["key"] in {"key1", "key2", "key3"}


def test_transient_failures_are_retried_and_counted(cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    sim.config.fail_rate = 0.25
    sim.config.reset_rate = 0.05
    submit_jobs(cli, tmp_path, 80)

    result = cli("run", "--no-progress", "--max-attempts", "12", *FAST_RETRY, env=provider_env(sim, make_keys(2)))

    assert result.returncode == 0, result.stdout + result.stderr
    stats = sim.state.snapshot()
    assert stats["by_status"].get("503", 0) > 0
    status = json.loads(cli("status", "--json").stdout)["batches"][0]
    assert status["succeeded"] == 80 and status["failed"] == 0
    assert status["retries"] == stats["by_status"]["503"] + stats["resets"]
    assert status["retries"] > 0
    assert f"retries: {status['retries']}" in result.stdout
    results, _ = export(cli, tmp_path)
    assert len(results) == 80 and len({r["custom_id"] for r in results}) == 80
    assert any(r["batchrun"]["attempts"] > 1 for r in results)


def test_a_permanent_outage_fails_jobs_after_max_attempts(cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    sim.config.fail_rate = 1.0
    submit_jobs(cli, tmp_path, 5)

    result = cli("run", "--no-progress", "--max-attempts", "3", *FAST_RETRY, "--transient-patience", "0", env=provider_env(sim, make_keys(1)))

    assert result.returncode == 1, result.stderr
    assert sim.state.snapshot()["by_status"] == {"503": 15}
    _, errors = export(cli, tmp_path)
    assert len(errors) == 5
    for row in errors:
        assert row["error"]["code"] == "no_capacity"
        assert "no capacity" in row["error"]["message"] and "503" in row["error"]["message"]
        assert row["response"]["status_code"] == 503
        assert row["batchrun"]["attempts"] == 3


def test_400_and_422_fail_at_once_with_the_providers_message(cli: Cli, sim: RunningSimulator,
                                                             tmp_path: Path) -> None:
    job_file = tmp_path / "jobs.jsonl"
    lines = [
        {"custom_id": "ok", "model": "fast", "messages": [{"role": "user", "content": "fine"}]},
        {"custom_id": "too-hot", "model": "fast", "temperature": 7,
         "messages": [{"role": "user", "content": "x"}]},
        {"custom_id": "no-json-mode", "model": "sim-mini", "response_format": {"type": "json_object"},
         "messages": [{"role": "user", "content": "x"}]},
    ]
    job_file.write_text("".join(json.dumps(line) + "\n" for line in lines))
    cli("submit", str(job_file))
    sim.config.publish_metadata = False  # no prechecks possible: the provider's own 400 must be handled

    result = cli("run", "--no-progress", *FAST_RETRY, env=provider_env(sim, make_keys(1)))

    assert result.returncode == 1, result.stderr
    assert sim.state.snapshot()["requests_total"] == 3  # each attempted exactly once
    results, errors = export(cli, tmp_path)
    assert [r["custom_id"] for r in results] == ["ok"]
    by_id = {row["custom_id"]: row for row in errors}
    hot = by_id["too-hot"]
    assert hot["error"]["code"] == "validation_error"
    assert "body.temperature" in hot["error"]["message"]
    assert hot["response"]["status_code"] == 422 and "detail" in hot["response"]["body"]
    assert hot["batchrun"]["attempts"] == 1
    mini = by_id["no-json-mode"]
    assert mini["error"]["code"] == "bad_request" and mini["response"]["status_code"] == 400
    assert mini["response"]["body"]["error"]["message"] in mini["error"]["message"]
    assert mini["batchrun"]["attempts"] == 1


def test_a_revoked_key_leaves_the_run_and_its_jobs_go_to_the_others(cli: Cli, sim: RunningSimulator,
                                                                    tmp_path: Path) -> None:
    keys = make_keys(3)
    sim.config.revoked.add("key2")
    submit_jobs(cli, tmp_path, 60)

    result = cli("run", "--no-progress", "--concurrency", "4", env=provider_env(sim, keys))

    assert result.returncode == 0, result.stderr
    assert "key2" in result.stderr and "revoked" in result.stderr and "Settings → API Keys" in result.stderr
    key2 = sim.state.snapshot()["keys"]["key2"]
    # key2 took its first job with the others (nothing told it apart before its answer) and got no
    # request after its 401 but those already in flight then: at most one per slot of --concurrency 4
    assert set(key2["by_status"]) == {"401"} and 1 <= key2["requests"] <= 4, key2
    results, errors = export(cli, tmp_path)
    assert len(results) == 60 and errors == []
    assert {r["batchrun"]["key"] for r in results} <= {"key1", "key3"}
    status = json.loads(cli("status", "--json").stdout)
    assert {"id": "key2", "state": "revoked"}.items() <= next(
        k for k in status["keys"] if k["id"] == "key2").items()


def test_every_key_revoked_exits_4_and_leaves_jobs_queued(cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    sim.config.revoked.update({"key1", "key2"})
    submit_jobs(cli, tmp_path, 10)

    result = cli("run", "--no-progress", env=provider_env(sim, make_keys(2)))

    assert result.returncode == 4, result.stdout + result.stderr
    assert "no usable API key" in result.stderr + result.stdout
    status = json.loads(cli("status", "--json").stdout)["batches"][0]
    assert status["queued"] == 10 and status["failed"] == 0


def test_wrong_base_url_exits_5_and_fails_nothing(cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    submit_jobs(cli, tmp_path, 3)
    no_prefix = sim.base_url.removesuffix("/v1")

    started = time.monotonic()
    wrong = cli("run", "--no-progress", env={"BATCHRUN_BASE_URL": no_prefix, "BATCHRUN_API_KEYS": "a:b"})
    wrong_took = time.monotonic() - started
    unreachable = cli("run", "--no-progress", "--base-url", "http://127.0.0.1:9/v1", "--probe-patience", "0",
                      env={"BATCHRUN_API_KEYS": "a:b"})

    assert wrong.returncode == 5, wrong.stderr
    assert no_prefix in wrong.stderr and f"did you mean --base-url {sim.base_url}" in wrong.stderr
    assert wrong_took < 30  # at once: not after the catalogue probe's minute of patience (≈ 1.5 s on a quiet machine)
    assert unreachable.returncode == 5 and "127.0.0.1:9" in unreachable.stderr
    status = json.loads(cli("status", "--json").stdout)
    assert status["batches"][0]["queued"] == 3 and status["batches"][0]["failed"] == 0
    assert status["last_run"]["exit_code"] == 5 and "127.0.0.1:9" in status["last_run"]["outcome"]


def test_missing_keys_or_provider_is_a_usage_error(cli: Cli, sim: RunningSimulator) -> None:
    no_keys = cli("run", "--base-url", sim.base_url)
    no_url = cli("run", env={"BATCHRUN_API_KEYS": "a:b"})
    assert no_keys.returncode == 2 and "BATCHRUN_API_KEYS" in no_keys.stderr
    assert no_url.returncode == 2 and "BATCHRUN_BASE_URL" in no_url.stderr


def test_a_200_without_request_id_is_accepted(cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    sim.config.omit_request_id = True
    submit_jobs(cli, tmp_path, 3)
    assert cli("run", "--no-progress", env=provider_env(sim, make_keys(1))).returncode == 0
    results, _ = export(cli, tmp_path)
    assert [r["response"]["request_id"] for r in results] == [None, None, None]


def test_a_revoked_key_stays_out_in_later_runs_until_reset(cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    keys = make_keys(2)
    sim.config.revoked.add("key1")
    write_jobs(tmp_path / "first.jsonl", 5)
    cli("submit", str(tmp_path / "first.jsonl"))
    assert cli("run", "--no-progress", env=provider_env(sim, keys)).returncode == 0
    sim.config.revoked.clear()  # the user renewed it in the dashboard
    sim.state.reset()
    write_jobs(tmp_path / "second.jsonl", 5, prefix="two")
    cli("submit", str(tmp_path / "second.jsonl"))

    second = cli("run", "--no-progress", env=provider_env(sim, keys))
    used_in_second = set(sim.state.snapshot()["keys"])
    listed = cli("keys")
    reset = cli("keys", "reset", "key1")
    write_jobs(tmp_path / "third.jsonl", 6, prefix="three")
    cli("submit", str(tmp_path / "third.jsonl"))
    third = cli("run", "--no-progress", env=provider_env(sim, keys))

    assert second.returncode == 0 and "key1 is revoked" in second.stderr
    assert used_in_second == {"key2"}
    assert "batchrun keys reset key1" in second.stderr
    assert listed.stdout.splitlines()[1].split()[:2] == ["key1", "revoked"]
    assert reset.returncode == 0 and "back in rotation" in reset.stdout
    assert third.returncode == 0
    requests = {key: s["requests"] for key, s in sim.state.snapshot()["keys"].items()}
    assert requests.get("key1", 0) > 0, requests  # only the third run used it
    assert cli("keys", "reset", "nobody").returncode == 1


def test_429_cools_the_key_down_for_retry_after_and_every_job_still_finishes(
        cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    # batchrun is told no limit, so it learns the provider's from 429s + Retry-After.
    sim.config.rate_limit = Rate(10, 1.0)
    submit_jobs(cli, tmp_path, 50)

    result = cli("run", "--no-progress", "--concurrency", "8", "--max-attempts", "20",
                 env=provider_env(sim, make_keys(2)))

    assert result.returncode == 0, result.stderr
    stats = sim.state.snapshot()
    too_many = stats["by_status"].get("429", 0)
    assert too_many > 0 and stats["by_status"]["200"] == 50
    assert f"429s: {too_many}" in result.stdout
    # Honouring Retry-After (1 s) keeps the 429s to about the requests in flight when a window fills;
    # hammering a cooling key would produce hundreds.
    assert too_many <= 8 * 2 * 4, stats
    status = json.loads(cli("status", "--json").stdout)["batches"][0]
    assert status["succeeded"] == 50 and status["retries"] == too_many


def test_the_whole_flow_on_sqlite_and_postgresql(any_db_url: str, tmp_path: Path, sim: RunningSimulator) -> None:
    cli = Cli(tmp_path, {"BATCHRUN_DB": any_db_url})
    prompts = submit_jobs(cli, tmp_path, 40)

    result = cli("run", "--no-progress", env=provider_env(sim, make_keys(2)))

    assert result.returncode == 0, result.stderr
    results, errors = export(cli, tmp_path)
    assert [row["custom_id"] for row in results] == sorted(prompts) and errors == []
    assert json.loads(cli("status", "--json").stdout)["batches"][0]["succeeded"] == 40
