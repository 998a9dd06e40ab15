"""`python -m bench [NAME ...] [--reps N] [--quick]`: run the benchmarks, rewrite docs/benchmarks.md.

    python -m bench                      # the whole suite (`make bench`): issue 7's 1-6 in about 14 minutes
                                         # on 2 cores, issue 12's 7-11 in about 14 more
    python -m bench dispatch latency     # just these; the others keep their last figures
    python -m bench --quick              # a smoke test: smaller sizes, one repetition
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import sys
import tempfile
import time
import traceback
from datetime import datetime
from pathlib import Path
from types import ModuleType

from bench import (
    dispatch, embeddings, handover, latency, llmock, loading, memory, outage, ratelimit, reallimit, random429, report,
    resume,
)
from bench.common import TASKSET, Context, Section, machine_busy_seconds, own_cpu_seconds

#: in the order they run (loading first makes the 1M-job database the later ones copy)
SUITE_BUDGET = 815 + 840  # issue 7's six benchmarks (with issue 16's latency cases), then issue 12's five
BENCHMARKS: dict[str, ModuleType] = {m.NAME: m for m in (dispatch, latency, ratelimit, loading, resume, memory,
                                                          random429, reallimit, llmock, handover, outage,
                                                          embeddings)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"Benchmarks to run: {', '.join(BENCHMARKS)}.")
    parser.add_argument("--reps", type=int, help="Repetitions of every benchmark (default: each one's own).")
    parser.add_argument("--quick", action="store_true", help="Smaller sizes and one repetition: a smoke test (docs/benchmarks.md is not rewritten).")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    if not Path(TASKSET).exists():
        parser.error("taskset is needed to pin the simulator and the client to their own cores")
    names = args.names or list(BENCHMARKS)
    invocation = " ".join(["python -m bench", *sys.argv[1:]] if argv is None else ["python -m bench", *argv])
    started = time.perf_counter()
    sections: list[Section] = []
    failed = False
    # batchrun's own modules as compiled files, as after a first run anywhere: where PYTHONDONTWRITEBYTECODE
    # is set (this workplace), every `batchrun` process would compile them again (≈ 0.1 s of its CPU).
    compileall.compile_dir(str(Path(__file__).resolve().parent.parent / "batchrun"), quiet=1)
    work = Path(tempfile.mkdtemp(prefix="batchrun-bench-"))
    ctx = Context(args.reps, args.quick, work)
    try:
        for name in names:
            print(f"== {name}", flush=True)
            begun, busy, ours = time.perf_counter(), machine_busy_seconds(), own_cpu_seconds()
            try:
                section = BENCHMARKS[name].run(ctx)
            except Exception:
                failed = True
                traceback.print_exc()
                print(f"== {name} failed; its earlier figures (if any) stay in the document", flush=True)
                continue
            section.seconds = time.perf_counter() - begun
            section.budget = BENCHMARKS[name].BUDGET
            foreign = (machine_busy_seconds() - busy) - (own_cpu_seconds() - ours)
            section.foreign_cpu = round(max(0.0, foreign) / (section.seconds * (os.cpu_count() or 1)), 3)
            section.date = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
            section.invocation = invocation
            section.quick = args.quick
            sections.append(section)
            for row in section.rows:
                verdict = "" if row.met is None else ("  met" if row.met else "  MISSED")
                print(f"   {row.figure}: {row.measured}  {row.target}{verdict}", flush=True)
            over = "  OVER BUDGET" if section.seconds > section.budget else ""
            print(f"   ({section.seconds:.0f} s of a {section.budget:.0f} s budget{over})", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - started
    if args.quick:  # a smoke test: its small figures must not replace the measured ones
        print(f"--quick: docs/benchmarks.md left as it was ({total:.0f} s in all)")
        return 1 if failed else 0
    data = report.save(sections, invocation, datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"), total)
    print(f"wrote {report.write(data, list(BENCHMARKS))} ({total:.0f} s in all)")
    if total > SUITE_BUDGET:
        print(f"the suite took longer than its {SUITE_BUDGET} s budget: see which benchmark went over")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
