"""`run --metrics-file`: the exposition text (read back with prometheus_client's own parser), the
atomic replace, the periodic writer and the last write, then real runs against the simulator whose
file must say what `status --json` says."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from conftest import FAST_RETRY, Cli, make_keys, provider_env, status_json, submit_jobs, write_jobs

from batchrun.attempts import AttemptCounters
from batchrun.cli import cli as cli_group
from batchrun.config import build_settings
from batchrun.errors import ConfigError, NoUsableKey, StoreError
from batchrun.metrics import (
    INTERVAL_ENV,
    LastRun,
    MetricsSnapshot,
    MetricsWriter,
    escape_label_value,
    format_metrics,
    interval_from_env,
    read_last_run,
    record_run,
    write_atomically,
)
from batchrun.simulator import RunningSimulator
from batchrun.store import Store

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def parse(text: str) -> tuple[Samples, dict[str, str]]:
    """sample name -> sorted labels -> value, and family name -> type, as Prometheus' own parser reads them."""
    samples: Samples = {}
    types = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name][tuple(sorted(labels.items()))]


def by(samples: Samples, name: str, label: str) -> dict[str, float]:
    """The sum of a metric's samples per value of one label."""
    sums: dict[str, float] = {}
    for labels, number in samples.get(name, {}).items():
        key = dict(labels)[label]
        sums[key] = sums.get(key, 0) + number
    return sums


# --- the format ----------------------------------------------------------------------------------------

NASTY = 'night "ly"\\batch\nline two'


def test_every_family_has_help_and_type_and_the_parser_reads_back_every_value() -> None:
    snapshot = MetricsSnapshot(
        1_700_000_000.25, running=True,
        jobs={NASTY: {"queued": 3, "running": 1, "succeeded": 5, "failed": 2, "cancelled": 0}},
        requests={("k1", "200"): 7, ("k1", "429"): 2, ("k-2", "timeout"): 1},
        tokens={("sim-small", "prompt"): 120, ("sim-small", "completion"): 30},
        cost={"sim-small": 0.0000245},
        last=LastRun(3, 1_699_990_000.5, 1_699_900_000.0))

    text = format_metrics(snapshot)
    samples, types = parse(text)

    assert types == {"batchrun_jobs": "gauge", "batchrun_requests": "counter", "batchrun_tokens": "counter",
                     "batchrun_cost_usd": "counter", "batchrun_run_running": "gauge",
                     "batchrun_run_start_timestamp_seconds": "gauge", "batchrun_run_last_exit_code": "gauge",
                     "batchrun_run_last_end_timestamp_seconds": "gauge",
                     "batchrun_run_last_success_timestamp_seconds": "gauge"}
    for family in ("batchrun_jobs", "batchrun_requests_total", "batchrun_run_running"):
        assert f"# HELP {family} " in text and f"# TYPE {family} " in text
    assert value(samples, "batchrun_jobs", batch=NASTY, state="failed") == 2  # the escaping round-trips
    assert len(samples["batchrun_jobs"]) == 5
    assert value(samples, "batchrun_requests_total", key="k1", status="429") == 2
    assert value(samples, "batchrun_requests_total", key="k-2", status="timeout") == 1
    assert value(samples, "batchrun_tokens_total", model="sim-small", kind="completion") == 30
    assert value(samples, "batchrun_cost_usd_total", model="sim-small") == pytest.approx(0.0000245)
    assert value(samples, "batchrun_run_running") == 1
    assert value(samples, "batchrun_run_start_timestamp_seconds") == 1_700_000_000.25
    assert value(samples, "batchrun_run_last_exit_code") == 3
    assert value(samples, "batchrun_run_last_end_timestamp_seconds") == 1_699_990_000.5
    assert value(samples, "batchrun_run_last_success_timestamp_seconds") == 1_699_900_000.0
    assert text.endswith("\n") and "\n\n" not in text


def test_label_values_are_escaped_as_the_format_says() -> None:
    assert escape_label_value('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    line = next(line for line in format_metrics(MetricsSnapshot(0.0, jobs={NASTY: {"queued": 1}})).splitlines()
                if line.startswith("batchrun_jobs{"))
    assert line == 'batchrun_jobs{batch="night \\"ly\\"\\\\batch\\nline two",state="queued"} 1'


