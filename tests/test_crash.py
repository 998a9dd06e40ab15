"""Kill `batchrun run` with SIGKILL mid-run, run again: nothing lost, nothing exported twice, and the
provider saw only the requests that were in flight at the kill twice."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from conftest import Cli, batch_status, finish, make_keys, provider_env, read_jsonl, submit_jobs, wait_for

from batchrun.simulator import RunningSimulator
from batchrun.units import Rate

CONCURRENCY = 8

pytestmark = pytest.mark.both_databases


def test_sigkill_mid_run_then_resume_exports_every_job_exactly_once(cli: Cli, sim: RunningSimulator,
                                                                    tmp_path: Path) -> None:
    sim.config.latency = 0.03
    prompts = submit_jobs(cli, tmp_path, 240)
    env = provider_env(sim, make_keys(2))
    args = ("run", "--no-progress", "--concurrency", str(CONCURRENCY))

    for threshold in (40, 110):
        process = cli.popen(*args, env=env)
        wait_for(lambda: sim.state.snapshot()["completions_ok"] >= threshold, timeout=60)
        assert process.poll() is None  # the kill lands mid-run, not on a run that had finished
        process.send_signal(signal.SIGKILL)
        finish(process, 10)
        # what it had claimed stays leased to the dead process, for the next run to take back
        assert batch_status(cli)["running"] > 0
    # Answered by the provider but not committed when the runner died: these, and only these, are sent
    # again (counted once the requests the dead runner left in flight have been answered).
    wait_for(lambda: sim.state.snapshot()["in_flight"] == 0, timeout=10)
    answered = sim.state.snapshot()["completions_ok"]
    committed = json.loads(cli("status", "--json").stdout)["batches"][0]["succeeded"]

    final = cli("-v", *args, env=env)

    assert final.returncode == 0, final.stderr
    # at once, from the dead process's pid, not when the leases (60 s) run out
    assert "requeued the jobs of 1 runner(s) that died" in final.stderr
    cli("export", "--output", str(tmp_path / "results.jsonl"))
    results = read_jsonl(tmp_path / "results.jsonl")
    assert sorted(row["custom_id"] for row in results) == sorted(prompts)
    for row in results:
        assert row["response"]["body"]["choices"][0]["message"]["content"] == "echo: " + prompts[row["custom_id"]]
    stats = sim.state.snapshot()
    # Nothing committed is sent again: every duplicate answers a request whose answer was lost at a kill.
    assert 0 < committed < len(prompts)
    assert stats["duplicates"] <= answered - committed, (stats, answered, committed)
    assert stats["prompts_served"] == len(prompts)  # the provider answered each job's prompt, and no other
    status = json.loads(cli("status", "--json").stdout)["batches"][0]
    assert (status["succeeded"], status["queued"], status["running"]) == (240, 0, 0)


def test_sigterm_stops_cleanly_with_exit_3_and_the_next_run_finishes(cli: Cli, sim: RunningSimulator,
                                                                      tmp_path: Path) -> None:
    sim.config.latency = 0.05
    prompts = submit_jobs(cli, tmp_path, 200)
    env = provider_env(sim, make_keys(1))

    process = cli.popen("run", "--no-progress", "--concurrency", "4", env=env)
    wait_for(lambda: sim.state.snapshot()["completions_ok"] >= 20, timeout=60)
    process.send_signal(signal.SIGTERM)
    out, err = finish(process, 30)

    assert process.returncode == 3, err
    assert "interrupted by SIGTERM" in out + err and "exit 3" in out
    status = json.loads(cli("status", "--json").stdout)["batches"][0]
    assert status["running"] == 0 and 0 < status["succeeded"] < 200  # in-flight finished, nothing held
    assert status["succeeded"] == sim.state.snapshot()["completions_ok"]  # every answer was checkpointed
    assert cli("run", "--no-progress", env=env).returncode == 0
    cli("export", "--output", str(tmp_path / "results.jsonl"))
    assert sorted(r["custom_id"] for r in read_jsonl(tmp_path / "results.jsonl")) == sorted(prompts)
    assert sim.state.snapshot()["duplicates"] == 0


def test_two_runners_on_one_sqlite_file_send_every_job_once(cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    # 2 keys of 20/1s: one runner alone would need ~7 s, so the second one gets a key handed over.
    sim.config.rate_limit = Rate(20, 1.0)
    prompts = submit_jobs(cli, tmp_path, 300)
    env = provider_env(sim, make_keys(2))

    runners = [cli.popen("run", "--no-progress", "--rate-limit", "20/1s", env=env) for _ in range(2)]
    outputs = [finish(runner, 120) for runner in runners]

    for runner, (out, err) in zip(runners, outputs):
        assert runner.returncode == 0, err
        assert "locked" not in err
    done_by_each = [int(out.split("succeeded: ")[1].split()[0]) for out, _ in outputs]
    assert sum(done_by_each) == 300 and min(done_by_each) > 0  # both really worked
    stats = sim.state.snapshot()
    assert stats["completions_ok"] == 300 and stats["duplicates"] == 0
    # one runner per key at a time: no key ever went over its window, although both runners used it
    assert max(stats["max_window"].values()) <= 20 and stats["by_status"] == {"200": 300}
    cli("export", "--output", str(tmp_path / "results.jsonl"))
    assert sorted(r["custom_id"] for r in read_jsonl(tmp_path / "results.jsonl")) == sorted(prompts)


def test_a_second_signal_stops_at_once_and_requeues_what_was_in_flight(cli: Cli, sim: RunningSimulator,
                                                                       tmp_path: Path) -> None:
    sim.config.latency = 120.0  # every request would take 2 minutes
    submit_jobs(cli, tmp_path, 10)
    env = provider_env(sim, make_keys(1))

    process = cli.popen("run", "--no-progress", "--concurrency", "4", "--grace", "60s", env=env)
    wait_for(lambda: sim.state.snapshot()["in_flight"] == 4, timeout=30)
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    out, err = finish(process, 90)

    assert process.returncode == 3, err
    # did not wait for the grace period (60 s) nor for the answers (120 s): ≈ 0.5 s
    assert time.monotonic() - started < 30
    assert "stopped at once" in out + err
    status = json.loads(cli("status", "--json").stdout)["batches"][0]
    assert (status["queued"], status["running"], status["succeeded"]) == (10, 0, 0)


def test_a_writer_that_fails_mid_run_stops_the_run_and_the_next_run_loses_nothing(
        cli: Cli, sim: RunningSimulator, tmp_path: Path, db_url: str) -> None:
    prompts = submit_jobs(cli, tmp_path, 100)
    env = provider_env(sim, make_keys(2))
    # the database refuses the commit that holds job-00050's result: the writer task dies mid-run
    refuse = ("CREATE {} refuse BEFORE UPDATE ON jobs FOR EACH ROW WHEN (NEW.state = 'succeeded' AND "
              "NEW.custom_id = 'job-00050') {}")
    with _sql(db_url) as execute:
        if db_url.startswith("sqlite"):
            execute(refuse.format("TRIGGER", "BEGIN SELECT RAISE(ABORT, 'refused by a test trigger'); END"))
        else:
            execute("CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN "
                    "RAISE EXCEPTION 'refused by a test trigger'; END $$ LANGUAGE plpgsql")
            execute(refuse.format("TRIGGER", "EXECUTE FUNCTION refuse()"))

    first = cli("run", "--no-progress", "--concurrency", "4", env=env)

    assert first.returncode == 3, first.stdout + first.stderr  # stopped with work left: run again
    assert "writer failed" in first.stderr and "refused by a test trigger" in first.stderr
    status = batch_status(cli)
    assert status["running"] == 0 and status["failed"] == 0 and status["succeeded"] < 100
    with _sql(db_url) as execute:
        execute("DROP TRIGGER refuse" + ("" if db_url.startswith("sqlite") else " ON jobs"))

    second = cli("run", "--no-progress", "--concurrency", "4", env=env)

    assert second.returncode == 0, second.stderr
    cli("export", "--output", str(tmp_path / "results.jsonl"))
    results = read_jsonl(tmp_path / "results.jsonl")
    assert sorted(row["custom_id"] for row in results) == sorted(prompts)  # each exactly once
    for row in results:
        assert row["response"]["body"]["choices"][0]["message"]["content"] == "echo: " + prompts[row["custom_id"]]
    # the answers of the refused commit were sent again, and nothing else was
    assert 0 < sim.state.snapshot()["duplicates"] <= 100 - status["succeeded"]


@contextmanager
def _sql(db_url: str) -> Iterator[Callable[[str], Any]]:
    """Statements on the test's database, committed at the end of the block, by its own driver."""
    if db_url.startswith("sqlite:///"):
        with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:
            yield conn.execute
        conn.close()
    else:
        import psycopg

        with psycopg.connect(db_url) as pg:
            yield pg.execute
