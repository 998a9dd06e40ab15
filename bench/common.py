"""What every benchmark shares: pinned subprocesses, the servers, job files, statistics, results.

The machine is small and noisy, so the rules are built in here:
  * the server (the simulator for the behaviour cases, bench/fastserver.py for the throughput ones) runs
    on core 1 and the program under test on core 0 (`taskset`), one at a time;
  * a process is timed from spawn to exit, and its own peak RSS and CPU time come from `os.wait4`;
  * every figure is a `Series` of repetitions, shown as median (min–max, n);
  * comparisons are ratios of runs made in the same repetition, alternating, never of separate sessions.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Self

import orjson

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
CACHE = BENCH / ".cache"
BIN = Path(sys.executable).parent
BATCHRUN = str(BIN / "batchrun")
PYTHON = sys.executable
TASKSET = shutil.which("taskset") or "/usr/bin/taskset"
#: the load generator that measures the fast server alone (`apt-get install -y wrk`); optional
WRK = shutil.which("wrk")
RUNNER_CPU, SIM_CPU = "0", "1"
#: a stuck process is killed after this long, so one bad run cannot hang the suite
DEFAULT_TIMEOUT = 300.0


# --- processes ----------------------------------------------------------------------------------

@dataclass
class Proc:
    """One finished process: wall time from spawn to exit, its own peak RSS and CPU time, output."""

    cmd: list[str]
    returncode: int
    wall: float
    maxrss_mb: float
    cpu: float
    stdout: str
    stderr: str

    def check(self) -> Proc:
        if self.returncode != 0:
            raise RuntimeError(f"{shown(self.cmd)} exited {self.returncode}:\n{self.stdout[-2000:]}"
                               f"\n{self.stderr[-2000:]}")
        return self


class Started:
    """A running pinned process; `wait()` reaps it with `os.wait4`, so its rusage is its own."""

    def __init__(self, cmd: Sequence[str], env: dict[str, str] | None = None, cpu: str = RUNNER_CPU,
                 cwd: Path | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.cmd = list(cmd)
        self._out: IO[bytes] = tempfile.TemporaryFile()
        self._err: IO[bytes] = tempfile.TemporaryFile()
        self.started = time.perf_counter()
        # taskset execs the command, so the pid (and the rusage) is the program's own; the working
        # directory is a neutral one, so no ./batchrun.toml changes what is measured
        self.popen = subprocess.Popen([TASKSET, "-c", cpu, *self.cmd], stdout=self._out, stderr=self._err,
                                      env=env, cwd=cwd or tempfile.gettempdir())
        self._watchdog = threading.Timer(timeout, self._kill)
        self._watchdog.daemon = True
        self._watchdog.start()

    def _kill(self) -> None:
        if self.popen.returncode is None:
            self.popen.kill()

    def send_signal(self, signum: int = signal.SIGINT) -> None:
        self.popen.send_signal(signum)

    def wait(self) -> Proc:
        _, status, usage = os.wait4(self.popen.pid, 0)
        wall = time.perf_counter() - self.started
        self._watchdog.cancel()
        self.popen.returncode = os.waitstatus_to_exitcode(status)
        outputs = []
        for stream in (self._out, self._err):
            stream.seek(0)
            outputs.append(stream.read().decode(errors="replace"))
            stream.close()
        return Proc(self.cmd, self.popen.returncode, wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime,
                    outputs[0], outputs[1])


def run(cmd: Sequence[str], env: dict[str, str] | None = None, cpu: str = RUNNER_CPU, cwd: Path | None = None,
        timeout: float = DEFAULT_TIMEOUT) -> Proc:
    return Started(cmd, env, cpu, cwd, timeout).wait()


def batchrun_env(db: Path | None = None, base_url: str | None = None, keys: Sequence[str] = ("bench1:secret1",),
                 ) -> dict[str, str]:
    """This environment minus any BATCHRUN_* setting, plus the database, provider and keys given."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("BATCHRUN_")}
    if db is not None:
        env["BATCHRUN_DB"] = f"sqlite:///{db}"
    if base_url is not None:
        env["BATCHRUN_BASE_URL"] = base_url
    env["BATCHRUN_API_KEYS"] = ",".join(keys)
    return env


