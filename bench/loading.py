"""4. Loading: `batchrun submit` of a 1,000,000-line job file into a fresh database, then again."""

from __future__ import annotations

import os
import re
from pathlib import Path

from bench import common
from bench.common import BATCHRUN, Context, Proc, Row, Section, Series, alternate, batchrun_env, job_file, met, shown

NAME = "loading"
BUDGET = 60  # seconds on the 2-core reference machine; the suite must stay under 600
TITLE = "4. Loading"
LINES, QUICK_LINES = 1_000_000, 100_000
RATE_TARGET, RSS_TARGET, RESUBMIT_TARGET = 100_000, 200, 150_000
#: every core: loading has no simulator to share the machine with, and `submit` loads a big file in one
#: worker process per core (`batchrun.parallel_load`)
CPUS = ",".join(str(cpu) for cpu in sorted(os.sched_getaffinity(0)))
ABOUT = (f"A {LINES:,}-line job file of small chat requests (two thirds OpenAI Batch lines, one third bare "
         "bodies, 1–4 messages, about 385 bytes a line; generated once into `bench/.cache/`) submitted with "
         "`batchrun submit` into a fresh SQLite database, then the same file again into the same database "
         "(every line a duplicate), on every core (submit parses and inserts in one worker process per core). "
         "lines/s = lines / wall time of the process; peak RSS is the largest of the submit process and its "
         "workers (`wait4` rusage; the workers are forked from it and share most of their pages). Each "
         "repetition uses a new database.")


def _counts(proc: Proc) -> tuple[int, int]:
    found = re.search(r"loaded (\d+), duplicates skipped (\d+)", proc.stdout + proc.stderr)
    if not found:
        raise RuntimeError(f"no submit summary in: {proc.stdout[-500:]} {proc.stderr[-500:]}")
    return int(found.group(1)), int(found.group(2))


def submit(db: Path, path: Path) -> Proc:
    """`batchrun submit` of `path` into `db`, on every core."""
    return common.run([BATCHRUN, "submit", str(path)], batchrun_env(db), cpu=CPUS).check()


def run(ctx: Context) -> Section:
    reps = ctx.repetitions(2)
    lines = QUICK_LINES if ctx.quick else LINES
    path = job_file(lines)
    fresh: list[Proc] = []
    again: list[Proc] = []

    def load_twice() -> None:
        db = ctx.scratch("loading") / "batchrun.db"
        first = submit(db, path)
        second = submit(db, path)
        if _counts(first) != (lines, 0) or _counts(second) != (0, lines):
            raise RuntimeError(f"unexpected submit counts: {_counts(first)}, then {_counts(second)}")
        fresh.append(first)
        again.append(second)
        ctx.artefacts.setdefault(f"loaded-{lines}", db)  # later benchmarks copy this database

    alternate(reps, load_twice)
    rate = Series([lines / p.wall for p in fresh])
    rss = Series([p.maxrss_mb for p in fresh])
    resubmit = Series([lines / p.wall for p in again])
    rows = [
        Row(f"submit {lines:,} lines: lines/s", rate.show(), f"≥ {RATE_TARGET:,}", met(rate.median, RATE_TARGET)),
        Row("submit: wall time", Series([p.wall for p in fresh]).show(".1f", " s")),
        Row("submit: peak RSS", rss.show(".0f", " MB"), f"≤ {RSS_TARGET} MB", met(max(rss.values), RSS_TARGET, False)),
        Row("resubmit (all duplicates): lines/s", resubmit.show(), f"≥ {RESUBMIT_TARGET:,}",
            met(resubmit.median, RESUBMIT_TARGET)),
        Row("resubmit: peak RSS", Series([p.maxrss_mb for p in again]).show(".0f", " MB")),
    ]
    command = f"BATCHRUN_DB=sqlite:///$TMP/batchrun.db taskset -c {CPUS} {shown([BATCHRUN, 'submit', str(path)])}"
    return Section(NAME, TITLE, ABOUT, rows, [command, command + "   # again: all duplicates"])
