"""The retry policy as a pure function: error class + attempt number -> Decision. No I/O, no clock.

Randomness comes from a seeded `random.Random`, so every delay is reproducible.
"""

from __future__ import annotations

import random

import pytest

from batchrun.errors import (
    BadRequest,
    EndpointNotFound,
    KeyBudgetExhausted,
    KeyModelForbidden,
    KeyRejected,
    ModelNotFound,
    OrgBudgetExhausted,
    ProviderError,
    RateLimited,
    TransientError,
    Unverified,
    ValidationFailed,
)
from batchrun.retry import FAIL, KEY_STRIKES, REQUEUE, RETRY, Backoff, Decision, RetryPolicy

# The provider docs: 1 s -> 2 s -> 4 s -> 8 s -> ... at most 30 s, with random jitter.
EXPECTED_RAW = [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def bounds(raw: float, backoff: Backoff) -> tuple[float, float]:
    return raw * (1 - backoff.jitter), min(backoff.cap, raw * (1 + backoff.jitter))


# --- Backoff -----------------------------------------------------------------------------------------


def test_backoff_without_jitter_doubles_from_one_second_up_to_the_cap() -> None:
    backoff = Backoff(jitter=0.0)
    assert [backoff.delay(attempt) for attempt in range(1, 9)] == EXPECTED_RAW


@pytest.mark.parametrize("seed", [0, 1, 42, 2024])
def test_backoff_with_jitter_stays_within_the_bounds_of_each_step(seed: int) -> None:
    backoff = Backoff()
    rng = random.Random(seed)
    for _ in range(200):
        for attempt, raw in enumerate(EXPECTED_RAW, start=1):
            delay = backoff.delay(attempt, rng)
            low, high = bounds(raw, backoff)
            assert low <= delay <= high, (attempt, delay)
            assert delay <= backoff.cap


def test_backoff_jitter_actually_spreads_the_delays() -> None:
    """Many clients must not retry in lockstep: the same attempt gets different delays."""
    rng = random.Random(7)
    delays = {round(Backoff().delay(3, rng), 6) for _ in range(50)}
    assert len(delays) > 40
    assert min(delays) < 3.7 and max(delays) > 4.3  # both sides of the raw 4 s are used


def test_backoff_is_reproducible_with_the_same_seed() -> None:
    first = [Backoff().delay(attempt, random.Random(99)) for attempt in range(1, 7)]
    second = [Backoff().delay(attempt, random.Random(99)) for attempt in range(1, 7)]
    assert first == second


@pytest.mark.parametrize("attempt", [6, 7, 10, 30, 64])
def test_backoff_never_exceeds_the_cap_even_with_wide_jitter(attempt: int) -> None:
    backoff = Backoff(base=1.0, cap=30.0, jitter=0.9)
    rng = random.Random(attempt)
    delays = [backoff.delay(attempt, rng) for _ in range(500)]
    assert max(delays) <= 30.0
    assert min(delays) >= 30.0 * 0.1


def test_backoff_honours_a_custom_base_and_cap() -> None:
    backoff = Backoff(base=0.02, cap=0.1, jitter=0.0)
    assert [backoff.delay(attempt) for attempt in range(1, 6)] == pytest.approx([0.02, 0.04, 0.08, 0.1, 0.1])


def test_backoff_for_a_very_late_attempt_is_still_the_cap() -> None:
    # --max-attempts has no upper bound, so a user asking for "practically forever" reaches this.
    assert Backoff(jitter=0.0).delay(1100) == 30.0


# --- RetryPolicy: rate limits ------------------------------------------------------------------------


def test_a_lone_429_leaves_the_key_alone_and_the_job_waits_its_retry_after() -> None:
    """Random 429s (an overloaded provider) must not pause the key: the job waits the Retry-After,
    then any key may take it."""
    decision = RetryPolicy().decide(RateLimited(retry_after=7.0), attempt=1, rng=random.Random(1))
    assert decision == Decision(RETRY, delay=7.0)


def test_a_429_without_retry_after_retries_after_the_backoff_of_the_jobs_attempt() -> None:
    decision = RetryPolicy().decide(RateLimited(), attempt=2, rng=random.Random(5))
    assert decision == Decision(RETRY, delay=Backoff().delay(2, random.Random(5)))


def test_rate_limited_with_retry_after_zero_uses_zero_not_the_backoff() -> None:
    decision = RetryPolicy().decide(RateLimited(retry_after=0.0), attempt=3, rng=random.Random(1))
    assert decision.job == RETRY
    assert decision.delay == 0.0


@pytest.mark.parametrize("strikes", [1, 4])
def test_fewer_than_five_429s_in_a_row_do_not_cool_the_key(strikes: int) -> None:
    assert KEY_STRIKES == 5
    decision = RetryPolicy().decide(RateLimited(retry_after=1.0), attempt=1, key_strikes=strikes)
    assert decision.key_action is None


def test_five_429s_in_a_row_cool_the_key_for_the_retry_after() -> None:
    decision = RetryPolicy().decide(RateLimited(retry_after=30.0), attempt=1, key_strikes=5)
    assert (decision.job, decision.delay, decision.key_action, decision.key_cooldown) == (RETRY, 30.0, "cool", 30.0)


@pytest.mark.parametrize("strikes", [5, 6, 7, 8])
def test_429s_in_a_row_without_retry_after_cool_the_key_by_a_backoff_of_the_run(strikes: int) -> None:
    policy = RetryPolicy()
    decision = policy.decide(RateLimited(), attempt=1, rng=random.Random(5), key_strikes=strikes)
    assert decision.key_action == "cool"
    low, high = bounds(EXPECTED_RAW[strikes - KEY_STRIKES], policy.backoff)
    assert low <= decision.key_cooldown <= high


def test_rate_limited_fails_the_job_at_max_attempts_once_the_patience_is_spent() -> None:
    policy = RetryPolicy(max_attempts=5, patience=600.0)
    assert policy.decide(RateLimited(retry_after=2.0), attempt=5, failing_for=599.0).job == RETRY
    decision = policy.decide(RateLimited(retry_after=2.0), attempt=5, failing_for=600.0)
    assert (decision.job, decision.code) == (FAIL, "rate_limited")


def test_rate_limited_one_attempt_before_the_limit_still_retries() -> None:
    policy = RetryPolicy(max_attempts=3, patience=0.0)
    assert policy.decide(RateLimited(retry_after=1.0), attempt=2).job == RETRY
    assert policy.decide(RateLimited(retry_after=1.0), attempt=3).job == FAIL


@pytest.mark.parametrize("error", [TransientError(status=503), RateLimited()])
def test_an_outage_shorter_than_the_patience_does_not_fail_the_job_however_many_attempts(
        error: ProviderError) -> None:
    policy = RetryPolicy(max_attempts=5, patience=600.0)
    for attempt in range(1, 60):
        failing_for = attempt * 15.0 - 1
        expected = FAIL if failing_for >= 600 else RETRY
        assert policy.decide(error, attempt, failing_for=failing_for).job == expected


def test_patience_does_not_delay_a_job_error() -> None:
    decision = RetryPolicy(patience=600.0).decide(BadRequest(status=400), attempt=1)
    assert decision.job == FAIL


# --- RetryPolicy: transient failures -----------------------------------------------------------------


def test_transient_error_with_retry_after_waits_exactly_that_long() -> None:
    decision = RetryPolicy().decide(TransientError(status=503, retry_after=12.0), attempt=1,
                                    rng=random.Random(3))
    assert decision == Decision(RETRY, delay=12.0)


@pytest.mark.parametrize("attempt", [1, 2, 3, 4])
def test_transient_error_without_retry_after_waits_the_backoff(attempt: int) -> None:
    policy = RetryPolicy()
    decision = policy.decide(TransientError(status=502), attempt=attempt, rng=random.Random(11))
    assert decision.job == RETRY
    assert decision.key_action is None  # the key did nothing wrong
    assert decision.delay == Backoff().delay(attempt, random.Random(11))
    low, high = bounds(EXPECTED_RAW[attempt - 1], policy.backoff)
    assert low <= decision.delay <= high


def test_transient_error_fails_with_its_own_code_at_max_attempts() -> None:
    decision = RetryPolicy(max_attempts=5, patience=0.0).decide(TransientError(status=500, retry_after=1.0), attempt=5)
    assert decision == Decision(FAIL, code="transient")


def test_transient_error_respects_a_custom_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=2, patience=0.0)
    assert policy.decide(TransientError(), attempt=1, rng=random.Random(0)).job == RETRY
    assert policy.decide(TransientError(), attempt=2, rng=random.Random(0)).job == FAIL


