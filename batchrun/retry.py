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


#: 429s in a row on one key (nothing else answered between them) after which the key itself pauses:
#: random 429s at 5 % put 5 in a row once in 3 million answers; a key that really is over its limit
#: gets them at once.
KEY_STRIKES = 5


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """`max_attempts` transient failures (429, 503, resets, timeouts) fail a job only once they have
    also gone on for `patience` seconds: an outage of a few seconds must not use up a job's attempts
    in the 15 s its backoff takes, while a job that keeps failing still ends. Job errors (400, 422)
    fail at once."""

    max_attempts: int = 5
    backoff: Backoff = Backoff()
    patience: float = 600.0

    def gives_up(self, error: TransientError, attempt: int, failing_for: float) -> bool:
        """After transient failure number `attempt`, the first of them `failing_for` seconds ago."""
        if attempt < self.max_attempts:
            return False
        return failing_for >= self.patience or not error.outlasts_attempts

    def decide(self, error: ProviderError, attempt: int, rng: random.Random | None = None,
               key_strikes: int = 1, failing_for: float = 0.0) -> Decision:
        """`attempt` is the number of the attempt that just failed (1 for the first); `key_strikes`
        how many 429s in a row the key that sent it has had (this one included); `failing_for` how
        long ago the job's first transient failure was (0 for this one)."""
        if isinstance(error, RateLimited):
            # One 429 says little about the key: providers send them for their own load too. The job
            # waits the Retry-After (any key may take it then) and the key goes on; its rate learns a
            # real limit from the share of 429s (`adaptive.py`). Only a run of 429s with nothing else
            # between pauses the key itself, for the Retry-After (or a backoff of the run's length).
            delay = error.retry_after if error.retry_after is not None else self.backoff.delay(attempt, rng)
            cool = key_strikes >= KEY_STRIKES
            cooldown = (0.0 if not cool else error.retry_after if error.retry_after is not None
                        else self.backoff.delay(key_strikes - KEY_STRIKES + 1, rng))
            action = "cool" if cool else None
            if self.gives_up(error, attempt, failing_for):
                return Decision(FAIL, code=error.code, key_action=action, key_cooldown=cooldown)
            return Decision(RETRY, delay=delay, key_action=action, key_cooldown=cooldown)
        if isinstance(error, TransientError):
            if self.gives_up(error, attempt, failing_for):
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
