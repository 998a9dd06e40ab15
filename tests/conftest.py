"""Fixtures shared by the integration and acceptance tests.

Every test works in its own tmp_path (parallel-safe), with every BATCHRUN_* variable scrubbed so the
developer's environment cannot leak in. The provider is the bundled simulator, a real aiohttp server
on a free loopback port; the CLI runs as a real subprocess.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from batchrun.simulator import RunningSimulator, SimulatorConfig, SimulatorThread

# Retry quickly in tests; the production defaults (1 s → 30 s) are tested in test_retry.py.
FAST_RETRY = ["--backoff-base", "20ms", "--backoff-max", "100ms"]


#: the variables a proxy or a CA bundle is set by: a developer's or CI's must not reach a test
PROXY_ENV = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "all_proxy",
             "no_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR")


def _outside(name: str) -> bool:
    """Whether the environment variable `name` is the developer's business, not the test's."""
    return name.startswith("BATCHRUN_") or name in PROXY_ENV


@pytest.fixture(autouse=True)
def _scrub_batchrun_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if _outside(name):
            monkeypatch.delenv(name)


def in_threads(target: Callable[..., object], args: list[Any], timeout: float | None = 60) -> None:
    """Run `target(arg)` for each of `args`, each in a thread of its own, all at once; wait for them."""
    threads = [threading.Thread(target=target, args=(arg,)) for arg in args]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)


def make_keys(count: int) -> list[str]:
    """Keys with long random secrets, so a leak cannot hide behind a chance match."""
    return [f"key{i + 1}:{secrets.token_hex(16)}" for i in range(count)]


@dataclass
class Cli:
    """Runs `python -m batchrun` in a working directory with a private database."""

    cwd: Path
    env: dict[str, str] = field(default_factory=dict)

    def environment(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not _outside(k)}
        env.update(self.env)
        env.update(extra or {})
        return env

    def __call__(self, *args: str, input: bytes | None = None, env: dict[str, str] | None = None,
                 timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "batchrun", *args], cwd=self.cwd, env=self.environment(env),
            input=input.decode() if input is not None else None, capture_output=True, text=True,
            timeout=timeout,
        )

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "batchrun", *args], cwd=self.cwd, env=self.environment(env),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "both_databases: the test's `db_url` is a SQLite file, then a PostgreSQL "
                                       "database of its own (the test runs twice)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "db_url" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_databases"):
        metafunc.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The queue of the test's `cli`: a SQLite file; with `pytestmark = pytest.mark.both_databases`, a
    SQLite file and then a PostgreSQL database of its own."""
    if getattr(request, "param", "sqlite") == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite:///{tmp_path / 'queue.db'}"


@pytest.fixture
def cli(tmp_path: Path, db_url: str) -> Cli:
    return Cli(tmp_path, {"BATCHRUN_DB": db_url})


@pytest.fixture
def sim() -> Iterator[RunningSimulator]:
    with SimulatorThread(SimulatorConfig(seed=1)) as running:
        yield running


def write_jobs(path: Path, count: int, *, model: str = "fast", prefix: str = "job",
               extra: dict[str, Any] | None = None) -> dict[str, str]:
    """A job file of `count` bare-form lines; returns custom_id -> the prompt each one sends."""
    prompts = {}
    with path.open("w") as out:
        for i in range(count):
            custom_id = f"{prefix}-{i:05d}"
            prompt = f"question {prefix} number {i}"
            prompts[custom_id] = prompt
            out.write(json.dumps({"custom_id": custom_id, "model": model,
                                  "messages": [{"role": "user", "content": prompt}], **(extra or {})}) + "\n")
    return prompts


def submit_jobs(cli: Cli, tmp_path: Path, count: int, **kwargs: Any) -> dict[str, str]:
    """Write a job file of `count` jobs and submit it; returns custom_id -> prompt."""
    prompts = write_jobs(tmp_path / "jobs.jsonl", count, **kwargs)
    result = cli("submit", str(tmp_path / "jobs.jsonl"))
    assert result.returncode == 0, result.stderr
    return prompts


def provider_env(sim: RunningSimulator, keys: list[str]) -> dict[str, str]:
    """The environment that points `batchrun run` at the simulator with these keys."""
    return {"BATCHRUN_BASE_URL": sim.base_url, "BATCHRUN_API_KEYS": ",".join(keys)}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def migrate(store: Any, revision: str, step: Callable[[Any, str], None]) -> None:
    """Run an Alembic `step` (command.upgrade or command.downgrade) to `revision` on the store's database."""
    from batchrun.database import alembic_config as _alembic_config

    config = _alembic_config(store._engine)
    with store.transaction() as conn:
        config.attributes["connection"] = conn
        step(config, revision)


@contextmanager
def database_at(url: str, revision: str) -> Iterator[Any]:
    """A write transaction on a new database made at an older schema `revision` (to test upgrades)."""
    from alembic import command

    from batchrun.store import Store

    with Store.open(url, migrate=False) as old:
        migrate(old, revision, command.upgrade)
        with old.transaction() as conn:
            yield conn


