"""12. Embeddings (issue 13): submit a 1,000,000-line embeddings file; RSS of a run of the same fixed time
at 100k vs 1M queued jobs; RSS and throughput of exporting 1,000,000 results of 1,536-float vectors."""

from __future__ import annotations

import os
import random
import re
import resource
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
    BATCHRUN, PYTHON, ROOT, RUNNER_CPU, TASKSET, Context, Proc, Row, Section, Series, Simulator, alternate, batchrun_env,
    copy_db, met, share, shown,
)

NAME = "embeddings"
BUDGET = 900  # seconds on the 2-core reference machine: a by-hand benchmark (a 20 GB export, filled first)
TITLE = "12. Embeddings"
LINES, QUICK_LINES = 1_000_000, 50_000
SMALL, BIG = 100_000, 1_000_000
QUICK_SMALL, QUICK_BIG = 10_000, 50_000
#: the run's fixed time for both sizes (as in 6. Memory): ≈ 1,500–1,900 jobs/s finish far fewer than 100,000
DURATION, QUICK_DURATION = 20, 5
EXPORTED, QUICK_EXPORTED = 1_000_000, 20_000
RATE_TARGET, GROWTH_TARGET, EXPORT_RSS_TARGET = 100_000, 1.2, 200
#: the vector length of the export's results (text-embedding-3-small's)
EXPORT_DIMENSIONS = 1536
#: the vector length the run's jobs ask for: the figure is the client's memory, not the simulator's work
RUN_DIMENSIONS = 8
#: every core: `submit` loads a big file in one worker process per core, as in 4. Loading
CPUS = ",".join(str(cpu) for cpu in sorted(os.sched_getaffinity(0)))
KEYS = tuple(f"bench{i}:secret{i}" for i in range(1, 5))
#: bump when the generator changes, so cached files are made again
GENERATOR_VERSION = 1

ABOUT = (
    f"Issue 13. **Submit:** a {LINES:,}-line embeddings job file (five sixths OpenAI Batch lines to "
    "`/v1/embeddings`, one sixth bare bodies submitted with `--endpoint /v1/embeddings`; inputs of 5–40 words, "
    "a fifth of the lines a list of 2–8 inputs, some with `dimensions`; models `sim-embed` and its alias `embed`; "
    "generated once into `bench/.cache/`) into a fresh SQLite database on every core; lines/s = lines / wall time, "
    "peak RSS the largest of the submit process and its workers (`wait4`). "
    f"**Run:** `batchrun run --max-duration {DURATION}s` over a freshly submitted {SMALL:,}-job and "
    f"{BIG:,}-job batch of such jobs (all queued; asking `dimensions: {RUN_DIMENSIONS}`, see the notes), "
    f"alternating, against `batchrun simulate` on its own core, {len(KEYS)} keys, no provider limit and a "
    "generous `--rate-limit`, so the run is CPU-bound; both work for the same time, so the RSS ratio is what the "
    f"queue's size costs; peak RSS is the run's own (`wait4`). **Export:** {EXPORTED:,} succeeded results with {EXPORT_DIMENSIONS:,}-float vectors "
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
    foreign: list[float] = []  # share of the machine's CPU used by anything but the submit, during it

    def once() -> None:
        db = ctx.scratch("embeddings-submit") / "batchrun.db"
        busy = common.machine_busy_seconds()
        proc = submit(db, path)
        others = common.machine_busy_seconds() - busy - proc.cpu  # wait4: the submit and its workers
        foreign.append(max(0.0, others) / (proc.wall * len(os.sched_getaffinity(0))) * 100)
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
        Row("submit: other processes' share of the machine's CPU meanwhile", Series(foreign).show(".0f", " %")),
    ]
    command = (f"BATCHRUN_DB=sqlite:///$TMP/batchrun.db taskset -c {CPUS} "
               f"{shown([BATCHRUN, 'submit', str(path), '--endpoint', '/v1/embeddings'])}")
    return rows, [command]


# --- 2. run: RSS at 100k and 1M jobs ------------------------------------------------------------

