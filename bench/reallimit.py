"""8. Real limit below the configured one: keys told 20 per 1 s that the provider limits to 10 per 1 s."""

from __future__ import annotations

import re
import subprocess

from bench.common import (
    BATCHRUN, Context, Observed, Row, Section, Series, Simulator, batchrun_env, copy_db, loaded_db, log_note, met,
    observe, share, shown,
)

NAME = "reallimit"
BUDGET = 180  # seconds on the 2-core reference machine; issue 12's five: 840 s in all
TITLE = "8. Real limit below the configured one"
JOBS, QUICK_JOBS = 750, 450
KEYS = tuple(f"bench{i}:secret{i}" for i in range(1, 4))
TOLD, REAL, PER_KEY = "20/1s", "10/1s", 10
CEILING = PER_KEY * len(KEYS)  # 30 req/s: what the provider really admits
LEARN = 10.0  # seconds after the first request that the figure leaves out
RATE_TARGET, REFUSED_TARGET = 0.90, 0.03
ABOUT = (f"{JOBS:,} jobs, {len(KEYS)} keys told `--rate-limit {TOLD}` in batchrun while the simulator allows "
         f"`--rate-limit {REAL}` per key (a sliding window, honest `Retry-After` on its 429s): the real ceiling is "
         f"{CEILING} req/s. The figure is measured at the simulator after the first {LEARN:.0f} s (the time the "
         "rate controller has to find the real limit): `/_sim/stats` polled every 50 ms during the run gives "
         f"the completions served {LEARN:.0f} s after the first request and when the last one was served. 429s / "
         "requests is over the whole run.")


def headerless_flag() -> str | None:
    """The simulator's option to leave the `x-ratelimit-*` headers out, if it has one."""
    text = subprocess.run([BATCHRUN, "simulate", "--help"], capture_output=True, text=True).stdout
    found = re.search(r"(--(?:omit|no|without|hide)-[\w-]*(?:header|ratelimit|rate-limit)[\w-]*)", text)
    return found.group(1) if found else None


def variant(ctx: Context, label: str, flags: list[str], jobs: int, reps: int,
            ) -> tuple[list[Row], list[list[str]], str, list[str], list[str]]:
    template = loaded_db(ctx, jobs)
    cmd = [BATCHRUN, "run", "--no-progress", "--rate-limit", TOLD]
    runs: list[Observed] = []
    with Simulator("--rate-limit", REAL, *flags) as sim:
        for _ in range(reps):
            db = copy_db(template, ctx.scratch(NAME) / "batchrun.db")
            runs.append(observe(sim, [cmd], batchrun_env(db, sim.base_url, KEYS)))
        simulator = sim.command
    after = Series([(m.progress.rate_after(LEARN) or 0.0) / CEILING for m in runs])
    refused = Series([m.status(429) / max(1, m.stats["requests_total"]) for m in runs])
    all_done = all(m.exit_codes == [0] and m.succeeded == jobs and not m.stats["duplicates"] for m in runs)
    rows = [
        Row(f"{label}: exit 0, every job one success (every run)", "yes" if all_done else "no", "every run", all_done),
        Row(f"{label}: served/s after the first {LEARN:.0f} s / real ceiling {CEILING}/s", after.show(".3f"),
            f"≥ {RATE_TARGET}", met(after.median, RATE_TARGET)),
        Row(f"{label}: 429s / requests", refused.show(".2%"), f"≤ {REFUSED_TARGET:.0%}",
            met(refused.median, REFUSED_TARGET, False)),
        Row(f"{label}: successes/s by wall (start-up included)",
            Series([m.succeeded / m.procs[0].wall for m in runs]).show(".1f")),
        Row(f"{label}: simulator CPU / wall (its own core)", Series([m.sim_cpu / m.wall for m in runs]).show(".1%")),
    ]
    details = []
    for i, m in enumerate(runs, 1):
        start = m.progress.first_request or 0.0
        first = m.progress.served_at(start + LEARN)
        details.append([label, str(i), f"{m.procs[0].wall:.1f} s", f"{first / LEARN:.1f}",
                        f"{m.progress.rate_after(LEARN) or 0.0:.1f}", f"{m.stats['requests_total']:,}",
                        str(m.status(429)), str(m.largest_window), str(m.exit_codes[0]), share(m.sim_cpu, m.wall),
                        share(m.procs[0].cpu, m.procs[0].wall)])
    command = f"BATCHRUN_API_KEYS=bench1:…,bench2:…,bench3:… taskset -c 0 {shown(cmd)}"
    notes = log_note([m.procs[0] for m in runs], r"key rate (lowered|raised|back)", f"{label}, batchrun changed a key's rate")
    return rows, details, simulator, [command], notes


def run(ctx: Context) -> Section:
    reps = ctx.repetitions(3)
    jobs = QUICK_JOBS if ctx.quick else JOBS
    variants: list[tuple[str, list[str]]] = [("with x-ratelimit headers", [])]
    flag = headerless_flag()
    if flag:
        variants.append(("without x-ratelimit headers", [flag]))
    rows: list[Row] = []
    details = [["variant", "run", "wall", f"served/s, first {LEARN:.0f} s", f"served/s after {LEARN:.0f} s",
                "requests", "429s", "largest window", "exit", "simulator CPU", "batchrun CPU"]]
    commands: list[str] = []
    notes: list[str] = []
    for label, flags in variants:
        more_rows, more_details, simulator, cmds, more_notes = variant(ctx, label, flags, jobs, reps)
        rows += more_rows
        details += more_details
        commands += [simulator, *cmds]
        notes += more_notes
    if flag:
        notes.append(f"Without the headers (simulator `{flag}`) batchrun cannot pause a key on "
                     "`x-ratelimit-remaining: 0`, so only its rate controller keeps it under the real limit.")
    else:
        notes.append("The simulator has no option to leave out the `x-ratelimit-*` headers yet, so only the "
                     "variant with them is measured: there the header pause helps the rate controller.")
    return Section(NAME, TITLE, ABOUT, rows, commands, notes=notes, details=details)
