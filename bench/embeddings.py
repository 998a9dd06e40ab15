"""12. Embeddings (issue 13): submit a 1,000,000-line embeddings file; RSS of a run at 100k vs 1M jobs;
RSS and throughput of exporting 1,000,000 results of 1,536-float vectors."""

from __future__ import annotations

import os
import random
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench import common
from bench.common import (
    BATCHRUN, PYTHON, ROOT, RUNNER_CPU, SIM_CPU, TASKSET, Context, Proc, Row, Section, Series,
    Simulator, alternate, batchrun_env, met, share, shown,
)

NAME = "embeddings"
BUDGET = 1500  # seconds on the 2-core reference machine: a by-hand benchmark (two 1M-job runs, a 20 GB export)
TITLE = "12. Embeddings"
LINES, QUICK_LINES = 1_000_000, 50_000
SMALL, BIG = 100_000, 1_000_000
QUICK_SMALL, QUICK_BIG = 10_000, 50_000
EXPORTED, QUICK_EXPORTED = 1_000_000, 20_000
RATE_TARGET, GROWTH_TARGET, EXPORT_RSS_TARGET = 100_000, 1.2, 200
#: the vector length of the export's results (text-embedding-3-small's)
EXPORT_DIMENSIONS = 1536
#: the vector length the run's jobs ask for: the figure is the client's memory, not the simulator's work
RUN_DIMENSIONS = 8
#: every core: `submit` loads a big file in one worker process per core, as in 4. Loading
CPUS = ",".join(str(cpu) for cpu in sorted(os.sched_getaffinity(0)))
KEYS = tuple(f"bench{i}:secret{i}" for i in range(1, 5))
#: the simulator's embedding model, added over `/_sim/config` when its stock catalogue has none
EMBED_MODEL = {"id": "sim-embed", "context_length": 8192, "endpoints": ["embeddings"],
               "supported_parameters": ["dimensions", "encoding_format", "user"], "response_format": None,
               "prompt_price": 0.02e-6}
#: bump when the generator changes, so cached files are made again
GENERATOR_VERSION = 1

ABOUT = (
    f"Issue 13. **Submit:** a {LINES:,}-line embeddings job file (five sixths OpenAI Batch lines to "
    "`/v1/embeddings`, one sixth bare bodies submitted with `--endpoint /v1/embeddings`; inputs of 5–40 words, "
    "a fifth of the lines a list of 2–8 inputs, some with `dimensions`; models `sim-embed` and its alias `embed`; "
    "generated once into `bench/.cache/`) into a fresh SQLite database on every core; lines/s = lines / wall time, "
    "peak RSS the largest of the submit process and its workers (`wait4`). "
    f"**Run:** `batchrun run` to completion over a fresh {SMALL:,}-job and a fresh {BIG:,}-job batch of such jobs "
    f"(asking `dimensions: {RUN_DIMENSIONS}`, see the notes) against the simulator on its own core, "
    f"{len(KEYS)} keys, no provider limit and a generous `--rate-limit`, so the run is CPU-bound; peak RSS is the "
    f"run's own (`wait4`). **Export:** {EXPORTED:,} succeeded results with {EXPORT_DIMENSIONS:,}-float vectors "
    "(≈ 20 KB of JSON each, floats written to 8 significant digits as OpenAI does; written straight into the "
    "database through `batchrun.store.Store`, not sent) exported with `batchrun export --output -` into a pipe "
    "that only counts the bytes; peak RSS `wait4`, MB/s = output bytes / wall time.")

_WORDS = ("the order arrived late but the support team was friendly and quick to refund my money battery "
          "life is great screen too dim in sunlight would buy again shipping box was damaged how do I reset my "
          "password after changing my email address the invoice lists the wrong price please cancel my "
          "subscription from next month onwards a quiet hotel near the station with a small breakfast room "
          "contract renewal terms for the warehouse lease in the northern district").split()


# --- job files ----------------------------------------------------------------------------------

def _text(rng: random.Random, i: int) -> str:
    return f"{' '.join(rng.choices(_WORDS, k=rng.randint(5, 40)))} (#{i})"


def job_line(rng: random.Random, i: int, dimensions: int | None = None) -> bytes:
    """One realistic embeddings request: batch line (5/6) or bare body (1/6); one text, or 2-8 (1/5)."""
    if rng.random() < 0.2:
        inputs: Any = [_text(rng, i) for _ in range(rng.randint(2, 8))]
    else:
        inputs = _text(rng, i)
    body: dict[str, Any] = {"model": "sim-embed" if rng.random() < 0.7 else "embed", "input": inputs}
    if dimensions is not None:
        body["dimensions"] = dimensions
    elif rng.random() < 0.15:
        body["dimensions"] = rng.choice([256, 512, 1024])
    if rng.random() < 0.05:
        body["encoding_format"] = "float"
    custom_id = f"emb-{i:07d}"
    if rng.random() < 5 / 6:
        line = {"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings", "body": body}
    else:
        line = {"custom_id": custom_id, **body}
    return orjson.dumps(line) + b"\n"