def shown(cmd: Sequence[str]) -> str:
    """A command as a reader would type it: `batchrun …`, `python bench/…`, temp paths shortened."""
    words = []
    for word in cmd:
        if word == BATCHRUN:
            word = "batchrun"
        elif word == PYTHON:
            word = "python"
        elif word.startswith(str(BENCH)):
            word = "bench/" + word[len(str(BENCH)) + 1:]
        words.append(word)
    text = " ".join(words)
    text = re.sub(r"http://127\.0\.0\.1:\d+/v1", "$SIM", text)
    return re.sub(re.escape(tempfile.gettempdir()) + r"/(?:[\w.-]+/)+", "$TMP/", text)


def batchrun_revision() -> str:
    """A note of which batchrun was measured: the commit, and the files of batchrun/ changed since, if any
    (the venv's install is editable, so a run measures the working tree as it is)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout

    commit = git("rev-parse", "--short", "HEAD").strip() or "?"
    changed = [line[3:] for line in git("status", "--porcelain", "--", "batchrun", "migrations").splitlines()]
    if not changed:
        return f"batchrun measured at commit {commit}, batchrun/ unchanged since."
    return (f"batchrun measured at commit {commit} plus uncommitted changes to {len(changed)} file(s) of batchrun/ "
            f"({', '.join(changed[:8])}{', …' if len(changed) > 8 else ''}).")


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat), steal time included."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process and of every child it has reaped (the simulator, the clients)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the servers --------------------------------------------------------------------------------

class PinnedServer:
    """A provider (the simulator, the fast server, llmock) running on the server's core, its output in a log file."""

    def __init__(self, cmd: Sequence[str], log_prefix: str) -> None:
        self.cmd = list(cmd)
        self._log = tempfile.NamedTemporaryFile(prefix=log_prefix, suffix=".log")
        self.popen = subprocess.Popen([TASKSET, "-c", SIM_CPU, *self.cmd], stdout=self._log,
                                      stderr=subprocess.STDOUT, env=batchrun_env(), cwd=tempfile.gettempdir())

    def log(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.popen.pid)

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BenchServer(PinnedServer):
    """A provider of the bench's own (the simulator, the fast server) on its own core, with its counters
    one HTTP call away under `CONTROL` (`stats`, `reset`); it prints `listening on URL` once it serves."""

    CONTROL = ""

    def __init__(self, cmd: Sequence[str], log_prefix: str) -> None:
        super().__init__(cmd, log_prefix)
        deadline = time.monotonic() + 20
        while not (found := re.search(r"listening on (http://\S+)", self.log())):
            if self.popen.poll() is not None or time.monotonic() > deadline:
                log = self.log()
                self.close()
                raise RuntimeError(f"{shown(self.cmd)} did not start: {log}")
            time.sleep(0.05)
        self.base_url = found.group(1)
        host, port = self.base_url.split("//")[1].split("/")[0].split(":")
        self._host, self._port = host, int(port)
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()  # one connection, used by a poller thread and the benchmark alike

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        with self._lock:
            return self._exchange(method, path, body)

    def _exchange(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        payload = None if body is None else json.dumps(body).encode()
        headers = {} if body is None else {"Content-Type": "application/json"}
        for attempt in (1, 2):
            try:
                if self._conn is None:
                    self._conn = http.client.HTTPConnection(self._host, self._port, timeout=10)
                self._conn.request(method, path, payload, headers)
                return json.loads(self._conn.getresponse().read())
            except (OSError, http.client.HTTPException):
                self._conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    @property
    def command(self) -> str:
        return f"taskset -c {SIM_CPU} {shown(self.cmd)}"

    def stats(self) -> dict[str, Any]:
        """Its counters: at least requests_total, by_status, completions_ok, duplicates, max_in_flight."""
        result: dict[str, Any] = self._call("GET", f"{self.CONTROL}/stats")
        return result

    def reset(self) -> None:
        self._call("POST", f"{self.CONTROL}/reset")


class Simulator(BenchServer):
    """`batchrun simulate` on its own core: the provider that behaves like one (limits, faults, echoes)."""

    CONTROL = "/_sim"

    def __init__(self, *flags: str, cmd: Sequence[str] | None = None) -> None:
        """`cmd`, if given, launches it instead (a wrapper that serves more, say); it prints the same line."""
        self.flags = list(flags)
        super().__init__(cmd or [BATCHRUN, "simulate", "--port", "0", *self.flags], "bench-sim-")

    def configure(self, **changes: Any) -> None:
        """Change the running simulator's settings (`POST /_sim/config`), e.g. `configure(fail_rate=1.0)`."""
        answer = self._call("POST", "/_sim/config", changes)
        if isinstance(answer, dict) and "error" in answer:
            raise RuntimeError(f"the simulator refused {changes}: {answer}")


class FastServer(BenchServer):
    """`bench/fastserver.py` on its own core: canned answers after a fixed latency, for the throughput cases,
    where the simulator's own CPU (≈ 0.2 ms a request) would be part of what is measured."""

    CONTROL = "/_fast"

    def __init__(self, latency_ms: float = 0.0) -> None:
        self.latency_ms = latency_ms
        super().__init__([PYTHON, str(BENCH / "fastserver.py"), "--port", "0", "--latency", f"{latency_ms:g}"],
                         "bench-fast-")


@dataclass
class Load:
    """`wrk` on the client core against a server alone: what the server does when nothing else costs."""

    rate: float  # requests per second, wrk's count
    requests: int  # the server's count
    server_cpu: float
    wall: float
    command: str

    @property
    def server_share(self) -> float:
        return self.server_cpu / self.wall

    @property
    def server_us(self) -> float:
        """The server's CPU microseconds per request."""
        return self.server_cpu / self.requests * 1e6 if self.requests else 0.0


def wrk_load(server: BenchServer, body: bytes, connections: int = 64, seconds: int = 5) -> Load | None:
    """`wrk -t1` (one thread: one core) POSTing `body` to the chat endpoint over `connections`
    keep-alive connections for `seconds`, pinned to the client core; None if wrk is not installed."""
    if WRK is None:
        return None
    script = Path(tempfile.mkdtemp(prefix="bench-wrk-")) / "chat.lua"
    script.write_text(f'wrk.method = "POST"\nwrk.path = "/v1/chat/completions"\n'
                      f'wrk.headers["Content-Type"] = "application/json"\n'
                      f'wrk.headers["Authorization"] = "Bearer bench1:secret1"\nwrk.body = {json.dumps(body.decode())}\n')
    cmd = [WRK, "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script), server.base_url]
    server.reset()
    cpu = server.cpu_seconds()
    proc = run(cmd).check()
    cpu = server.cpu_seconds() - cpu
    found = re.search(r"Requests/sec:\s*([\d.]+)", proc.stdout)
    if not found:
        raise RuntimeError(f"no rate in wrk's output: {proc.stdout}")
    shutil.rmtree(script.parent, ignore_errors=True)
    command = f"taskset -c {RUNNER_CPU} wrk -t1 -c{connections} -d{seconds}s -s chat.lua $SIM"
    return Load(float(found.group(1)), int(server.stats()["requests_total"]), cpu, proc.wall, command)


class Watch:
    """Samples a server's request count in a thread while a program runs against it.

    From the samples: when the first request arrived and when the last one did (to within the
    sampling interval), so a rate can be measured at the server, without the program's start-up.
    """

    def __init__(self, sim: BenchServer, interval: float = 0.02) -> None:
        self._sim = sim
        self._interval = interval
        self._stop = threading.Event()
        self.samples: list[tuple[float, int]] = []
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), int(self._sim.stats()["requests_total"])))
            self._stop.wait(self._interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.perf_counter(), int(self._sim.stats()["requests_total"])))

    def rate(self) -> float | None:
        """Requests per second between the first sample that saw a request and the first that saw them all."""
        final = self.samples[-1][1]
        seen = [(t, n) for t, n in self.samples if n > 0]
        if not seen:
            return None
        t0, n0 = seen[0]
        t1 = next(t for t, n in seen if n == final)
        return (final - n0) / (t1 - t0) if t1 > t0 else None


