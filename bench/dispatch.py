"""1. Dispatch overhead at zero latency: batchrun against the bare aiohttp peer and the openai SDK, served
by bench/fastserver.py (never the bottleneck: its own rate alone, by wrk, is measured here too)."""

from __future__ import annotations

import orjson

from bench.common import (
    BENCH, PYTHON, Context, FastServer, Load, Measured, Row, Section, Series, alternate, batchrun_env,
    batchrun_revision, job_file, loaded_db, measure, met, run_batchrun, run_ceiling, shown, wrk_load,
)

NAME = "dispatch"
BUDGET = 170  # seconds on the 2-core reference machine
TITLE = "1. Dispatch overhead, zero latency"
JOBS, QUICK_JOBS = 20_000, 5_000
SDK_JOBS = 1_000  # the SDK peer is slow: fewer jobs, compared by rate
CONCURRENCIES = (64, 256)
SDK_CONCURRENCIES = (64,)  # where issue 7 sets its target; at 256 it would add half a minute
#: batchrun / aiohttp peer by concurrency: issue 16's target at 64, issue 7's at 256
PEER_TARGETS = {64: 0.80, 256: 0.60}
CPU_TARGET = 1.25  # batchrun's CPU µs per request ≤ this × the peer's, at 64 (issue 16)
SDK_TARGET = 10.0
SERVER_TARGET = 30_000  # req/s the fast server must serve on its core, so it is never what a figure measures
WRK_CONNECTIONS, WRK_SECONDS = 64, 5
ABOUT = (f"{JOBS:,} jobs at 0 ms latency, no rate limit (nothing binds but the client), against "
         "`bench/fastserver.py` (a raw asyncio Protocol on uvloop with canned answers) on core 1, the client on "
         "core 0. Beside batchrun, in the same repetition and in alternating order: the *aiohttp peer* "
         "`bench/peer_aiohttp.py` (bare aiohttp session + semaphore, results into SQLite in batched commits, "
         "nothing else) and the *openai SDK peer* `bench/peer_openai.py` (`AsyncOpenAI` + semaphore + JSONL, "
         f"max_retries=0) on the first {SDK_JOBS:,} jobs, at c=64 only. req/s = jobs / wall time from process "
         "start to exit; batchrun starts from a freshly submitted database (submit not timed). CPU µs per request "
         "= the client's user + system time (`wait4`, start-up included) / jobs. Ratios are taken within each "
         "repetition, then the median. Because the SDK peer runs fewer jobs, batchrun / SDK compares the rates "
         "measured at the server (first to last request, start-up excluded). Until 2026-12-01 this section ran "
         "against `batchrun simulate`, which took 50–75 % of its core at these rates, so the peer partly "
         "measured the simulator; those figures (batchrun 2,223 req/s, 0.64 of the peer at c=64) are not "
         "comparable with these.")


def first_body(path: str) -> bytes:
    """The request body of the job file's first line (what wrk sends)."""
    with open(path, "rb") as f:
        line = orjson.loads(f.readline())
    return orjson.dumps(line.get("body", line))