def test_transient_delay_follows_a_custom_backoff() -> None:
    policy = RetryPolicy(backoff=Backoff(base=0.02, cap=0.1, jitter=0.0))
    delays = [policy.decide(TransientError(), attempt=a).delay for a in (1, 2, 3, 4)]
    assert delays == pytest.approx([0.02, 0.04, 0.08, 0.1])


# --- RetryPolicy: the key is at fault ----------------------------------------------------------------


@pytest.mark.parametrize("state", ["revoked", "expired", "invalid"])
@pytest.mark.parametrize("attempt", [1, 5])
def test_rejected_key_requeues_the_job_and_retires_the_key(state: str, attempt: int) -> None:
    decision = RetryPolicy().decide(KeyRejected(key_state=state, status=401), attempt=attempt)
    assert decision == Decision(REQUEUE, key_action="retire", key_state=state)


def test_key_budget_exhausted_requeues_and_retires_the_key_as_budget() -> None:
    decision = RetryPolicy().decide(KeyBudgetExhausted(status=402), attempt=5)
    assert decision == Decision(REQUEUE, key_action="retire", key_state="budget")


def test_key_model_forbidden_requeues_and_forbids_the_model_on_that_key() -> None:
    decision = RetryPolicy().decide(KeyModelForbidden(status=403), attempt=1)
    assert decision == Decision(REQUEUE, key_action="forbid")
    assert decision.stop_run is False


