"""By hand: how long `batchrun report` takes on a run of 1,000,000 attempts (issue 15: "stays fast for a
run of a million attempts"). Writes a synthetic run (4 keys, 8 hours, 3 % 429s, 1 % 503s, two models)
straight through `Store.attempts`, then times `batchrun report` as a user runs it.

    .venv/bin/python bench/report_million.py /tmp/million [ATTEMPTS]
"""

from __future__ import annotations

import random
import resource
import subprocess
import sys
import time
from pathlib import Path

from batchrun.attempts import AttemptRecord
from batchrun.reportdata import latency_bin
from batchrun.store import Store

HOURS = 8


def fill(store: Store, attempts: int, rng: random.Random) -> None:
    start = time.time() - HOURS * 3600
    runner = store.register_runner("bench:1:million", now=start, options='{"keys": "k1, k2, k3, k4"}')
    batch = store.ensure_batch("million")
    step = HOURS * 3600 / attempts
    rows: list[AttemptRecord] = []
    for i in range(attempts):
        at = start + i * step
        latency = rng.lognormvariate(-0.5, 0.6)
        draw = rng.random()
        status, outcome = (429, "rate_limited") if draw < 0.03 else (503, "no_capacity") if draw < 0.04 else (200, "ok")
        model = "sim-small" if i % 3 else "sim-large"
        rows.append(AttemptRecord(batch, i + 1, at - latency, at, latency_bin(latency), True, f"k{i % 4 + 1}",
                                  "/v1/chat/completions", "fast", "fast", model if outcome == "ok" else None,
                                  status, outcome, 120 if outcome == "ok" else None, 80 if outcome == "ok" else None,
                                  0.00004 if outcome == "ok" else None, None,
                                  None if outcome == "ok" else f"the provider answered {status}"))
        if len(rows) == 5000:
            with store.transaction() as conn:
                store.attempts.write(conn, runner, rows, [])
            rows = []
    with store.transaction() as conn:
        store.attempts.write(conn, runner, rows, [])
    store.finish_runner("bench:1:million", 0, "all jobs succeeded", now=start + HOURS * 3600)


def main() -> None:
    where = Path(sys.argv[1])
    attempts = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    where.mkdir(parents=True, exist_ok=True)
    db = where / "million.db"
    db.unlink(missing_ok=True)
    url = f"sqlite:///{db}"
    began = time.perf_counter()
    with Store.open(url) as store:
        fill(store, attempts, random.Random(1))
    print(f"wrote {attempts:,} attempts in {time.perf_counter() - began:.1f} s ({db.stat().st_size / 1e6:.0f} MB)")
    began = time.perf_counter()
    done = subprocess.run([str(Path(sys.executable).parent / "batchrun"), "report", "--db", url,
                           "--output", str(where / "report.html")], capture_output=True, text=True)
    wall = time.perf_counter() - began
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(done.stderr.strip())
    print(f"batchrun report: {wall:.1f} s wall, {usage.ru_utime + usage.ru_stime:.1f} s CPU, peak RSS "
          f"{usage.ru_maxrss / 1024:.0f} MB, {(where / 'report.html').stat().st_size / 1e3:.0f} kB of HTML")


if __name__ == "__main__":
    main()
