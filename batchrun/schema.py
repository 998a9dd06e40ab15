"""The queue's tables. Only `store.py` and the Alembic migrations use them.

Times are seconds since the epoch (UTC) in floating point: portable between SQLite and PostgreSQL,
cheap to compare in the claim query, and free of time-zone surprises for leases.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: the newest migration in migrations/versions; a test keeps the two in step
SCHEMA_REVISION = "0002"

# SQLite only makes INTEGER PRIMARY KEY an alias of the rowid (and so auto-incrementing).
Id = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class BatchRow(Base):
    __tablename__ = "batches"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[float] = mapped_column(Float)


class SubmittedChunk(Base):
    """A run of lines of a job file that loaded cleanly (no bad line, no conflict): submitting the same
    bytes at the same place of the same batch again needs no parsing — every line is a duplicate."""

    __tablename__ = "submitted_chunks"

    batch_id: Mapped[int] = mapped_column(Id, ForeignKey("batches.id"), primary_key=True)
    first_line: Mapped[int] = mapped_column(Integer, primary_key=True)
    line_count: Mapped[int] = mapped_column(Integer, primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the raw lines
    jobs: Mapped[int] = mapped_column(Integer)  # job lines among them (blank lines are not jobs)


class JobRow(Base):
    """One request of a batch, from queued to a finished result or failure."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("batch_id", "custom_id"),
        # The claim query: next queued jobs in input order.
        Index("ix_jobs_claim", "state", "batch_id", "id"),
        # Leases of a runner: heartbeat extension and release.
        Index("ix_jobs_lease_owner", "lease_owner"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"))
    line: Mapped[int] = mapped_column(Integer)
    custom_id: Mapped[str] = mapped_column(String(512))
    body_hash: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(String(200))
    prompt_chars: Mapped[int] = mapped_column(Integer, default=0)
    max_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)

    # queued | running | succeeded | failed | cancelled
    state: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    not_before: Mapped[float] = mapped_column(Float, default=0.0)
    lease_owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_expires: Mapped[float | None] = mapped_column(Float, nullable=True)

    # The last attempt: a result when succeeded, the last error otherwise.
    key_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    response: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    model_served: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # The model id actually sent, after alias and fallback resolution; why a fallback was used.
    model_sent: Mapped[str | None] = mapped_column(String(200), nullable=True)
    fallback_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # parameters removed because the model does not support them (--drop-unsupported), comma-separated
    dropped_parameters: Mapped[str | None] = mapped_column(String(500), nullable=True)
    finish_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    completion_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    total_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # USD of this job's usage at the catalogue's prices; None = unknown (no price or no usage).
    cost: Mapped[float | None] = mapped_column(Float, nullable=True)


class KeyRow(Base):
    """What batchrun knows about an API key, by its public id; never the secret."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    # active | cooling | revoked | expired | invalid | budget
    state: Mapped[str] = mapped_column(String(16), default="active")
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    since: Mapped[float] = mapped_column(Float)

    # The last run that used the key: its counts, when it ran, and its rate as configured and as
    # adapted to the provider's 429s (display strings such as "20/1s").
    requests: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    rate_limited: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    errors: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_run_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    rate_configured: Mapped[str | None] = mapped_column(String(64), nullable=True)
    rate_adapted: Mapped[str | None] = mapped_column(String(64), nullable=True)

    # A key is leased to one runner at a time (renewed by its heartbeat), so that its rate limit holds
    # however many runners share the database.
    lease_owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_expires: Mapped[float | None] = mapped_column(Float, nullable=True)


class ModelRow(Base):
    """One entry of the provider's model catalogue as last fetched; None columns are unknown."""

    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    alias_for: Mapped[str | None] = mapped_column(String(200), nullable=True)
    context_length: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # A JSON list of strings.
    supported_parameters: Mapped[str | None] = mapped_column(Text, nullable=True)
    response_format: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    prompt_price: Mapped[float | None] = mapped_column(Float, nullable=True)  # USD per token
    completion_price: Mapped[float | None] = mapped_column(Float, nullable=True)  # USD per token
    fetched_at: Mapped[float] = mapped_column(Float)


class RunnerRow(Base):
    """One `batchrun run` process: who it is, whether it is alive, how it ended."""

    __tablename__ = "runners"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(String(200), unique=True)
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[float] = mapped_column(Float)
    heartbeat_at: Mapped[float] = mapped_column(Float)
    ended_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    outcome: Mapped[str | None] = mapped_column(Text, nullable=True)


jobs = cast(Table, JobRow.__table__)
batches = cast(Table, BatchRow.__table__)
submitted_chunks = cast(Table, SubmittedChunk.__table__)
api_keys = cast(Table, KeyRow.__table__)
runners = cast(Table, RunnerRow.__table__)
models = cast(Table, ModelRow.__table__)
metadata = Base.metadata
