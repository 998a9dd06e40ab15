"""The values the store returns and takes: frozen dataclasses, free of SQL.

`store.Store` builds them from rows and writes them back; the runner, the loader, the exporter and the
CLI use them without importing SQLAlchemy. `store` re-exports every name here, so
`from batchrun.store import ClaimedJob` keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol


class NewJob(Protocol):
    """A validated job line ready to be queued (`jobfile.JobSpec` is one)."""

    @property
    def line(self) -> int: ...
    @property
    def custom_id(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def body_json(self) -> str: ...
    @property
    def body_hash(self) -> str: ...
    @property
    def input_tokens(self) -> int: ...
    @property
    def max_tokens(self) -> int | None: ...
    @property
    def endpoint(self) -> str: ...


@dataclass(frozen=True, slots=True)
class AddResult:
    loaded: int
    duplicates: int
    conflicts: tuple[NewJob, ...]


class ClaimedJob(NamedTuple):
    """A job leased to a runner, as the claim's row comes from the driver (a tuple: the claim builds
    thousands a second, and a frozen dataclass took ≈ 1.2 µs each to build, a tuple ≈ 0.2)."""

    id: int
    batch_id: int
    custom_id: str
    body: str
    model: str
    input_tokens: int  # the estimate of its input tokens (batchrun.tokens)
    max_tokens: int | None  # its output cap, whatever its endpoint calls it
    attempts: int
    #: when the job's first transient failure came (epoch seconds); None while it has had none
    transient_since: float | None = None
    endpoint: str = "/v1/chat/completions"  # the endpoint's URL (batchrun.endpoints)


class Succeeded(NamedTuple):
    """A result to write. A tuple, as `ClaimedJob` is: one is made per answer, thousands a second (a
    frozen dataclass of these fields took ≈ 1.9 µs to build, this ≈ 0.4)."""

    job_id: int
    attempts: int
    key_id: str
    status_code: int
    request_id: str | None
    response: str
    model_served: str | None
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    cost: float | None = None  # USD; None = unknown (no price or no usage)
    model_sent: str | None = None  # the model id sent, after alias/fallback resolution
    fallback_reason: str | None = None  # why a fallback model was sent; None if none was
    dropped_parameters: str | None = None  # removed as unsupported (--drop-unsupported), comma-separated


@dataclass(frozen=True, slots=True)
class Failed:
    job_id: int
    attempts: int
    key_id: str | None
    status_code: int | None
    response: str | None
    error_code: str
    error_message: str
    model_sent: str | None = None
    fallback_reason: str | None = None
    dropped_parameters: str | None = None


@dataclass(frozen=True, slots=True)
class Retry:
    """Back to the queue, not before `not_before`; the last error is kept for the record."""

    job_id: int
    attempts: int
    not_before: float
    key_id: str | None
    status_code: int | None
    response: str | None
    error_code: str
    error_message: str
    #: when the job's transient failures began (kept across attempts); None: not a transient failure
    transient_since: float | None = None


Outcome = Succeeded | Failed | Retry


@dataclass(frozen=True, slots=True)
class EndpointCounts:
    """One endpoint's share of a batch."""

    endpoint: str  # its URL, e.g. /v1/embeddings
    total: int
    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost: float  # USD of its jobs whose cost is known


@dataclass(frozen=True, slots=True)
class BatchCounts:
    name: str
    total: int
    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    attempts: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    failed_by_code: dict[str, int]
    unverified: int = 0  # succeeded without a provider request id
    truncated: int = 0  # succeeded with finish_reason "length"
    fallbacks: int = 0  # succeeded on a fallback model
    cost: float = 0.0  # USD of the jobs whose cost is known
    priced: int = 0  # succeeded jobs whose cost is known
    endpoints: tuple[EndpointCounts, ...] = ()  # by endpoint URL, sorted

    @property
    def retries(self) -> int:
        """Attempts beyond the first of every finished-or-tried job."""
        return max(0, self.attempts - (self.succeeded + self.failed))


@dataclass(frozen=True, slots=True)
class Pending:
    """What is left to do in the scope of a run, as far as the database knows."""

    queued_now: int
    queued_later: int
    next_not_before: float | None
    running: int
    next_lease_expiry: float | None

    @property
    def empty(self) -> bool:
        return not (self.queued_now or self.queued_later or self.running)


@dataclass(frozen=True, slots=True)
class ExportRow:
    job_id: int
    custom_id: str
    state: str
    model: str
    model_served: str | None
    attempts: int
    key_id: str | None
    status_code: int | None
    request_id: str | None
    response: str | None
    error_code: str | None
    error_message: str | None
    finish_reason: str | None
    model_sent: str | None = None
    fallback_reason: str | None = None
    cost: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    dropped_parameters: str | None = None
    endpoint: str = "/v1/chat/completions"


@dataclass(frozen=True, slots=True)
class UsageRow:
    """Usage of succeeded jobs under one key or one model."""

    name: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost: float  # USD of the `priced` jobs
    priced: int  # jobs whose cost is known


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A key's sticky state and the counts of the last run that used it."""

    id: str
    state: str
    reason: str | None
    since: float
    requests: int = 0
    rate_limited: int = 0
    errors: int = 0
    last_run_at: float | None = None
    rate_configured: str | None = None
    rate_adapted: str | None = None


@dataclass(frozen=True, slots=True)
class RunnerRecord:
    owner: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    ended_at: float | None
    exit_code: int | None
    outcome: str | None
    requests: int | None = None  # requests sent so far (its heartbeat writes it); None: not known
    latency_p50: float | None = None  # seconds
    latency_p99: float | None = None
    id: int | None = None

    @property
    def throughput(self) -> float | None:
        """Requests a second over its life so far."""
        elapsed = (self.ended_at or self.heartbeat_at) - self.started_at
        return self.requests / elapsed if self.requests is not None and elapsed > 0 else None


@dataclass(frozen=True, slots=True)
class RunnerActivity:
    """A runner that has not ended: what it holds right now."""

    runner: RunnerRecord
    jobs_in_flight: int
    keys_held: tuple[str, ...]



@dataclass(frozen=True, slots=True)
class ProviderBatch:
    """A batch at the provider's Batch API, as the store keeps it (`schema.provider_batches`)."""

    id: int
    batch_id: int
    endpoint: str
    model: str
    key_id: str
    state: str  # assigned | uploaded | created | collected
    requests: int
    input_file_id: str | None
    provider_batch_id: str | None
    provider_status: str | None
    completed: int
    failed: int
    output_file_id: str | None
    error_file_id: str | None
    created_at: float
    updated_at: float
    message: str | None
    cancel_requested: bool = False

    @property
    def owner(self) -> str:
        """The lease owner of its jobs while they are at the provider."""
        return provider_batch_owner(self.id)


def provider_batch_owner(provider_batch_id: int) -> str:
    return f"provider-batch:{provider_batch_id}"
