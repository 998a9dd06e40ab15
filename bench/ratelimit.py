"""3. Rate-limit utilisation: 4 keys at 25 requests per 1 s sliding window each (ceiling 100 req/s)."""

from __future__ import annotations

from bench.common import (
    BATCHRUN, Context, Measured, Row, Section, Series, Simulator, alternate, batchrun_env, copy_db, loaded_db,
    measure, met, shown,
)

NAME = "ratelimit"
BUDGET = 115  # seconds on the 2-core reference machine; the suite must stay under 600
TITLE = "3. Rate-limit utilisation"
JOBS, QUICK_JOBS = 5_000, 1_000
KEYS = tuple(f"bench{i}:secret{i}" for i in range(1, 5))
LIMIT, PER_KEY = "25/1s", 25
CEILING = PER_KEY * len(KEYS)
RATE_TARGET, REFUSED_TARGET = 0.95, 0.005
ABOUT = (f"{JOBS:,} jobs, {len(KEYS)} keys, each limited to {LIMIT} in batchrun (`--rate-limit {LIMIT}`) and "
         f"in the simulator (a sliding window, `--rate-limit {LIMIT}`), 0 ms latency: the ceiling is "
         f"{CEILING} req/s. Achieved rate = jobs / wall time from process start to exit; the rate at the "
         "simulator (first to last request) beside it. 429s and the largest number of requests any key sent "
         "inside one 1 s window are the simulator's own counts (`/_sim/stats`).")


def run(ctx: Context) -> Section:
    reps = ctx.repetitions(2)
    jobs = QUICK_JOBS if ctx.quick else JOBS
    template = loaded_db(ctx, jobs)
    runs: list[Measured] = []
    with Simulator("--rate-limit", LIMIT) as sim:

        def batchrun() -> None:
            db = copy_db(template, ctx.scratch("ratelimit") / "batchrun.db")
            cmd = [BATCHRUN, "run", "--no-progress", "--rate-limit", LIMIT]
            runs.append(measure(sim, cmd, jobs, batchrun_env(db, sim.base_url, KEYS)))

        alternate(reps, batchrun)
        simulator = sim.command
    utilisation = Series([m.rate / CEILING for m in runs])
    refused = Series([m.stats["by_status"].get("429", 0) / m.stats["requests_total"] for m in runs])
    window = Series([max(m.stats["max_window"].values()) for m in runs])
    rows = [
        Row("achieved req/s (wall)", Series([m.rate for m in runs]).show(".1f")),
        Row(f"achieved / ceiling {CEILING} req/s", utilisation.show(".3f"), f"≥ {RATE_TARGET}",
            met(utilisation.median, RATE_TARGET)),
        Row("req/s at the simulator / ceiling", Series([(m.sim_rate or 0.0) / CEILING for m in runs]).show(".3f")),
        Row("429s", Series([m.stats["by_status"].get("429", 0) for m in runs]).show()),
        Row("429s / requests", refused.show(".2%"), f"≤ {REFUSED_TARGET:.1%}", max(refused.values) <= REFUSED_TARGET),
        Row("largest per-key window (requests in any 1 s)", window.show(), f"≤ {PER_KEY} (every run)",
            max(window.values) <= PER_KEY),
    ]
    commands = [simulator, f"BATCHRUN_API_KEYS=bench1:…,bench2:…,bench3:…,bench4:… taskset -c 0 {shown(runs[0].proc.cmd)}"]
    return Section(NAME, TITLE, ABOUT, rows, commands)
