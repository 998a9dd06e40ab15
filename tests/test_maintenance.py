"""`batchrun retry` and `batchrun cancel` as a user runs them: the CLI as a subprocess against the
simulator, asserting what is printed, what the provider receives next, and what `export` writes."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import FAST_RETRY, Cli, batch_status, export, make_keys, provider_env, write_jobs

from batchrun.simulator import RunningSimulator


def submit(cli: Cli, path: Path, batch: str) -> None:
    result = cli("submit", str(path), "--batch", batch)
    assert result.returncode == 0, result.stderr


def test_retry_of_one_code_resends_only_those_jobs_with_fresh_attempts(
        cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    keys = make_keys(1)
    # 1. An outage: four jobs fail as no_capacity after two attempts each.
    write_jobs(tmp_path / "busy.jsonl", 4, prefix="busy")
    submit(cli, tmp_path / "busy.jsonl", "nightly")
    sim.config.fail_rate = 1.0
    outage = cli("run", "--no-progress", "--max-attempts", "2", "--transient-patience", "0", *FAST_RETRY,
                 env=provider_env(sim, keys))
    assert outage.returncode == 1, outage.stdout + outage.stderr
    # 2. The outage is over; two invalid jobs fail at once with the provider's own 422 and 400.
    sim.config.fail_rate = 0.0
    sim.config.publish_metadata = False
    invalid = [
        {"custom_id": "too-hot", "model": "fast", "temperature": 7, "messages": [{"role": "user", "content": "x"}]},
        {"custom_id": "no-json-mode", "model": "sim-mini", "response_format": {"type": "json_object"},
         "messages": [{"role": "user", "content": "x"}]},
    ]
    (tmp_path / "invalid.jsonl").write_text("".join(json.dumps(line) + "\n" for line in invalid))
    submit(cli, tmp_path / "invalid.jsonl", "nightly")
    assert cli("run", "--no-progress", *FAST_RETRY, env=provider_env(sim, keys)).returncode == 1
    before = batch_status(cli, "nightly")
    assert before["failed_by_code"] == {"no_capacity": 4, "validation_error": 1, "bad_request": 1}, before

    unknown = cli("retry", "--batch", "nope")
    typo = cli("retry", "--batch", "nightly", "--code", "no_capacty")
    retried = cli("retry", "--batch", "nightly", "--code", "no_capacity")
    after_retry = batch_status(cli, "nightly")
    sim.state.reset()
    rerun = cli("run", "--no-progress", *FAST_RETRY, env=provider_env(sim, keys))

    assert unknown.returncode == 2 and "no batch named 'nope'" in unknown.stderr
    assert typo.returncode == 0, typo.stderr
    assert "no failed job (code no_capacty) in batch nightly" in typo.stdout
    assert "no_capacity 4" in typo.stdout  # says which codes there are
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.strip() == ("re-queued 4 failed job(s) (code no_capacity) in batch nightly; "
                                      "`batchrun run` sends them again")
    assert after_retry["queued"] == 4 and after_retry["failed"] == 2
    assert after_retry["failed_by_code"] == {"validation_error": 1, "bad_request": 1}
    # Only the re-queued jobs were sent; the invalid ones stay failed and were not sent again.
    assert rerun.returncode == 1, rerun.stdout + rerun.stderr
    assert "succeeded: 4  failed: 0" in rerun.stdout
    assert sim.state.snapshot()["by_status"] == {"200": 4}
    results, errors = export(cli, tmp_path)
    assert [r["custom_id"] for r in results] == [f"busy-{i:05d}" for i in range(4)]  # once each, in order
    assert all(r["batchrun"]["attempts"] == 1 for r in results), [r["batchrun"]["attempts"] for r in results]
    assert sorted((e["custom_id"], e["error"]["code"]) for e in errors) == [
        ("no-json-mode", "bad_request"), ("too-hot", "validation_error")]
    assert all(e["batchrun"]["attempts"] == 1 for e in errors)

    # Without options: every failed job of every batch.
    everything = cli("retry")
    assert everything.returncode == 0 and everything.stdout.startswith("re-queued 2 failed job(s);")
    assert batch_status(cli, "nightly")["queued"] == 2


def test_cancel_stops_queued_jobs_and_keeps_finished_results(
        cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    keys = make_keys(1)
    write_jobs(tmp_path / "done.jsonl", 3, prefix="done")
    submit(cli, tmp_path / "done.jsonl", "nightly")
    assert cli("run", "--no-progress", env=provider_env(sim, keys)).returncode == 0
    write_jobs(tmp_path / "later.jsonl", 5, prefix="later")
    submit(cli, tmp_path / "later.jsonl", "nightly")
    write_jobs(tmp_path / "other.jsonl", 2, prefix="other")
    submit(cli, tmp_path / "other.jsonl", "other")

    unknown = cli("cancel", "--batch", "nope")
    cancelled = cli("cancel", "--batch", "nightly")
    again = cli("cancel", "--batch", "nightly")
    status_text = cli("status", "--batch", "nightly")
    nightly, other = batch_status(cli, "nightly"), batch_status(cli, "other")
    sim.state.reset()
    run = cli("run", "--no-progress", env=provider_env(sim, keys))

    assert unknown.returncode == 2 and "no batch named 'nope'" in unknown.stderr
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip() == "cancelled 5 queued job(s) in batch nightly; finished results stay"
    assert again.returncode == 0 and again.stdout.strip() == "no queued job to cancel in batch nightly"
    assert "cancelled: 5" in status_text.stdout
    assert (nightly["cancelled"], nightly["queued"], nightly["succeeded"]) == (5, 0, 3), nightly
    assert (other["cancelled"], other["queued"]) == (0, 2), other  # another batch is not touched
    # The next run sends the other batch only, and a cancelled job is not work left: exit 0.
    assert run.returncode == 0, run.stdout + run.stderr
    assert sim.state.snapshot()["requests_total"] == 2
    assert "left: 0" in run.stdout and "exit 0:" in run.stdout
    results, errors = export(cli, tmp_path)
    assert [r["custom_id"] for r in results] == ["done-00000", "done-00001", "done-00002",
                                                 "other-00000", "other-00001"]
    assert errors == []
    assert batch_status(cli, "nightly")["cancelled"] == 5
