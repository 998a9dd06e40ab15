"""6. Memory: peak RSS of `batchrun run` on a 100,000-job and a 1,000,000-job batch, same fixed time."""

from __future__ import annotations

import re

from bench.common import (
    BATCHRUN, Context, Proc, Row, Section, Series, Simulator, alternate, batchrun_env, copy_db, loaded_db, met,
    run as run_process, shown,
)

NAME = "memory"
BUDGET = 55  # seconds on the 2-core reference machine; the suite must stay under 600
TITLE = "6. Memory"
SMALL, BIG = 100_000, 1_000_000
QUICK_SMALL, QUICK_BIG = 20_000, 100_000
DURATION, QUICK_DURATION = 10, 5
GROWTH_TARGET, RSS_TARGET = 1.2, 250
ABOUT = (f"Peak RSS (the process's own, `wait4` rusage) of `batchrun run --max-duration {DURATION}s` at 0 ms latency "
         f"on a freshly submitted {SMALL:,}-job batch and on a freshly submitted {BIG:,}-job batch (all queued), "
         "alternating. Both runs work for the same time, so they send about as many requests: any difference "
         "in RSS is what the size of the queue costs.")


def _short(jobs: int) -> str:
    return f"{jobs // 1_000_000}M" if jobs % 1_000_000 == 0 else f"{jobs // 1000}k"


def _succeeded(proc: Proc) -> int:
    found = re.search(r"succeeded: (\d+)", proc.stdout)
    return int(found.group(1)) if found else 0


def run(ctx: Context) -> Section:
    reps = ctx.repetitions(2)
    small, big = (QUICK_SMALL, QUICK_BIG) if ctx.quick else (SMALL, BIG)
    duration = QUICK_DURATION if ctx.quick else DURATION
    dbs = {n: copy_db(loaded_db(ctx, n), ctx.scratch(f"memory-{n}") / "batchrun.db") for n in (small, big)}
    runs: dict[int, list[Proc]] = {small: [], big: []}
    cmd = [BATCHRUN, "run", "--no-progress", "--concurrency", "64", "--max-duration", f"{duration}s"]
    with Simulator() as sim:

        def measure(jobs: int) -> None:
            sim.reset()
            proc = run_process(cmd, batchrun_env(dbs[jobs], sim.base_url), timeout=duration + 120)
            if proc.returncode not in (0, 3):  # 3: stopped by the deadline with work left
                proc.check()
            runs[jobs].append(proc)

        alternate(reps, lambda: measure(small), lambda: measure(big))
    rss = {n: Series([p.maxrss_mb for p in procs]) for n, procs in runs.items()}
    growth = Series([b.maxrss_mb / s.maxrss_mb for s, b in zip(runs[small], runs[big])])
    rows = [
        Row(f"peak RSS, {small:,} jobs", rss[small].show(".0f", " MB")),
        Row(f"peak RSS, {big:,} jobs", rss[big].show(".0f", " MB"), f"≤ {RSS_TARGET} MB",
            met(max(rss[big].values), RSS_TARGET, False)),
        Row(f"RSS({_short(big)}) / RSS({_short(small)})", growth.show(".2f"), f"≤ {GROWTH_TARGET}",
            met(growth.median, GROWTH_TARGET, False)),
        Row(f"jobs done in {duration} s, {small:,} / {big:,} jobs",
            f"{Series([_succeeded(p) for p in runs[small]]).show()} / {Series([_succeeded(p) for p in runs[big]]).show()}"),
    ]
    commands = [f"BATCHRUN_DB=sqlite:///$TMP/batchrun.db taskset -c 0 {shown(cmd)}"]
    return Section(NAME, TITLE, ABOUT, rows, commands)
