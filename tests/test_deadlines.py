"""`--until HH:MM` from start to end: the deadline it sets, a deadline already past when the run starts,
and the requests still in flight when it comes, which are abandoned so that the run ends on time.

The runs go in this process against the simulator thread, with the time of day the test's choice
(`ShiftedClock`): the deadline is met in real time, a few seconds after the start, whatever the hour.
One goes through the command line, in a time zone where 07:00 is a few seconds away (`tz_where`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from conftest import Cli, ShiftedClock, batch_status, make_keys, provider_env, run_in_process, submit_jobs

from batchrun.config import build_settings
from batchrun.simulator import RunningSimulator


def local(hour: int, minute: int, second: int = 0) -> float:
    """Epoch seconds of that local time of day on 22 November 2026."""
    return time.mktime((2026, 11, 22, hour, minute, second, 0, 0, -1))


def until(text: str, now: float) -> float:
    """The deadline `batchrun run --until TEXT` sets when started at `now`."""
    deadline = build_settings({"until": text}, None, environ={}, now=now).deadline
    assert deadline is not None
    return deadline


async def test_until_a_time_already_past_when_the_run_starts_sends_nothing(
        cli: Cli, sim: RunningSimulator, tmp_path: Path, db_url: str) -> None:
    submit_jobs(cli, tmp_path, 5)
    deadline = until("07:00", local(6, 59))  # cron fired at 06:59 for a run to end by 07:00 ...
    assert deadline == local(7, 0)

    # ... and the runner only got going at 07:00:05 (a slow start, a long wait for the database)
    report = await run_in_process(db_url, sim.base_url, make_keys(1), deadline=deadline,
                                  clock=ShiftedClock(local(7, 0, 5)))

    assert report.exit_code == 3, report.reason
    assert "has passed; nothing was started" in report.reason and "07:00:00" in report.reason
    assert sim.state.snapshot()["requests_total"] == 0 and sim.state.snapshot()["models_requests"] == 0
    assert (batch_status(cli)["queued"], batch_status(cli)["running"]) == (5, 0)


async def test_until_abandons_the_requests_still_in_flight_at_the_deadline(
        cli: Cli, sim: RunningSimulator, tmp_path: Path, db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    sim.config.latency = 60.0  # no answer could come before the deadline
    submit_jobs(cli, tmp_path, 10)
    start = local(6, 59, 58)
    deadline = until("07:00", start)
    assert deadline - start == 2

    began = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="batchrun"):
        report = await run_in_process(db_url, sim.base_url, make_keys(1), concurrency=4, deadline=deadline,
                                      clock=ShiftedClock(start))
    took = time.monotonic() - began

    assert report.exit_code == 3, report.reason
    assert "deadline 2026-11-22 07:00:00 reached" in report.reason
    assert took < 30, took  # it ended at the deadline (≈ 2 s), not with the 60 s answers
    assert sim.state.snapshot()["max_in_flight"] == 4  # sent, then abandoned
    assert "4 request(s) still in flight" in caplog.text and "abandoned" in caplog.text
    status = batch_status(cli)
    assert (status["queued"], status["running"], status["succeeded"], status["attempts"]) == (10, 0, 0, 0)


def tz_where(clock: str, in_seconds: float) -> str:
    """A POSIX TZ value in which the local time `clock` (HH:MM) comes `in_seconds` from now."""
    hour, minute = map(int, clock.split(":"))
    ahead = (hour * 3600 + minute * 60 - in_seconds - time.time() % 86400) % 86400  # local − UTC
    if ahead > 43200:
        ahead -= 86400
    west = round(-ahead)  # POSIX counts hours west of Greenwich: TZ=XST+2 is two hours behind UTC
    sign, west = ("-" if west < 0 else "+"), abs(west)
    return f"XST{sign}{west // 3600:02d}:{west % 3600 // 60:02d}:{west % 60:02d}"


def test_run_until_a_time_of_day_ends_there_abandoning_what_is_still_in_flight(
        cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    sim.config.latency = 60.0  # no answer could come before the deadline
    submit_jobs(cli, tmp_path, 10)
    # 07:00 comes 8 s after the start: time enough for the command to start on a busy machine
    env = {**provider_env(sim, make_keys(1)), "TZ": tz_where("07:00", 8)}

    began = time.monotonic()
    result = cli("run", "--no-progress", "--concurrency", "4", "--until", "07:00", env=env)
    took = time.monotonic() - began

    assert result.returncode == 3, result.stdout + result.stderr
    assert "07:00:00 reached" in result.stdout + result.stderr, result.stderr
    assert "4 request(s) still in flight" in result.stderr
    assert took < 40, took  # at the deadline (≈ 8 s), not with the 60 s answers
    status = batch_status(cli)
    assert (status["queued"], status["running"], status["succeeded"]) == (10, 0, 0)


def test_until_is_the_next_occurrence_of_a_local_time() -> None:
    assert until("07:00", local(6, 30)) - local(6, 30) == 30 * 60
    assert until("06:00", local(6, 30)) - local(6, 30) == 23.5 * 3600