@dataclass
class Measured:
    """A program's run against a server: the process, the rate seen at the server, the server's CPU."""

    proc: Proc
    jobs: int
    sim_rate: float | None
    sim_cpu: float
    stats: dict[str, Any]

    @property
    def rate(self) -> float:
        """jobs / wall time from process start to exit."""
        return self.jobs / self.proc.wall

    @property
    def cpu_us(self) -> float:
        """The client's CPU microseconds per job (its user + system time from `wait4`, start-up included)."""
        return self.proc.cpu / self.jobs * 1e6

    @property
    def server_share(self) -> float:
        """The server's CPU seconds over the client's wall time: its share of its core while serving."""
        return self.sim_cpu / self.proc.wall


def measure(sim: BenchServer, cmd: Sequence[str], jobs: int, env: dict[str, str],
            timeout: float = DEFAULT_TIMEOUT) -> Measured:
    """Run `cmd` against a freshly reset server; check that every job got exactly one 200."""
    sim.reset()
    watch = Watch(sim)
    sim_cpu = sim.cpu_seconds()
    proc = run(cmd, env, timeout=timeout)
    watch.stop()
    sim_cpu = sim.cpu_seconds() - sim_cpu
    proc.check()
    stats = sim.stats()
    if stats["completions_ok"] != jobs or stats["duplicates"]:
        raise RuntimeError(f"{shown(cmd)}: the server saw {stats['completions_ok']} successes "
                           f"({stats['duplicates']} duplicates) for {jobs} jobs: {stats['by_status']}")
    return Measured(proc, jobs, watch.rate(), sim_cpu, stats)


