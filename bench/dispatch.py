"""1. Dispatch overhead at zero latency: batchrun against a bare-aiohttp ceiling and the openai SDK."""

from __future__ import annotations

from bench.common import (
    BENCH, PYTHON, Context, Measured, Row, Section, Series, Simulator, alternate, batchrun_env, job_file,
    loaded_db, measure, met, run_batchrun, run_ceiling, shown,
)

NAME = "dispatch"
BUDGET = 150  # seconds on the 2-core reference machine; the suite must stay under 600
TITLE = "1. Dispatch overhead, zero latency"
JOBS, QUICK_JOBS = 20_000, 5_000
SDK_JOBS = 1_000  # the SDK peer is slow: fewer jobs, compared by rate
CONCURRENCIES = (64, 256)
SDK_CONCURRENCIES = (64,)  # where the issue sets its target; at 256 it would add half a minute
CEILING_TARGET, SDK_TARGET = 0.60, 10.0
ABOUT = (f"{JOBS:,} jobs against the simulator at 0 ms latency, no rate limit (nothing binds but the client), "
         "simulator on core 1 and client on core 0. Beside batchrun, in the same repetition and in alternating "
         "order: the *ceiling peer* `bench/peer_aiohttp.py` (bare aiohttp session + semaphore, results into "
         "SQLite in batched commits, nothing else) and the *openai SDK peer* `bench/peer_openai.py` "
         f"(`AsyncOpenAI` + semaphore + JSONL, max_retries=0) on the first {SDK_JOBS:,} jobs, at c=64 only. "
         "req/s = jobs / wall time from process start to exit; batchrun starts from a freshly submitted "
         "database (submit not timed). Ratios are taken within each repetition, then the median. "
         "Because the SDK peer runs fewer jobs, batchrun / SDK compares the rates measured at the simulator "
         "(first to last request, start-up excluded).")


def run(ctx: Context) -> Section:
    reps = ctx.repetitions(3)
    jobs = QUICK_JOBS if ctx.quick else JOBS
    sdk_jobs = min(SDK_JOBS, jobs)
    path = job_file(jobs)
    template = loaded_db(ctx, jobs)
    rows: list[Row] = []
    details = [["client", "concurrency", "req/s (wall)", "req/s at the simulator", "client CPU / wall",
                "simulator CPU / wall", "client peak RSS"]]
    with Simulator() as sim:
        commands = [sim.command]
        for concurrency in CONCURRENCIES:
            results: dict[str, list[Measured]] = {"batchrun": [], "ceiling": [], "sdk": []}

            def batchrun() -> None:
                results["batchrun"].append(run_batchrun(ctx, sim, template, jobs, concurrency))

            def ceiling() -> None:
                results["ceiling"].append(run_ceiling(ctx, sim, path, jobs, concurrency))

            def sdk() -> None:
                out = ctx.scratch("sdk") / "results.jsonl"
                cmd = [PYTHON, str(BENCH / "peer_openai.py"), str(path), sim.base_url, str(out),
                       "--concurrency", str(concurrency), "--limit", str(sdk_jobs)]
                results["sdk"].append(measure(sim, cmd, sdk_jobs, batchrun_env()))

            with_sdk = concurrency in SDK_CONCURRENCIES
            alternate(reps, batchrun, ceiling, *([sdk] if with_sdk else []))
            if not with_sdk:
                del results["sdk"]
            commands += [f"taskset -c 0 {shown(m[0].proc.cmd)}" for m in results.values()]

            rate = {name: Series([m.rate for m in runs]) for name, runs in results.items()}
            to_ceiling = Series([b.rate / c.rate for b, c in zip(results["batchrun"], results["ceiling"])])
            c = f"c={concurrency}"
            rows += [
                Row(f"{c}: batchrun req/s", rate["batchrun"].show()),
                Row(f"{c}: ceiling peer req/s", rate["ceiling"].show()),
                Row(f"{c}: batchrun / ceiling peer", to_ceiling.show(".2f"), f"≥ {CEILING_TARGET:.2f}",
                    met(to_ceiling.median, CEILING_TARGET)),
            ]
            if with_sdk:
                to_sdk = Series([(b.sim_rate or b.rate) / (s.sim_rate or s.rate)
                                 for b, s in zip(results["batchrun"], results["sdk"])])
                rows += [
                    Row(f"{c}: openai SDK peer req/s ({sdk_jobs:,} jobs)", rate["sdk"].show()),
                    Row(f"{c}: batchrun / openai SDK peer (rates at the simulator)", to_sdk.show(".1f", "×"),
                        f"≥ {SDK_TARGET:.0f}×", met(to_sdk.median, SDK_TARGET)),
                ]
            for name, runs in results.items():
                details.append([name, str(concurrency), rate[name].show(),
                                Series([m.sim_rate or 0.0 for m in runs]).show(),
                                Series([m.proc.cpu / m.proc.wall for m in runs]).show(".0%"),
                                Series([m.sim_cpu / m.proc.wall for m in runs]).show(".0%"),
                                Series([m.proc.maxrss_mb for m in runs]).show(".0f", " MB")])
    return Section(NAME, TITLE, ABOUT, rows, commands, details=details,
                   notes=["The simulator runs on one core too: when its CPU / wall is near 100 %, the ceiling "
                          "peer measures the simulator, not the client."])
