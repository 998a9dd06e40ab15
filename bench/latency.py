"""2. Latency-bound: 500 ms per request, concurrency 1,000, against the ideal concurrency / latency."""

from __future__ import annotations

from bench.common import (
    Context, Measured, Row, Section, Series, Simulator, alternate, job_file, loaded_db, met, run_batchrun,
    run_ceiling, shown,
)

NAME = "latency"
BUDGET = 105  # seconds on the 2-core reference machine; the suite must stay under 600
TITLE = "2. Latency-bound"
JOBS, QUICK_JOBS = 20_000, 4_000
LATENCY, CONCURRENCY = 0.5, 1000
IDEAL = CONCURRENCY / LATENCY
TARGET = 0.90
ABOUT = (f"{JOBS:,} jobs, simulator latency {LATENCY * 1000:.0f} ms, `--concurrency {CONCURRENCY}`: the ideal is "
         f"{IDEAL:,.0f} req/s. req/s = jobs / wall time from process start to exit (start-up and the last "
         "request's latency included); the rate at the simulator (first to last request) is shown beside it. "
         "The ceiling peer runs in the same repetitions at the same concurrency, to show what this simulator "
         "and core can deliver at all.")


def run(ctx: Context) -> Section:
    reps = ctx.repetitions(3)
    jobs = QUICK_JOBS if ctx.quick else JOBS
    path = job_file(jobs)
    template = loaded_db(ctx, jobs)
    results: dict[str, list[Measured]] = {"batchrun": [], "ceiling": []}
    with Simulator("--latency", f"{LATENCY * 1000:.0f}ms") as sim:

        def batchrun() -> None:
            results["batchrun"].append(run_batchrun(ctx, sim, template, jobs, CONCURRENCY))

        def ceiling() -> None:
            results["ceiling"].append(run_ceiling(ctx, sim, path, jobs, CONCURRENCY))

        alternate(reps, batchrun, ceiling)
        commands = [sim.command]
    ours, peer = results["batchrun"], results["ceiling"]
    of_ideal = Series([m.rate / IDEAL for m in ours])
    rows = [
        Row("batchrun req/s (wall)", Series([m.rate for m in ours]).show()),
        Row("batchrun req/s at the simulator", Series([m.sim_rate or 0.0 for m in ours]).show()),
        Row(f"batchrun / ideal {IDEAL:,.0f} req/s", of_ideal.show(".2f"), f"≥ {TARGET:.2f}", met(of_ideal.median, TARGET)),
        Row("batchrun at the simulator / ideal", Series([(m.sim_rate or 0.0) / IDEAL for m in ours]).show(".2f")),
        Row("most requests in flight at the simulator", Series([m.stats["max_in_flight"] for m in ours]).show()),
        Row("ceiling peer req/s (wall)", Series([m.rate for m in peer]).show()),
        Row("ceiling peer / ideal", Series([m.rate / IDEAL for m in peer]).show(".2f")),
        Row("ceiling peer at the simulator / ideal", Series([(m.sim_rate or 0.0) / IDEAL for m in peer]).show(".2f")),
        Row("batchrun / ceiling peer", Series([b.rate / c.rate for b, c in zip(ours, peer)]).show(".2f")),
    ]
    details = [["client", "client CPU / wall", "simulator CPU / wall", "client peak RSS"]]
    for name, runs in results.items():
        details.append([name, Series([m.proc.cpu / m.proc.wall for m in runs]).show(".0%"),
                        Series([m.sim_cpu / m.proc.wall for m in runs]).show(".0%"),
                        Series([m.proc.maxrss_mb for m in runs]).show(".0f", " MB")])
    commands += [f"taskset -c 0 {shown(m[0].proc.cmd)}" for m in results.values()]
    return Section(NAME, TITLE, ABOUT, rows, commands, details=details)
