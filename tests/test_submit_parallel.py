"""`batchrun submit` of a file big enough for the worker processes: the user sees what one process
gives (every line once, in file order; problems named by file and line, in file order; resubmission
idempotent), and a worker that dies or fails stops the submit with a clear error, after which
submitting again completes the file with nothing lost and nothing doubled.

Workers start above BATCHRUN_SUBMIT_PARALLEL_LINES lines left to load (20,000 by default). These tests
set it to 0, so files of a few chunks (5,000 lines each) go through the workers.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import Cli

#: three workers for four chunks or more: the token goes round more than once
PARALLEL = {"BATCHRUN_SUBMIT_PARALLEL_LINES": "0", "BATCHRUN_SUBMIT_WORKERS": "3"}


def job(custom_id: str, content: str = "hello") -> str:
    return json.dumps({"custom_id": custom_id, "model": "fast", "messages": [{"role": "user", "content": content}]})


def job_lines(count: int, start: int = 1) -> list[str]:
    return [job(f"c{i}") for i in range(start, start + count)]


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def queued_ids(url: str) -> list[str]:
    """custom_ids of the queued jobs in id order: the order runs claim them and exports list them."""
    from batchrun.store import Store

    with Store.open(url) as store:
        return [row.custom_id for row in store.export_rows(["queued"])]


@pytest.fixture
def any_cli(tmp_path: Path, any_db_url: str) -> Cli:
    return Cli(tmp_path, {"BATCHRUN_DB": any_db_url, **PARALLEL})


def test_every_line_loads_once_in_file_order_and_problems_come_in_file_order(
        any_cli: Cli, any_db_url: str, tmp_path: Path) -> None:
    lines = job_lines(18_000)
    lines[3 - 1] = "{not json"
    lines[7002 - 1] = json.dumps({"custom_id": "c7002", "messages": [{"role": "user", "content": "x"}]})
    lines[9000 - 1] = ""  # blank: ignored, still counted
    lines[12_000 - 1] = job("c100", "another body")  # c100 (line 100) is in the first chunk: a conflict
    lines[15_000 - 1] = json.dumps({"custom_id": "c15000", "model": "fast", "messages": []})
    lines[16_000 - 1] = lines[15_999 - 1]  # the same job twice: a duplicate
    path = write(tmp_path / "big.jsonl", lines)

    result = any_cli("submit", str(path))

    assert result.returncode == 1, result.stderr
    reported = result.stderr.strip().splitlines()
    assert [message.split(":")[1] for message in reported] == ["3", "7002", "12000", "15000"], result.stderr
    assert reported[1].startswith(f"{path}:7002: model: ")
    assert reported[2].startswith(f"{path}:12000: custom_id: 'c100'") and "conflict" in reported[2]
    assert reported[3].startswith(f"{path}:15000: messages: ")
    skipped = {3, 7002, 9000, 12_000, 15_000, 16_000}
    expected = [f"c{i}" for i in range(1, 18_001) if i not in skipped]
    assert (f"loaded {len(expected)}, duplicates skipped 1, conflicts 1, rejected 3" in result.stdout), result.stdout
    assert queued_ids(any_db_url) == expected


def test_resubmitting_a_grown_file_loads_only_the_new_lines(any_cli: Cli, any_db_url: str, tmp_path: Path) -> None:
    path = write(tmp_path / "grows.jsonl", job_lines(12_000))
    first = any_cli("submit", str(path))
    write(path, job_lines(18_000))

    grown = any_cli("submit", str(path))
    again = any_cli("submit", str(path))

    assert first.returncode == 0 and "loaded 12000, duplicates skipped 0" in first.stdout, first.stderr
    assert grown.returncode == 0 and "loaded 6000, duplicates skipped 12000" in grown.stdout, grown.stderr
    assert again.returncode == 0 and "loaded 0, duplicates skipped 18000" in again.stdout, again.stderr
    assert queued_ids(any_db_url) == [f"c{i}" for i in range(1, 18_001)]


def test_stdin_goes_through_the_workers_too(any_cli: Cli, any_db_url: str) -> None:
    data = ("\n".join(job_lines(11_000)) + "\n").encode()
    result = any_cli("submit", "-", "--batch", "piped", input=data)
    assert result.returncode == 0, result.stderr
    assert "batch piped: loaded 11000" in result.stdout
    assert queued_ids(any_db_url) == [f"c{i}" for i in range(1, 11_001)]


def test_strict_stays_one_transaction_and_rejects_a_big_file(any_cli: Cli, any_db_url: str, tmp_path: Path) -> None:
    lines = job_lines(12_000)
    lines[-1] = "{oops"
    result = any_cli("submit", "--strict", str(write(tmp_path / "strict.jsonl", lines)))
    assert result.returncode == 1
    assert "nothing loaded" in result.stdout and ":12000: " in result.stderr
    assert queued_ids(any_db_url) == []


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


#: `python -m batchrun ARGS` as a terminal starts it: SIGINT handled (KeyboardInterrupt) and not blocked. A
#: child inherits ignored signals and the signal mask, and a test runner's worker process may pass on either.
_AS_FROM_A_TERMINAL = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                       "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); "
                       "runpy.run_module('batchrun', run_name='__main__', alter_sys=True)")


def _sigint_of(pid: int) -> str:
    """How process `pid` takes SIGINT, from /proc: 'caught', 'ignored', 'blocked' or 'default'."""
    masks = {key: int(value, 16) for key, value in (line.split(":\t") for line in
             Path(f"/proc/{pid}/status").read_text().splitlines()) if key in ("SigBlk", "SigIgn", "SigCgt")}
    bit = 1 << (signal.SIGINT - 1)
    for name, key in (("blocked", "SigBlk"), ("ignored", "SigIgn"), ("caught", "SigCgt")):
        if masks[key] & bit:
            return name
    return "default"


def _start_and_wait_for_workers(cli: Cli, path: Path, count: int) -> tuple[subprocess.Popen[str], list[int]]:
    process = subprocess.Popen([sys.executable, "-c", _AS_FROM_A_TERMINAL, "submit", str(path)], cwd=cli.cwd,
                               env=cli.environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    deadline = time.monotonic() + 30
    while len(workers := _children(process.pid)) < count:
        assert process.poll() is None and time.monotonic() < deadline, "the workers never started"
        time.sleep(0.001)
    # the premise of a Ctrl-C test: the submit takes SIGINT as a user's terminal would deliver it. (It blocks
    # SIGINT while it forks its workers: the last one may be seen before the main process unblocks it.)
    while (taken := _sigint_of(process.pid)) == "blocked" and time.monotonic() < deadline:
        time.sleep(0.001)
    assert taken == "caught", taken
    return process, workers


@contextmanager
def inserts_held(url: str) -> Iterator[None]:
    """Holds the queue's write lock (SQLite) or a lock on its jobs table that no insert gets past
    (PostgreSQL): a submit started meanwhile starts its workers, which parse their chunks and then wait
    to insert, so the submit cannot finish before the test has stopped it, however busy the machine."""
    if url.startswith("sqlite:///"):
        import sqlite3

        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield
            conn.execute("ROLLBACK")
        finally:
            conn.close()
    else:
        import psycopg

        with psycopg.connect(url) as conn:
            conn.execute("LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE")
            yield
            conn.rollback()


def _gone(pids: list[int]) -> bool:
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_killed_worker_stops_the_submit_and_submitting_again_completes_it(
        any_db_url: str, tmp_path: Path) -> None:
    cli = Cli(tmp_path, {"BATCHRUN_DB": any_db_url, "BATCHRUN_SUBMIT_PARALLEL_LINES": "0",
                         "BATCHRUN_SUBMIT_WORKERS": "2"})
    path = write(tmp_path / "killed.jsonl", job_lines(25_000))
    assert cli("db", "upgrade").returncode == 0
    with inserts_held(any_db_url):
        process, workers = _start_and_wait_for_workers(cli, path, 2)
        os.kill(workers[-1], signal.SIGKILL)
        out, err = process.communicate(timeout=60)

    assert process.returncode == 1, (out, err)
    assert "killed by signal 9" in err and "submit the file again to load the rest" in err, err
    assert "Traceback" not in err
    assert _gone(workers)
    again = cli("submit", str(path))
    assert again.returncode == 0, again.stderr
    counts = re.search(r"loaded (\d+), duplicates skipped (\d+)", again.stdout)
    assert counts is not None, again.stdout
    loaded, duplicates = int(counts[1]), int(counts[2])
    assert loaded + duplicates == 25_000 and loaded > 0
    assert queued_ids(any_db_url) == [f"c{i}" for i in range(1, 25_001)]


def test_ctrl_c_stops_every_worker_and_submitting_again_completes_it(cli: Cli, db_url: str, tmp_path: Path) -> None:
    cli.env.update(PARALLEL)
    path = write(tmp_path / "interrupted.jsonl", job_lines(25_000))
    assert cli("db", "upgrade").returncode == 0
    with inserts_held(db_url):
        process, workers = _start_and_wait_for_workers(cli, path, 3)
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
        _, err = process.communicate(timeout=60)

    assert process.returncode != 0 and "Traceback" not in err, err
    assert _gone(workers)
    again = cli("submit", str(path))
    assert again.returncode == 0, again.stderr
    assert queued_ids(db_url) == [f"c{i}" for i in range(1, 25_001)]


def test_a_database_error_in_a_worker_names_the_lines_and_keeps_what_loaded(cli: Cli, db_url: str,
                                                                            tmp_path: Path) -> None:
    import sqlite3

    cli.env.update(PARALLEL)
    assert cli("db", "upgrade").returncode == 0
    database = db_url.removeprefix("sqlite:///")
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON jobs WHEN NEW.custom_id = 'c12345' "
                     "BEGIN SELECT RAISE(ABORT, 'refused by a test trigger'); END")
    path = write(tmp_path / "refused.jsonl", job_lines(20_000))

    result = cli("submit", str(path))

    assert result.returncode == 1
    assert "refused by a test trigger" in result.stderr and "lines 10001–15000" in result.stderr, result.stderr
    assert "every line up to 10000 is loaded" in result.stderr, result.stderr
    assert queued_ids(db_url) == [f"c{i}" for i in range(1, 10_001)]
    with sqlite3.connect(database) as conn:
        conn.execute("DROP TRIGGER refuse")
    again = cli("submit", str(path))
    assert again.returncode == 0 and "loaded 10000, duplicates skipped 10000" in again.stdout, again.stderr
    assert queued_ids(db_url) == [f"c{i}" for i in range(1, 20_001)]


def test_small_files_load_in_this_process(tmp_path: Path) -> None:
    """Up to `parallel_lines` lines load here, more in the workers: told apart by what a failure of the
    database says (only the workers' load says how far the file got, as each chunk commits in turn)."""
    import sqlite3

    from batchrun import loader
    from batchrun.errors import BatchrunError
    from batchrun.store import Store

    path = write(tmp_path / "small.jsonl", job_lines(300))
    database = tmp_path / "q.db"
    with Store.open(f"sqlite:///{database}") as store:
        with sqlite3.connect(database) as conn:
            conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON jobs WHEN NEW.custom_id = 'c300' "
                         "BEGIN SELECT RAISE(ABORT, 'refused by a test trigger'); END")
        conn.close()
        with pytest.raises(BatchrunError) as here:
            loader.submit_file(store, str(path), None, False, print, workers=2, parallel_lines=300)
        with pytest.raises(BatchrunError) as in_workers:
            loader.submit_file(store, str(path), "other", False, print, workers=2, parallel_lines=299)
    assert "refused by a test trigger" in str(here.value) and "submit the file again" not in str(here.value)
    assert "refused by a test trigger" in str(in_workers.value)
    assert "nothing is loaded: submit the file again to load the rest" in str(in_workers.value)
