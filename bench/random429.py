"""7. Random 429s: 3 keys at 20 per 1 s, 5 % of requests refused 429 with `Retry-After: 1` whatever the rate."""

from __future__ import annotations

from bench.common import (
    BATCHRUN, Context, Observed, Row, Section, Series, Simulator, batchrun_env, copy_db, loaded_db, log_note, met,
    observe, share, shown,
)

NAME = "random429"
BUDGET = 180  # seconds on the 2-core reference machine; issue 12's five: 840 s in all
TITLE = "7. Random 429s"
JOBS, QUICK_JOBS = 3_000, 600
KEYS = tuple(f"bench{i}:secret{i}" for i in range(1, 4))
LIMIT, PER_KEY = "20/1s", 20
RANDOM_429, RETRY_AFTER = 0.05, 1
ADMITS = PER_KEY * len(KEYS) * (1 - RANDOM_429)  # what the provider lets through: 57 successes/s
RATE_TARGET = 0.85
ABOUT = (f"{JOBS:,} jobs, {len(KEYS)} keys, each limited to {LIMIT} in batchrun and in the simulator (a sliding "
         f"window), which also refuses {RANDOM_429:.0%} of requests at random with a 429 `model_overloaded` and "
         f"`Retry-After: {RETRY_AFTER}` (`--rate-limited-rate {RANDOM_429} --rate-limited-retry-after "
         f"{RETRY_AFTER}`); those 429s use none of the key's window, so no client rate causes them. The provider "
         f"admits {PER_KEY} × {len(KEYS)} × {1 - RANDOM_429:.2f} = {ADMITS:.0f} successes/s; achieved = successes "
         "/ wall time from process start to exit (start-up included). Issue 12: random 429s must not lower a "
         "key's rate. The largest per-key window is the simulator's count of requests that reached its limiter "
         "inside any 1 s (random 429s are answered before it).")


def run(ctx: Context) -> Section:
    reps = ctx.repetitions(3)
    jobs = QUICK_JOBS if ctx.quick else JOBS
    template = loaded_db(ctx, jobs)
    cmd = [BATCHRUN, "run", "--no-progress", "--rate-limit", LIMIT]
    runs: list[Observed] = []
    with Simulator("--rate-limit", LIMIT, "--rate-limited-rate", str(RANDOM_429),
                   "--rate-limited-retry-after", str(RETRY_AFTER)) as sim:
        for _ in range(reps):
            db = copy_db(template, ctx.scratch(NAME) / "batchrun.db")
            runs.append(observe(sim, [cmd], batchrun_env(db, sim.base_url, KEYS)))
        simulator = sim.command
    achieved = Series([m.succeeded / m.procs[0].wall for m in runs])
    ratio = Series([v / ADMITS for v in achieved.values])
    window = Series([float(m.largest_window) for m in runs])
    all_done = all(m.exit_codes == [0] and m.succeeded == jobs and not m.stats["duplicates"] for m in runs)
    rows = [
        Row("exit 0, every job one success at the simulator (every run)", "yes" if all_done else "no",
            "every run", all_done),
        Row("achieved successes/s (wall)", achieved.show(".1f"), f"≥ {RATE_TARGET * ADMITS:.2f}",
            met(achieved.median, RATE_TARGET * ADMITS)),
        Row(f"achieved / admitted {ADMITS:.0f}/s", ratio.show(".3f"), f"≥ {RATE_TARGET}", met(ratio.median, RATE_TARGET)),
        Row("successes/s at the simulator, first to last request",
            Series([m.progress.rate_after(0) or 0.0 for m in runs]).show(".1f")),
        Row("largest per-key window (requests in any 1 s)", window.show(), f"≤ {PER_KEY} (every run)",
            max(window.values) <= PER_KEY),
        Row("random 429s / limit 429s", Series([float(m.stats["random_429s"]) for m in runs]).show() + " / "
            + Series([float(m.status(429) - m.stats["random_429s"]) for m in runs]).show()),
        Row("simulator CPU / wall (its own core)", Series([m.sim_cpu / m.wall for m in runs]).show(".1%")),
    ]
    details = [["run", "wall", "successes/s", "requests", "random 429s", "limit 429s", "largest window",
                "exit", "simulator CPU", "batchrun CPU"]]
    for i, m in enumerate(runs, 1):
        details.append([str(i), f"{m.procs[0].wall:.1f} s", f"{m.succeeded / m.procs[0].wall:.1f}",
                        f"{m.stats['requests_total']:,}", str(m.stats["random_429s"]),
                        str(m.status(429) - m.stats["random_429s"]), str(m.largest_window), str(m.exit_codes[0]),
                        share(m.sim_cpu, m.wall), share(m.procs[0].cpu, m.procs[0].wall)])
    commands = [simulator, f"BATCHRUN_API_KEYS=bench1:…,bench2:…,bench3:… taskset -c 0 {shown(cmd)}"]
    procs = [m.procs[0] for m in runs]
    notes = log_note(procs, r"key rate (lowered|raised|back)", "batchrun changed a key's rate")
    notes += log_note(procs, r"cooling down", "batchrun cooled a key down")
    return Section(NAME, TITLE, ABOUT, rows, commands, notes=notes, details=details)
