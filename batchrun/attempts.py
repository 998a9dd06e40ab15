"""Every attempt of a run, as it ends: kept for the store (written in the runner's group commits, for
`batchrun report` and `status`) and counted for the metrics file.

The runner hands each ended attempt to `AttemptLog.add` and each event (a key's state or rate changing,
the breaker, a stop) to `AttemptLog.event`; the writer takes what gathered with `take` and commits it with
the outcomes. Counting here costs a few dict updates an attempt, so the metrics file never queries the
attempts table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import NamedTuple

from batchrun.reportdata import latency_bin, percentile

#: an error message kept with an attempt is cut to this many characters (the job keeps the whole one)
MESSAGE_CHARS = 300


class AttemptRecord(NamedTuple):
    """One request that ended (or a job refused before sending: `sent` False, no key, no latency).

    A tuple in the order of the `attempts` table's columns (after `runner_id`), so that the writer hands
    the records to the driver as they are: at thousands of answers a second, every microsecond an
    attempt costs comes off the dispatch loop (a frozen dataclass of these fields took ≈ 3 µs to make).
    Build one with `sent_attempt` or `refused_attempt`.
    """

    batch_id: int
    job_id: int
    sent_at: float  # epoch seconds
    answered_at: float  # epoch seconds: when its answer (or error) came
    latency_bin: int | None  # `reportdata.latency_bin` of its latency; None: not sent
    sent: bool
    key_id: str | None
    endpoint: str
    model: str  # the model the job asked for
    model_sent: str | None  # after alias and fallback resolution
    model_served: str | None  # what the answer said
    status_code: int | None  # HTTP status; None for a network error or a refusal
    outcome: str  # "ok", or the error code (rate_limited, server_error, timeout, context_length_exceeded, ...)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost: float | None = None
    fallback_reason: str | None = None
    message: str | None = None  # the error, cut to MESSAGE_CHARS

    @property
    def latency(self) -> float | None:
        return self.answered_at - self.sent_at if self.sent else None

    @property
    def status_label(self) -> str:
        """The metrics' `status` label: the HTTP status, or the error code when there was no answer."""
        return str(self.status_code) if self.status_code is not None else self.outcome


#: the `attempts` columns an `AttemptRecord` fills, in its order
ATTEMPT_COLUMNS = AttemptRecord._fields


def sent_attempt(batch_id: int, job_id: int, latency: float, key_id: str, endpoint: str, model: str,
                 model_sent: str | None, model_served: str | None, status_code: int | None, outcome: str,
                 prompt_tokens: int | None = None, completion_tokens: int | None = None, cost: float | None = None,
                 fallback_reason: str | None = None, message: str | None = None) -> AttemptRecord:
    """A request that ended just now, `latency` seconds after it was sent."""
    answered = time.time()
    return AttemptRecord(batch_id, job_id, answered - latency, answered, latency_bin(latency), True, key_id,
                         endpoint, model, model_sent, model_served, status_code, outcome, prompt_tokens,
                         completion_tokens, cost, fallback_reason, cut_message(message))


def refused_attempt(batch_id: int, job_id: int, endpoint: str, model: str, model_sent: str | None, code: str,
                    message: str) -> AttemptRecord:
    """A job failed just now without being sent."""
    now = time.time()
    return AttemptRecord(batch_id, job_id, now, now, None, False, None, endpoint, model, model_sent, None, None,
                         code, message=cut_message(message))


@dataclass(frozen=True, slots=True)
class EventRecord:
    at: float
    kind: str  # key_state | key_rate | key_cooling | breaker | catalog | stop
    key_id: str | None
    message: str


@dataclass
class AttemptCounters:
    """What the run's attempts add up to, for the metrics file."""

    #: (key id, status label) -> requests sent
    requests: dict[tuple[str, str], int] = field(default_factory=dict)
    #: (model served, "prompt" | "completion") -> tokens
    tokens: dict[tuple[str, str], int] = field(default_factory=dict)
    #: model served -> USD of the attempts whose cost is known
    cost: dict[str, float] = field(default_factory=dict)
    #: latency histogram of the requests sent: `reportdata.latency_bin` -> requests
    latency: dict[int, int] = field(default_factory=dict)
    sent: int = 0  # requests sent

    def add(self, attempt: AttemptRecord) -> None:
        # One unpacking instead of a property call per field read (an attempt per answer, thousands a second)
        (_, _, _, _, bin_, _, key_id, _, asked, model_sent, model_served, status_code, outcome, prompt_tokens,
         completion_tokens, cost, _, _) = attempt
        if bin_ is not None:
            self.sent += 1
            latency = self.latency
            latency[bin_] = latency.get(bin_, 0) + 1
            if key_id is not None:
                label = (key_id, str(status_code) if status_code is not None else outcome)
                self.requests[label] = self.requests.get(label, 0) + 1
        if outcome != "ok":
            return
        model = model_served or model_sent or asked
        tokens = self.tokens
        if prompt_tokens:
            tokens[(model, "prompt")] = tokens.get((model, "prompt"), 0) + prompt_tokens
        if completion_tokens:
            tokens[(model, "completion")] = tokens.get((model, "completion"), 0) + completion_tokens
        if cost is not None:
            self.cost[model] = self.cost.get(model, 0.0) + cost

    def latency_percentile(self, fraction: float) -> float | None:
        return percentile(self.latency, fraction)


class AttemptLog:
    """The attempts and events of one run not yet written, and the counts of all of them."""

    __slots__ = ("_attempts", "_events", "counters")

    def __init__(self) -> None:
        self._attempts: list[AttemptRecord] = []
        self._events: list[EventRecord] = []
        self.counters = AttemptCounters()

    def add(self, attempt: AttemptRecord) -> None:
        self._attempts.append(attempt)
        self.counters.add(attempt)

    def event(self, kind: str, message: str, key_id: str | None = None, at: float | None = None) -> None:
        self._events.append(EventRecord(time.time() if at is None else at, kind, key_id, message))

    def take(self) -> tuple[list[AttemptRecord], list[EventRecord]]:
        """What gathered since the last call, for the writer's next commit."""
        attempts, events = self._attempts, self._events
        self._attempts, self._events = [], []
        return attempts, events

    def __len__(self) -> int:
        return len(self._attempts) + len(self._events)


def cut_message(message: str | None) -> str | None:
    if message is None or len(message) <= MESSAGE_CHARS:
        return message
    return message[:MESSAGE_CHARS - 1] + "…"
