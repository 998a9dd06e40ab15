"""The attempts log of a real run against the simulator: every request the provider received is one
attempt, per key and status; refused jobs, fallbacks, key events and failures are what the report shows;
`status` has the last run's figures; `prune` drops old runs' attempts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import FAST_RETRY, Cli, make_keys, provider_env

from batchrun.simulator import RunningSimulator
from batchrun.store import Store


pytestmark = pytest.mark.both_databases


def _write(path: Path, jobs: list[dict]) -> None:
    path.write_text("".join(json.dumps(job) + "\n" for job in jobs))


def _job(i: int, model: str = "fast", **extra: object) -> dict:
    return {"custom_id": f"job-{i:03d}", "model": model,
            "messages": [{"role": "user", "content": f"question {i}"}], **extra}


def test_a_run_logs_every_request_the_provider_received(cli: Cli, sim: RunningSimulator, tmp_path: Path,
                                                        db_url: str) -> None:
    sim.config.fail_rate = 0.2
    sim.config.revoked = {"key3"}
    jobs = [_job(i) for i in range(60)]
    jobs += [_job(100 + i, model="retired-model") for i in range(5)]  # fall back to `fast`
    jobs.append(_job(200, model="sim-mini", max_tokens=100_000))  # beyond sim-mini's context: refused
    _write(tmp_path / "jobs.jsonl", jobs)
    assert cli("submit", str(tmp_path / "jobs.jsonl")).returncode == 0

    result = cli("run", "--no-progress", "--fallback", "fast", "--max-attempts", "10", *FAST_RETRY,
                 env=provider_env(sim, make_keys(3)))

    assert result.returncode == 1, result.stderr  # the refused job failed
    received = sim.state.snapshot()
    with Store.open(db_url) as store:
        data = store.report_data()
    # one attempt per request the provider received, per key, with the status it answered
    per_key = {key: stats["requests"] for key, stats in received["keys"].items()}
    assert data.attempts == sum(per_key.values()) == sum(received["by_status"].values())
    assert {key: sum(b.requests for b in data.keys if b.key_id == key) for key in per_key} == per_key
    assert data.succeeded == received["by_status"]["200"] == 65
    assert sum(f.count for f in data.failures if f.status == 503) == received["by_status"]["503"] > 0
    revoked = next(f for f in data.failures if f.code == "key_rejected")
    assert revoked.status == 401 and revoked.count == received["by_status"]["401"]
    assert "revoked" in revoked.example and "secret" not in revoked.example
    # refused before sending: a precheck, not a request
    assert data.prechecks == {"context_length_exceeded": 1}
    assert [(f.requested, f.sent) for f in data.fallbacks] == [("retired-model", "fast")]
    assert data.fallbacks[0].attempts >= 5 and "retired-model" in data.fallbacks[0].reason
    assert any(e.kind == "key_state" and e.key_id == "key3" and "revoked" in e.message for e in data.events)
    assert data.events[-1].kind != "stop" or "succeeded" not in data.events[-1].message
    assert sum(m.requests for m in data.models) == 65
    assert data.p50 is not None and data.p99 is not None and data.p50 <= data.p99
    assert data.run.exit_code == 1 and data.run.options["keys"] == "key1, key2, key3"
    assert all("secret" not in value for value in data.run.options.values())

    status = json.loads(cli("status", "--json").stdout)["last_run"]
    assert status["id"] == data.run.id and status["requests"] == data.attempts
    assert status["latency_p50"] == pytest.approx(data.p50) and status["requests_per_second"] > 0
    text = cli("status").stdout
    assert f"{data.attempts} request(s) at" in text and "p99" in text


def test_report_and_prune_through_the_cli(cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    _write(tmp_path / "jobs.jsonl", [_job(i) for i in range(20)])
    assert cli("submit", str(tmp_path / "jobs.jsonl")).returncode == 0
    assert cli("run", "--no-progress", env=provider_env(sim, make_keys(2))).returncode == 0

    made = cli("report", "--output", str(tmp_path / "report.html"))
    assert made.returncode == 0, made.stderr
    assert "report of run 1 (20 request(s))" in made.stderr
    assert "<svg" in (tmp_path / "report.html").read_text()
    assert cli("report", "--run", "7", "-o", "-").stderr.count("--run 7: no such run") == 1
    assert "no batch named 'other'" in cli("report", "--batch", "other", "-o", "-").stderr
    scoped = cli("report", "--batch", "jobs", "--run", "1", "-o", str(tmp_path / "scoped.html"))
    assert scoped.returncode == 0 and "(20 request(s))" in scoped.stderr

    kept = cli("prune", "--older-than", "30d")
    assert kept.returncode == 0 and "pruned 0 attempt(s)" in kept.stdout
    pruned = cli("prune", "--older-than", "0s")
    assert pruned.returncode == 0 and "pruned 20 attempt(s)" in pruned.stdout, pruned.stdout
    after = cli("report", "-o", "-")
    assert after.returncode != 0 and "no run has made an attempt yet" in after.stderr
    assert cli("prune", "--older-than", "soon").stderr.count("--older-than: 'soon' is not a duration") == 1