def run(ctx: Context) -> Section:
    reps = ctx.repetitions(3)
    jobs = QUICK_JOBS if ctx.quick else JOBS
    sdk_jobs = min(SDK_JOBS, jobs)
    path = job_file(jobs)
    template = loaded_db(ctx, jobs)
    rows: list[Row] = []
    notes: list[str] = []
    details = [["client", "concurrency", "req/s (wall)", "req/s at the server", "client CPU µs / request",
                "client CPU / wall", "server CPU / wall", "client peak RSS"]]
    with FastServer() as server:
        commands = [server.command]
        loads = [load for _ in range(reps) if (load := wrk_load(server, first_body(str(path)), WRK_CONNECTIONS,
                                                                WRK_SECONDS)) is not None]
        if loads:
            rate = Series([load.rate for load in loads])
            rows += [
                Row(f"fast server alone (wrk, {WRK_CONNECTIONS} connections): req/s",
                    f"{rate.show()}; server {Series([x.server_share for x in loads]).show('.0%')} of its core",
                    f"≥ {SERVER_TARGET:,}", met(rate.median, SERVER_TARGET)),
                Row("fast server: its CPU µs / request", Series([x.server_us for x in loads]).show(".1f")),
            ]
            commands.append(loads[0].command)
            notes.append(server_note(loads))
        else:
            notes.append("wrk is not installed (`apt-get install -y wrk`), so the fast server's rate alone is not "
                         "measured; its CPU / wall beside each figure still shows how far it is from its limit.")
        for concurrency in CONCURRENCIES:
            results: dict[str, list[Measured]] = {"batchrun": [], "peer": [], "sdk": []}

            def batchrun() -> None:
                results["batchrun"].append(run_batchrun(ctx, server, template, jobs, concurrency))

            def peer() -> None:
                results["peer"].append(run_ceiling(ctx, server, path, jobs, concurrency))

            def sdk() -> None:
                out = ctx.scratch("sdk") / "results.jsonl"
                cmd = [PYTHON, str(BENCH / "peer_openai.py"), str(path), server.base_url, str(out),
                       "--concurrency", str(concurrency), "--limit", str(sdk_jobs)]
                results["sdk"].append(measure(server, cmd, sdk_jobs, batchrun_env()))

            with_sdk = concurrency in SDK_CONCURRENCIES
            alternate(reps, batchrun, peer, *([sdk] if with_sdk else []))
            if not with_sdk:
                del results["sdk"]
            commands += [f"taskset -c 0 {shown(m[0].proc.cmd)}" for m in results.values()]
            rows += case_rows(concurrency, results)
            if with_sdk:
                to_sdk = Series([(b.sim_rate or b.rate) / (s.sim_rate or s.rate)
                                 for b, s in zip(results["batchrun"], results["sdk"])])
                rows += [
                    Row(f"c={concurrency}: openai SDK peer req/s ({sdk_jobs:,} jobs)",
                        Series([m.rate for m in results["sdk"]]).show()),
                    Row(f"c={concurrency}: batchrun / openai SDK peer (rates at the server)", to_sdk.show(".1f", "×"),
                        f"≥ {SDK_TARGET:.0f}×", met(to_sdk.median, SDK_TARGET)),
                ]
            for name, runs in results.items():
                details.append([name, str(concurrency), Series([m.rate for m in runs]).show(),
                                Series([m.sim_rate or 0.0 for m in runs]).show(),
                                Series([m.cpu_us for m in runs]).show(),
                                Series([m.proc.cpu / m.proc.wall for m in runs]).show(".0%"),
                                Series([m.server_share for m in runs]).show(".0%"),
                                Series([m.proc.maxrss_mb for m in runs]).show(".0f", " MB")])
    notes.append(batchrun_revision())
    notes.append("A client at ≈ 100 % CPU / wall is using its whole core: its rate is its CPU µs per request. "
                 "The server's CPU / wall beside each rate shows it had room to spare.")
    return Section(NAME, TITLE, ABOUT, rows, commands, details=details, notes=notes)


def case_rows(concurrency: int, results: dict[str, list[Measured]]) -> list[Row]:
    """req/s of batchrun and the peer (the server's share of its core beside each), their ratio, CPU per request."""
    ours, peer = results["batchrun"], results["peer"]
    c = f"c={concurrency}"
    to_peer = Series([b.rate / p.rate for b, p in zip(ours, peer)])
    cpu_ratio = Series([b.cpu_us / p.cpu_us for b, p in zip(ours, peer)])
    target = PEER_TARGETS[concurrency]
    rows = [
        Row(f"{c}: batchrun req/s", served(ours)),
        Row(f"{c}: aiohttp peer req/s", served(peer)),
        Row(f"{c}: batchrun / aiohttp peer", to_peer.show(".2f"), f"≥ {target:.2f}", met(to_peer.median, target)),
        Row(f"{c}: client CPU µs / request, batchrun", Series([m.cpu_us for m in ours]).show()),
        Row(f"{c}: client CPU µs / request, aiohttp peer", Series([m.cpu_us for m in peer]).show()),
    ]
    if concurrency == 64:
        rows.append(Row(f"{c}: batchrun's CPU per request / the peer's", cpu_ratio.show(".2f"),
                        f"≤ {CPU_TARGET:.2f}", met(cpu_ratio.median, CPU_TARGET, at_least=False)))
    return rows


def served(runs: list[Measured]) -> str:
    """`2,900 (2,800–3,000, n=3); server 9 % of its core`: a rate with the server's CPU share beside it."""
    return f"{Series([m.rate for m in runs]).show()}; server {Series([m.server_share for m in runs]).show('.0%')}"


def server_note(loads: list[Load]) -> str:
    dearest = max(load.server_us for load in loads)
    return (f"The fast server alone: `wrk -t1 -c{WRK_CONNECTIONS}` (C, one thread, keep-alive, one request per "
            f"connection at a time, like the clients) on core 0 for {WRK_SECONDS} s POSTing a job's body, "
            f"{len(loads)} times: {Series([x.rate for x in loads]).show()} req/s at "
            f"{Series([x.server_share for x in loads]).show('.0%')} of its core, "
            f"{Series([x.server_us for x in loads]).show('.1f')} µs of its CPU a request (so ≈ "
            f"{1e6 / dearest:,.0f} req/s at 100 %, from the dearest run). Below 100 % of its core, what held "
            "the rate back was the client's core (wrk, and whatever else ran there), not the server.")
