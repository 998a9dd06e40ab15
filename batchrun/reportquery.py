"""The run report's figures, aggregated in SQL from `attempts` and `run_events` (see `reportdata`).

Plain SQL with `?` placeholders run through a `view.Query`, like the reads of `status`, so that it runs the
same on SQLite and PostgreSQL. Every query reads one run's rows through the index on (runner_id,
answered_at) and returns at most a few thousand groups: a run of a million attempts is grouped by the
database in seconds, and Python only turns the groups into values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from batchrun.errors import ConfigError
from batchrun.reportdata import (
    Bucket,
    FailureCode,
    Fallback,
    HourUsage,
    KeyBucket,
    LatencyBucket,
    ModelUsage,
    ReportData,
    RunEvent,
    RunInfo,
    bucket_width,
    percentile,
)
from batchrun.view import Query

__all__ = ["find_run", "report_data"]

#: events shown at most (a run whose rate changed all night would otherwise drown the page)
MAX_EVENTS = 2000
TOP_FAILURES = 10
_RUN = "id, owner, started_at, ended_at, exit_code, outcome, options, heartbeat_at"


def find_run(query: Query, run: str, batch_id: int | None) -> int:
    """The runner id `run` names: "last" (the last run that made an attempt, in `batch_id` if given) or an id."""
    if run != "last":
        try:
            wanted = int(run)
        except ValueError:
            raise ConfigError(f"--run {run!r}: expected `last` or a run id (see `batchrun status`)") from None
        if not query("SELECT id FROM runners WHERE id = ?", (wanted,)):
            raise ConfigError(f"--run {wanted}: no such run in this database")
        return wanted
    scope, params = _batch_scope(batch_id)
    for (runner_id,) in query("SELECT id FROM runners ORDER BY id DESC", ()):
        if query(f"SELECT 1 FROM attempts WHERE runner_id = ? {scope} LIMIT 1", (runner_id, *params)):
            return int(runner_id)
    raise ConfigError("no run has made an attempt yet" + (" in this batch" if batch_id is not None else "")
                      + ": run `batchrun run` first")


def report_data(query: Query, runner_id: int, batch_id: int | None, batch: str | None, sqlite: bool,
                now: float) -> ReportData:
    """Everything the report of run `runner_id` shows (limited to `batch_id` when given)."""
    run = _run_info(query, runner_id)
    scope, scoped = _batch_scope(batch_id)
    where = f"WHERE runner_id = ? {scope}"
    params = (runner_id, *scoped)
    last = query(f"SELECT MAX(answered_at) FROM attempts {where}", params)[0][0]
    end = run.ended_at or max(float(last or run.started_at), run.started_at)
    if run.ended_at is None and last is None:
        end = now
    width = bucket_width(max(end - run.started_at, 1.0))

    def index(column: str, seconds: int) -> str:
        # whole buckets since the epoch, so that they start on round times (CAST truncates on SQLite,
        # rounds on PostgreSQL)
        offset = f"{column} / {seconds!r}"
        return f"CAST({offset} AS INTEGER)" if sqlite else f"CAST(FLOOR({offset}) AS BIGINT)"

    def start(i: Any, seconds: int = width) -> float:
        return float(int(i) * seconds)

    # Three scans of the run's rows: what was sent (by key, bucket and latency bin), what succeeded (by hour
    # and model), and what failed, was refused or fell back.
    bucket = index("answered_at", width)
    per_bucket: dict[int, list[int]] = {}  # bucket -> [succeeded, errors, 429s]
    per_key: dict[tuple[str, int], list[int]] = {}  # (key, bucket) -> [requests, 429s]
    histograms: dict[int, dict[int, int]] = {}  # bucket -> latency bin -> requests
    for key, i, bin_, n, ok, limited in query(
            f"SELECT key_id, {bucket}, latency_bin, COUNT(*), SUM(CASE WHEN outcome = 'ok' THEN 1 ELSE 0 END), "
            f"SUM(CASE WHEN status_code = 429 THEN 1 ELSE 0 END) FROM attempts {where} AND sent "
            "GROUP BY 1, 2, 3", params):
        i, n, ok, limited = int(i), int(n), int(ok), int(limited)
        counts = per_bucket.setdefault(i, [0, 0, 0])
        counts[0] += ok
        counts[1] += n - ok
        counts[2] += limited
        if key is not None:
            sent = per_key.setdefault((str(key), i), [0, 0])
            sent[0] += n
            sent[1] += limited
        if bin_ is not None:
            histogram = histograms.setdefault(i, {})
            histogram[int(bin_)] = histogram.get(int(bin_), 0) + n
    buckets = tuple(Bucket(start(i), *per_bucket[i]) for i in sorted(per_bucket))
    keys = tuple(KeyBucket(key, start(i), *per_key[key, i]) for key, i in sorted(per_key))
    latency = tuple(_latency_bucket(start(i), histograms[i]) for i in sorted(histograms))
    whole: dict[int, int] = {}
    for histogram in histograms.values():
        for bin_, n in histogram.items():
            whole[bin_] = whole.get(bin_, 0) + n
    hours, models = _usage(query, where, params, index("answered_at", 3600), start)
    fallbacks, prechecks, failures = _trouble(query, where, params)
    events = tuple(RunEvent(float(at), str(kind), key, str(message)) for at, kind, key, message in query(
        f"SELECT at, kind, key_id, message FROM run_events WHERE runner_id = ? ORDER BY at, id LIMIT {MAX_EVENTS}",
        (runner_id,)))
    succeeded = sum(b.succeeded for b in buckets)
    errors = sum(b.errors for b in buckets)
    return ReportData(
        run=run, batch=batch, bucket_seconds=width, attempts=succeeded + errors, succeeded=succeeded, errors=errors,
        buckets=buckets, keys=keys, latency=latency, p50=percentile(whole, 0.5), p90=percentile(whole, 0.9),
        p99=percentile(whole, 0.99), events=events, models=models, hours=hours, fallbacks=fallbacks,
        prechecks=prechecks, failures=failures)


def _run_info(query: Query, runner_id: int) -> RunInfo:
    rows = query(f"SELECT {_RUN} FROM runners WHERE id = ?", (runner_id,))
    if not rows:
        raise ConfigError(f"--run {runner_id}: no such run in this database")
    rid, owner, started, ended, code, outcome, options, _ = rows[0]
    shown: dict[str, str] = {}
    if options:
        try:
            shown = {str(k): str(v) for k, v in orjson.loads(options).items()}
        except (orjson.JSONDecodeError, AttributeError):
            shown = {}
    return RunInfo(int(rid), str(owner), float(started), None if ended is None else float(ended),
                   None if code is None else int(code), outcome, shown)


def _batch_scope(batch_id: int | None) -> tuple[str, tuple[int, ...]]:
    return ("AND batch_id = ?", (batch_id,)) if batch_id is not None else ("", ())


def _latency_bucket(start: float, histogram: dict[int, int]) -> LatencyBucket:
    p50, p90, p99 = (percentile(histogram, fraction) or math.nan for fraction in (0.5, 0.9, 0.99))
    return LatencyBucket(start, sum(histogram.values()), p50, p90, p99)


def _cost(cost: Any, unpriced: Any) -> float | None:
    """The summed cost; None when some attempt's cost is unknown (no price for its model): a partial sum
    would pass for the whole."""
    return None if cost is None or unpriced else float(cost)


def _usage(query: Query, where: str, params: Sequence[Any], hour: str,
           start: Callable[[Any, int], float]) -> tuple[tuple[HourUsage, ...], tuple[ModelUsage, ...]]:
    """Tokens and cost of the succeeded attempts by hour and model, and by model alone."""
    hours = []
    models: dict[str, list[Any]] = {}  # model -> [requests, prompt, completion, cost, unpriced]
    for i, name, n, prompt, completion, cost, unpriced in query(
            f"SELECT {hour}, COALESCE(model_served, model_sent, model), COUNT(*), SUM(COALESCE(prompt_tokens, 0)), "
            f"SUM(COALESCE(completion_tokens, 0)), SUM(cost), SUM(CASE WHEN cost IS NULL THEN 1 ELSE 0 END) "
            f"FROM attempts {where} AND outcome = 'ok' GROUP BY 1, 2 ORDER BY 1, 2", params):
        name, prompt, completion, unpriced = str(name), int(prompt or 0), int(completion or 0), int(unpriced or 0)
        hours.append(HourUsage(start(i, 3600), name, prompt, completion, _cost(cost, unpriced)))
        total = models.setdefault(name, [0, 0, 0, 0.0, 0])
        total[0] += int(n)
        total[1] += prompt
        total[2] += completion
        total[3] += float(cost or 0.0)
        total[4] += unpriced
    return tuple(hours), tuple(ModelUsage(name, n, prompt, completion, _cost(cost, unpriced))
                               for name, (n, prompt, completion, cost, unpriced) in sorted(models.items()))


def _trouble(query: Query, where: str, params: Sequence[Any]
             ) -> tuple[tuple[Fallback, ...], dict[str, int], tuple[FailureCode, ...]]:
    """Fallbacks, jobs refused before sending, and the most frequent failure codes with an example each."""
    fallbacks: dict[tuple[str, str, str], int] = {}
    prechecks: dict[str, int] = {}
    failed: dict[str, list[int]] = {}  # code -> [attempts, id of the last one]
    for sent, code, asked, sent_model, reason, n, last in query(
            f"SELECT sent, outcome, model, model_sent, fallback_reason, COUNT(*), MAX(id) FROM attempts {where} "
            "AND (outcome <> 'ok' OR fallback_reason IS NOT NULL) GROUP BY 1, 2, 3, 4, 5", params):
        n = int(n)
        if reason is not None:
            fell = (str(asked), str(sent_model or ""), str(reason))
            fallbacks[fell] = fallbacks.get(fell, 0) + n
        if code == "ok":
            continue
        if not sent:
            prechecks[str(code)] = prechecks.get(str(code), 0) + n
        entry = failed.setdefault(str(code), [0, 0])
        entry[0] += n
        entry[1] = max(entry[1], int(last))
    top = sorted(failed.items(), key=lambda item: (-item[1][0], item[0]))[:TOP_FAILURES]
    failures = []
    for code, (n, example_id) in top:
        example = query("SELECT status_code, message FROM attempts WHERE id = ?", (example_id,))
        status, message = example[0] if example else (None, None)
        failures.append(FailureCode(code, None if status is None else int(status), n, str(message or "")))
    return (tuple(Fallback(*fell, n) for fell, n in sorted(fallbacks.items(), key=lambda item: -item[1])),
            dict(sorted(prechecks.items(), key=lambda item: -item[1])), tuple(failures))
