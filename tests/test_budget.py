"""The spend cap: reservations keep requests in flight from carrying a run over its cap."""

from __future__ import annotations

import pytest

from batchrun.budget import SpendCap


def test_no_cap_is_inactive_and_each_cap_limits_only_its_own_measure() -> None:
    assert not SpendCap().active  # the runner then reserves nothing at all
    tokens_only, cost_only = SpendCap(max_tokens=100), SpendCap(max_cost=1.0)
    assert tokens_only.active and cost_only.active
    assert tokens_only.reserve(1e9, 100) is not None  # any cost: only tokens are capped
    assert tokens_only.reserve(0.0, 1) is None
    assert cost_only.reserve(1.0, 10**9) is not None  # any tokens: only the cost is capped
    assert cost_only.reserve(1e-9, 0) is None


def test_a_request_that_could_cross_the_cost_cap_is_not_sent() -> None:
    cap = SpendCap(max_cost=1.0)
    first = cap.reserve(0.4, 100)
    second = cap.reserve(0.4, 100)
    assert first is not None and second is not None
    assert cap.reserve(0.3, 100) is None  # 0.8 reserved + 0.3 > 1.0, though nothing is spent yet
    cap.settle(first, 0.1, 50)  # the answer was cheaper than its estimate
    assert cap.reserve(0.3, 100) is not None  # 0.1 spent + 0.4 + 0.3 reserved = 0.8
    assert cap.spent_cost == pytest.approx(0.1) and cap.spent_tokens == 50


def test_the_token_cap_counts_reserved_tokens_and_a_failed_request_gives_them_back() -> None:
    cap = SpendCap(max_tokens=1000)
    held = cap.reserve(0.0, 600)
    assert held is not None
    assert cap.reserve(0.0, 500) is None
    cap.release(held)
    assert cap.reserve(0.0, 500) is not None and cap.spent_tokens == 0


def test_unknown_usage_is_counted_at_its_estimate() -> None:
    cap = SpendCap(max_cost=1.0, max_tokens=100)
    held = cap.reserve(0.25, 40)
    assert held is not None
    cap.settle(held, None, None)
    assert (cap.spent_cost, cap.spent_tokens, cap.reserved_cost, cap.reserved_tokens) == (0.25, 40, 0.0, 0)
    assert "$0.2500 of --max-cost $1 spent" in cap.describe() and "40 of --max-tokens 100" in cap.describe()
