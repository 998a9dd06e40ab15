"""What a run is told and what it reports: its options, its live counters, its closing report.

Plain values, shared by `runner` (which fills them), `progress` (which shows them) and `cli` (which
builds the options and reads the report) without those depending on the run loop itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from batchrun.exitcodes import EXIT_MEANINGS
from batchrun.keys import KeyLane
from batchrun.prechecks import Fallbacks
from batchrun.provider import Completion
from batchrun.retry import RetryPolicy
from batchrun.tokens import DEFAULT_ASSUMED_COMPLETION


@dataclass(frozen=True)
class RunOptions:
    batch: str | None = None
    concurrency: int = 32
    lease: float = 60.0
    flush_size: int = 500
    commit_gather: float = 0.02  # seconds the first answer of a group commit waits for company
    policy: RetryPolicy = RetryPolicy()
    fallbacks: Fallbacks = Fallbacks()
    drop_unsupported: bool = False
    #: after a stop (signal, deadline, cap), requests in flight get this long to finish
    grace: float = 30.0
    #: epoch seconds by which the run must have ended (--max-duration / --until)
    deadline: float | None = None
    max_cost: float | None = None
    max_tokens: int | None = None
    #: completion tokens assumed for a job without an output cap (at an endpoint that answers at length)
    #: when reserving against a token limit or a spend cap
    assumed_completion: int = DEFAULT_ASSUMED_COMPLETION
    #: when other runners hold every key: wait for one (True) or stop with exit 3
    wait_for_keys: bool = True
    #: how long the start-up `GET /models` is retried (with the policy's backoff) through timeouts,
    #: resets and 5xx before the run gives up on the provider (a 404 gives up at once)
    probe_patience: float = 60.0
    #: the settings it was started with, as shown in its report (`Settings.shown`): never a secret
    described: tuple[tuple[str, str], ...] = ()
    #: runners started together with this one (`run --processes N`): its first lease takes only its
    #: share of the keys, before the others have registered
    started_with: int = 1


@dataclass
class RunStats:
    """Live counters of this run, read by the progress display and the closing summary."""

    total: int = 0
    done_before: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    rate_limited: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    unverified: int = 0
    truncated: int = 0
    cost: float = 0.0
    unpriced: int = 0
    breaker_trips: int = 0
    fallbacks: int = 0
    catalog_refreshes: int = 0
    failed_by_code: dict[str, int] = field(default_factory=dict)
    #: model served -> [requests, prompt tokens, completion tokens, cost or None when unknown]
    by_model: dict[str, list[Any]] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def add_usage(self, model: str, completion: Completion, cost: float | None) -> None:
        self.prompt_tokens += completion.prompt_tokens or 0
        self.completion_tokens += completion.completion_tokens or 0
        entry = self.by_model.setdefault(model, [0, 0, 0, 0.0])
        entry[0] += 1
        entry[1] += completion.prompt_tokens or 0
        entry[2] += completion.completion_tokens or 0
        if cost is None:
            self.unpriced += 1
            entry[3] = None
        else:
            self.cost += cost
            if entry[3] is not None:
                entry[3] += cost

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed


@dataclass(frozen=True)
class RunReport:
    exit_code: int
    reason: str
    stats: RunStats
    duration: float
    left: int
    lanes: tuple[KeyLane, ...] = ()

    @property
    def meaning(self) -> str:
        return EXIT_MEANINGS.get(self.exit_code, "")