def test_before_any_run_ended_the_last_gauges_say_nothing_but_no_success_yet() -> None:
    samples, types = parse(format_metrics(MetricsSnapshot(5.0)))

    assert "batchrun_run_last_exit_code" not in samples and "batchrun_run_last_end_timestamp_seconds" not in samples
    assert types["batchrun_run_last_exit_code"] == "gauge"  # HELP and TYPE are there all the same
    assert value(samples, "batchrun_run_last_success_timestamp_seconds") == 0
    assert "batchrun_requests_total" not in samples


def test_a_snapshot_copies_the_counters_the_runner_goes_on_updating() -> None:
    counters = AttemptCounters(requests={("k1", "200"): 1}, tokens={("m", "prompt"): 4}, cost={"m": 0.5})
    snapshot = MetricsSnapshot.of(1.0, [], counters)
    counters.requests[("k1", "200")] = 2
    assert snapshot.requests == {("k1", "200"): 1}


# --- the file --------------------------------------------------------------------------------------------

def big_text(generation: int) -> str:
    """About 2 MB, every value the generation: a reader that saw two halves would see two numbers."""
    requests = {(f"key{i:05d}", "200"): generation for i in range(30_000)}
    return format_metrics(MetricsSnapshot(float(generation), requests=requests))


def test_a_reader_never_sees_a_partial_file_and_no_temp_file_is_left(tmp_path: Path) -> None:
    path = tmp_path / "batchrun.prom"
    texts = [big_text(generation) for generation in range(6)]
    write_atomically(str(path), texts[0])
    done = threading.Event()
    seen: list[str] = []
    problems: list[str] = []

    def read() -> None:
        while not done.is_set():
            text = path.read_text()
            if text not in texts:
                problems.append(text[-200:])
                return
            seen.append(text)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(3):
            for text in texts[1:]:
                write_atomically(str(path), text)
    finally:
        done.set()
        reader.join()

    assert problems == []
    assert seen and path.read_text() == texts[-1]
    assert os.listdir(tmp_path) == ["batchrun.prom"]  # every temp file renamed or removed
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # node_exporter is another user


def test_an_existing_file_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "batchrun.prom"
    path.write_text("old\n")
    path.chmod(0o640)
    write_atomically(str(path), "new\n")
    assert path.read_text() == "new\n" and stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    folder = tmp_path / "gone"
    with pytest.raises(FileNotFoundError):
        write_atomically(str(folder / "batchrun.prom"), "x 1\n")
    assert os.listdir(tmp_path) == []


def test_the_last_gauges_are_read_back_from_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "batchrun.prom"
    assert read_last_run(str(path)) == LastRun()
    path.write_text(format_metrics(MetricsSnapshot(1.0, running=False, last=LastRun(4, 20.5, 10.0))))
    assert read_last_run(str(path)) == LastRun(4, 20.5, 10.0)
    path.write_text("garbage\nbatchrun_run_last_exit_code x\n")
    assert read_last_run(str(path)) == LastRun()


def test_the_interval_is_15_s_unless_a_test_says_otherwise() -> None:
    assert interval_from_env({}) == 15.0
    assert interval_from_env({INTERVAL_ENV: "0.05"}) == 0.05
    for bad in ("soon", "0", "-1"):
        with pytest.raises(ConfigError, match=INTERVAL_ENV):
            interval_from_env({INTERVAL_ENV: bad})


def test_the_setting_comes_from_the_flag_or_the_config_file_relative_to_it(tmp_path: Path) -> None:
    config = tmp_path / "etc" / "batchrun.toml"
    config.parent.mkdir()
    config.write_text('metrics_file = "metrics/batchrun.prom"\n')

    assert build_settings({}, str(config), environ={}).metrics_file == str(tmp_path / "etc/metrics/batchrun.prom")
    assert build_settings({"metrics_file": "here.prom"}, str(config), environ={}).metrics_file == "here.prom"
    assert build_settings({}, None, environ={}).metrics_file is None
    config.write_text("metrics_file = 3\n")
    with pytest.raises(ConfigError, match="metrics_file"):
        build_settings({}, str(config), environ={})


