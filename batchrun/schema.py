"""The queue's tables. Only `store.py` and the Alembic migrations use them.

Plain SQLAlchemy Core tables (the ORM is never used, and importing it costs every command a tenth of
a second). Times are seconds since the epoch (UTC) in floating point: portable between SQLite and
PostgreSQL, cheap to compare in the claim query, and free of time-zone surprises for leases.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from batchrun.revision import SCHEMA_REVISION  # noqa: F401  (re-exported: the revision of these tables)

#: the endpoint of a job from before endpoints were stored (migration 0005)
CHAT_URL = "/v1/chat/completions"

# SQLite only makes INTEGER PRIMARY KEY an alias of the rowid (and so auto-incrementing).
Id = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)

batches = Table(
    "batches", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
)

#: A run of lines of a job file that loaded cleanly (no bad line, no conflict): submitting the same
#: bytes at the same place of the same batch again needs no parsing — every line is a duplicate.
submitted_chunks = Table(
    "submitted_chunks", metadata,
    Column("batch_id", Id, ForeignKey("batches.id"), primary_key=True),
    Column("first_line", Integer, primary_key=True),
    Column("line_count", Integer, primary_key=True),
    Column("digest", String(64), primary_key=True),  # sha256 of the raw lines
    Column("jobs", Integer, nullable=False),  # job lines among them (blank lines are not jobs)
)

#: One request of a batch, from queued to a finished result or failure.
jobs = Table(
    "jobs", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("batch_id", ForeignKey("batches.id"), nullable=False),
    Column("line", Integer, nullable=False),
    Column("custom_id", String(512), nullable=False),
    Column("body_hash", String(64), nullable=False),
    Column("body", Text, nullable=False),
    Column("model", String(200), nullable=False),
    # The endpoint's URL (batchrun.endpoints), e.g. /v1/embeddings.
    Column("endpoint", String(64), nullable=False, default=CHAT_URL, server_default=CHAT_URL),
    # The estimate of the request's input tokens (batchrun.tokens) and its output cap (max_tokens,
    # max_completion_tokens or max_output_tokens, whatever its endpoint calls it; NULL: none).
    Column("input_tokens", Integer, nullable=False, default=0, server_default="0"),
    Column("max_tokens", Integer, nullable=True),
    # queued | running | succeeded | failed | cancelled
    Column("state", String(16), nullable=False, default="queued"),
    Column("attempts", Integer, nullable=False, default=0),
    Column("not_before", Float, nullable=False, default=0.0),
    Column("lease_owner", String(200), nullable=True),
    Column("lease_expires", Float, nullable=True),
    # The last attempt: a result when succeeded, the last error otherwise.
    Column("key_id", String(200), nullable=True),
    Column("status_code", Integer, nullable=True),
    Column("request_id", String(200), nullable=True),
    Column("response", Text, nullable=True),
    Column("error_code", String(64), nullable=True),
    Column("error_message", Text, nullable=True),
    Column("model_served", String(200), nullable=True),
    # The model id actually sent, after alias and fallback resolution; why a fallback was used.
    Column("model_sent", String(200), nullable=True),
    Column("fallback_reason", Text, nullable=True),
    # parameters removed because the model does not support them (--drop-unsupported), comma-separated
    Column("dropped_parameters", String(500), nullable=True),
    Column("finish_reason", String(32), nullable=True),
    Column("prompt_tokens", Integer, nullable=True),
    Column("completion_tokens", Integer, nullable=True),
    Column("total_tokens", Integer, nullable=True),
    Column("finished_at", Float, nullable=True),
    # USD of this job's usage at the catalogue's prices; None = unknown (no price or no usage).
    Column("cost", Float, nullable=True),
    # When the job's current run of transient failures began (None: its last attempt was not one).
    Column("transient_since", Float, nullable=True),
    # The provider batch (run --via batch-api) the job was last sent in; NULL: sent live or not yet.
    Column("provider_batch_id", Id, nullable=True),
    UniqueConstraint("batch_id", "custom_id"),
    # The claim query: next queued jobs in input order (and the count of queued jobs, index only).
    Index("ix_jobs_claim", "state", "batch_id", "id"),
    # Leases of a runner: heartbeat extension and release. Only leased jobs are in it (migration 0008): a
    # queued or finished job has no entry to keep up, so a claim adds one and a result takes it away.
    # On PostgreSQL it is just as partial (0008 makes it so), but only SQLite's WHERE is declared here:
    # naming `postgresql_where` makes SQLAlchemy import PostgreSQL's dialects with this module, ≈ 30 ms
    # of every command's start on SQLite (1.5 µs a job of a 20,000-job run, bench 1).
    Index("ix_jobs_lease_owner", "lease_owner", sqlite_where=text("lease_owner IS NOT NULL")),
)

#: The endpoints each batch's jobs go to (written by submit): `status` breaks a batch down by endpoint
#: only when it has several, so that a one-endpoint batch is never scanned.
batch_endpoints = Table(
    "batch_endpoints", metadata,
    Column("batch_id", Id, ForeignKey("batches.id"), primary_key=True),
    Column("endpoint", String(64), primary_key=True),
)

#: What `status` shows, kept up to date by triggers on `jobs` (migration 0003) so that it is read
#: without scanning the jobs: per batch and state — and per key and model served for succeeded
#: jobs, per error code for failed ones ('' where that does not apply or is NULL) — the sum of every
#: job's jobs/attempts/tokens/cost and, for succeeded jobs, its flags. Queued jobs count 0 in `jobs`
#: (the claim index counts them), so a fresh job adds nothing and submitting costs no trigger work.
job_tallies = Table(
    "job_tallies", metadata,
    Column("batch_id", Id, ForeignKey("batches.id"), nullable=False),
    Column("state", String(16), nullable=False),
    Column("key_id", String(200), nullable=False),
    Column("model", String(200), nullable=False),
    Column("error_code", String(64), nullable=False),
    *(Column(name, BigInteger, nullable=False)
      for name in ("jobs", "attempts", "prompt_tokens", "completion_tokens", "total_tokens")),
    Column("cost", Float, nullable=False),
    # Succeeded jobs only: with a known cost, without a request id, with finish_reason "length", served
    # by a fallback model.
    *(Column(name, BigInteger, nullable=False) for name in ("priced", "unverified", "truncated", "fallbacks")),
    PrimaryKeyConstraint("batch_id", "state", "key_id", "model", "error_code"),
)

#: A batch at the provider's Batch API (`run --via batch-api`): which jobs (those whose lease_owner is
#: "provider-batch:<id>"), which key made it, and every id the provider gave, each stored before the next
#: step, so that a run killed at any moment is taken up by the next one without creating it twice.
provider_batches = Table(
    "provider_batches", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("batch_id", Id, ForeignKey("batches.id"), nullable=False),
    Column("endpoint", String(64), nullable=False),
    Column("model", String(200), nullable=False),
    Column("key_id", String(200), nullable=False),  # the key that creates, polls and downloads it
    # assigned (jobs chosen) | uploaded (input file at the provider) | created (batch at the provider)
    # | collected (results written; nothing left at the provider)
    Column("state", String(16), nullable=False),
    Column("requests", Integer, nullable=False),
    Column("input_file_id", String(200), nullable=True),
    Column("provider_batch_id", String(200), nullable=True),
    Column("provider_status", String(32), nullable=True),  # validating, in_progress, ... as last polled
    Column("completed", Integer, nullable=False, default=0, server_default="0"),
    Column("failed", Integer, nullable=False, default=0, server_default="0"),
    Column("output_file_id", String(200), nullable=True),
    Column("error_file_id", String(200), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("message", Text, nullable=True),  # the provider's errors, or why it was given up
    # `batchrun cancel` asked the provider to cancel it: what it did not answer is cancelled, not requeued
    Column("cancel_requested", Boolean, nullable=False, default=False, server_default="0"),
)

#: Named locks with an owner and an expiry ("batch-api": one `run --via batch-api` at a time per
#: database, so that two cron runs never advance the same provider batch).
locks = Table(
    "locks", metadata,
    Column("name", String(64), primary_key=True),
    Column("owner", String(200), nullable=False),  # host:pid
    Column("expires", Float, nullable=False),
)

#: What batchrun knows about an API key, by its public id; never the secret.
api_keys = Table(
    "api_keys", metadata,
    Column("id", String(200), primary_key=True),
    # active | cooling | revoked | expired | invalid | budget
    Column("state", String(16), nullable=False, default="active"),
    Column("reason", Text, nullable=True),
    Column("since", Float, nullable=False),
    # The last run that used the key: its counts, when it ran, and its rate as configured and as
    # adapted to the provider's 429s (display strings such as "20/1s").
    Column("requests", Integer, nullable=False, default=0, server_default="0"),
    Column("rate_limited", Integer, nullable=False, default=0, server_default="0"),
    Column("errors", Integer, nullable=False, default=0, server_default="0"),
    Column("last_run_at", Float, nullable=True),
    Column("rate_configured", String(64), nullable=True),
    Column("rate_adapted", String(64), nullable=True),
    # A key is leased to one runner at a time (renewed by its heartbeat), so that its rate limit holds
    # however many runners share the database.
    Column("lease_owner", String(200), nullable=True),
    Column("lease_expires", Float, nullable=True),
    # How long one request of the key counts against its limit (its longest window), stored by the
    # runner that leases it; and, once the lease is given up (or its runner found dead), when another
    # runner may take the key: after the last request sent with it has left the provider's window.
    # NULL free_at: the key is leased (or never was).
    Column("window_seconds", Float, nullable=True),
    Column("free_at", Float, nullable=True),
)

#: One entry of the provider's model catalogue as last fetched; None columns are unknown.
models = Table(
    "models", metadata,
    Column("id", String(200), primary_key=True),
    Column("alias_for", String(200), nullable=True),
    Column("context_length", Integer, nullable=True),
    Column("supported_parameters", Text, nullable=True),  # a JSON list of strings
    Column("response_format", Boolean, nullable=True),
    Column("prompt_price", Float, nullable=True),  # USD per token
    Column("completion_price", Float, nullable=True),  # USD per token
    Column("fetched_at", Float, nullable=False),
)

#: One `batchrun run` process: who it is, whether it is alive, how it ended.
runners = Table(
    "runners", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("owner", String(200), nullable=False, unique=True),
    Column("host", String(200), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    Column("ended_at", Float, nullable=True),
    Column("exit_code", Integer, nullable=True),
    Column("outcome", Text, nullable=True),
    # The options it was started with, as a JSON object of flag -> shown value (keys by id, never a secret).
    Column("options", Text, nullable=True),
    # Its figures so far (written by its heartbeat and at its end, for `status`): requests sent, and the
    # median and 99th percentile of their latency in seconds.
    Column("requests", Integer, nullable=True),
    Column("latency_p50", Float, nullable=True),
    Column("latency_p99", Float, nullable=True),
)

#: Every attempt a run made, written as it ends (in the runner's group commits): what `batchrun report`
#: and the last run's figures in `status` are made of. `sent` false: a job refused before sending
#: (a precheck), with no key and no latency. `latency_bin` is `reportdata.latency_bin` of its latency, so
#: percentiles aggregate in SQL. Pruned by runner (`batchrun prune --older-than`).
attempts = Table(
    "attempts", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("runner_id", Id, nullable=False),
    Column("batch_id", Id, nullable=False),
    Column("job_id", Id, nullable=False),
    Column("sent_at", Float, nullable=False),
    Column("answered_at", Float, nullable=False),
    Column("latency_bin", Integer, nullable=True),
    Column("sent", Boolean, nullable=False),
    Column("key_id", String(200), nullable=True),
    Column("endpoint", String(64), nullable=False),
    Column("model", String(200), nullable=False),
    Column("model_sent", String(200), nullable=True),
    Column("model_served", String(200), nullable=True),
    Column("status_code", Integer, nullable=True),
    Column("outcome", String(64), nullable=False),  # "ok" or the error code
    Column("prompt_tokens", Integer, nullable=True),
    Column("completion_tokens", Integer, nullable=True),
    Column("cost", Float, nullable=True),
    Column("fallback_reason", Text, nullable=True),
    Column("message", Text, nullable=True),  # the error, cut short
    Index("ix_attempts_runner_id_answered_at", "runner_id", "answered_at"),
)

#: What changed during a run, for the report's timelines: a key's state or rate, cooling, the breaker,
#: the catalogue, the stop.
run_events = Table(
    "run_events", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("runner_id", Id, nullable=False),
    Column("at", Float, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("key_id", String(200), nullable=True),
    Column("message", Text, nullable=False),
    Index("ix_run_events_runner_id_at", "runner_id", "at"),
)