def _succeeded(proc: Proc) -> int:
    found = re.search(r"succeeded: (\d+)", proc.stdout)
    return int(found.group(1)) if found else 0


def _run(ctx: Context, reps: int) -> tuple[list[Row], list[str], list[list[str]], list[str]]:
    small, big = (QUICK_SMALL, QUICK_BIG) if ctx.quick else (SMALL, BIG)
    duration = QUICK_DURATION if ctx.quick else DURATION
    cmd = [BATCHRUN, "run", "--no-progress", "--concurrency", "64", "--rate-limit", "100000/1s",
           "--max-duration", f"{duration}s"]
    loaded = {}
    for jobs in (small, big):
        db = ctx.scratch(f"embeddings-loaded-{jobs}") / "batchrun.db"
        submit(db, job_file(jobs, RUN_DIMENSIONS))
        loaded[jobs] = db
    runs: dict[int, list[tuple[Proc, float]]] = {small: [], big: []}
    with Simulator() as sim:

        def measure(jobs: int) -> None:
            db = copy_db(loaded[jobs], ctx.scratch(f"embeddings-run-{jobs}") / "batchrun.db")
            sim.reset()
            sim_cpu = sim.cpu_seconds()
            proc = common.run(cmd, batchrun_env(db, sim.base_url, KEYS), timeout=duration + 120)
            sim_cpu = sim.cpu_seconds() - sim_cpu
            if proc.returncode not in (0, 3):  # 3: stopped by the deadline with work left
                proc.check()
            if not 0 < _succeeded(proc) < jobs:
                raise RuntimeError(f"{jobs} jobs, {_succeeded(proc)} succeeded in {duration} s: the run must "
                                   f"stop at the deadline with work left: {proc.stdout[-1000:]}")
            runs[jobs].append((proc, sim_cpu))
            shutil.rmtree(db.parent)

        alternate(reps, lambda: measure(small), lambda: measure(big))
        sim_command = sim.command
    for db in loaded.values():
        shutil.rmtree(db.parent)
    rss = {n: Series([p.maxrss_mb for p, _ in done]) for n, done in runs.items()}
    growth = Series([b.maxrss_mb / s.maxrss_mb for (s, _), (b, _) in zip(runs[small], runs[big])])
    done_in = {n: Series([_succeeded(p) for p, _ in done]) for n, done in runs.items()}
    sim_share = Series([sim_cpu / p.wall * 100 for done in runs.values() for p, sim_cpu in done])
    rows = [
        Row(f"run {duration} s: peak RSS, {small:,} / {big:,} jobs",
            f"{rss[small].show('.0f', ' MB')} / {rss[big].show('.0f', ' MB')}"),
        Row(f"run {duration} s: RSS({_short(big)}) / RSS({_short(small)})", growth.show(".2f"),
            f"≤ {GROWTH_TARGET}", met(growth.median, GROWTH_TARGET, False)),
        Row(f"run: jobs done in {duration} s, {small:,} / {big:,} jobs",
            f"{done_in[small].show()} / {done_in[big].show()}"),
        Row("run: simulator CPU / wall", sim_share.show(".0f", " %")),
    ]
    details = []
    for jobs, done in runs.items():
        for proc, sim_cpu in done:
            details.append([f"run {duration} s of {jobs:,} jobs", f"{_succeeded(proc) / proc.wall:,.0f} jobs/s",
                            f"{proc.wall:.1f} s", f"{proc.maxrss_mb:.0f} MB", share(proc.cpu, proc.wall),
                            share(sim_cpu, proc.wall)])
    commands = [sim_command,
                f"BATCHRUN_DB=sqlite:///$TMP/batchrun.db BATCHRUN_API_KEYS=bench1:secret1,…,bench4:secret4 "
                f"taskset -c {RUNNER_CPU} {shown(cmd)}"]
    notes = [f"The run's jobs ask `dimensions: {RUN_DIMENSIONS}`: at the default 1,536 the simulator's answer is "
             "≈ 33 KB (its floats are written in full), so the simulator's core and the disk would set the pace "
             "and a 1M-job database would grow by ≈ 33 GB if run out; small answers keep the run CPU-bound on the "
             "client, and the figure is about the client's memory with the queue's size.",
             f"Both sizes run for the same {duration} s (`--max-duration`, exit 3 with work left), as in 6. Memory, "
             "so they answer about as many requests and the ratio is what the queue's size costs; memory that "
             "grows with the work *done* is in the findings (`bench/growth.py`)."]
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


