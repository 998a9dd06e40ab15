"""The catalogue drives the run: refresh, fallback when a model disappears, prechecks before sending,
`batchrun models` and `batchrun estimate` — against the simulator as a real server."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from conftest import Cli, export, make_keys, provider_env, write_jobs

from batchrun.simulator import RunningSimulator, apply_config_changes


def run_and_remove_model_midway(cli: Cli, sim: RunningSimulator, model: str, after: int,
                                *args: str) -> tuple[int, str, str]:
    """Start `batchrun run`, remove `model` from the provider once `after` completions succeeded."""
    process = cli.popen("run", "--no-progress", "--concurrency", "2", *args, env=provider_env(sim, make_keys(2)))
    deadline = time.monotonic() + 60
    while sim.state.snapshot()["completions_ok"] < after and time.monotonic() < deadline:
        time.sleep(0.005)
    apply_config_changes(sim.config, {"remove_models": [model]})
    stdout, stderr = process.communicate(timeout=120)
    return process.returncode, stdout, stderr


def test_a_model_removed_mid_run_falls_back_to_the_alias(cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    sim.config.latency = 0.03
    write_jobs(tmp_path / "jobs.jsonl", 60, model="sim-large")
    cli("submit", str(tmp_path / "jobs.jsonl"))

    code, stdout, stderr = run_and_remove_model_midway(cli, sim, "sim-large", 15, "--fallback", "fast")

    assert code == 0, stderr
    assert "model sim-large is gone" in stderr
    results, errors = export(cli, tmp_path)
    assert errors == [] and len(results) == 60
    before = [r for r in results if r["batchrun"]["fallback"] is None]
    after = [r for r in results if r["batchrun"]["fallback"] is not None]
    assert len(before) >= 15 and len(after) >= 10
    for row in before:
        assert row["batchrun"]["model_requested"] == row["batchrun"]["model_served"] == "sim-large"
    for row in after:
        extras = row["batchrun"]
        assert extras["model_requested"] == "sim-large" and extras["model_sent"] == "fast"
        assert extras["model_served"] == "sim-small" and "sim-large" in extras["fallback"]
        assert row["response"]["body"]["model"] == "sim-small"
    # a job that met the 404 was resolved again without spending an attempt
    assert {r["batchrun"]["attempts"] for r in results} == {1}
    # one refresh at the start, one (at most two) after the model vanished: not one per failed job
    assert 2 <= sim.state.snapshot()["models_requests"] <= 3
    status = json.loads(cli("status", "--json").stdout)["batches"][0]
    assert status["fallbacks"] == len(after)
    assert f"served by a fallback model: {len(after)}" in stdout


def test_without_a_fallback_the_jobs_of_a_vanished_model_fail_listing_the_catalogue(
        cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    sim.config.latency = 0.03
    write_jobs(tmp_path / "jobs.jsonl", 50, model="sim-large")
    cli("submit", str(tmp_path / "jobs.jsonl"))

    code, _, stderr = run_and_remove_model_midway(cli, sim, "sim-large", 15)

    assert code == 1, stderr
    results, errors = export(cli, tmp_path)
    assert len(results) >= 15 and len(results) + len(errors) == 50 and len(errors) >= 10
    for row in errors:
        assert row["error"]["code"] == "model_not_found"
        message = row["error"]["message"]
        assert "sim-large" in message and "sim-small" in message and "sim-mini" in message
        assert "--fallback" in message
    assert 2 <= sim.state.snapshot()["models_requests"] <= 3
    # each failed job met at most one 404: the others failed before sending
    assert sim.state.snapshot()["by_status"].get("404", 0) <= 4


def test_a_model_missing_from_the_start_falls_back_per_the_config_table(cli: Cli, sim: RunningSimulator,
                                                                      tmp_path: Path) -> None:
    (tmp_path / "batchrun.toml").write_text('[fallback]\n"old-model" = ["also-gone", "reasoning"]\n')
    write_jobs(tmp_path / "jobs.jsonl", 5, model="old-model")
    cli("submit", str(tmp_path / "jobs.jsonl"))

    result = cli("run", "--no-progress", env=provider_env(sim, make_keys(1)))

    assert result.returncode == 0, result.stderr
    assert "model old-model is not in the provider's catalogue: 5 job(s) fall back to reasoning" in result.stderr
    results, _ = export(cli, tmp_path)
    assert {(r["batchrun"]["model_sent"], r["batchrun"]["model_served"]) for r in results} == {("reasoning", "sim-large")}
    assert sim.state.snapshot()["by_status"] == {"200": 5}  # nothing was sent to the missing model


def precheck_jobs(path: Path) -> None:
    def line(custom_id: str, **body: Any) -> str:
        body.setdefault("messages", [{"role": "user", "content": "short"}])
        return json.dumps({"custom_id": custom_id, "model": "sim-mini", **body}) + "\n"

    path.write_text(
        line("fine")
        + line("too-long", messages=[{"role": "user", "content": "x" * 9000}])  # ~2250 tokens > 2048
        + line("wants-max", max_tokens=2000, messages=[{"role": "user", "content": "y" * 400}])
        + line("tools", tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
        + line("json", response_format={"type": "json_object"})
    )


def test_prechecks_fail_jobs_before_anything_is_sent(cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    precheck_jobs(tmp_path / "jobs.jsonl")
    cli("submit", str(tmp_path / "jobs.jsonl"))

    result = cli("run", "--no-progress", env=provider_env(sim, make_keys(1)))

    assert result.returncode == 1, result.stderr
    assert sim.state.snapshot()["requests_total"] == 1  # only "fine" was sent
    assert "prechecks:" in result.stderr and "context_length_exceeded" in result.stderr
    results, errors = export(cli, tmp_path)
    assert [r["custom_id"] for r in results] == ["fine"]
    codes = {row["custom_id"]: row["error"]["code"] for row in errors}
    assert codes == {"too-long": "context_length_exceeded", "wants-max": "context_length_exceeded",
                     "tools": "unsupported_parameter", "json": "unsupported_parameter"}
    messages = {row["custom_id"]: row["error"]["message"] for row in errors}
    assert "2048" in messages["too-long"] and "sim-mini" in messages["too-long"]
    assert "tools" in messages["tools"] and all(row["batchrun"]["attempts"] == 0 for row in errors)


def test_drop_unsupported_sends_without_the_parameter_and_records_it(cli: Cli, sim: RunningSimulator,
                                                                     tmp_path: Path) -> None:
    precheck_jobs(tmp_path / "jobs.jsonl")
    cli("submit", str(tmp_path / "jobs.jsonl"))

    result = cli("run", "--no-progress", "--drop-unsupported", env=provider_env(sim, make_keys(1)))

    assert result.returncode == 1, result.stderr  # the context window cannot be dropped
    results, errors = export(cli, tmp_path)
    by_id = {row["custom_id"]: row for row in results}
    assert sorted(by_id) == ["fine", "json", "tools"]
    assert by_id["tools"]["batchrun"]["dropped_parameters"] == ["tool_choice", "tools"] or \
        by_id["tools"]["batchrun"]["dropped_parameters"] == ["tools"]
    assert by_id["json"]["batchrun"]["dropped_parameters"] == ["response_format"]
    assert by_id["fine"]["batchrun"]["dropped_parameters"] == []
    assert {row["custom_id"] for row in errors} == {"too-long", "wants-max"}
    assert sim.state.snapshot()["by_status"] == {"200": 3}


def test_models_refreshes_and_shows_the_catalogue(cli: Cli, sim: RunningSimulator) -> None:
    table = cli("models", env=provider_env(sim, make_keys(1)))
    as_json = cli("models", "--json", env=provider_env(sim, make_keys(1)))

    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[0] == "model"
    small = next(line for line in lines if line.startswith("sim-small"))
    assert "8192" in small and "fast" in small and "0.1" in small
    mini = next(line for line in lines if line.startswith("sim-mini"))
    assert "?" in mini  # no prices published
    entries = {entry["id"]: entry for entry in json.loads(as_json.stdout)}
    assert entries["fast"]["alias_for"] == "sim-small" and entries["sim-mini"]["prompt_price"] is None
    assert sim.state.snapshot()["models_requests"] == 2 and sim.state.snapshot()["requests_total"] == 0


def test_estimate_on_10000_jobs_sends_no_completion(cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    write_jobs(tmp_path / "a.jsonl", 6000, model="fast", extra={"max_tokens": 100})
    write_jobs(tmp_path / "b.jsonl", 4000, model="sim-mini", prefix="mini")
    cli("submit", str(tmp_path / "a.jsonl"), "--batch", "big")
    cli("submit", str(tmp_path / "b.jsonl"), "--batch", "big")

    result = cli("estimate", "--batch", "big", env=provider_env(sim, make_keys(1)))

    assert result.returncode == 0, result.stderr
    assert sim.state.snapshot()["requests_total"] == 0 and sim.state.snapshot()["models_requests"] == 1
    out = result.stdout.replace(",", "")
    assert "6000" in out and "4000" in out and "sim-small" in out
    fast_line = next(line for line in out.splitlines() if line.split()[1:2] == ["fast"])
    # 6000 jobs × 100 max_tokens of completion; cost from sim-small's prices
    assert fast_line.split()[3:] == ["6000", "36000", "600000", "0.2436"]  # 36000×$0.1/M + 600000×$0.4/M
    assert "unknown" in next(line for line in out.splitlines() if line.split()[1:2] == ["sim-mini"])


def test_submit_estimate_uses_the_stored_catalogue_when_no_provider_is_configured(
        cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    assert cli("models", env=provider_env(sim, make_keys(1))).returncode == 0  # stores the catalogue
    write_jobs(tmp_path / "jobs.jsonl", 10, model="gone-model", extra={"max_tokens": 10})

    result = cli("submit", str(tmp_path / "jobs.jsonl"), "--estimate")

    assert result.returncode == 0, result.stderr
    assert "not refreshed" in result.stderr
    assert "model_not_found" in result.stdout and "10" in result.stdout
    assert sim.state.snapshot()["requests_total"] == 0
