"""A realistic ReportData built by hand, for the report renderer's tests: a two-hour night run on three keys,
one of which meets 429s (its rate lowered, then cooling) and one dies; a fallback, prechecks, failures whose
example messages carry markup characters, and a gap in the latency series."""

from __future__ import annotations

import random

from batchrun.reportdata import (
    Bucket, Fallback, FailureCode, HourUsage, KeyBucket, LatencyBucket, ModelUsage, ReportData, RunEvent, RunInfo,
)

#: 2026-03-14 22:10:00 UTC: the run crosses midnight, so it spans three clock hours
STARTED = 1773526200.0
BUCKET = 60
BUCKETS = 120
KEYS = ("k1", "k2", "k3")
#: the minutes in which k2 meets 429s, and the minute k3 is found dead
LIMITED = range(30, 45)
K3_DEAD = 80


def sample_report() -> ReportData:
    rng = random.Random(15)
    started = STARTED
    buckets: list[Bucket] = []
    keys: list[KeyBucket] = []
    latency: list[LatencyBucket] = []
    for minute in range(BUCKETS):
        start = started + minute * BUCKET
        total_ok = total_err = total_429 = 0
        for key in KEYS:
            if key == "k3" and minute >= K3_DEAD:
                continue
            requests = rng.randint(180, 220)
            limited = rng.randint(20, 60) if key == "k2" and minute in LIMITED else 0
            errors = limited + (rng.random() < 0.2) * rng.randint(1, 4)
            keys.append(KeyBucket(key, start, requests, limited))
            total_ok += requests - errors
            total_err += errors
            total_429 += limited
        buckets.append(Bucket(start, total_ok, total_err, total_429))
        if minute not in (60, 61):  # nothing answered for two minutes: a gap in the lines
            p50 = 0.6 + rng.random() * 0.3
            spike = 2.5 if minute in LIMITED else 1.0
            latency.append(LatencyBucket(start, total_ok, p50, p50 * 2 * spike, p50 * 4.5 * spike))
    events = (
        RunEvent(started + 31 * BUCKET, "key_rate", "k2", "rate lowered 600/1m -> 420/1m after 429s"),
        RunEvent(started + 36 * BUCKET, "key_cooling", "k2", "cooling for 30s (Retry-After)"),
        RunEvent(started + 38 * BUCKET, "key_rate", "k2", "rate lowered 420/1m -> 300/1m"),
        RunEvent(started + 70 * BUCKET, "key_rate", "k2", "rate raised 300/1m -> 420/1m"),
        RunEvent(started + 60 * BUCKET + 5, "breaker", None, "most requests failed: concurrency 32 -> 16"),
        RunEvent(started + 62 * BUCKET, "breaker", None, "concurrency back to 32"),
        RunEvent(started + K3_DEAD * BUCKET, "key_state", "k3", "k3 is unusable: 401 invalid_api_key"),
        RunEvent(started + 5 * BUCKET, "key_state", "k1", "k1 is healthy again"),
    )
    succeeded = sum(b.succeeded for b in buckets)
    errors = sum(b.errors for b in buckets)
    models = (
        ModelUsage("fast-chat-1", int(succeeded * 0.8), 41_000_000, 9_200_000, 23.4),
        ModelUsage("big<beta>", int(succeeded * 0.2), 12_500_000, 4_100_000, None),
    )
    hours: list[HourUsage] = []
    for hour, share in ((1773525600.0, 0.3), (1773529200.0, 0.5), (1773532800.0, 0.2)):
        hours.append(HourUsage(hour, "fast-chat-1", int(41_000_000 * share), int(9_200_000 * share), 23.4 * share))
        hours.append(HourUsage(hour, "big<beta>", int(12_500_000 * share), int(4_100_000 * share), None))
    return ReportData(
        run=RunInfo(
            id=42, owner="night-box:4711:ab12cd", started_at=started, ended_at=started + BUCKETS * BUCKET - 17,
            exit_code=1, outcome="finished; 131 jobs failed permanently",
            options={"--keys-file": "keys.txt (k1, k2, k3)", "--rate-limit": "600/1m", "--concurrency": "32",
                     "--base-url": "https://api.privatemind.com/v1", "--until": "07:00"},
        ),
        batch="nightly-2026-03-14",
        bucket_seconds=BUCKET,
        attempts=succeeded + errors,
        succeeded=succeeded,
        errors=errors,
        buckets=tuple(buckets),
        keys=tuple(keys),
        latency=tuple(latency),
        p50=0.74, p90=1.62, p99=4.9,
        events=events,
        models=models,
        hours=tuple(hours),
        fallbacks=(Fallback("big<beta>", "fast-chat-1", "no_capacity", 37),),
        prechecks={"context_length_exceeded": 4, "invalid_model": 1},
        failures=(
            FailureCode("rate_limited", 429, sum(b.rate_limited for b in buckets),
                        "Rate limit reached for requests. Please try again in 1.2s."),
            FailureCode("server_error", 500, 120, "The server had an error while processing your request."),
            FailureCode("invalid_request", 400, 131, 'Invalid value for "messages": expected <array>, got "x" & y'),
            FailureCode("timeout", None, 9, "no answer within 60s"),
        ),
    )