# --- job files and databases --------------------------------------------------------------------

#: bump when the generator changes, so cached files are made again
GENERATOR_VERSION = 1

_SYSTEM = ["You are a concise assistant.", "You are a helpful support agent for an online shop.",
           "You classify customer feedback into positive, neutral or negative.",
           "You translate English into French. Answer with the translation only.",
           "You summarise documents in at most three sentences."]
_TASKS = ["Summarise this review:", "Classify the sentiment of:", "Translate:", "Answer briefly:",
          "Extract the product name from:", "Rewrite more politely:", "Give one title for:"]
_WORDS = ("the order arrived late but the support team was friendly and quick to refund my money "
          "battery life is great screen too dim in sunlight would buy again shipping box was damaged "
          "how do I reset my password after changing my email address the invoice lists the wrong "
          "price please cancel my subscription from next month onwards").split()


def job_line(rng: random.Random, i: int) -> bytes:
    """One realistic small chat request: a batch line (2/3) or a bare body (1/3), ≈ 385 bytes on average."""
    messages = []
    if rng.random() < 0.7:
        messages.append({"role": "system", "content": rng.choice(_SYSTEM)})
    text = " ".join(rng.choices(_WORDS, k=rng.randint(4, 40)))
    messages.append({"role": "user", "content": f"{rng.choice(_TASKS)} {text} (#{i})"})
    if rng.random() < 0.15:
        messages += [{"role": "assistant", "content": "Could you say which product you mean?"},
                     {"role": "user", "content": " ".join(rng.choices(_WORDS, k=rng.randint(3, 20)))}]
    body: dict[str, Any] = {"model": rng.choices(["sim-small", "fast", "sim-large"], [60, 25, 15])[0],
                            "messages": messages, "max_tokens": rng.choice([64, 128, 256, 512])}
    if rng.random() < 0.3:
        body["temperature"] = round(rng.random(), 1)
    custom_id = f"req-{i:07d}"
    if rng.random() < 2 / 3:
        line = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    else:
        line = {"custom_id": custom_id, **body}
    return orjson.dumps(line) + b"\n"


