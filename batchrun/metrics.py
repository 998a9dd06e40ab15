"""The metrics file of `run --metrics-file PATH`: Prometheus text exposition format, for node_exporter's
textfile collector (or anything else that reads that format).

    MetricsSnapshot    what one write says: a frozen value
    format_metrics     a snapshot as exposition text (HELP and TYPE lines, escaped label values)
    write_atomically   the file appears whole or not at all (temp file beside it, fsync, os.replace)
    MetricsWriter      one run's file: written from its own thread, every `interval` and at exit
    record_run         what the CLI calls: a first write, the periodic one beside the run, the last one
                       with the exit code (also when the run raises)

The jobs come from the store's counts (the tallies the triggers keep: the numbers `status --json`
shows), the requests, tokens and cost from the runner's `AttemptLog.counters` (a few dict updates per
attempt): no write ever queries the attempts. The counters count this run only and start from 0 with
each run, which Prometheus' `rate()` and `increase()` take as a counter reset. The `last_*` gauges are
carried over from the file the previous run left, so they never vanish while a run goes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from batchrun.attempts import AttemptCounters
from batchrun.errors import BatchrunError, ConfigError
from batchrun.records import BatchCounts

log = logging.getLogger(__name__)

#: how often the file is rewritten while a run goes (node_exporter reads it at each scrape)
DEFAULT_INTERVAL = 15.0
#: for tests only: another interval, in seconds
INTERVAL_ENV = "BATCHRUN_METRICS_INTERVAL"

JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")

_LAST_EXIT = "batchrun_run_last_exit_code"
_LAST_END = "batchrun_run_last_end_timestamp_seconds"
_LAST_SUCCESS = "batchrun_run_last_success_timestamp_seconds"


@dataclass(frozen=True, slots=True)
class LastRun:
    """How the last run that wrote the file ended (None: not known)."""

    exit_code: int | None = None
    ended_at: float | None = None  # epoch seconds
    #: when a run last ended with exit 0 (every job finished, none failed)
    succeeded_at: float | None = None

    def ended(self, exit_code: int, at: float) -> LastRun:
        return LastRun(exit_code, at, at if exit_code == 0 else self.succeeded_at)


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    started_at: float  # epoch seconds
    running: bool = True
    #: batch name -> state -> jobs
    jobs: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    #: (key id, status label) -> requests this run sent
    requests: Mapping[tuple[str, str], int] = field(default_factory=dict)
    #: (model served, "prompt" | "completion") -> tokens of this run's succeeded attempts
    tokens: Mapping[tuple[str, str], int] = field(default_factory=dict)
    #: model served -> USD of this run's succeeded attempts
    cost: Mapping[str, float] = field(default_factory=dict)
    last: LastRun = LastRun()

    @classmethod
    def of(cls, started_at: float, counts: Sequence[BatchCounts], counters: AttemptCounters | None,
           running: bool = True, last: LastRun = LastRun()) -> MetricsSnapshot:
        """A snapshot of the store's counts and the run's counters, copied (the runner goes on counting)."""
        jobs = {c.name: {state: int(getattr(c, state)) for state in JOB_STATES} for c in counts}
        if counters is None:
            return cls(started_at, running, jobs, last=last)
        return cls(started_at, running, jobs, dict(counters.requests), dict(counters.tokens), dict(counters.cost),
                   last)


# --- the exposition format ---------------------------------------------------------------------------

Sample = tuple[Mapping[str, str], float]


def format_metrics(snapshot: MetricsSnapshot) -> str:
    """The snapshot in the Prometheus text exposition format (version 0.0.4), samples sorted."""
    last = snapshot.last
    families: list[tuple[str, str, str, list[Sample]]] = [
        ("batchrun_jobs", "gauge", "Jobs per batch and state, as `batchrun status` counts them.",
         [({"batch": batch, "state": state}, n)
          for batch, states in sorted(snapshot.jobs.items()) for state, n in states.items()]),
        ("batchrun_requests_total", "counter",
         "Requests this run sent, per key id and HTTP status (or error code when no answer came).",
         [({"key": key, "status": status}, n) for (key, status), n in sorted(snapshot.requests.items())]),
        ("batchrun_tokens_total", "counter", "Tokens of this run's succeeded attempts, per model served and kind.",
         [({"model": model, "kind": kind}, n) for (model, kind), n in sorted(snapshot.tokens.items())]),
        ("batchrun_cost_usd_total", "counter",
         "Cost in USD of this run's succeeded attempts, per model served (catalogue prices).",
         [({"model": model}, usd) for model, usd in sorted(snapshot.cost.items())]),
        ("batchrun_run_running", "gauge", "1 while a run goes, 0 once it has ended.",
         [({}, 1 if snapshot.running else 0)]),
        ("batchrun_run_start_timestamp_seconds", "gauge", "When the current (or last) run started, epoch seconds.",
         [({}, snapshot.started_at)]),
        (_LAST_EXIT, "gauge", "Exit code of the last run that ended (see `batchrun run --help`).",
         _known(last.exit_code)),
        (_LAST_END, "gauge", "When the last run ended, epoch seconds.", _known(last.ended_at)),
        (_LAST_SUCCESS, "gauge", "When a run last ended with exit 0 (all jobs finished, none failed), epoch "
                                 "seconds; 0 if no run writing this file has yet.",
         [({}, last.succeeded_at or 0)]),
    ]
    lines: list[str] = []
    for name, kind, help_text, samples in families:
        lines.append(f"# HELP {name} {_escape_help(help_text)}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{_labels(labels)} {_number(value)}" for labels, value in samples)
    return "\n".join(lines) + "\n"


def _known(value: float | None) -> list[Sample]:
    return [] if value is None else [({}, value)]


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def escape_label_value(value: str) -> str:
    """Backslash, double quote and line feed escaped, as the exposition format wants them."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{name}="{escape_label_value(value)}"' for name, value in labels.items()) + "}"


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


