"""`batchrun run --log-file / --log-format` as cron uses them: a run at 01:00 read at 08:00.

The CLI runs as a subprocess against the simulator; the tests read the log file a user would read.
"""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path
from typing import Any

from conftest import Cli, make_keys, provider_env, submit_jobs, write_jobs

from batchrun.simulator import RunningSimulator

STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d) ")


def parse_time(text: str) -> datetime.datetime:
    moment = datetime.datetime.fromisoformat(text)
    assert moment.tzinfo is not None, text  # unambiguous when read on another machine
    return moment


def test_log_file_gets_the_warnings_and_the_closing_summary_with_timestamps(
        cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    keys = make_keys(2)
    sim.config.revoked.add("key1")
    submit_jobs(cli, tmp_path, 6)
    log_file = tmp_path / "batchrun.log"

    started = datetime.datetime.now().astimezone()
    first = cli("run", "--no-progress", "--log-file", str(log_file), env=provider_env(sim, keys))
    write_jobs(tmp_path / "more.jsonl", 2, prefix="more")
    cli("submit", str(tmp_path / "more.jsonl"))
    second = cli("run", "--no-progress", env={**provider_env(sim, keys), "BATCHRUN_LOG_FILE": str(log_file)})

    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    # stderr keeps its format, without a time.
    assert "batchrun: WARNING: key key1 taken out of rotation" in first.stderr
    lines = log_file.read_text().splitlines()
    for line in lines:
        found = STAMP.match(line)
        assert found, f"no timestamp on {line!r}"
        assert started - datetime.timedelta(seconds=5) <= parse_time(found.group(1)) <= (
            datetime.datetime.now().astimezone())
    bodies = [STAMP.sub("", line) for line in lines]
    assert "batchrun: WARNING: key key1 taken out of rotation" in "\n".join(bodies)
    assert "batchrun: INFO: model fast: 6 job(s) (served by sim-small)" in bodies  # the opening summary
    # Both runs are there (appended), each ending with its closing summary, as printed on stdout.
    first_summary = [f"batchrun: INFO: {line}" for line in first.stdout.splitlines()]
    second_summary = [f"batchrun: INFO: {line}" for line in second.stdout.splitlines()]
    assert first_summary[-1].startswith("batchrun: INFO: exit 0:")
    assert bodies[-len(second_summary):] == second_summary
    assert "\n".join(first_summary) in "\n".join(bodies[:-len(second_summary)])
    assert "succeeded: 6" in first_summary[0] and "succeeded: 2" in second_summary[0]
    text = log_file.read_text()
    assert all(key.split(":")[1] not in text for key in keys)


def test_a_run_that_cannot_start_says_why_in_the_log_file(cli: Cli, tmp_path: Path) -> None:
    submit_jobs(cli, tmp_path, 2)
    log_file = tmp_path / "batchrun.log"

    result = cli("run", "--no-progress", "--log-file", str(log_file), "--base-url", "http://127.0.0.1:9/v1",
                 "--probe-patience", "0", env={"BATCHRUN_API_KEYS": "a:b"})
    missing_folder = cli("run", "--log-file", str(tmp_path / "no" / "such.log"))

    assert result.returncode == 5, result.stderr
    assert result.stderr.startswith("batchrun: error: ") and "127.0.0.1:9" in result.stderr
    last = STAMP.sub("", log_file.read_text().splitlines()[-1])
    assert last.startswith("batchrun: ERROR: ") and "127.0.0.1:9" in last and last.endswith("(exit 5)")
    assert missing_folder.returncode == 2
    assert "cannot open log file" in missing_folder.stderr and "such.log" in missing_folder.stderr


def json_lines(text: str) -> list[dict[str, Any]]:
    records = []
    for line in text.splitlines():
        record = json.loads(line)  # every line, not only most of them
        assert isinstance(record, dict), line
        assert {"time", "level", "logger", "message"} <= record.keys(), line
        parse_time(record["time"])
        records.append(record)
    return records


def test_json_log_format_on_stderr_and_in_the_log_file(cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    keys = make_keys(2)
    sim.config.revoked.add("key1")
    submit_jobs(cli, tmp_path, 5)
    log_file = tmp_path / "batchrun.jsonl"

    result = cli("run", "--no-progress", "--log-format", "json", "--log-file", str(log_file),
                 env=provider_env(sim, keys))
    after_first = log_file.read_text()
    write_jobs(tmp_path / "more.jsonl", 2, prefix="more")
    cli("submit", str(tmp_path / "more.jsonl"))
    failed = cli("run", "--base-url", "http://127.0.0.1:9/v1", "--probe-patience", "0",
                 env={"BATCHRUN_API_KEYS": "a:b", "BATCHRUN_LOG_FORMAT": "json", "BATCHRUN_LOG_FILE": str(log_file)})

    assert result.returncode == 0, result.stderr
    on_stderr = json_lines(result.stderr)
    warning = next(r for r in on_stderr if "taken out of rotation" in r["message"])
    assert warning["level"] == "WARNING" and warning["logger"] == "batchrun.runner"
    assert "key1" in warning["message"]
    assert {"level": "INFO", "logger": "batchrun.progress", "message": "model fast: 5 job(s) (served by sim-small)"}.items() <= next(
        r for r in on_stderr if r["logger"] == "batchrun.progress").items()
    in_file = json_lines(after_first)
    assert [r["message"] for r in in_file if r["logger"] != "batchrun.outcome"][:len(on_stderr)] == [
        r["message"] for r in on_stderr]
    summary = [r for r in in_file if r["logger"] == "batchrun.outcome"]
    assert [r["message"] for r in summary] == result.stdout.splitlines()  # stdout stays plain text
    assert summary[-1]["message"].startswith("exit 0:") and summary[-1]["exit_code"] == 0
    # A run that cannot start ends with a JSON error, on stderr and in the file, with its exit code.
    assert failed.returncode == 5
    error = json_lines(failed.stderr)[-1]
    assert error["level"] == "ERROR" and "127.0.0.1:9" in error["message"] and error["exit_code"] == 5
    assert log_file.read_text().startswith(after_first)  # appended
    assert json_lines(log_file.read_text())[-1] == error
    assert all(key.split(":")[1] not in log_file.read_text() + result.stderr for key in keys)