def job_file(jobs: int) -> Path:
    """A job file of `jobs` lines, generated once and cached under bench/.cache/."""
    return cached_job_file(f"jobs-{jobs}-v{GENERATOR_VERSION}.jsonl", jobs, job_line)


def cached_job_file(name: str, jobs: int, line: Callable[[random.Random, int], bytes]) -> Path:
    """bench/.cache/`name`: `jobs` lines of `line(rng, i)` (rng seeded with `jobs`), made the first time only."""
    path = CACHE / name
    if not path.exists():
        CACHE.mkdir(exist_ok=True)
        rng = random.Random(jobs)
        partial = path.with_suffix(".partial")
        with open(partial, "wb") as out:
            for i in range(jobs):
                out.write(line(rng, i))
        partial.rename(path)
    return path


def copy_db(source: Path, target: Path) -> Path:
    """A copy of a closed SQLite database (its WAL folded in first)."""
    with sqlite3.connect(source) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    shutil.copyfile(source, target)
    return target


def submit(db: Path, path: Path) -> Proc:
    """`batchrun submit` of `path` into `db`, pinned to the runner's core."""
    return run([BATCHRUN, "submit", str(path)], batchrun_env(db)).check()


# --- figures ------------------------------------------------------------------------------------

@dataclass
class Series:
    """The repetitions of one figure."""

    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def show(self, spec: str = ",.0f", unit: str = "") -> str:
        """`1,071 req/s (1,050–1,090, n=3)`."""
        main = f"{self.median:{spec}}{unit}"
        if len(self.values) < 2:
            return main
        return f"{main} ({min(self.values):{spec}}–{max(self.values):{spec}}, n={len(self.values)})"


@dataclass
class Row:
    figure: str
    measured: str
    target: str = ""
    met: bool | None = None  # None: a figure with no target of its own


@dataclass
class Section:
    """One benchmark's results, as they go into docs/benchmarks.md (and bench/results.json)."""

    name: str
    title: str
    about: str
    rows: list[Row]
    commands: list[str]
    notes: list[str] = field(default_factory=list)
    details: list[list[str]] = field(default_factory=list)  # an extra table: header row, then rows
    date: str = ""
    invocation: str = ""
    seconds: float = 0.0
    budget: float = 0.0
    quick: bool = False
    #: share of the machine's CPU time used by anything but this suite's processes while it ran: noise
    foreign_cpu: float | None = None


@dataclass
class Context:
    """What a benchmark is given: repetitions, quick mode, a scratch directory, shared artefacts."""

    reps: int | None
    quick: bool
    work: Path
    artefacts: dict[str, Path] = field(default_factory=dict)

    def repetitions(self, default: int) -> int:
        return 1 if self.quick else (self.reps if self.reps is not None else default)

    def scratch(self, name: str) -> Path:
        """A fresh directory for one run (its database, output files)."""
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.work))

    def shared(self, name: str, make: Callable[[], Path]) -> Path:
        """An artefact (e.g. a loaded database) made once per session, whichever benchmark needs it first."""
        if name not in self.artefacts:
            self.artefacts[name] = make()
        return self.artefacts[name]


def loaded_db(ctx: Context, jobs: int) -> Path:
    """A database with the `jobs`-line file submitted and untouched since; copy it before changing it."""

    def make() -> Path:
        db = ctx.scratch(f"loaded-{jobs}") / "batchrun.db"
        submit(db, job_file(jobs))
        return db

    return ctx.shared(f"loaded-{jobs}", make)


def run_batchrun(ctx: Context, sim: BenchServer, template: Path, jobs: int, concurrency: int) -> Measured:
    """`batchrun run` over a fresh copy of a loaded database, pinned to the client core."""
    db = copy_db(template, ctx.scratch("batchrun") / "batchrun.db")
    cmd = [BATCHRUN, "run", "--no-progress", "--concurrency", str(concurrency)]
    return measure(sim, cmd, jobs, batchrun_env(db, sim.base_url))