# --- the writer --------------------------------------------------------------------------------------------

async def test_the_writer_rewrites_the_file_until_cancelled_and_carries_the_last_run_over(tmp_path: Path) -> None:
    path = tmp_path / "batchrun.prom"
    counters = AttemptCounters()
    first = MetricsWriter(str(path), list, lambda: counters)
    try:
        await first.write()
        assert value(parse(path.read_text())[0], "batchrun_run_running") == 1
        every = asyncio.create_task(first.write_every(0.01))
        counters.requests[("k1", "200")] = 3
        while "batchrun_requests_total" not in parse(path.read_text())[0]:
            await asyncio.sleep(0.01)
        every.cancel()
        await asyncio.gather(every, return_exceptions=True)
        await first.write(0)
    finally:
        first.close()
    ended = parse(path.read_text())[0]
    assert value(ended, "batchrun_run_running") == 0 and value(ended, "batchrun_run_last_exit_code") == 0
    succeeded_at = value(ended, "batchrun_run_last_success_timestamp_seconds")
    assert succeeded_at == value(ended, "batchrun_run_last_end_timestamp_seconds") > 0

    second = MetricsWriter(str(path), list, lambda: None)
    try:
        await second.write()  # while it goes, the last run's outcome stays in the file
        going = parse(path.read_text())[0]
        assert value(going, "batchrun_run_running") == 1 and value(going, "batchrun_run_last_exit_code") == 0
        await second.write(3)
    finally:
        second.close()
    ended = parse(path.read_text())[0]
    assert value(ended, "batchrun_run_last_exit_code") == 3
    assert value(ended, "batchrun_run_last_success_timestamp_seconds") == succeeded_at  # exit 3 is no success
    assert "batchrun_requests_total" not in ended  # the counters are this run's


def test_at_exit_a_failed_database_read_still_leaves_a_file_that_says_the_run_ended(tmp_path: Path) -> None:
    from batchrun.loader import submit_file

    store = Store.open(f"sqlite:///{tmp_path / 'queue.db'}")
    write_jobs(tmp_path / "nightly.jsonl", 4)
    submit_file(store, str(tmp_path / "nightly.jsonl"), None, False, print, workers=1)
    reads: list[int] = []

    def counts() -> list[Any]:
        reads.append(1)
        if len(reads) > 1:
            raise StoreError("database is locked")
        return store.counts()

    path = tmp_path / "batchrun.prom"
    writer = MetricsWriter(str(path), counts, lambda: None)

    async def run() -> None:
        await writer.write()
        with pytest.raises(StoreError):  # while the run goes, the periodic writer logs it and goes on
            await writer.write()
        await writer.write(1)

    try:
        asyncio.run(run())
    finally:
        writer.close()
        store.close()
    samples = parse(path.read_text())[0]
    assert value(samples, "batchrun_run_running") == 0 and value(samples, "batchrun_run_last_exit_code") == 1
    assert value(samples, "batchrun_jobs", batch="nightly", state="queued") == 4  # as last read


@dataclass(frozen=True)
class Ended:
    exit_code: int


async def test_record_run_writes_the_exit_code_also_when_the_run_raises(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'queue.db'}"
    Store.open(url).close()
    path = str(tmp_path / "batchrun.prom")
    seen_while_running: list[float] = []

    async def fails() -> Ended:
        seen_while_running.append(value(parse(Path(path).read_text())[0], "batchrun_run_running"))
        raise NoUsableKey("every key is revoked")

    with pytest.raises(NoUsableKey):
        await record_run(path, url, None, lambda: None, fails, interval=0.01)
    samples = parse(Path(path).read_text())[0]
    assert seen_while_running == [1]  # the first write comes before the run starts
    assert value(samples, "batchrun_run_running") == 0 and value(samples, "batchrun_run_last_exit_code") == 4

    async def ends() -> Ended:
        return Ended(1)

    assert await record_run(path, url, None, lambda: None, ends, interval=0.01) == Ended(1)
    assert value(parse(Path(path).read_text())[0], "batchrun_run_last_exit_code") == 1