# --- RetryPolicy: the run cannot go on ---------------------------------------------------------------


@pytest.mark.parametrize("error", [OrgBudgetExhausted(status=402), EndpointNotFound(status=404)],
                         ids=["org-budget", "endpoint-not-found"])
def test_run_stoppers_requeue_the_job_and_stop_the_run(error: ProviderError) -> None:
    decision = RetryPolicy().decide(error, attempt=1)
    assert decision.job == REQUEUE
    assert decision.stop_run is True
    assert decision.key_action is None  # no key is blamed


# --- RetryPolicy: the job is at fault ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (BadRequest("bad request (400): Unsupported parameter", status=400), "bad_request"),
        (ValidationFailed("validation error (422): body.temperature: too big", status=422), "validation_error"),
    ],
    ids=["400", "422"],
)
def test_invalid_jobs_fail_at_once_on_the_first_attempt(error: ProviderError, code: str) -> None:
    decision = RetryPolicy(max_attempts=5).decide(error, attempt=1)
    assert decision == Decision(FAIL, code=code)


def test_an_unclassified_provider_error_fails_rather_than_looping() -> None:
    assert RetryPolicy().decide(ProviderError("??"), attempt=1) == Decision(FAIL, code="provider_error")



def test_a_vanished_model_requeues_the_job_and_asks_for_a_catalogue_refresh() -> None:
    decision = RetryPolicy(max_attempts=5).decide(ModelNotFound("model not found (404)", status=404), attempt=3)
    assert decision == Decision(REQUEUE, refresh_catalog=True)


def test_an_unverified_200_fails_after_max_attempts_whatever_the_patience() -> None:
    """A provider that leaves out request_id does so every time: waiting 10 minutes buys nothing."""
    policy = RetryPolicy(max_attempts=2, patience=600.0)
    assert policy.decide(Unverified(status=200), attempt=1).job == RETRY
    assert policy.decide(Unverified(status=200), attempt=2).job == FAIL