PG_ADMIN_URL = os.environ.get("BATCHRUN_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test alone, dropped afterwards.

    PostgreSQL must be running (CI starts it): a test of the PostgreSQL path fails, never skips.
    """
    import psycopg

    name = f"batchrun_test_{secrets.token_hex(6)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs once on a SQLite file and once on a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def start_llmock(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Starts `llmock serve ARGS` (a third-party chaos provider) as a subprocess: `start_llmock("--rpm", "60")`
    returns a `llmock_server.LLMock` once it answers; every one started is stopped after the test.

    Not named `llmock`: that is the in-process fixture of llmock's own pytest plugin."""
    from contextlib import ExitStack

    from llmock_server import llmock_serving

    with ExitStack() as stack:
        yield lambda *args: stack.enter_context(llmock_serving(*args, log_dir=tmp_path))


# --- reading what a run left, as a user does -----------------------------------------------------------

def export(cli: Cli, tmp_path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`batchrun export --output --errors`: the results and the errors, as rows."""
    result = cli("export", "--output", str(tmp_path / "results.jsonl"), "--errors", str(tmp_path / "errors.jsonl"))
    assert result.returncode == 0, result.stderr
    return read_jsonl(tmp_path / "results.jsonl"), read_jsonl(tmp_path / "errors.jsonl")


def status_json(cli: Cli) -> dict[str, Any]:
    result = cli("status", "--json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def batch_status(cli: Cli, name: str | None = None) -> dict[str, Any]:
    """`status --json` of the batch `name` (the first batch if not given)."""
    batches = status_json(cli)["batches"]
    return dict(batches[0] if name is None else next(b for b in batches if b["name"] == name))


def keys_json(cli: Cli) -> dict[str, dict[str, Any]]:
    """`batchrun keys --json`, by key id."""
    result = cli("keys", "--json")
    assert result.returncode == 0, result.stderr
    return {entry["id"]: entry for entry in json.loads(result.stdout)}


# --- processes -----------------------------------------------------------------------------------------

def wait_for(predicate: Callable[[], Any], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def finish(process: subprocess.Popen[str], timeout: float = 90.0) -> tuple[str, str]:
    """Wait for a `batchrun run` to exit; one that hangs is killed (no stray process or open pipe)."""
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise


# --- jobs for the store --------------------------------------------------------------------------------

def job_line(custom_id: str, model: str = "m", content: str | None = None) -> str:
    return json.dumps({"custom_id": custom_id, "model": model,
                       "messages": [{"role": "user", "content": content if content is not None else custom_id}]})


def job_specs(count: int, start: int = 0, model: str = "m", content: str = "q{i}") -> list[Any]:
    """`count` parsed jobs c0000, c0001... for the store's own tests; `content` is a format string of
    `i` and `custom_id` (q0, q1... by default)."""
    from batchrun.jobfile import JobSpec, parse_line

    jobs = []
    for i in range(start, start + count):
        custom_id = f"c{i:04d}"
        job = parse_line(job_line(custom_id, model, content.format(i=i, custom_id=custom_id)), i + 1)
        assert isinstance(job, JobSpec)
        jobs.append(job)
    return jobs


# --- time a test moves instead of waiting for it -----------------------------------------------------

class FakeClock:
    """A clock that moves only when something sleeps on it: `clock()` reads it, `await clock.sleep(s)`
    moves it on by `s` (and lets the other tasks run). Like a busy machine, a sleeper may wake later
    than it asked (another sleeper moved the clock further), never sooner."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        import asyncio

        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


class ShiftedClock:
    """The real wall clock, set to read `at` now (epoch seconds): a run's deadline is met in real time
    while the time of day is the test's choice."""

    def __init__(self, at: float) -> None:
        self._offset = at - time.time()

    def __call__(self) -> float:
        return time.time() + self._offset


# --- a run in this process, against the simulator thread ---------------------------------------------

async def run_in_process(db_url: str, base_url: str, keys: list[str], *, clock: Callable[[], float] | None = None,
                         client: dict[str, Any] | None = None, **options: Any) -> Any:
    """`batchrun run` as the CLI builds it, in the test's event loop (so it can be given a clock and
    options the command line does not have): returns its `RunReport`. Retries are fast (FAST_RETRY)."""
    from batchrun.keys import KeyLimits, lanes_for, parse_keys
    from batchrun.provider import ProviderClient
    from batchrun.retry import Backoff, RetryPolicy
    from batchrun.runner import Runner
    from batchrun.runstate import RunOptions
    from batchrun.store import Store

    options.setdefault("policy", RetryPolicy(backoff=Backoff(0.02, 0.1)))
    with Store.open(db_url) as store:
        lanes = lanes_for(parse_keys(",".join(keys), "test keys"), KeyLimits(), {},
                          {key: (rec.state, rec.reason) for key, rec in store.key_records().items()})
        async with ProviderClient(base_url, **(client or {})) as provider:
            runner = Runner(store, provider, lanes, RunOptions(**options), clock=clock or time.time)
            return await runner.run()
