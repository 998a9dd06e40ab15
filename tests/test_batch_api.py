"""`run --via batch-api` (issue 14, first part): the queue through a provider's Batch API — against
llmock's files and batches (a server no one here wrote), from cron-style repeated runs and through
SIGKILLs at random moments — and the store's side of it."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import time
import urllib.request
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from conftest import Cli, make_keys, read_jsonl

from batchrun.jobfile import JobSpec, parse_line
from batchrun.records import Succeeded
from batchrun.store import Store


def write_mixed(path: Path, chats: int, embeddings: int) -> set[str]:
    lines = [{"custom_id": f"chat-{i}", "model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"hi {i}"}]}
             for i in range(chats)]
    lines += [{"custom_id": f"emb-{i}", "method": "POST", "url": "/v1/embeddings",
               "body": {"model": "text-embedding-3-small", "input": [f"text {i}", f"more {i}"]}}
              for i in range(embeddings)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return {line["custom_id"] for line in lines}


def provider_batches(mock: Any, key: str) -> list[dict[str, Any]]:
    request = urllib.request.Request(f"{mock.base_url}/batches?limit=100", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return list(json.loads(answer.read())["data"])



def kill_at_random_moments(cli: Cli, args: tuple[str, ...], env: dict[str, str], rng: random.Random,
                           earliest: float, latest: float, times: int = 5) -> int:
    """Start `batchrun *args` `times` times, SIGKILLing each at a random moment unless it ended first;
    returns how many were killed."""
    kills = 0
    for _ in range(times):
        runner = cli.popen(*args, env=env)
        time.sleep(rng.uniform(earliest, latest))
        if runner.poll() is None:
            runner.send_signal(signal.SIGKILL)
            kills += 1
        runner.communicate(timeout=30)
    return kills

def test_cron_style_runs_submit_then_collect_at_llmock(cli: Cli, start_llmock: Any, tmp_path: Path) -> None:
    mock = start_llmock("--response-style", "echo")
    ids = write_mixed(tmp_path / "jobs.jsonl", 30, 6)
    assert cli("submit", str(tmp_path / "jobs.jsonl")).returncode == 0
    keys = make_keys(1)
    env = {"BATCHRUN_BASE_URL": mock.base_url, "BATCHRUN_API_KEYS": keys[0]}

    first = cli("run", "--via", "batch-api", env=env)
    assert first.returncode == 3, first.stdout + first.stderr  # submitted; the provider is working on it
    assert "2 provider batch(es) created" in first.stdout
    assert "30 jobs of /v1/chat/completions gpt-4o-mini" in first.stdout
    assert "6 jobs of /v1/embeddings text-embedding-3-small" in first.stdout
    status = json.loads(cli("status", "--json").stdout)["batches"][0]
    assert status["running"] == 36 and status["queued"] == 0

    collected = succeeded = 0
    for _ in range(40):  # cron, every so often: each run collects what the provider has finished
        later = cli("run", "--via", "batch-api", env=env)
        summary = re.search(r"0 provider batch\(es\) created, (\d+) collected; (\d+) succeeded", later.stdout)
        assert summary is not None, later.stdout + later.stderr
        collected, succeeded = collected + int(summary[1]), succeeded + int(summary[2])
        if later.returncode != 3:
            break
        time.sleep(0.5)
    # (the two batches finish 3 s after their creation: a busy machine may have one run collect each)
    assert later.returncode == 0, later.stdout + later.stderr
    assert (collected, succeeded) == (2, 36)

    assert cli("export", "--output", str(tmp_path / "out.jsonl")).returncode == 0
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert sorted(row["custom_id"] for row in rows) == sorted(ids)
    by_id = {row["custom_id"]: row for row in rows}
    assert by_id["chat-7"]["response"]["body"]["choices"][0]["message"]["content"] == "Hello! You said: hi 7"
    assert len(by_id["emb-3"]["response"]["body"]["data"]) == 2
    assert {row["batchrun"]["attempts"] for row in rows} == {1}
    # what llmock was sent: one file and one batch per endpoint and model, never a live request
    made = provider_batches(mock, keys[0])
    assert sorted(b["endpoint"] for b in made) == ["/v1/chat/completions", "/v1/embeddings"]
    paths = [r["path"] for r in mock.requests() if r["method"] == "POST"]
    assert paths.count("/v1/files") == 2 and paths.count("/v1/batches") == 2
    assert "/v1/chat/completions" not in paths and "/v1/embeddings" not in paths
    # nothing left to do: a further run sends nothing
    assert cli("run", "--via", "batch-api", env=env).returncode == 0
    assert [r["path"] for r in mock.requests() if r["method"] == "POST"].count("/v1/batches") == 2


def test_sigkill_at_random_moments_loses_nothing_and_creates_no_batch_twice(cli: Cli, start_llmock: Any,
                                                                            tmp_path: Path) -> None:
    mock = start_llmock("--response-style", "echo")
    ids = write_mixed(tmp_path / "jobs.jsonl", 40, 10)
    assert cli("submit", str(tmp_path / "jobs.jsonl")).returncode == 0
    keys = make_keys(1)
    env = {"BATCHRUN_BASE_URL": mock.base_url, "BATCHRUN_API_KEYS": keys[0]}
    args = ("run", "--via", "batch-api", "--wait", "--poll-interval", "0.2s", "--batch-max-requests", "15")
    # across start-up, upload, create, poll and download: wherever the moment falls. llmock finishes a batch
    # 3 s after its creation, and a run that finds its batches finished collects them and ends: three kills
    # of at most 0.9 s each (plus the restarts) fit in that time on any machine (12-07: with moments up to
    # 2.5 s, a fast machine's runs had collected everything after two kills)
    kills = kill_at_random_moments(cli, args, env, random.Random(13), 0.3, 0.9)
    assert kills >= 3
    final = cli(*args, env=env, timeout=120)
    assert final.returncode == 0, final.stdout + final.stderr

    assert cli("export", "--output", str(tmp_path / "out.jsonl")).returncode == 0
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert sorted(row["custom_id"] for row in rows) == sorted(ids)  # every job exactly once
    made = provider_batches(mock, keys[0])
    tags = [b["metadata"]["batchrun_provider_batch"] for b in made]
    assert len(tags) == len(set(tags)), tags  # no provider batch created twice for the same jobs
    # and no job was sent in two batches: the requests the batches held add up to the jobs
    assert sum(b["request_counts"]["total"] for b in made) == len(ids)


def test_assigned_jobs_are_leased_to_their_provider_batch_and_no_live_run_waits_for_them(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path / 'q.db'}") as store:
        batch_id = store.ensure_batch("b")
        specs = []
        for i in range(7):
            url = "/v1/embeddings" if i >= 5 else "/v1/chat/completions"
            body = ({"model": "e", "input": "x"} if i >= 5
                    else {"model": "m", "messages": [{"role": "user", "content": "q" * 100}]})
            spec = parse_line(json.dumps({"custom_id": f"c{i}", "method": "POST", "url": url, "body": body}), i + 1)
            assert isinstance(spec, JobSpec)
            specs.append(spec)
        store.add_jobs(batch_id, specs)
        batches = store.provider_batches
        first = batches.assign("k1", max_requests=3, max_bytes=10**6)
        assert first is not None and (first.endpoint, first.model, first.requests) == ("/v1/chat/completions", "m", 3)
        # the bytes cap cuts too: one chat body is ~150 bytes + ~200 of envelope
        second = batches.assign("k1", max_requests=3, max_bytes=400)
        assert second is not None and second.requests == 1
        third = batches.assign("k1", max_requests=10, max_bytes=10**6)
        assert third is not None and (third.requests, third.endpoint) == (1, "/v1/chat/completions")
        fourth = batches.assign("k1", max_requests=10, max_bytes=10**6)
        assert fourth is not None and (fourth.requests, fourth.endpoint, fourth.model) == (2, "/v1/embeddings", "e")
        assert batches.assign("k1", max_requests=10, max_bytes=10**6) is None  # nothing queued is left

        assert [custom_id for custom_id, _ in batches.lines(first.id)] == ["c0", "c1", "c2"]
        pending = store.pending()
        assert pending.empty  # a live run has nothing to wait for: these are the provider's
        assert store.claim("live", 10, lease_seconds=30) == []
        assert store.requeue_expired(now=time.time() + 10**7) == 0  # their leases never run out

        jobs = batches.jobs(first.id)
        store.record(first.owner, [Succeeded(jobs["c0"].id, 1, "k1", 200, None, "{}", "m", "stop", 1, 1, 2)])
        store.record(first.owner, [Succeeded(jobs["c0"].id, 1, "k1", 200, None, '{"twice": 1}', "m", "stop", 1, 1, 2)])
        assert set(batches.jobs(first.id)) == {"c1", "c2"}  # a result is written once
        (row,) = store.export_rows(["succeeded"])
        assert row.response == "{}"
        assert [b.id for b in batches.open()] == [first.id, second.id, third.id, fourth.id]


def test_what_the_provider_has_not_finished_in_time_is_cancelled_there_and_finished_live(
        cli: Cli, start_llmock: Any, tmp_path: Path) -> None:
    mock = start_llmock("--response-style", "echo")  # its batches take a few seconds
    ids = write_mixed(tmp_path / "jobs.jsonl", 12, 3)
    assert cli("submit", str(tmp_path / "jobs.jsonl")).returncode == 0
    keys = make_keys(1)
    env = {"BATCHRUN_BASE_URL": mock.base_url, "BATCHRUN_API_KEYS": keys[0]}
    result = cli("run", "--via", "batch-api", "--wait", "--poll-interval", "0.1s", "--live-after", "0.3s",
                 "--max-duration", "2m", "--no-progress", env=env, timeout=150)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the provider did not finish in time: the rest goes live" in result.stdout
    assert cli("export", "--output", str(tmp_path / "out.jsonl")).returncode == 0
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert sorted(row["custom_id"] for row in rows) == sorted(ids)
    made = provider_batches(mock, keys[0])
    assert made and all(b["status"] in ("cancelled", "cancelling", "completed") for b in made)
    assert any(b["status"] != "completed" for b in made)  # one was taken back...
    live = [r["path"] for r in mock.requests() if r["method"] == "POST" and r["path"] in
            ("/v1/chat/completions", "/v1/embeddings")]
    assert live  # ...and its jobs were sent live


def test_a_second_batch_api_run_on_the_same_database_does_nothing_while_the_first_works(
        cli: Cli, start_llmock: Any, tmp_path: Path) -> None:
    mock = start_llmock("--response-style", "echo")
    write_mixed(tmp_path / "jobs.jsonl", 5, 0)
    assert cli("submit", str(tmp_path / "jobs.jsonl")).returncode == 0
    env = {"BATCHRUN_BASE_URL": mock.base_url, "BATCHRUN_API_KEYS": make_keys(1)[0]}
    first = cli.popen("run", "--via", "batch-api", "--wait", "--poll-interval", "0.2s", env=env)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until the first one has its batch at the provider
            if any(r["path"] == "/v1/batches" for r in mock.requests()):
                break
            time.sleep(0.05)
        # Paused (it cannot finish meanwhile: llmock completes a batch in 3 s, less than a busy machine may
        # take to start the second run), yet alive, as a run waiting for its provider is.
        _pause_between_writes(first.pid, tmp_path / "queue.db")
        try:
            second = cli("run", "--via", "batch-api", env=env)
        finally:
            os.kill(first.pid, signal.SIGCONT)
        assert second.returncode == 3
        assert "another `run --via batch-api` is at work on this database" in second.stdout
        assert f":{first.pid})" in second.stdout
    finally:
        out, err = first.communicate(timeout=60)
    assert first.returncode == 0, out + err
    assert [r["path"] for r in mock.requests() if r["method"] == "POST"].count("/v1/batches") == 1


def _pause_between_writes(pid: int, db: Path, patience: float = 30.0) -> None:
    """SIGSTOP process `pid` at a moment it holds no write lock on the SQLite database `db` (a run does
    not stay inside a write for long; paused inside one, it would lock every other writer out — seen once
    beside another suite: the second run failed with 'database is locked')."""
    deadline = time.monotonic() + patience
    while True:
        os.kill(pid, signal.SIGSTOP)
        try:
            with closing(sqlite3.connect(db, timeout=0, isolation_level=None)) as conn:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:
            os.kill(pid, signal.SIGCONT)
            assert time.monotonic() < deadline, f"process {pid} held the write lock of {db} throughout"
            time.sleep(0.01)


# --- the simulator's Batch API: the whole flow offline ---------------------------------------------------


def write_chats(path: Path, count: int, model: str = "fast", **extra: Any) -> set[str]:
    with path.open("w") as out:
        for i in range(count):
            out.write(json.dumps({"custom_id": f"job-{i:05d}", "model": model,
                                  "messages": [{"role": "user", "content": f"question number {i}"}], **extra}) + "\n")
    return {f"job-{i:05d}" for i in range(count)}


def test_10000_jobs_through_the_simulators_batch_api_cost_half_of_live(tmp_path: Path) -> None:
    from batchrun.simulator import SimulatorConfig, SimulatorThread

    ids = write_chats(tmp_path / "jobs.jsonl", 10_000, max_tokens=20)
    live_cli = Cli(tmp_path, {"BATCHRUN_DB": f"sqlite:///{tmp_path / 'live.db'}"})
    batch_cli = Cli(tmp_path, {"BATCHRUN_DB": f"sqlite:///{tmp_path / 'batch.db'}"})
    with SimulatorThread(SimulatorConfig(seed=3, batch_processing_seconds=0.5)) as sim:
        env = {"BATCHRUN_BASE_URL": sim.base_url, "BATCHRUN_API_KEYS": ",".join(make_keys(2))}
        for cli in (live_cli, batch_cli):
            assert cli("submit", str(tmp_path / "jobs.jsonl")).returncode == 0
        assert live_cli("run", "--no-progress", "--concurrency", "64", env=env, timeout=300).returncode == 0
        result = batch_cli("run", "--via", "batch-api", "--wait", "--poll-interval", "0.2s",
                           "--batch-max-requests", "4000", env=env, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "3 provider batch(es) created, 3 collected; 10000 succeeded" in result.stdout
        stats = sim.state.snapshot()["batches"]
        assert stats["created"] == 3 and stats["redone_custom_ids"] == 0
    exports = {}
    for name, cli in (("live", live_cli), ("batch", batch_cli)):
        assert cli("export", "--output", str(tmp_path / f"{name}.jsonl")).returncode == 0
        exports[name] = {row["custom_id"]: row for row in read_jsonl(tmp_path / f"{name}.jsonl")}
    live, batch = exports["live"], exports["batch"]
    assert set(live) == set(batch) == ids
    for custom_id in ("job-00000", "job-04321", "job-09999"):
        one, other = live[custom_id], batch[custom_id]
        assert one.keys() == other.keys() and one["response"].keys() == other["response"].keys()
        assert one["batchrun"].keys() == other["batchrun"].keys()
        assert one["response"]["body"]["choices"][0]["message"] == other["response"]["body"]["choices"][0]["message"]
        assert other["batchrun"]["cost"] == pytest.approx(one["batchrun"]["cost"] / 2)
    live_cost = json.loads(live_cli("status", "--json").stdout)["batches"][0]["cost"]
    batch_cost = json.loads(batch_cli("status", "--json").stdout)["batches"][0]["cost"]
    assert live_cost > 0 and batch_cost == pytest.approx(live_cost / 2)


def test_an_expired_provider_batch_sends_its_unfinished_jobs_back_and_a_deadline_finishes_them_live(
        tmp_path: Path) -> None:
    from batchrun.simulator import SimulatorConfig, SimulatorThread

    ids = write_chats(tmp_path / "jobs.jsonl", 200)
    cli = Cli(tmp_path, {"BATCHRUN_DB": f"sqlite:///{tmp_path / 'q.db'}"})
    assert cli("submit", str(tmp_path / "jobs.jsonl")).returncode == 0
    # the provider takes 4 s for a batch and gives up after 2 s: about half the lines expire
    config = SimulatorConfig(seed=4, batch_processing_seconds=4.0, batch_expire_after=2.0)
    with SimulatorThread(config) as sim:
        env = {"BATCHRUN_BASE_URL": sim.base_url, "BATCHRUN_API_KEYS": ",".join(make_keys(2))}
        first = cli("run", "--via", "batch-api", "--wait", "--poll-interval", "0.2s", env=env, timeout=120)
        assert first.returncode == 3, first.stdout + first.stderr  # expired lines are back in the queue
        (batch,) = json.loads(cli("status", "--json").stdout)["batches"]
        assert 0 < batch["queued"] < 200 and batch["succeeded"] == 200 - batch["queued"]
        assert sim.state.snapshot()["batches"]["by_status"] == {"expired": 1}
        # the next night, with a deadline: the provider expires again, the rest is finished live in time
        second = cli("run", "--via", "batch-api", "--wait", "--poll-interval", "0.2s", "--live-after", "1s",
                     "--max-duration", "2m", "--no-progress", env=env, timeout=150)
        assert second.returncode == 0, second.stdout + second.stderr
        assert sim.state.snapshot()["batches"]["redone_custom_ids"] == 0
    assert cli("export", "--output", str(tmp_path / "out.jsonl")).returncode == 0
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert sorted(row["custom_id"] for row in rows) == sorted(ids)


def test_error_lines_are_judged_like_live_answers(tmp_path: Path) -> None:
    from batchrun.simulator import SimulatorConfig, SimulatorThread

    good = write_chats(tmp_path / "jobs.jsonl", 60)
    with (tmp_path / "jobs.jsonl").open("a") as out:  # too long for sim-mini: a 400 line, final
        out.write(json.dumps({"custom_id": "too-long", "model": "sim-mini",
                              "messages": [{"role": "user", "content": "word " * 3000}]}) + "\n")
    cli = Cli(tmp_path, {"BATCHRUN_DB": f"sqlite:///{tmp_path / 'q.db'}"})
    assert cli("submit", str(tmp_path / "jobs.jsonl")).returncode == 0
    with SimulatorThread(SimulatorConfig(seed=5, batch_processing_seconds=0.3, batch_line_fail_rate=0.3)) as sim:
        env = {"BATCHRUN_BASE_URL": sim.base_url, "BATCHRUN_API_KEYS": ",".join(make_keys(1))}
        # the prechecks would stop too-long before sending: this run has no catalogue to check with
        result = None
        for _ in range(10):  # 500 lines come back to the queue and go in the next batch
            result = cli("run", "--via", "batch-api", "--wait", "--poll-interval", "0.1s", "--backoff-base", "10ms",
                         "--backoff-max", "20ms", env=env, timeout=120)
            if result.returncode != 3:
                break
            time.sleep(0.05)
        assert result is not None and result.returncode == 1, result.stdout + result.stderr  # too-long failed
        assert sim.state.snapshot()["batches"]["created"] >= 2
    assert cli("export", "--output", str(tmp_path / "out.jsonl"), "--errors", str(tmp_path / "err.jsonl")).returncode == 0
    assert sorted(row["custom_id"] for row in read_jsonl(tmp_path / "out.jsonl")) == sorted(good)
    (failed,) = read_jsonl(tmp_path / "err.jsonl")
    assert failed["custom_id"] == "too-long"
    assert failed["error"]["code"] in ("bad_request", "context_length_exceeded")
    retried = [row for row in read_jsonl(tmp_path / "out.jsonl") if row["batchrun"]["attempts"] > 1]
    assert retried  # the 500 lines were tried again, in a later batch


def test_sigkill_at_random_moments_at_the_simulator_creates_no_batch_twice(tmp_path: Path) -> None:
    from batchrun.simulator import SimulatorConfig, SimulatorThread

    ids = write_chats(tmp_path / "jobs.jsonl", 300)
    cli = Cli(tmp_path, {"BATCHRUN_DB": f"sqlite:///{tmp_path / 'q.db'}"})
    assert cli("submit", str(tmp_path / "jobs.jsonl")).returncode == 0
    args = ("run", "--via", "batch-api", "--wait", "--poll-interval", "0.1s", "--batch-max-requests", "40")
    rng = random.Random(29)
    # The provider takes 5 s over each batch, so that three kills of at most 1.5 s each (plus the restarts)
    # land before the runs find everything finished (at 1.5 s, a fast machine's runs had collected every
    # batch after two kills)
    with SimulatorThread(SimulatorConfig(seed=6, batch_processing_seconds=5.0)) as sim:
        env = {"BATCHRUN_BASE_URL": sim.base_url, "BATCHRUN_API_KEYS": ",".join(make_keys(1))}
        kills = kill_at_random_moments(cli, args, env, rng, 0.2, 1.5)
        final = cli(*args, env=env, timeout=120)
        stats = sim.state.snapshot()["batches"]
    assert kills >= 3
    assert final.returncode == 0, final.stdout + final.stderr
    assert cli("export", "--output", str(tmp_path / "out.jsonl")).returncode == 0
    assert sorted(row["custom_id"] for row in read_jsonl(tmp_path / "out.jsonl")) == sorted(ids)
    assert stats["duplicate_custom_ids"] == 0 and stats["redone_custom_ids"] == 0, stats["custom_id_batches"]
    assert stats["requests"]["total"] == len(ids)


def test_cancel_cancels_the_provider_batches_and_the_next_run_collects_what_they_finished(tmp_path: Path) -> None:
    from batchrun.simulator import SimulatorConfig, SimulatorThread

    write_chats(tmp_path / "jobs.jsonl", 100)
    cli = Cli(tmp_path, {"BATCHRUN_DB": f"sqlite:///{tmp_path / 'q.db'}"})
    assert cli("submit", str(tmp_path / "jobs.jsonl")).returncode == 0
    # The provider takes 60 s over the batch, so that `cancel` lands long before it is done even when each
    # command takes seconds on a busy machine (at 8 s, CI once saw it finish first: "cancel 0 batch(es)");
    # once cancelled, the batch ends at once, so the test does not wait for the 60 s.
    with SimulatorThread(SimulatorConfig(seed=7, batch_processing_seconds=60.0)) as sim:
        env = {"BATCHRUN_BASE_URL": sim.base_url, "BATCHRUN_API_KEYS": ",".join(make_keys(1))}
        assert cli("run", "--via", "batch-api", env=env).returncode == 3
        without = cli("cancel")  # no provider given: says what it cannot do
        assert "1 provider batch(es) with 100 job(s) are at the provider's Batch API" in without.stdout
        deadline = time.monotonic() + 50
        while sim.state.snapshot()["batches"]["requests"]["completed"] < 5 and time.monotonic() < deadline:
            time.sleep(0.05)  # until the provider is some way through
        cancelled = cli("cancel", env=env)
        assert cancelled.returncode == 0, cancelled.stderr
        assert "asked the provider to cancel 1 batch(es)" in cancelled.stdout
        final = cli("run", "--via", "batch-api", "--wait", "--poll-interval", "0.1s", env=env, timeout=60)
        assert final.returncode == 0, final.stdout + final.stderr
        assert sim.state.snapshot()["batches"]["by_status"] == {"cancelled": 1}
    (batch,) = json.loads(cli("status", "--json").stdout)["batches"]
    assert batch["succeeded"] > 0 and batch["cancelled"] > 0 and batch["succeeded"] + batch["cancelled"] == 100
    assert batch["queued"] == batch["running"] == 0
    assert json.loads(cli("status", "--json").stdout)["provider_batches"] == []


def test_a_batch_whose_key_is_revoked_meanwhile_is_reported_with_its_key_not_lost(tmp_path: Path) -> None:
    from batchrun.simulator import SimulatorConfig, SimulatorThread

    write_chats(tmp_path / "jobs.jsonl", 20)
    cli = Cli(tmp_path, {"BATCHRUN_DB": f"sqlite:///{tmp_path / 'q.db'}"})
    assert cli("submit", str(tmp_path / "jobs.jsonl")).returncode == 0
    with SimulatorThread(SimulatorConfig(seed=8, batch_processing_seconds=0.3)) as sim:
        keys = make_keys(2)
        env = {"BATCHRUN_BASE_URL": sim.base_url, "BATCHRUN_API_KEYS": ",".join(keys)}
        assert cli("run", "--via", "batch-api", env=env).returncode == 3  # made with key1
        sim.config.revoked.add("key1")
        later = cli("run", "--via", "batch-api", env=env)
        assert later.returncode == 3, later.stdout + later.stderr
        assert "its key key1 was refused" in later.stdout
        assert "reset the key" in later.stderr
        status = json.loads(cli("status", "--json").stdout)
        assert {k["id"]: k["state"] for k in status["keys"]}["key1"] == "revoked"
        (held,) = status["provider_batches"]
        assert held["key"] == "key1" and held["requests"] == 20
        sim.config.revoked.discard("key1")  # the key is put right at the provider
        assert cli("keys", "reset", "key1").returncode == 0
        final = cli("run", "--via", "batch-api", "--wait", "--poll-interval", "0.1s", env=env)
        assert final.returncode == 0, final.stdout + final.stderr
    assert len(read_jsonl_export(cli, tmp_path)) == 20


def read_jsonl_export(cli: Cli, tmp_path: Path) -> list[dict[str, Any]]:
    assert cli("export", "--output", str(tmp_path / "out.jsonl")).returncode == 0
    return read_jsonl(tmp_path / "out.jsonl")
