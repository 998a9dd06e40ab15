"""2. Latency-bound: many requests in flight against a fixed latency, measured against the ideal
in-flight / latency, served by bench/fastserver.py so the server's own CPU is not in the figure."""

from __future__ import annotations

from dataclasses import dataclass

from bench.common import (
    Context, FastServer, Measured, Row, Section, Series, alternate, batchrun_revision, job_file, loaded_db, met,
    run_batchrun, run_ceiling, shown,
)

NAME = "latency"
BUDGET = 300  # seconds on the 2-core reference machine
TITLE = "2. Latency-bound"


@dataclass(frozen=True)
class Case:
    latency: float  # seconds
    in_flight: int  # batchrun's --concurrency, the peer's too
    jobs: int
    quick_jobs: int
    target: float  # batchrun's rate at the server / ideal (issue 16)
    peer_target: float | None = None  # batchrun / the peer, rates at the server
    rss_target: float | None = None  # batchrun's peak RSS, MB

    @property
    def ideal(self) -> float:
        return self.in_flight / self.latency

    @property
    def name(self) -> str:
        return f"{self.latency * 1000:,.0f} ms, {self.in_flight:,} in flight"


CASES = (
    Case(0.5, 1_000, 20_000, 4_000, target=0.90, peer_target=1.0),
    # real LLM latencies mean thousands of requests in flight
    Case(2.0, 4_000, 40_000, 8_000, target=0.85, rss_target=300),
)
ABOUT = ("Against `bench/fastserver.py` on core 1, answering every request after a fixed latency "
         "(`--latency`, by `loop.call_later`); the client on core 0 with `--concurrency` = the requests in flight. "
         "Cases: " + "; ".join(f"{c.name}, {c.jobs:,} jobs (ideal {c.ideal:,.0f} req/s)" for c in CASES) + ". "
         "The ideal = in flight / latency. req/s = jobs / wall time from process start to exit (start-up and the "
         "last request's latency included); the rate *at the server* (first to last request arriving, start-up "
         "excluded) is the one the targets judge. The aiohttp peer (`bench/peer_aiohttp.py`, the same in flight) "
         "runs in the same repetitions, alternating with batchrun; ratios within each repetition, then the median. "
         "CPU µs per request = the client's user + system time (`wait4`, start-up included) / jobs. Until "
         "2026-12-01 this section ran one case (500 ms, 1,000 in flight) against `batchrun simulate`, whose "
         "own event loop (≈ 0.2 ms of CPU a request) stretched every round trip, so the peer too stayed at "
         "≈ 0.6–0.7 of the ideal; those figures are not comparable with these.")


def run(ctx: Context) -> Section:
    reps = ctx.repetitions(3)
    rows: list[Row] = []
    commands: list[str] = []
    details = [["case", "client", "req/s (wall)", "req/s at the server", "client CPU µs / request",
                "client CPU / wall", "server CPU / wall", "most in flight at the server", "client peak RSS"]]
    for case in CASES:
        jobs = case.quick_jobs if ctx.quick else case.jobs
        path = job_file(jobs)
        template = loaded_db(ctx, jobs)
        results: dict[str, list[Measured]] = {"batchrun": [], "peer": []}
        with FastServer(case.latency * 1000) as server:

            def batchrun() -> None:
                results["batchrun"].append(run_batchrun(ctx, server, template, jobs, case.in_flight))

            def peer() -> None:
                results["peer"].append(run_ceiling(ctx, server, path, jobs, case.in_flight))

            alternate(reps, batchrun, peer)
            commands.append(server.command)
        commands += [f"taskset -c 0 {shown(m[0].proc.cmd)}" for m in results.values()]
        rows += case_rows(case, results)
        for name, runs in results.items():
            details.append([case.name, name, Series([m.rate for m in runs]).show(),
                            Series([m.sim_rate or 0.0 for m in runs]).show(),
                            Series([m.cpu_us for m in runs]).show(),
                            Series([m.proc.cpu / m.proc.wall for m in runs]).show(".0%"),
                            Series([m.server_share for m in runs]).show(".0%"),
                            Series([m.stats["max_in_flight"] for m in runs]).show(),
                            Series([m.proc.maxrss_mb for m in runs]).show(".0f", " MB")])
    notes = ["By wall time every client also pays its start-up (≈ 0.5–1 s) and the last wave's latency, so "
             "wall / ideal stays below the rate at the server even for a perfect client.", batchrun_revision()]
    return Section(NAME, TITLE, ABOUT, rows, commands, details=details, notes=notes)


def case_rows(case: Case, results: dict[str, list[Measured]]) -> list[Row]:
    ours, peer = results["batchrun"], results["peer"]
    ideal = case.ideal
    at_server = Series([(m.sim_rate or 0.0) / ideal for m in ours])
    to_peer = Series([(b.sim_rate or b.rate) / (p.sim_rate or p.rate) for b, p in zip(ours, peer)])
    share = Series([m.server_share for m in ours + peer]).show(".0%")
    c = case.name
    rows = [
        Row(f"{c}: batchrun req/s (wall)", f"{Series([m.rate for m in ours]).show()}; server {share} of its core"),
        Row(f"{c}: batchrun at the server / ideal {ideal:,.0f} req/s", at_server.show(".2f"), f"≥ {case.target:.2f}",
            met(at_server.median, case.target)),
        Row(f"{c}: batchrun / ideal (wall)", Series([m.rate / ideal for m in ours]).show(".2f")),
        Row(f"{c}: aiohttp peer at the server / ideal", Series([(m.sim_rate or 0.0) / ideal for m in peer]).show(".2f")),
        Row(f"{c}: aiohttp peer / ideal (wall)", Series([m.rate / ideal for m in peer]).show(".2f")),
        Row(f"{c}: batchrun / aiohttp peer (at the server)", to_peer.show(".2f"),
            "" if case.peer_target is None else f"≥ {case.peer_target:.2f}",
            None if case.peer_target is None else met(to_peer.median, case.peer_target)),
        Row(f"{c}: client CPU µs / request, batchrun", Series([m.cpu_us for m in ours]).show()),
        Row(f"{c}: client CPU µs / request, aiohttp peer", Series([m.cpu_us for m in peer]).show()),
    ]
    if case.rss_target is not None:
        rss = Series([m.proc.maxrss_mb for m in ours])
        rows.append(Row(f"{c}: batchrun client peak RSS", rss.show(".0f", " MB"), f"≤ {case.rss_target:.0f} MB",
                        met(rss.median, case.rss_target, at_least=False)))
    return rows
