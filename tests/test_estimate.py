"""`batchrun estimate` as a pure function: jobs + catalogue -> tokens, costs, refusals. No I/O.

Expected numbers are worked out by hand in the comments, from the prices of the catalogue below.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import orjson
import pytest

from batchrun.catalog import Catalog, ModelInfo
from batchrun.estimate import Estimate, JobView, ModelEstimate, estimate, estimate_lines
from batchrun.prechecks import (
    CONTEXT_LENGTH_EXCEEDED,
    MODEL_NOT_FOUND,
    UNSUPPORTED_PARAMETER,
    Fallbacks,
    Refused,
    prepare,
)

PARAMS = ("max_tokens", "temperature", "response_format", "tools")
MINI_PARAMS = ("max_tokens", "temperature")


@dataclass(frozen=True, slots=True)
class Job:
    model: str
    body: str
    input_tokens: int
    max_tokens: int | None
    endpoint: str = "/v1/chat/completions"


def job(model: str, prompt_chars: int, max_tokens: int | None = None, **params: object) -> Job:
    body = {"model": model, "messages": [{"role": "user", "content": "x" * prompt_chars}], **params}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return Job(model, orjson.dumps(body).decode(), -(-prompt_chars // 4), max_tokens)


def catalog() -> Catalog:
    return Catalog([
        ModelInfo("sim-small", context_length=8192, supported_parameters=PARAMS, response_format=True,
                  prompt_price=0.1e-6, completion_price=0.4e-6),
        ModelInfo("sim-large", context_length=32768, supported_parameters=PARAMS, response_format=True,
                  prompt_price=1e-6, completion_price=4e-6),
        ModelInfo("sim-mini", context_length=2048, supported_parameters=MINI_PARAMS, response_format=False),
        ModelInfo("fast", alias_for="sim-small"),
        ModelInfo("reasoning", alias_for="sim-large"),
    ])


FALLBACKS = Fallbacks(table={"sim-old": ("reasoning",)})

JOBS = [
    job("fast", 401, 100),  # 101 prompt tokens (rounded up) + 100
    job("sim-small", 400),  # 100 prompt tokens + 256 assumed
    job("fast", 4, 50),  # 1 + 50
    job("sim-old", 1000, 1000),  # falls back to reasoning: 250 + 1000
    job("sim-mini", 8, 10),  # 2 + 10, no prices
    job("sim-mini", 8, 10, tools=[]),  # unsupported_parameter
    job("sim-mini", 10_000, 10),  # 2500 + 10 > 2048: context_length_exceeded
    job("nope", 4, 1),  # model_not_found
]


def test_estimate_sums_tokens_and_costs_per_model_sent() -> None:
    e = estimate(JOBS, catalog(), FALLBACKS)
    # fast:      prompt 101 + 1 = 102, completion 100 + 50 = 150 -> 102 × 0.1e-6 + 150 × 0.4e-6 = 70.2e-6
    # reasoning: 250, 1000                                       -> 250 × 1e-6 + 1000 × 4e-6     = 4250e-6
    # sim-mini:  2, 10, no prices
    # sim-small: 100, 256 assumed                                -> 100 × 0.1e-6 + 256 × 0.4e-6  = 112.4e-6
    assert [m.model for m in e.models] == ["fast", "reasoning", "sim-mini", "sim-small"]
    fast, reasoning, mini, small = e.models
    assert replace(fast, cost=None) == ModelEstimate("chat", "fast", "sim-small", 2, 102, 150, 0, None)
    assert replace(reasoning, cost=None) == ModelEstimate("chat", "reasoning", "sim-large", 1, 250, 1000, 0, None)
    assert mini == ModelEstimate("chat", "sim-mini", "sim-mini", 1, 2, 10, 0, None)
    assert replace(small, cost=None) == ModelEstimate("chat", "sim-small", "sim-small", 1, 100, 256, 1, None)
    assert fast.cost == pytest.approx(70.2e-6, rel=1e-12)
    assert reasoning.cost == pytest.approx(4250e-6, rel=1e-12)
    assert small.cost == pytest.approx(112.4e-6, rel=1e-12)
    assert e.total_cost == pytest.approx(4432.6e-6, rel=1e-12)
    assert e.unpriced_requests == 1
    assert e.fallbacks == 1
    assert dict(e.refused) == {CONTEXT_LENGTH_EXCEEDED: 1, MODEL_NOT_FOUND: 1, UNSUPPORTED_PARAMETER: 1}
    assert e.requests == 5
    assert e.jobs == 8


def test_examples_are_the_messages_prepare_gives() -> None:
    e = estimate(JOBS, catalog(), FALLBACKS)
    expected: dict[str, str] = {}
    for j in JOBS:
        outcome = prepare(j.model, j.body, j.input_tokens, j.max_tokens, catalog(), FALLBACKS)
        if isinstance(outcome, Refused):
            expected.setdefault(outcome.code, outcome.message)
    assert dict(e.examples) == expected
    assert "2500 prompt tokens + 10 max_tokens > the context window of sim-mini (2048 tokens)" \
        in e.examples[CONTEXT_LENGTH_EXCEEDED]
    assert "'nope'" in e.examples[MODEL_NOT_FOUND]
    assert "'tools'" in e.examples[UNSUPPORTED_PARAMETER]


def test_drop_unsupported_turns_a_refusal_into_a_request() -> None:
    e = estimate(JOBS, catalog(), FALLBACKS, drop_unsupported=True)
    assert UNSUPPORTED_PARAMETER not in e.refused
    mini = next(m for m in e.models if m.model == "sim-mini")
    assert (mini.requests, mini.prompt_tokens, mini.completion_tokens) == (2, 4, 20)
    assert e.unpriced_requests == 2


def test_assumed_completion_is_configurable_and_recorded() -> None:
    e = estimate([job("sim-small", 400), job("sim-small", 4, 4)], catalog(), assumed_completion=1000)
    (small,) = e.models
    # prompt 100 + 1, completion 1000 (assumed) + 4 -> 101 × 0.1e-6 + 1004 × 0.4e-6 = 411.7e-6
    assert (small.prompt_tokens, small.completion_tokens, small.assumed) == (101, 1004, 1)
    assert small.cost == pytest.approx(411.7e-6, rel=1e-12)
    assert e.assumed_completion == 1000


def test_gone_models_fall_back_as_in_the_run() -> None:
    e = estimate([job("fast", 4, 4)], catalog(), Fallbacks(run=("reasoning",)), gone=frozenset({"sim-small"}))
    assert [m.model for m in e.models] == ["reasoning"]
    assert e.fallbacks == 1


def test_an_unknown_catalogue_sends_everything_unpriced() -> None:
    e = estimate(JOBS, Catalog([]))
    assert not e.refused
    assert e.fallbacks == 0
    assert e.total_cost is None
    assert e.unpriced_requests == len(JOBS)
    assert {m.model: (m.served_by, m.requests, m.cost) for m in e.models} == {
        "fast": (None, 2, None), "nope": (None, 1, None), "sim-mini": (None, 3, None),
        "sim-old": (None, 1, None), "sim-small": (None, 1, None)}


def test_no_jobs() -> None:
    e = estimate([], catalog())
    assert e == Estimate((), {}, 0, None, 0, {}, 256)
    assert estimate_lines(e) == ["No jobs to estimate."]


def test_a_free_model_costs_zero_not_unknown() -> None:
    cat = Catalog([ModelInfo("free", prompt_price=0.0, completion_price=0.0)])
    e = estimate([job("free", 40, 10)], cat)
    assert e.total_cost == 0.0
    assert e.unpriced_requests == 0
    assert "0.0000" in estimate_lines(e)[2]


def test_estimate_lines_show_the_table_refusals_fallbacks_and_total() -> None:
    lines = estimate_lines(estimate(JOBS, catalog(), FALLBACKS))
    text = "\n".join(lines)
    header = lines[0]
    for column in ("endpoint", "model", "served by", "requests", "prompt tokens", "completion tokens", "cost (USD)"):
        assert column in header
    rows = {line.split()[1]: line.split() for line in lines[2:6]}
    assert rows["fast"] == ["chat", "fast", "sim-small", "2", "102", "150", "0.0001"]
    assert rows["reasoning"] == ["chat", "reasoning", "sim-large", "1", "250", "1,000", "0.0043"]
    assert rows["sim-mini"] == ["chat", "sim-mini", "sim-mini", "1", "2", "10", "unknown"]
    assert rows["sim-small"] == ["chat", "sim-small", "sim-small", "1", "100", "256*", "0.0001"]
    assert "* includes 1 job without max_tokens, counted as 256 completion tokens each" in text
    assert "Would be refused before sending: 3 jobs" in text
    for code in (CONTEXT_LENGTH_EXCEEDED, MODEL_NOT_FOUND, UNSUPPORTED_PARAMETER):
        assert f"  {code}: 1 job" in text
    assert "e.g. The request needs about 2500 prompt tokens" in text
    assert "Would use a fallback model: 1 job" in text
    assert lines[-1] == "Total: 0.0044 USD for 5 requests (not counting 1 request to models without prices)"


def test_estimate_lines_columns_line_up() -> None:
    lines = estimate_lines(estimate(JOBS, catalog(), FALLBACKS))
    table = lines[:6]
    assert len({len(line) for line in table[:2]}) == 1
    # right-aligned numbers end in the same column as their header
    end = table[0].index("cost (USD)") + len("cost (USD)")
    assert all(len(line) == end for line in table[2:])


def test_estimate_lines_without_any_price() -> None:
    lines = estimate_lines(estimate([job("sim-mini", 4, 1)], catalog()))
    assert lines[-1] == "Total: unknown (no prices in the catalogue) for 1 request"
    assert "Would use a fallback model: none" in lines


def test_ten_thousand_jobs_of_four_models_add_up() -> None:
    # (how fast is bench/'s business: a wall-clock bound here fails on a busy machine first)
    jobs: list[JobView] = [job(("fast", "sim-small", "reasoning", "sim-mini")[i % 4], 40 + i % 97,
                               None if i % 10 == 0 else 64, temperature=0.5) for i in range(10_000)]
    e = estimate(jobs, catalog())
    assert e.requests == 10_000
    assert sum(m.assumed for m in e.models) == 1_000
    assert sum(m.prompt_tokens for m in e.models) == sum(-(-(40 + i % 97) // 4) for i in range(10_000))
    assert sum(m.completion_tokens for m in e.models) == 1_000 * 256 + 9_000 * 64