def job_file(jobs: int, dimensions: int | None = None) -> Path:
    """An embeddings job file of `jobs` lines (every body asking `dimensions`, if given), cached."""
    asked = "" if dimensions is None else f"-d{dimensions}"
    return common.cached_job_file(f"embeddings-{jobs}{asked}-v{GENERATOR_VERSION}.jsonl", jobs,
                                  lambda rng, i: job_line(rng, i, dimensions))


def submit(db: Path, path: Path, cpu: str = CPUS) -> Proc:
    cmd = [BATCHRUN, "submit", str(path), "--endpoint", "/v1/embeddings"]
    return common.run(cmd, batchrun_env(db), cpu=cpu, timeout=600).check()


def _loaded(proc: Proc) -> int:
    found = re.search(r"loaded (\d+)", proc.stdout + proc.stderr)
    if not found:
        raise RuntimeError(f"no submit summary in: {proc.stdout[-500:]} {proc.stderr[-500:]}")
    return int(found.group(1))


# --- 1. submit ----------------------------------------------------------------------------------

def _submit(ctx: Context, reps: int) -> tuple[list[Row], list[str]]:
    lines = QUICK_LINES if ctx.quick else LINES
    path = job_file(lines)
    procs: list[Proc] = []

    def once() -> None:
        db = ctx.scratch("embeddings-submit") / "batchrun.db"
        proc = submit(db, path)
        if _loaded(proc) != lines:
            raise RuntimeError(f"submit loaded {_loaded(proc)} of {lines} lines")
        procs.append(proc)
        shutil.rmtree(db.parent)

    alternate(reps, once)
    rate = Series([lines / p.wall for p in procs])
    rows = [
        Row(f"submit {lines:,} embeddings lines: lines/s", rate.show(), f"≥ {RATE_TARGET:,}",
            met(rate.median, RATE_TARGET)),
        Row("submit: wall time / peak RSS", f"{Series([p.wall for p in procs]).show('.1f', ' s')} / "
                                            f"{Series([p.maxrss_mb for p in procs]).show('.0f', ' MB')}"),
    ]
    command = (f"BATCHRUN_DB=sqlite:///$TMP/batchrun.db taskset -c {CPUS} "
               f"{shown([BATCHRUN, 'submit', str(path), '--endpoint', '/v1/embeddings'])}")
    return rows, [command]


# --- 2. run: RSS at 100k and 1M jobs ------------------------------------------------------------

def serve_simulator() -> None:
    """`batchrun simulate --port 0`, plus `POST /v1/embeddings` and `sim-embed` (alias `embed`) where missing.

    A stop-gap while the simulator's embeddings route is being wired in (batchrun/simulator/app.py
    routes only chat so far): the endpoint module is the simulator's own; nothing else changes.
    """
    from batchrun.simulator import SimulatorConfig, app, serve
    from batchrun.simulator.catalog import ModelSpec
    from batchrun.simulator.embeddings import EMBEDDINGS as SERVED

    if not any(endpoint.path == SERVED.path for endpoint in app.ENDPOINTS):
        app.ENDPOINTS = (*app.ENDPOINTS, SERVED)
    config = SimulatorConfig()
    if not any(model.id == "sim-embed" for model in config.models):
        config.models.append(ModelSpec.from_dict(EMBED_MODEL))
    config.aliases.setdefault("embed", "sim-embed")
    serve(config, "127.0.0.1", 0)


class EmbeddingSimulator(Simulator):
    """The simulator on its own core, launched through `serve_simulator`."""

    def __init__(self) -> None:
        code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
                "from bench.embeddings import serve_simulator; serve_simulator()")
        super().__init__(cmd=[PYTHON, "-c", code])

    @property
    def command(self) -> str:
        return f"taskset -c {SIM_CPU} python -c 'from bench.embeddings import serve_simulator; serve_simulator()'"


def _succeeded(proc: Proc) -> int:
    found = re.search(r"succeeded: (\d+)", proc.stdout)
    return int(found.group(1)) if found else 0


