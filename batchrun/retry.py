"""What to do after a failed attempt: a pure policy, tested without I/O.

`decide` maps the class of a provider error (see `errors.py`) and the attempt number to a
`Decision`: what happens to the job, and to the key that sent it. The runner carries it out.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from batchrun.errors import (
    EndpointNotFound,
    JobInvalid,
    KeyModelForbidden,
    KeyUnusable,
    ModelNotFound,
    OrgBudgetExhausted,
    ProviderError,
    RateLimited,
    TransientError,
)

RETRY, FAIL, REQUEUE = "retry", "fail", "requeue"


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff as the provider docs give it: 1 s → 2 s → 4 s → 8 s … at most 30 s,
    with random jitter so that many clients do not retry in lockstep."""

    base: float = 1.0
    cap: float = 30.0
    jitter: float = 0.25

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        raw = min(self.cap, self.base * 2 ** min(max(0, attempt - 1), 60))
        spread = (rng or random).uniform(-self.jitter, self.jitter) * raw
        return max(0.0, min(self.cap, raw + spread))


@dataclass(frozen=True, slots=True)
class Decision:
    #: retry (spends an attempt, after `delay`) · fail (now, with `code`) · requeue (no attempt spent)
    job: str
    delay: float = 0.0
    code: str = ""
    #: what happens to the key: None · "cool" (for `key_cooldown` s) · "retire" (to `key_state`) · "forbid"
    key_action: str | None = None
    key_cooldown: float = 0.0
    key_state: str = ""
    #: the run cannot go on (exit code of the error)
    stop_run: bool = False
    #: the model is gone: refresh the catalogue and resolve the job again (fallback)
    refresh_catalog: bool = False


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5
    backoff: Backoff = Backoff()

    def decide(self, error: ProviderError, attempt: int, rng: random.Random | None = None,
               key_strikes: int = 1) -> Decision:
        """`attempt` is the number of the attempt that just failed (1 for the first); `key_strikes`
        how many 429s in a row the key that sent it has had (this one included)."""
        if isinstance(error, RateLimited):
            # The key was too fast, not the job: the key cools down (longer with each 429 in a row when
            # the provider gives no Retry-After); the job may go to another key at once, but each 429
            # spends an attempt so a job cannot bounce forever.
            cooldown = (error.retry_after if error.retry_after is not None
                        else self.backoff.delay(key_strikes, rng))
            if attempt >= self.max_attempts:
                return Decision(FAIL, code=error.code, key_action="cool", key_cooldown=cooldown)
            return Decision(RETRY, delay=0.0, key_action="cool", key_cooldown=cooldown)
        if isinstance(error, TransientError):
            if attempt >= self.max_attempts:
                return Decision(FAIL, code=error.code)
            delay = error.retry_after if error.retry_after is not None else self.backoff.delay(attempt, rng)
            return Decision(RETRY, delay=delay)
        if isinstance(error, KeyUnusable):
            return Decision(REQUEUE, key_action="retire", key_state=error.key_state)
        if isinstance(error, OrgBudgetExhausted):
            return Decision(REQUEUE, stop_run=True)
        if isinstance(error, EndpointNotFound):
            return Decision(REQUEUE, stop_run=True)
        if isinstance(error, KeyModelForbidden):
            return Decision(REQUEUE, key_action="forbid")
        if isinstance(error, ModelNotFound):
            # The catalogue changed under the run: the job is resolved again (fallback or a clear failure).
            return Decision(REQUEUE, refresh_catalog=True)
        if isinstance(error, JobInvalid):
            return Decision(FAIL, code=error.code)
        return Decision(FAIL, code=error.code)