def _export_chunk() -> object:
    """The default chunk of `Store.export_rows` in the code measured."""
    import inspect

    from batchrun.store import Store

    return inspect.signature(Store.export_rows).parameters["chunk"].default


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
    # Filled in a process of its own: a child's wait4 peak RSS is at least this process's peak (the
    # child starts as a vfork of it), so this process must stay small for the export's figure to be its own.
    fill = common.run([PYTHON, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
                                     "from pathlib import Path; from bench.embeddings import fill_export_db; "
                                     f"print(fill_export_db(Path({str(db)!r}), {jobs}))"],
                      batchrun_env(), timeout=7200).check()
    answers = int(fill.stdout.split()[-1])
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
             "each answer's text built from them), deleted afterwards. `Store.export_rows` read "
             f"{_export_chunk()} rows a chunk (its default).",
             "Every peak RSS here is `wait4`'s, which for a child is at least the parent's own peak (it starts as "
             "a vfork of it); the bench's own process peaked at "
             f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB, below every figure above "
             "(the export's database is filled in a process of its own for that reason)."]
    commands = [f"BATCHRUN_DB=sqlite:///$TMP/batchrun.db taskset -c {RUNNER_CPU} "
                f"{shown([BATCHRUN, 'export', '--output', '-'])} | wc -c"]
    return rows, commands, details, notes


#: set (to anything) to leave the export out of a run and keep its figures from the last one in results.json
SKIP_EXPORT = "BENCH_EMBEDDINGS_SKIP_EXPORT"
_KEPT = "The export's figures are from the run of "


def _last_export() -> tuple[list[Row], list[str], list[list[str]], list[str]]:
    """The export's rows, commands, details and notes of the last run in bench/results.json, marked as such."""
    from bench import report

    last = report.load()["sections"].get(NAME)
    if last is None:
        raise RuntimeError(f"{SKIP_EXPORT} is set but bench/results.json has no earlier {NAME} run to keep")
    rows = [Row(**row) for row in last["rows"] if row["figure"].startswith("export")]
    details = [row for row in last.get("details", [])[1:] if row[0].startswith("export")]
    notes = [note for note in last.get("notes", []) if "export" in note]
    commands = [command for command in last["commands"] if " export " in command]
    # the last run may itself have kept them: its note names the run that measured them
    earlier = [note for note in notes if note.startswith(_KEPT)]
    notes = [note for note in notes if not note.startswith(_KEPT)]
    kept = earlier[-1] if earlier else f"{_KEPT}{last['date']}, not measured again in this one ({SKIP_EXPORT})."
    if not any("vfork" in note for note in notes):
        kept += (" That run filled the database in the bench's own process, whose peak a child's `wait4` figure "
                 "cannot go below: its export RSS is an upper bound (see the findings).")
    return rows, commands, details, [kept, *notes]


def run(ctx: Context) -> Section:
    rows, commands = _submit(ctx, ctx.repetitions(3))
    run_rows, run_commands, run_details, run_notes = _run(ctx, ctx.repetitions(3))
    if os.environ.get(SKIP_EXPORT):
        export_rows, export_commands, export_details, export_notes = _last_export()
    else:
        export_rows, export_commands, export_details, export_notes = _export(ctx, ctx.repetitions(1))
    header = ["part", "rate", "wall", "peak RSS", "client CPU / wall", "simulator CPU / wall"]
    return Section(NAME, TITLE, ABOUT, rows + run_rows + export_rows, commands + run_commands + export_commands,
                   notes=run_notes + export_notes, details=[header, *run_details, *export_details])
