"""10. Handover: three runners on one PostgreSQL database share two keys × 30 per 1 s, on a busy machine."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

from bench.common import (
    BATCHRUN, Context, Observed, Row, Section, Series, Simulator, batchrun_env, burners, check_export, job_file,
    log_note, observe, prompts, run as run_process, share, shown, stop_all,
)

NAME = "handover"
BUDGET = 200  # seconds on the 2-core reference machine; issue 12's five: 840 s in all
TITLE = "10. Key handover between runners"
JOBS, QUICK_JOBS = 600, 180
RUNS, QUICK_RUNS = 20, 3
RUNNERS, STAGGER = 3, 0.3
KEYS = ("bench1:secret1", "bench2:secret2")
LIMIT, PER_KEY = "30/1s", 30
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
ABOUT = (f"{RUNNERS} `batchrun run` processes started {STAGGER} s apart on one PostgreSQL database share "
         f"{len(KEYS)} keys, each limited to {LIMIT} in batchrun and in the simulator (ceiling "
         f"{PER_KEY * len(KEYS)} req/s), so keys change hands between runners; each run has {JOBS} jobs (≈ "
         f"{JOBS / (PER_KEY * len(KEYS)):.0f} s at the ceiling) on a fresh copy of the loaded database. {RUNS} runs "
         "in a row while two CPU burners (`python -c 'while True: pass'`, nice 0, one pinned to each core) keep "
         "the machine busy. Issue 12: the runner that takes a key must not send before the giver's last request "
         "with it has left the window, so at the provider every per-key window holds ≤ 30 requests and no 429 "
         "is ever sent, in every run. The worst run is the one with the largest window (then most 429s).")


@contextmanager
def database(name: str, template: str | None = None) -> Iterator[str]:
    """A scratch PostgreSQL database (optionally a copy of `template`), dropped afterwards."""
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_env(url: str, base_url: str | None = None) -> dict[str, str]:
    env = batchrun_env(None, base_url, KEYS)
    env["BATCHRUN_DB"] = url
    return env


def done_by(out: str) -> int | None:
    """The `succeeded: N` of a runner's closing summary, if it printed one."""
    found = re.search(r"succeeded: (\d+)", out)
    return int(found.group(1)) if found else None


def run(ctx: Context) -> Section:
    jobs = QUICK_JOBS if ctx.quick else JOBS
    reps = QUICK_RUNS if ctx.quick else (ctx.reps or RUNS)
    path = job_file(jobs)
    expected = prompts(path)
    cmd = [BATCHRUN, "run", "--no-progress", "--rate-limit", LIMIT]
    tag = secrets.token_hex(4)
    runs: list[Observed] = []
    complete: list[bool] = []
    with database(f"bench_handover_{tag}") as template_url:
        run_process([BATCHRUN, "submit", str(path)], pg_env(template_url)).check()
        with Simulator("--rate-limit", LIMIT) as sim:
            load = burners(2)
            try:
                for i in range(reps):
                    with database(f"bench_handover_{tag}_{i}", template_url.rsplit("/", 1)[1]) as url:
                        observed = observe(sim, [cmd] * RUNNERS, pg_env(url, sim.base_url), stagger=STAGGER)
                        runs.append(observed)
                        exported = check_export(pg_env(url), expected, ctx.scratch(NAME))
                        complete.append(exported.complete and exported.results == jobs
                                        and observed.succeeded == jobs and not observed.stats["duplicates"])
            finally:
                stop_all(load)
            simulator = sim.command
    windows = [m.largest_window for m in runs]
    refused = [m.status(429) for m in runs]
    clean = sum(1 for w, r in zip(windows, refused) if w <= PER_KEY and r == 0)
    worst = max(range(len(runs)), key=lambda i: (windows[i], refused[i], runs[i].wall))
    exits_ok = all(code == 0 for m in runs for code in m.exit_codes)
    shared = sum(1 for m in runs if sum(1 for p in m.procs if (done_by(p.stdout + p.stderr) or 0) > 0) >= 2)
    rows = [
        Row(f"runs with every per-key window ≤ {PER_KEY} and 0 429s", f"{clean} of {len(runs)}", "every run",
            clean == len(runs)),
        Row("largest per-key window, worst run", str(windows[worst]), f"≤ {PER_KEY}", windows[worst] <= PER_KEY),
        Row("429s, worst run", str(max(refused)), "0", max(refused) == 0),
        Row("every runner exits 0, every job once in the export (every run)",
            "yes" if exits_ok and all(complete) else "no", "every run", exits_ok and all(complete)),
        Row("largest per-key window, per run", Series([float(w) for w in windows]).show()),
        Row("wall time (first start to last exit)", Series([m.wall for m in runs]).show(".1f", " s")),
        Row("runs in which ≥ 2 runners did jobs (the keys changed hands)", f"{shared} of {len(runs)}"),
        Row("simulator CPU / wall (its core, shared with a burner)",
            Series([m.sim_cpu / m.wall for m in runs]).show(".1%")),
    ]
    details = [["run", "wall", "largest window", "429s", "jobs per runner", "exits", "export complete",
                "simulator CPU"]]
    for i, m in enumerate(runs):
        per_runner = " / ".join(str(done_by(p.stdout + p.stderr)) for p in m.procs)
        mark = " (worst)" if i == worst else ""
        details.append([f"{i + 1}{mark}", f"{m.wall:.1f} s", str(windows[i]), str(refused[i]), per_runner,
                        ",".join(map(str, m.exit_codes)), "yes" if complete[i] else "no", share(m.sim_cpu, m.wall)])
    commands = [simulator, "BATCHRUN_DB=postgresql://postgres@127.0.0.1:5432/$SCRATCH batchrun submit "
                f"bench/.cache/{path.name}",
                f"BATCHRUN_DB=postgresql://…/$SCRATCH BATCHRUN_API_KEYS=bench1:…,bench2:… taskset -c 0 {shown(cmd)}"
                f"   # × {RUNNERS}, {STAGGER} s apart",
                "taskset -c 0 python -c 'while True: pass' & taskset -c 1 python -c 'while True: pass' &"
                "   # for the whole benchmark"]
    notes = log_note([p for m in runs for p in m.procs], r"key rate (lowered|raised|back)", "batchrun changed a key's rate")
    return Section(NAME, TITLE, ABOUT, rows, commands, notes=notes, details=details)
