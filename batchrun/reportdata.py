"""What a run report shows, as plain values: aggregated in SQL by `store` (`Store.report_data`), drawn by
`report_html`. Nothing here imports SQLAlchemy or knows HTML.

Time series are in buckets of `ReportData.bucket_seconds` (chosen so that a run has at most about 120 of
them: one second for a short run, one minute or more for a night), each bucket named by its start (epoch
seconds, UTC). Latency percentiles come from a histogram of logarithmic bins (`latency_bin`), so a million
attempts aggregate in the database, not in Python or in the browser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

#: latency histogram resolution: bins per factor of e (≈ 5 % wide each)
LATENCY_BINS_PER_E = 20
#: bucket widths a report may use, in seconds: the smallest that keeps a run to `MAX_BUCKETS`
BUCKET_WIDTHS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)
MAX_BUCKETS = 120


def latency_bin(seconds: float) -> int:
    """The histogram bin of a latency: bins are ≈ 5 % wide from 1 ms down and up (bin 0 is 1 s)."""
    return round(math.log(max(seconds, 1e-4)) * LATENCY_BINS_PER_E)


def bin_latency(bin_: int) -> float:
    """The latency (seconds) a bin stands for: the inverse of `latency_bin`."""
    return math.exp(bin_ / LATENCY_BINS_PER_E)


def bucket_width(duration: float) -> int:
    """The report's bucket width for a run of `duration` seconds."""
    for width in BUCKET_WIDTHS:
        if duration / width <= MAX_BUCKETS:
            return width
    return BUCKET_WIDTHS[-1]


def percentile(histogram: dict[int, int], fraction: float) -> float | None:
    """The `fraction` quantile (0.5, 0.9, 0.99) of a latency histogram {bin: count}; None if empty."""
    total = sum(histogram.values())
    if not total:
        return None
    rank = fraction * total
    seen = 0
    for bin_ in sorted(histogram):
        seen += histogram[bin_]
        if seen >= rank:
            return bin_latency(bin_)
    return bin_latency(max(histogram))


@dataclass(frozen=True, slots=True)
class RunInfo:
    """The run the report is about (`runners` row and the options it was started with)."""

    id: int
    owner: str  # host:pid:nonce
    started_at: float
    ended_at: float | None  # None: still running (or died without ending)
    exit_code: int | None
    outcome: str | None  # the closing reason, e.g. "all jobs succeeded"
    #: the options as given (flag name -> value shown), never a secret: keys by id only
    options: dict[str, str] = field(default_factory=dict)

    @property
    def duration(self) -> float | None:
        return None if self.ended_at is None else self.ended_at - self.started_at


@dataclass(frozen=True, slots=True)
class Bucket:
    """One time bucket of the whole run: attempts that ended in it."""

    start: float
    succeeded: int  # attempts that got a good answer
    errors: int  # attempts that ended in an error (429s included)
    rate_limited: int  # of which 429s


@dataclass(frozen=True, slots=True)
class KeyBucket:
    """One key's attempts in one bucket."""

    key_id: str
    start: float
    requests: int
    rate_limited: int


@dataclass(frozen=True, slots=True)
class LatencyBucket:
    """Latency percentiles (seconds) of the attempts answered in one bucket."""

    start: float
    count: int
    p50: float
    p90: float
    p99: float


@dataclass(frozen=True, slots=True)
class RunEvent:
    """Something that changed during the run: a key's state or rate, the breaker, a stop."""

    at: float
    kind: str  # key_state | key_rate | key_cooling | breaker | catalog | stop
    key_id: str | None  # the key it is about, if any
    message: str


@dataclass(frozen=True, slots=True)
class ModelUsage:
    """Tokens and cost of the succeeded attempts served by one model (cost None: unknown price)."""

    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: float | None


@dataclass(frozen=True, slots=True)
class HourUsage:
    """Tokens and cost in one hour (start, epoch seconds) of the run, for one model."""

    hour: float
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost: float | None


@dataclass(frozen=True, slots=True)
class Fallback:
    """Attempts sent to another model than the job asked for."""

    requested: str
    sent: str
    reason: str
    attempts: int


@dataclass(frozen=True, slots=True)
class FailureCode:
    """One error code's attempts, with one example message (already free of secrets)."""

    code: str
    status: int | None  # the HTTP status of the example, None for a network error or a precheck
    count: int
    example: str


@dataclass(frozen=True, slots=True)
class ReportData:
    run: RunInfo
    batch: str | None  # the batch the report is limited to (--batch), None: the whole run
    bucket_seconds: int
    attempts: int
    succeeded: int
    errors: int
    buckets: tuple[Bucket, ...]
    keys: tuple[KeyBucket, ...]
    latency: tuple[LatencyBucket, ...]
    #: the whole run's percentiles (None when nothing was answered)
    p50: float | None
    p90: float | None
    p99: float | None
    events: tuple[RunEvent, ...]
    models: tuple[ModelUsage, ...]
    hours: tuple[HourUsage, ...]
    fallbacks: tuple[Fallback, ...]
    #: jobs failed before sending (code -> count), e.g. context_length_exceeded
    prechecks: dict[str, int]
    failures: tuple[FailureCode, ...]  # most frequent first, at most 10

    @property
    def key_ids(self) -> list[str]:
        return sorted({bucket.key_id for bucket in self.keys})
