"""5. Resume at scale: a 1,000,000-job batch with 900,000 done: first request after start, and `status`."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

from bench.common import (
    BATCHRUN, Context, Row, Section, Series, Simulator, Started, alternate, batchrun_env, copy_db, loaded_db, met,
    run as run_process, shown,
)

NAME = "resume"
BUDGET = 70  # seconds on the 2-core reference machine; the suite must stay under 600
TITLE = "5. Resume at scale"
JOBS, QUICK_JOBS = 1_000_000, 100_000
DONE_SHARE = 0.9
SMALL = 20_000  # the same start on a small batch, to tell the fixed start-up from the cost of scale
FIRST_TARGET, STATUS_TARGET = 1.0, 0.5
ABOUT = (f"The {JOBS:,}-job database of benchmark 4 with {DONE_SHARE:.0%} of its jobs marked succeeded (one SQL "
         "UPDATE through sqlite3 that also sets a response, so `export` works). *First request*: from spawning "
         "`batchrun run` to the simulator counting its first completion request (`/_sim/stats` polled "
         "every ~2 ms); the run is then stopped with SIGINT. The same measurement on a fresh "
         f"{SMALL:,}-job batch alternates with it, to separate the fixed start-up from the cost of the big "
         "queue. *status*: wall time of `batchrun status` on the big database.")

_RESPONSE = ('{"id":"chatcmpl-bench","object":"chat.completion","model":"sim-small","request_id":"req_bench",'
             '"choices":[{"index":0,"message":{"role":"assistant","content":"echo"},"finish_reason":"stop"}],'
             '"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}')


def mark_done(db: Path, count: int) -> None:
    """Mark the first `count` jobs succeeded, as a run would have left them."""
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA synchronous = OFF")  # set-up, not measured: no need to survive a power cut
    with conn:
        conn.execute(
            "UPDATE jobs SET state = 'succeeded', attempts = 1, key_id = 'bench1', status_code = 200, "
            "request_id = 'req_bench_' || id, response = ?, model_sent = model, "
            "model_served = CASE model WHEN 'fast' THEN 'sim-small' ELSE model END, finish_reason = 'stop', "
            "prompt_tokens = 12, completion_tokens = 3, total_tokens = 15, finished_at = ? "
            "WHERE id <= (SELECT id FROM jobs ORDER BY id LIMIT 1 OFFSET ?)", (_RESPONSE, time.time(), count - 1))
    conn.close()


def first_request(sim: Simulator, db: Path) -> float:
    """Seconds from spawning `batchrun run` to the simulator's first completion request."""
    sim.reset()
    started = Started([BATCHRUN, "run", "--no-progress", "--concurrency", "64"], batchrun_env(db, sim.base_url))
    try:
        while sim.stats()["requests_total"] < 1:
            if started.popen.poll() is not None:
                raise RuntimeError(f"batchrun run ended before sending anything: {started.wait().stderr[-1000:]}")
            time.sleep(0.002)
        return time.perf_counter() - started.started
    finally:
        if started.popen.poll() is None:
            started.send_signal(signal.SIGINT)
        started.wait()


def run(ctx: Context) -> Section:
    reps = ctx.repetitions(3)
    jobs = QUICK_JOBS if ctx.quick else JOBS
    big = copy_db(loaded_db(ctx, jobs), ctx.scratch("resume") / "batchrun.db")
    mark_done(big, int(jobs * DONE_SHARE))
    small = copy_db(loaded_db(ctx, SMALL), ctx.scratch("resume-small") / "batchrun.db")
    first_big, first_small, status = Series(), Series(), Series()
    with Simulator() as sim:
        alternate(reps, lambda: first_big.add(first_request(sim, big)),
                  lambda: first_small.add(first_request(sim, small)))
    status_cmd = [BATCHRUN, "status"]
    for _ in range(max(5, reps)):
        status.add(run_process(status_cmd, batchrun_env(big)).check().wall)
    rows = [
        Row(f"first request after start, {jobs:,} jobs ({DONE_SHARE:.0%} done)", first_big.show(".2f", " s"),
            f"≤ {FIRST_TARGET:.0f} s", met(first_big.median, FIRST_TARGET, False)),
        Row(f"first request after start, fresh {SMALL:,}-job batch", first_small.show(".2f", " s")),
        Row(f"`batchrun status`, {jobs:,} jobs", status.show(".2f", " s"), f"≤ {STATUS_TARGET} s",
            met(status.median, STATUS_TARGET, False)),
    ]
    env = "BATCHRUN_DB=sqlite:///$TMP/batchrun.db"
    commands = [f"{env} taskset -c 0 batchrun run --no-progress --concurrency 64   # SIGINT after the first request",
                f"{env} taskset -c 0 {shown(status_cmd)}"]
    return Section(NAME, TITLE, ABOUT, rows, commands)