def _run(ctx: Context, reps: int) -> tuple[list[Row], list[str], list[list[str]], list[str]]:
    small, big = (QUICK_SMALL, QUICK_BIG) if ctx.quick else (SMALL, BIG)
    cmd = [BATCHRUN, "run", "--no-progress", "--concurrency", "64", "--rate-limit", "100000/1s"]
    runs: dict[int, list[tuple[Proc, float]]] = {small: [], big: []}
    with EmbeddingSimulator() as sim:

        def measure(jobs: int) -> None:
            db = ctx.scratch(f"embeddings-run-{jobs}") / "batchrun.db"
            submit(db, job_file(jobs, RUN_DIMENSIONS))
            sim.reset()
            sim_cpu = sim.cpu_seconds()
            proc = common.run(cmd, batchrun_env(db, sim.base_url, KEYS), timeout=7200).check()
            sim_cpu = sim.cpu_seconds() - sim_cpu
            if _succeeded(proc) != jobs:
                raise RuntimeError(f"{jobs} jobs, {_succeeded(proc)} succeeded: {proc.stdout[-1000:]}")
            runs[jobs].append((proc, sim_cpu))
            shutil.rmtree(db.parent)

        alternate(reps, lambda: measure(small), lambda: measure(big))
        sim_command = sim.command
    rss = {n: Series([p.maxrss_mb for p, _ in done]) for n, done in runs.items()}
    growth = Series([b.maxrss_mb / s.maxrss_mb for (s, _), (b, _) in zip(runs[small], runs[big])])
    rows = [
        Row(f"run: peak RSS, {small:,} / {big:,} jobs",
            f"{rss[small].show('.0f', ' MB')} / {rss[big].show('.0f', ' MB')}"),
        Row(f"run: RSS({_short(big)}) / RSS({_short(small)})", growth.show(".2f"), f"≤ {GROWTH_TARGET}",
            met(growth.median, GROWTH_TARGET, False)),
    ]
    details = []
    for jobs, done in runs.items():
        for proc, sim_cpu in done:
            details.append([f"run {jobs:,} jobs", f"{jobs / proc.wall:,.0f} jobs/s", f"{proc.wall:.1f} s",
                            f"{proc.maxrss_mb:.0f} MB", share(proc.cpu, proc.wall), share(sim_cpu, proc.wall)])
    commands = [sim_command + "   # batchrun simulate --port 0, with /v1/embeddings and sim-embed",
                f"BATCHRUN_DB=sqlite:///$TMP/batchrun.db BATCHRUN_API_KEYS=bench1:secret1,…,bench4:secret4 "
                f"taskset -c {RUNNER_CPU} {shown(cmd)}"]
    notes = [f"The run's jobs ask `dimensions: {RUN_DIMENSIONS}`: at the default 1,536 the simulator's answer is "
             "≈ 33 KB (its floats are written in full), so a 1M-job run would store ≈ 33 GB and spend the time "
             "in the simulator and the disk; the figure is about the client's memory with the queue's size."]
    return rows, commands, details, notes


def _short(jobs: int) -> str:
    return f"{jobs // 1_000_000}M" if jobs % 1_000_000 == 0 else f"{jobs // 1000}k"


# --- 3. export of 1M results of 1,536 floats ----------------------------------------------------

def _vector_texts(count: int, dimensions: int) -> list[str]:
    """`count` distinct vectors as JSON arrays, floats of 8 significant digits (≈ 13 bytes each)."""
    rng = random.Random(dimensions)
    texts = []
    for _ in range(count):
        values = [rng.gauss(0.0, 1.0) / dimensions ** 0.5 for _ in range(dimensions)]
        texts.append("[" + ",".join(f"{v:.8g}" for v in values) + "]")
    return texts


def fill_export_db(db: Path, jobs: int, dimensions: int = EXPORT_DIMENSIONS, chunk: int = 5000) -> int:
    """A database with `jobs` succeeded embeddings jobs, each with a realistic answer; the bytes of answers."""
    from batchrun.endpoints import EMBEDDINGS
    from batchrun.jobfile import JobSpec, parse_line
    from batchrun.records import Succeeded
    from batchrun.store import Store

    vectors = _vector_texts(64, dimensions)
    rng = random.Random(jobs)
    stored = 0
    with Store.open(f"sqlite:///{db}") as store:
        batch = store.ensure_batch("embeddings-export")
        for start in range(0, jobs, chunk):
            specs = []
            for i in range(start, min(jobs, start + chunk)):
                body = {"model": "sim-embed", "input": _text(rng, i)}
                line = {"custom_id": f"emb-{i:07d}", "method": "POST", "url": "/v1/embeddings", "body": body}
                spec = parse_line(orjson.dumps(line), i + 1, EMBEDDINGS)
                assert isinstance(spec, JobSpec), spec
                specs.append(spec)
            store.add_jobs(batch, specs)
            outcomes = []
            for job in store.claim("bench-fill", chunk, 3600, batch):
                tokens = job.input_tokens
                response = ('{"object":"list","data":[{"object":"embedding","index":0,"embedding":'
                            + vectors[job.id % len(vectors)] + '}],"model":"sim-embed","usage":{"prompt_tokens":'
                            + str(tokens) + ',"total_tokens":' + str(tokens) + "}}")
                stored += len(response)
                outcomes.append(Succeeded(job.id, 1, "bench1", 200, f"req_{job.id:08x}", response, "sim-embed",
                                          None, tokens, 0, tokens, tokens * 0.02e-6, "sim-embed"))
            store.record("bench-fill", outcomes)
    return stored