_LAST_LINE = re.compile(rf"^({_LAST_EXIT}|{_LAST_END}|{_LAST_SUCCESS}) (\S+)$", re.MULTILINE)


def read_last_run(path: str) -> LastRun:
    """The `last_*` gauges of the file a previous run left at `path` (nothing known if none is readable)."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except (OSError, UnicodeDecodeError):
        return LastRun()
    found: dict[str, float] = {}
    for name, value in _LAST_LINE.findall(text):
        try:
            found[name] = float(value)
        except ValueError:
            continue
    exit_code = found.get(_LAST_EXIT)
    return LastRun(None if exit_code is None or not exit_code.is_integer() else int(exit_code),
                   found.get(_LAST_END), found.get(_LAST_SUCCESS) or None)


# --- the file ------------------------------------------------------------------------------------------

def write_atomically(path: str, text: str) -> None:
    """Write `text` to `path` so that a reader sees the old file or the new one, never a part: a temp file
    in the same folder (a name without `.prom`, which the textfile collector skips), fsync, os.replace.
    The file stays readable by others (node_exporter runs as another user); an existing file keeps its mode."""
    from batchrun.export import atomic_output

    try:
        mode = os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644
    with atomic_output(path) as out:
        out.write(text.encode("utf-8"))
        out.flush()
        os.fchmod(out.fileno(), mode)
        os.fsync(out.fileno())
    _sync_folder(os.path.dirname(os.path.abspath(path)))


def _sync_folder(folder: str) -> None:
    """The rename itself survives a power cut once the folder is synced (best effort: not everywhere)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def interval_from_env(environ: Mapping[str, str] | None = None) -> float:
    """DEFAULT_INTERVAL, or BATCHRUN_METRICS_INTERVAL seconds (a test's short interval)."""
    raw = (os.environ if environ is None else environ).get(INTERVAL_ENV)
    if not raw:
        return DEFAULT_INTERVAL
    try:
        interval = float(raw)
    except ValueError:
        raise ConfigError(f"{INTERVAL_ENV}: {raw!r} is not a number of seconds") from None
    if not interval > 0:
        raise ConfigError(f"{INTERVAL_ENV}: must be positive, not {raw!r}")
    return interval


