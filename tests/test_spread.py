"""`run --processes N`: one run over N processes, each an ordinary runner with its share (batchrun/spread.py)."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from batchrun.errors import ConfigError
from batchrun.simulator import RunningSimulator
from batchrun.spread import Share, combined_exit_code, process_count, shares
from conftest import Cli, export, finish, make_keys, provider_env, submit_jobs, wait_for

# --- the shares and the exit code -------------------------------------------------------------------------


def test_the_concurrency_and_the_caps_are_divided_so_that_together_they_stay_within_the_run() -> None:
    parts = shares(3, 32, 10.0, 1000)
    assert [part.concurrency for part in parts] == [11, 11, 10]
    assert sum(part.max_cost or 0 for part in parts) <= 10.0 and parts[0].max_cost == pytest.approx(3.333333)
    assert [part.max_tokens for part in parts] == [333, 333, 333]
    assert shares(4, 2, None, None) == [Share(1, None, None, 4)] * 4  # at least one request each
    assert shares(2, 8, 0.05, None)[0].arguments() == ["--processes", "1", "--started-with", "2", "--no-progress",
                                                       "--concurrency", "4", "--max-cost", "0.025"]


def test_a_process_needs_a_key_of_its_own() -> None:
    warnings: list[str] = []
    assert process_count(4, 2, warnings.append) == 2
    assert process_count(2, 1, warnings.append) == 1
    assert process_count(2, 5, warnings.append) == 2
    assert warnings == ["--processes 4, but only 2 usable keys: a process needs a key of its own; starting 2",
                        "--processes 2, but only one usable key: a process needs a key of its own; running one"]
    with pytest.raises(ConfigError, match="at least 1"):
        process_count(0, 3, warnings.append)


@pytest.mark.parametrize(("codes", "work_left", "expected"), [
    ([0, 0], False, 0),
    ([0, 1], False, 1),
    ([4, 0], False, 0),  # one process's keys were revoked, the other finished the work
    ([3, 0], False, 0),  # one stopped by the deadline as the other took the last job
    ([4, 3], True, 4),
    ([3, 1], True, 3),
    ([0, 5], False, 5),  # the provider unreachable for one: said whatever is left
    ([2, 0], False, 2),
    ([0, 137], False, 137),  # a process killed: passed on
])
def test_the_runs_exit_code_is_the_worst_of_its_processes_unless_nothing_is_left(
        codes: list[int], work_left: bool, expected: int) -> None:
    assert combined_exit_code(codes, work_left) == expected


# --- real runs against the simulator ----------------------------------------------------------------------


def _runners(tmp_path: Path) -> list[tuple[int, dict[str, str]]]:
    """(requests, options) of each runner the queue has seen."""
    with sqlite3.connect(tmp_path / "queue.db") as conn:
        return [(requests, json.loads(options)) for requests, options in
                conn.execute("SELECT requests, options FROM runners ORDER BY id")]


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path, {"BATCHRUN_DB": f"sqlite:///{tmp_path / 'queue.db'}"})


def test_two_processes_share_the_work_and_the_keys_and_serve_each_job_once(
        cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    # 150 ms an answer: one process alone (4 at once) would take 7.5 s over the 200 jobs, far longer than a
    # loaded machine takes to start the second (at 20 ms, beside another suite, the first had done them all
    # before the second claimed any)
    sim.config.latency = 0.15
    prompts = submit_jobs(cli, tmp_path, 200)

    result = cli("run", "--processes", "2", "--concurrency", "8", "--max-cost", "5",
                 env=provider_env(sim, make_keys(2)))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 processes ended with exit codes 0, 0: exit 0" in result.stdout
    results, errors = export(cli, tmp_path)
    assert sorted(row["custom_id"] for row in results) == sorted(prompts) and errors == []
    served = sim.state.snapshot()
    assert served["completions_ok"] == 200 and served["duplicates"] == 0
    assert all(served["keys"][key]["requests"] > 0 for key in ("key1", "key2")), served["keys"]
    runners = _runners(tmp_path)
    assert len(runners) == 2 and sum(requests for requests, _ in runners) == 200
    assert [options["concurrency"] for _, options in runners] == ["4", "4"]
    assert [options["max_cost"] for _, options in runners] == ["$2.5", "$2.5"]


def test_a_sigterm_stops_every_process_and_the_next_run_finishes_the_rest(
        cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    sim.config.latency = 0.05
    prompts = submit_jobs(cli, tmp_path, 300)
    env = provider_env(sim, make_keys(2))

    process = cli.popen("run", "--processes", "2", "--concurrency", "4", "--no-progress", env=env)
    wait_for(lambda: sim.state.snapshot()["completions_ok"] >= 30)
    process.send_signal(signal.SIGTERM)
    out, err = finish(process)
    assert process.returncode == 3, out + err
    assert "exit 3" in out and "interrupted by SIGTERM" in err
    stopped_at = sim.state.snapshot()["completions_ok"]
    time.sleep(0.5)  # nothing keeps sending once the run has exited
    assert sim.state.snapshot()["completions_ok"] == stopped_at < 300

    again = cli("run", "--no-progress", env=env)
    assert again.returncode == 0, again.stderr
    results, _ = export(cli, tmp_path)
    assert sorted(row["custom_id"] for row in results) == sorted(prompts)
    assert sim.state.snapshot()["duplicates"] == 0


def test_more_processes_than_keys_start_one_per_key(cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    submit_jobs(cli, tmp_path, 20)
    result = cli("run", "--processes", "3", "--no-progress", env=provider_env(sim, make_keys(2)))
    assert result.returncode == 0, result.stderr
    assert "only 2 usable keys: a process needs a key of its own; starting 2" in result.stderr
    assert "2 processes ended" in result.stdout and len(_runners(tmp_path)) == 2


def test_a_metrics_file_is_refused_with_processes_before_any_request(
        cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    submit_jobs(cli, tmp_path, 5)
    result = cli("run", "--processes", "2", "--metrics-file", "batchrun.prom", env=provider_env(sim, make_keys(2)))
    assert result.returncode == 2, result.stderr
    assert "--processes 2 cannot keep one metrics file (batchrun.prom) yet" in result.stderr
    assert sim.state.snapshot()["requests_total"] == 0
