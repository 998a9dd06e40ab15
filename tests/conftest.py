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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from batchrun.simulator import RunningSimulator, SimulatorConfig, SimulatorThread

# Retry quickly in tests; the production defaults (1 s → 30 s) are tested in test_retry.py.
FAST_RETRY = ["--backoff-base", "20ms", "--backoff-max", "100ms"]


@pytest.fixture(autouse=True)
def _scrub_batchrun_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("BATCHRUN_"):
            monkeypatch.delenv(name)


def make_keys(count: int) -> list[str]:
    """Keys with long random secrets, so a leak cannot hide behind a chance match."""
    return [f"key{i + 1}:{secrets.token_hex(16)}" for i in range(count)]


@dataclass
class Cli:
    """Runs `python -m batchrun` in a working directory with a private database."""

    cwd: Path
    env: dict[str, str] = field(default_factory=dict)

    def environment(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHRUN_")}
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


@pytest.fixture
def db_url(tmp_path: Path) -> str:
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
    from batchrun.store import _alembic_config

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