class MetricsWriter:
    """One run's metrics file. The store's counts are read and the file written in one thread of its own:
    off the event loop, one write after the other (so the last one written is the last one asked for)."""

    __slots__ = ("path", "_counts", "_counters", "_thread", "_clock", "started_at", "last", "_failing",
                 "_counts_seen")

    def __init__(self, path: str, counts: Callable[[], Sequence[BatchCounts]],
                 counters: Callable[[], AttemptCounters | None], clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._counts = counts
        self._counters = counters
        self._clock = clock
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batchrun-metrics")
        self.started_at = clock()
        self.last = read_last_run(path)
        self._failing: str | None = None
        self._counts_seen: Sequence[BatchCounts] = ()

    async def write(self, exit_code: int | None = None) -> None:
        """Write the file now: the run still going, or (given its exit code) ended."""
        loop = asyncio.get_running_loop()
        try:
            counts = await loop.run_in_executor(self._thread, self._counts)
        except BatchrunError:
            if exit_code is None:
                raise
            counts = self._counts_seen  # the database failed: the file must still say the run ended
        else:
            self._counts_seen = counts
        running = exit_code is None
        if exit_code is not None:
            self.last = self.last.ended(exit_code, self._clock())
        # The counters are read here, on the event loop that updates them.
        snapshot = MetricsSnapshot.of(self.started_at, counts, self._counters(), running, self.last)
        await loop.run_in_executor(self._thread, write_atomically, self.path, format_metrics(snapshot))

    async def write_every(self, interval: float) -> None:
        """Rewrite the file every `interval` seconds until cancelled; a failed write is logged, not fatal."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.write()
            except Exception as exc:  # the metrics never stop the run
                self._warn(exc)
            else:
                self._failing = None

    def _warn(self, exc: Exception) -> None:
        reason = getattr(exc, "strerror", None) or str(exc)
        if reason != self._failing:  # once per cause, not every interval
            log.warning("cannot write the metrics file %s: %s", self.path, reason)
        self._failing = reason

    def close(self) -> None:
        self._thread.shutdown(wait=True)


class _Ends(Protocol):
    @property
    def exit_code(self) -> int: ...


R = TypeVar("R", bound=_Ends)


async def record_run(path: str | None, db_url: str, batch: str | None,
                     counters: Callable[[], AttemptCounters | None], run: Callable[[], Awaitable[R]],
                     interval: float | None = None) -> R:
    """Run `run()` with its metrics file at `path` (None: no file): written before it starts (a path that
    cannot be written is a usage error, before any request), every `interval` while it goes, and once it
    ends, with its exit code — also when it raises (a BatchrunError's exit code, 1 for anything else).
    `batch`: the run's --batch, the only batch whose jobs the file counts (None: every batch)."""
    if path is None:
        return await run()
    from batchrun.store import Store

    interval = interval_from_env() if interval is None else interval
    # Its own connection: the runner's store belongs to the runner's database thread.
    store = Store.open(db_url, migrate=False)

    def counts() -> list[BatchCounts]:
        found = store.counts()
        return found if batch is None else [c for c in found if c.name == batch]

    writer = MetricsWriter(path, counts, counters)
    try:
        try:
            await writer.write()
        except OSError as exc:
            raise ConfigError(f"cannot write the metrics file {path}: {exc.strerror or exc}") from None
        periodic = asyncio.create_task(writer.write_every(interval), name="metrics")
        exit_code = 1
        try:
            result = await run()
            exit_code = result.exit_code
            return result
        except BatchrunError as exc:
            exit_code = exc.exit_code
            raise
        finally:
            periodic.cancel()
            await asyncio.gather(periodic, return_exceptions=True)
            try:
                await writer.write(exit_code)
            except Exception as exc:  # best effort: never hide how the run ended
                writer._warn(exc)
    finally:
        writer.close()
        store.close()
