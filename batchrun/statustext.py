"""What `batchrun status` shows: each batch's jobs by state, usage, keys, runners, provider batches and the
last run, as text or as JSON. The CLI opens the view; this turns what it reads into lines.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from batchrun.endpoints import DEFAULT
from batchrun.units import format_clock
from batchrun.view import QueueView

__all__ = ["RUNNER_STALE_AFTER", "cost_text", "key_json", "show_status", "when"]


def show_status(view: QueueView, batch_id: int | None, as_json: bool, echo: Callable[[str], Any]) -> None:
    """Print the status of `batch_id` (None: every batch) with `echo`, as text or (`as_json`) JSON."""
    counts = view.counts(batch_id)
    keys = view.key_records()
    last = view.last_runner(ended=True)
    alive = view.runner_activity(RUNNER_STALE_AFTER)
    by_key, by_model = view.usage("key", batch_id), view.usage("model", batch_id)
    provider_batches = view.open_provider_batches(batch_id)
    names = view.batch_names() if provider_batches else {}
    payload = {
        "batches": [{
            "name": c.name, "total": c.total, "queued": c.queued, "running": c.running,
            "succeeded": c.succeeded, "failed": c.failed, "cancelled": c.cancelled,
            "attempts": c.attempts, "retries": c.retries, "failed_by_code": c.failed_by_code,
            "unverified": c.unverified, "truncated": c.truncated, "fallbacks": c.fallbacks,
            "usage": {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                      "total_tokens": c.total_tokens},
            "cost": c.cost if c.priced else None, "unpriced": c.succeeded - c.priced,
            "endpoints": {e.endpoint: {
                "total": e.total, "queued": e.queued, "running": e.running, "succeeded": e.succeeded,
                "failed": e.failed, "cancelled": e.cancelled,
                "usage": {"prompt_tokens": e.prompt_tokens, "completion_tokens": e.completion_tokens,
                          "total_tokens": e.total_tokens},
                "cost": e.cost,
            } for e in c.endpoints},
        } for c in counts],
        "usage": {"by_key": [usage_json(u) for u in by_key], "by_model": [usage_json(u) for u in by_model]},
        "keys": [key_json(k) for k in keys.values()],
        "provider_batches": [{
            "id": b.provider_batch_id, "batch": names.get(b.batch_id, str(b.batch_id)), "endpoint": b.endpoint,
            "model": b.model, "key": b.key_id, "state": b.state, "status": b.provider_status,
            "requests": b.requests, "completed": b.completed, "failed": b.failed, "since": b.created_at,
        } for b in provider_batches],
        "last_run": None if last is None else {
            "id": last.id, "runner": last.owner, "started_at": last.started_at, "ended_at": last.ended_at,
            "exit_code": last.exit_code, "outcome": last.outcome, "requests": last.requests,
            "requests_per_second": last.throughput, "latency_p50": last.latency_p50,
            "latency_p99": last.latency_p99,
        },
        "runners": [{
            "runner": a.runner.owner, "host": a.runner.host, "pid": a.runner.pid, "since": a.runner.started_at,
            "heartbeat_at": a.runner.heartbeat_at, "jobs_leased": a.jobs_in_flight,
            "keys_held": list(a.keys_held),
        } for a in alive],
    }
    if as_json:
        echo(orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode())
        return
    if not counts:
        echo(f"no batches in {view.url} (load one with `batchrun submit FILE`)")
    header = (f"{'batch':<24} {'total':>8} {'queued':>8} {'running':>8} {'succeeded':>10} {'failed':>8} "
              f"{'retries':>8} {'tokens':>10} {'cost':>10}")
    if counts:
        echo(header)
    for c in counts:
        echo(f"{c.name:<24} {c.total:>8} {c.queued:>8} {c.running:>8} {c.succeeded:>10} {c.failed:>8} "
                   f"{c.retries:>8} {c.total_tokens:>10} {cost_text(c.cost if c.priced else None):>10}")
        if len(c.endpoints) > 1 or any(e.endpoint != DEFAULT.url for e in c.endpoints):
            for e in c.endpoints:
                echo(f"  {e.endpoint}: {e.total} jobs, {e.queued} queued, {e.running} running, "
                           f"{e.succeeded} succeeded, {e.failed} failed; {e.total_tokens} tokens, "
                           f"cost {cost_text(e.cost)}")
        for code, n in sorted(c.failed_by_code.items()):
            echo(f"  failed {code}: {n}")
        if c.cancelled:
            echo(f"  cancelled: {c.cancelled}")
        if c.unverified:
            echo(f"  unverified (200 without request_id): {c.unverified}")
        if c.truncated:
            echo(f"  truncated (finish_reason length): {c.truncated}")
        if c.fallbacks:
            echo(f"  served by a fallback model: {c.fallbacks}")
    for title, rows in (("model", by_model), ("key", by_key)):
        for u in rows:
            echo(f"usage by {title} {u.name or '-'}: {u.requests} results, {u.prompt_tokens} prompt + "
                       f"{u.completion_tokens} completion tokens, cost {cost_text(u.cost if u.priced else None)}")
    for k in keys.values():
        echo(f"key {k.id}: {k.state}" + (f" ({k.reason})" if k.reason else ""))
    for a in alive:
        echo(f"running: {a.runner.host} pid {a.runner.pid} since {when(a.runner.started_at)}, "
                   f"{a.jobs_in_flight} job(s) leased (in flight or about to be), keys held: {', '.join(a.keys_held) or 'none (waiting)'}")
    for b in provider_batches:
        echo(f"at the provider's Batch API: {b.provider_batch_id or '(not created yet)'} "
                   f"(batch {names.get(b.batch_id, b.batch_id)}, {b.endpoint} {b.model}, key {b.key_id}): "
                   f"{b.provider_status or b.state}, {b.completed} of {b.requests} completed, {b.failed} failed, "
                   f"since {when(b.created_at)}")
    if last is not None:
        echo(f"last run: {last.host} pid {last.pid}, ended {when(last.ended_at)}: "
                   f"exit {last.exit_code}: {last.outcome}")
        if last.requests:
            echo(f"  {last.requests:,} request(s) at {last.throughput or 0:,.1f}/s; latency "
                       f"p50 {seconds_text(last.latency_p50)}, p99 {seconds_text(last.latency_p99)} "
                       f"(`batchrun report --run {last.id}` draws it)")




#: a runner whose heartbeat is older than this is not shown as alive (heartbeats come every lease / 3)
RUNNER_STALE_AFTER = 180.0


def seconds_text(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def cost_text(cost: float | None) -> str:
    return "unknown" if cost is None else f"${cost:.4f}"


def usage_json(usage: Any) -> dict[str, Any]:
    return {"name": usage.name, "results": usage.requests, "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens, "total_tokens": usage.total_tokens,
            "cost": usage.cost if usage.priced else None}


def key_json(record: Any) -> dict[str, Any]:
    return {"id": record.id, "state": record.state, "reason": record.reason, "since": record.since,
            "last_run": {"at": record.last_run_at, "requests": record.requests,
                         "rate_limited": record.rate_limited, "errors": record.errors},
            "rate_limit": {"configured": record.rate_configured, "adapted": record.rate_adapted}}


def when(epoch: float | None) -> str:
    return "-" if epoch is None else format_clock(epoch)