async def test_a_metrics_file_that_cannot_be_written_is_a_usage_error_before_the_run(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'queue.db'}"
    Store.open(url).close()
    started: list[bool] = []

    async def run() -> Ended:
        started.append(True)
        return Ended(0)

    with pytest.raises(ConfigError, match="cannot write the metrics file"):
        await record_run(str(tmp_path / "no" / "batchrun.prom"), url, None, lambda: None, run)
    assert started == []


# --- real runs ---------------------------------------------------------------------------------------------

def metrics_env(sim: RunningSimulator, keys: list[str], interval: str = "0.05") -> dict[str, str]:
    return {**provider_env(sim, keys), INTERVAL_ENV: interval}


def test_the_file_of_a_run_says_what_status_says(cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    sim.config.random_429_rate = 0.2  # 429s on every key
    sim.config.random_429_retry_after = 0.05
    sim.config.key_budgets = {"key3": 0}  # 402: key3 leaves the run at its first request
    submit_jobs(cli, tmp_path, 60)
    write_jobs(tmp_path / "nightly.jsonl", 30, prefix="nightly")
    assert cli("submit", str(tmp_path / "nightly.jsonl")).returncode == 0
    keys = make_keys(3)
    path = tmp_path / "batchrun.prom"

    result = cli("run", "--no-progress", "--max-attempts", "30", *FAST_RETRY, "--metrics-file", str(path),
                 env=metrics_env(sim, keys))

    assert result.returncode == 0, result.stderr
    text = path.read_text()
    samples, _ = parse(text)
    status = status_json(cli)
    for batch in status["batches"]:
        for state in ("queued", "running", "succeeded", "failed", "cancelled"):
            assert value(samples, "batchrun_jobs", batch=batch["name"], state=state) == batch[state], (batch, state)
    assert len(samples["batchrun_jobs"]) == 5 * len(status["batches"]) == 10
    # per key: the requests it sent, and of them the 429s, as `status --json` lists the key's last run
    sent = by(samples, "batchrun_requests_total", "key")
    assert sent == {key["id"]: key["last_run"]["requests"] for key in status["keys"]}
    assert set(sent) == {"key1", "key2", "key3"}
    assert sum(sent.values()) == status["last_run"]["requests"]
    for key in status["keys"]:
        assert samples["batchrun_requests_total"].get(
            (("key", key["id"]), ("status", "429")), 0) == key["last_run"]["rate_limited"], key
    assert value(samples, "batchrun_requests_total", key="key3", status="402") >= 1  # those in flight too
    assert sum(v for labels, v in samples["batchrun_requests_total"].items() if ("status", "429") in labels) > 0
    # and what the provider saw, answer by answer
    provider = {(("key", key), ("status", code)): n
                for key, stats in sim.state.snapshot()["keys"].items() for code, n in stats["by_status"].items()}
    assert samples["batchrun_requests_total"] == provider
    # tokens and cost per model served: `status --json` usage.by_model
    by_model = {row["name"]: row for row in status["usage"]["by_model"]}
    assert set(by(samples, "batchrun_tokens_total", "model")) == set(by_model) == {"sim-small"}
    for model, row in by_model.items():
        assert value(samples, "batchrun_tokens_total", model=model, kind="prompt") == row["prompt_tokens"]
        assert value(samples, "batchrun_tokens_total", model=model, kind="completion") == row["completion_tokens"]
        assert value(samples, "batchrun_cost_usd_total", model=model) == pytest.approx(row["cost"])
    # the run's end
    assert value(samples, "batchrun_run_running") == 0
    assert value(samples, "batchrun_run_last_exit_code") == 0 == status["last_run"]["exit_code"]
    ended = value(samples, "batchrun_run_last_end_timestamp_seconds")
    assert value(samples, "batchrun_run_start_timestamp_seconds") <= ended
    assert value(samples, "batchrun_run_last_success_timestamp_seconds") == ended
    assert not any(key.split(":", 1)[1] in text for key in keys)  # keys by id only, never a secret
    assert os.listdir(tmp_path).count("batchrun.prom") == 1 and not any(
        name.startswith(".batchrun-") for name in os.listdir(tmp_path))


def test_the_file_is_rewritten_while_the_run_goes(cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    sim.config.latency = 0.2
    submit_jobs(cli, tmp_path, 16)
    path = tmp_path / "batchrun.prom"
    process = cli.popen("run", "--no-progress", "--concurrency", "2", "--metrics-file", str(path),
                        env=metrics_env(sim, make_keys(1)))
    try:
        going = wait_for_samples(path, lambda s: s.get("batchrun_requests_total") and value(
            s, "batchrun_run_running") == 1)
    finally:
        out, err = process.communicate(timeout=60)

    assert process.returncode == 0, err
    assert sum(going["batchrun_requests_total"].values()) > 0  # a write after requests, while the run went
    assert "batchrun_run_last_exit_code" not in going  # nothing ended yet: no file before this run
    ended = parse(path.read_text())[0]
    assert value(ended, "batchrun_run_running") == 0 and value(ended, "batchrun_run_last_exit_code") == 0
    assert value(ended, "batchrun_requests_total", key="key1", status="200") == 16
    assert value(ended, "batchrun_run_start_timestamp_seconds") == value(
        going, "batchrun_run_start_timestamp_seconds")


def wait_for_samples(path: Path, condition: Any, timeout: float = 60.0) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        if path.exists():
            samples = parse(path.read_text())[0]
            if condition(samples):
                return samples
        assert time.monotonic() < deadline, "the metrics file never showed it"
        time.sleep(0.01)


def test_a_run_that_exits_4_says_so_and_keeps_the_last_success(cli: Cli, sim: RunningSimulator,
                                                              tmp_path: Path) -> None:
    keys = make_keys(1)
    path = tmp_path / "batchrun.prom"
    submit_jobs(cli, tmp_path, 5)
    assert cli("run", "--no-progress", "--metrics-file", str(path), env=metrics_env(sim, keys)).returncode == 0
    succeeded_at = value(parse(path.read_text())[0], "batchrun_run_last_success_timestamp_seconds")
    write_jobs(tmp_path / "more.jsonl", 5, prefix="more")
    assert cli("submit", str(tmp_path / "more.jsonl")).returncode == 0
    sim.config.revoked = {"key1"}

    result = cli("run", "--no-progress", env={**metrics_env(sim, keys), "BATCHRUN_METRICS_FILE": str(path)})

    assert result.returncode == 4, result.stderr
    samples = parse(path.read_text())[0]
    assert value(samples, "batchrun_run_last_exit_code") == 4 and value(samples, "batchrun_run_running") == 0
    assert value(samples, "batchrun_run_last_success_timestamp_seconds") == succeeded_at
    assert value(samples, "batchrun_run_last_end_timestamp_seconds") > succeeded_at
    assert "batchrun_requests_total" not in samples  # the revoked key failed the catalogue request, no job's
    assert value(samples, "batchrun_jobs", batch="more", state="queued") == 5
    assert value(samples, "batchrun_jobs", batch="jobs", state="succeeded") == 5


def test_a_metrics_file_in_a_missing_folder_exits_2_before_any_request(cli: Cli, sim: RunningSimulator,
                                                                      tmp_path: Path) -> None:
    submit_jobs(cli, tmp_path, 3)
    result = cli("run", "--no-progress", "--metrics-file", str(tmp_path / "missing" / "batchrun.prom"),
                 env=metrics_env(sim, make_keys(1)))
    assert result.returncode == 2, result.stderr
    assert "cannot write the metrics file" in result.stderr
    assert sim.state.snapshot()["requests_total"] == 0


def test_run_help_documents_the_option() -> None:
    help_text = " ".join(CliRunner().invoke(cli_group, ["run", "--help"]).output.split())
    assert "--metrics-file" in help_text and "BATCHRUN_METRICS_FILE" in help_text