def export_counted(db: Path) -> tuple[Proc, int, int]:
    """`batchrun export --output -` pinned to the runner's core, its output counted (not kept) through a pipe."""
    cmd = [BATCHRUN, "export", "--output", "-"]
    started = time.perf_counter()
    err = tempfile.TemporaryFile()
    popen = subprocess.Popen([TASKSET, "-c", RUNNER_CPU, *cmd], stdout=subprocess.PIPE, stderr=err,
                             env=batchrun_env(db), cwd=tempfile.gettempdir())
    assert popen.stdout is not None
    total = lines = 0
    while block := os.read(popen.stdout.fileno(), 1 << 20):
        total += len(block)
        lines += block.count(b"\n")
    _, status, usage = os.wait4(popen.pid, 0)
    wall = time.perf_counter() - started
    popen.returncode = os.waitstatus_to_exitcode(status)
    err.seek(0)
    proc = Proc(cmd, popen.returncode, wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime, "",
                err.read().decode(errors="replace"))
    err.close()
    return proc.check(), lines, total


def _export(ctx: Context, reps: int) -> tuple[list[Row], list[str], list[list[str]], list[str]]:
    jobs = QUICK_EXPORTED if ctx.quick else EXPORTED
    free = shutil.disk_usage(ctx.work).free
    if free < jobs * 40_000:
        raise RuntimeError(f"the export needs ≈ {jobs * 25_000 / 1e9:.0f} GB of database; {free / 1e9:.0f} GB free")
    db = ctx.scratch("embeddings-export") / "batchrun.db"
    begun = time.perf_counter()
    answers = fill_export_db(db, jobs)
    with sqlite3.connect(db) as conn:  # the WAL folded in, so the export reads one file
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    fill_seconds = time.perf_counter() - begun
    db_bytes = db.stat().st_size
    procs: list[tuple[Proc, int, int]] = []
    try:
        alternate(reps, lambda: procs.append(export_counted(db)))
    finally:
        shutil.rmtree(db.parent)
    for _, lines, _ in procs:
        if lines != jobs:
            raise RuntimeError(f"export wrote {lines} lines for {jobs} jobs")
    rss = Series([p.maxrss_mb for p, _, _ in procs])
    speed = Series([size / p.wall / 1e6 for p, _, size in procs])
    rows = [
        Row(f"export {jobs:,} results of {EXPORT_DIMENSIONS:,} floats: peak RSS", rss.show(".0f", " MB"),
            f"≤ {EXPORT_RSS_TARGET} MB", met(max(rss.values), EXPORT_RSS_TARGET, False)),
        Row("export: MB/s of output", speed.show(".0f", " MB/s")),
    ]
    details = [[f"export {jobs:,} results ({size / 1e9:.1f} GB)", f"{size / p.wall / 1e6:.0f} MB/s",
                 f"{p.wall:.1f} s", f"{p.maxrss_mb:.0f} MB", share(p.cpu, p.wall), "—"] for p, _, size in procs]
    notes = [f"The export's database: {db_bytes / 1e9:.1f} GB ({answers / jobs / 1000:.1f} KB of answer a job), "
             f"filled in {fill_seconds:.0f} s through `Store.add_jobs` / `claim` / `record` (64 distinct vectors, "
             "each answer's text built from them), deleted afterwards."]
    commands = [f"BATCHRUN_DB=sqlite:///$TMP/batchrun.db taskset -c {RUNNER_CPU} "
                f"{shown([BATCHRUN, 'export', '--output', '-'])} | wc -c"]
    return rows, commands, details, notes


def run(ctx: Context) -> Section:
    reps = ctx.repetitions(1)
    rows, commands = _submit(ctx, ctx.repetitions(2))
    run_rows, run_commands, run_details, run_notes = _run(ctx, reps)
    export_rows, export_commands, export_details, export_notes = _export(ctx, reps)
    header = ["part", "rate", "wall", "peak RSS", "client CPU / wall", "simulator CPU / wall"]
    return Section(NAME, TITLE, ABOUT, rows + run_rows + export_rows, commands + run_commands + export_commands,
                   notes=run_notes + export_notes, details=[header, *run_details, *export_details])
