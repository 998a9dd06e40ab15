"""Showing a run while it goes: a live bar on a terminal, a plain line now and then otherwise.

Reads the runner's counters; never touches the database or the network.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Sequence
from typing import IO

from batchrun.keys import KeyLane
from batchrun.runstate import RunReport, RunStats

log = logging.getLogger("batchrun.progress")


def describe_rate(stats: RunStats) -> tuple[float, float | None]:
    """Jobs finished per second in this run, and the seconds left at that pace (None if unknown)."""
    elapsed = max(1e-6, time.monotonic() - stats.started)
    rate = stats.finished / elapsed
    left = stats.total - stats.done_before - stats.finished
    eta = left / rate if rate > 0 else None
    return rate, eta


def plain_line(stats: RunStats) -> str:
    rate, eta = describe_rate(stats)
    done = stats.done_before + stats.finished
    eta_text = f"{eta:.0f}s" if eta is not None else "?"
    return (f"progress: {done}/{stats.total} done ({stats.failed} failed, {stats.retried} retries, "
            f"{stats.rate_limited} 429s), {rate:.1f} jobs/s, ETA {eta_text}")


async def show_plain(stats: RunStats, interval: float = 30.0) -> None:
    """No terminal (cron, a log file): one line every `interval` seconds."""
    while True:
        await asyncio.sleep(interval)
        log.info("%s", plain_line(stats))


async def show_live(stats: RunStats, lanes: Sequence[KeyLane], stream: IO[str] | None = None) -> None:
    """A terminal: a rich progress bar with done/total, rate, ETA, and each key's state."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(file=stream or sys.stderr)
    with Progress(TextColumn("[bold]batchrun"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  TextColumn("{task.fields[detail]}"), console=console, transient=False) as bar:
        task = bar.add_task("run", total=stats.total, completed=stats.done_before, detail="")
        try:
            while True:
                rate, _ = describe_rate(stats)
                keys = " ".join(f"{lane.key.id}:{lane.state}" for lane in lanes)
                bar.update(task, total=stats.total, completed=stats.done_before + stats.finished,
                           detail=f"{rate:.1f}/s failed {stats.failed} 429s {stats.rate_limited} [{keys}]")
                await asyncio.sleep(0.5)
        finally:
            bar.update(task, completed=stats.done_before + stats.finished)


def summary_lines(report: RunReport) -> list[str]:
    """The closing summary: what a user reading a cron log at 08:00 needs, in a few lines."""
    stats = report.stats
    rate = stats.finished / report.duration if report.duration > 0 else 0.0
    failed = ", ".join(f"{code}: {n}" for code, n in sorted(stats.failed_by_code.items())) or "none"
    lines = [
        f"succeeded: {stats.succeeded}  failed: {stats.failed} ({failed})  left: {report.left}",
        f"requests: {stats.requests}  retries: {stats.retried}  429s: {stats.rate_limited}"
        + (f"  unverified (no request_id): {stats.unverified}" if stats.unverified else "")
        + (f"  truncated (finish_reason length): {stats.truncated}" if stats.truncated else "")
        + (f"  served by a fallback model: {stats.fallbacks}" if stats.fallbacks else ""),
        f"tokens: {stats.prompt_tokens} prompt + {stats.completion_tokens} completion  cost: "
        + format_cost(stats.cost if stats.succeeded > stats.unpriced else None, stats.unpriced),
    ]
    for model, (requests, prompt, completion, cost) in sorted(stats.by_model.items()):
        lines.append(f"  model {model}: {requests} requests, {prompt} + {completion} tokens, "
                     + format_cost(cost, 0))
    for lane in report.lanes:
        if lane.requests or not lane.usable:
            rate_text = ""
            if lane.rate_adapted:
                rate_text = f", rate lowered to {lane.rate_adapted} (configured {lane.rate_configured or 'none'})"
            lines.append(f"  key {lane.key.id}: {lane.state}, {lane.requests} requests, "
                         f"{lane.rate_limited} 429s, {lane.errors} errors{rate_text}")
    if stats.failed_by_code.get("no_capacity"):
        lines.append(f"the provider had no capacity (503) for {stats.failed_by_code['no_capacity']} job(s), "
                     "even after every retry; run again later")
    if stats.breaker_trips:
        lines.append(f"most requests failed at times: concurrency was reduced {stats.breaker_trips} time(s)")
    lines.append(f"duration: {report.duration:.1f}s  mean rate: {rate:.1f} jobs/s")
    lines.append(f"exit {report.exit_code}: {report.meaning}" + (f" — {report.reason}" if report.reason else ""))
    return lines


def format_cost(cost: float | None, unpriced: int) -> str:
    """`$0.0123`, `unknown` (no prices in the catalogue), plus how many results had no price."""
    text = "unknown" if cost is None else f"${cost:.4f}"
    return text + (f" ({unpriced} result(s) without a catalogue price)" if unpriced and cost is not None else "")