def run_ceiling(ctx: Context, sim: BenchServer, path: Path, jobs: int, concurrency: int) -> Measured:
    """The ceiling peer (bare aiohttp + SQLite) over the same job file, pinned to the client core."""
    out = ctx.scratch("ceiling") / "results.db"
    cmd = [PYTHON, str(BENCH / "peer_aiohttp.py"), str(path), sim.base_url, str(out),
           "--concurrency", str(concurrency)]
    return measure(sim, cmd, jobs, batchrun_env())


def alternate(reps: int, *runs: Callable[[], None]) -> None:
    """Call the runs once per repetition, in forward order on even repetitions and backward on odd."""
    for rep in range(reps):
        for fn in (runs if rep % 2 == 0 else runs[::-1]):
            fn()


def met(value: float, bound: float, at_least: bool = True) -> bool:
    return value >= bound if at_least else value <= bound


# --- runs against a faulty provider (issue 12) --------------------------------------------------

class Progress:
    """Samples the simulator's served and requested counts in a thread while a program runs against it.

    From the samples: how many completions had been served at any moment, so a rate can be measured
    at the provider over part of a run (say, after the first 10 s, once the rate controller has learnt).
    """

    def __init__(self, sim: Simulator, interval: float = 0.05) -> None:
        self._sim = sim
        self._interval = interval
        self._stop = threading.Event()
        self.samples: list[tuple[float, int, int]] = []  # (perf_counter, completions_ok, requests_total)
        self.errors = 0
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        stats = self._sim.stats()
        self.samples.append((time.perf_counter(), int(stats["completions_ok"]), int(stats["requests_total"])))

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                self._sample()
            except (OSError, http.client.HTTPException, ValueError):
                self.errors += 1  # one lost sample; the next one carries on
            self._stop.wait(self._interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    @property
    def served(self) -> int:
        """Completions served at the latest sample."""
        return self.samples[-1][1] if self.samples else 0

    @property
    def first_request(self) -> float | None:
        return next((t for t, _, total in self.samples if total > 0), None)

    def served_at(self, moment: float) -> int:
        """Completions served by `moment` (the last sample taken at or before it)."""
        return max((ok for t, ok, _ in self.samples if t <= moment), default=0)

    def rate_after(self, skip: float) -> float | None:
        """Completions per second from `skip` s after the first request to the last completion."""
        start = self.first_request
        if start is None:
            return None
        final = self.samples[-1][1]
        end = next(t for t, ok, _ in self.samples if ok == final)
        if end <= start + skip:
            return None
        return (final - self.served_at(start + skip)) / (end - start - skip)


def prompts(path: Path) -> dict[str, str]:
    """custom_id -> the last user message of each job of a bench job file."""
    found = {}
    for line in path.read_bytes().splitlines():
        job = orjson.loads(line)
        body = job.get("body", job)
        found[job["custom_id"]] = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
    return found


def echoes(prompt: str, answer: str, finish_reason: str | None) -> bool:
    """Whether `answer` is the simulator's echo of `prompt` (cut short only if it says so: `length`)."""
    expected = "echo: " + prompt
    if answer == expected:
        return True
    return finish_reason == "length" and len(answer) > len("echo: ") and expected.startswith(answer)


@dataclass
class Exported:
    """What `batchrun export` gave back, checked against the jobs: every custom_id once, each answer right."""

    results: int
    missing: int
    repeated: int
    wrong: int  # a result whose answer is not the one its job asked for (a false success)
    failed: int  # lines in the errors file: jobs that failed permanently

    @property
    def complete(self) -> bool:
        return not (self.missing or self.repeated or self.wrong or self.failed)


def check_export(env: dict[str, str], expected: dict[str, str], work: Path,
                 answers: Callable[[str, str, str | None], bool] = echoes) -> Exported:
    """`batchrun export --output … --errors …` and the check of its lines against `expected` prompts."""
    out, errors = work / "results.jsonl", work / "errors.jsonl"
    run([BATCHRUN, "export", "--output", str(out), "--errors", str(errors)], env).check()
    seen: dict[str, int] = {}
    wrong = 0
    lines = out.read_bytes().splitlines() if out.exists() else []
    for line in lines:
        result = orjson.loads(line)
        custom_id = result.get("custom_id")
        seen[custom_id] = seen.get(custom_id, 0) + 1
        try:
            choice = result["response"]["body"]["choices"][0]
            ok = (result["response"]["status_code"] == 200 and custom_id in expected
                  and answers(expected[custom_id], choice["message"]["content"], choice.get("finish_reason")))
        except (KeyError, IndexError, TypeError):
            ok = False
        wrong += not ok
    failed = len(errors.read_bytes().splitlines()) if errors.exists() else 0
    return Exported(len(lines), sum(1 for cid in expected if cid not in seen),
                    sum(n - 1 for n in seen.values() if n > 1), wrong, failed)


def share(cpu: float, wall: float) -> str:
    """CPU seconds over wall seconds as a share of one core: `4 %`."""
    return f"{cpu / wall:.0%}" if wall > 0 else "?"


def burners(count: int = 2) -> list[subprocess.Popen[bytes]]:
    """`count` CPU burners (`python -c 'while True: pass'`, nice 0), one pinned to each core in turn."""
    cores = [RUNNER_CPU, SIM_CPU]
    return [subprocess.Popen([TASKSET, "-c", cores[i % len(cores)], PYTHON, "-c", "while True: pass"])
            for i in range(count)]


def stop_all(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """Kill the given processes (by their own pid) and reap them."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    for proc in procs:
        proc.wait()


@dataclass
class Observed:
    """One run (of one or several processes) against the simulator, whatever its outcome."""

    procs: list[Proc]
    wall: float  # from the first spawn to the last exit
    stats: dict[str, Any]
    progress: Progress
    sim_cpu: float

    @property
    def exit_codes(self) -> list[int]:
        return [proc.returncode for proc in self.procs]

    @property
    def succeeded(self) -> int:
        return int(self.stats["completions_ok"])

    def status(self, code: int) -> int:
        return int(self.stats["by_status"].get(str(code), 0))

    @property
    def largest_window(self) -> int:
        return max(self.stats["max_window"].values(), default=0)


def observe(sim: Simulator, cmds: Sequence[Sequence[str]], env: dict[str, str], stagger: float = 0.0,
            during: Callable[[Progress], None] | None = None, timeout: float = DEFAULT_TIMEOUT) -> Observed:
    """Run `cmds` against a freshly reset simulator, `stagger` s apart, pinned to the client core.

    `during`, if given, runs in a thread beside them with the live `Progress` (to inject an outage,
    say); it must return once `progress.stopped` (the programs have exited), and is joined before the
    counters are read. Nothing is checked here: the caller judges.
    """
    sim.reset()
    progress = Progress(sim)
    sim_cpu = sim.cpu_seconds()
    helper = threading.Thread(target=during, args=(progress,), daemon=True) if during else None
    if helper:
        helper.start()
    begun = time.perf_counter()
    started = []
    for i, cmd in enumerate(cmds):
        if i and stagger:
            time.sleep(stagger)
        started.append(Started(cmd, env, timeout=timeout))
    procs = [s.wait() for s in started]
    wall = time.perf_counter() - begun
    progress.stop()
    if helper:
        helper.join()
    sim_cpu = sim.cpu_seconds() - sim_cpu
    return Observed(procs, wall, sim.stats(), progress, sim_cpu)


def log_note(procs: Sequence[Proc], pattern: str, what: str) -> list[str]:
    """A note quoting the first of the programs' log lines that match `pattern` (and how many there were)."""
    found = [line.strip() for proc in procs for line in proc.stderr.splitlines() if re.search(pattern, line)]
    if not found:
        return []
    return [f"{what}: {len(found)} log line(s) in {len(procs)} process(es); the first: `{found[0][:240]}`"]
