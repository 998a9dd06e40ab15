"""`batchrun estimate`: what a batch would cost and what would be refused, without sending anything.

Every job goes through `prechecks.prepare`, exactly as the run would send it, so the estimate and the
run agree on which model serves a job, which jobs fall back and which fail before a request. Tokens
are estimated the way the run reserves them (`Endpoint.budget`): the job's input tokens as written at
submit (`batchrun.tokens`), and its output cap as the completion — an upper bound, since a model may
stop sooner. A job without a cap, at an endpoint that answers at length, has no bound; it is counted
as `assumed_completion` tokens and the table says so. Embeddings and moderations have no completion.
Rows are per endpoint and model.

Costs use the catalogue's prices of the model that serves the request (an alias is priced as its
target). A model without prices is "unknown", never 0: a total that silently left it out would
understate the bill, so the total says how many requests it does not cover.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set as AbstractSet
from dataclasses import dataclass, field
from typing import Protocol

from batchrun.catalog import Catalog
from batchrun.endpoints import ENDPOINTS
from batchrun.prechecks import Fallbacks, Refused, prepare
from batchrun.tokens import DEFAULT_ASSUMED_COMPLETION

__all__ = ["DEFAULT_ASSUMED_COMPLETION", "Estimate", "JobView", "ModelEstimate", "estimate", "estimate_lines"]


class JobView(Protocol):
    """What an estimate needs of a job (the store's `ClaimedJob` fits). Read-only properties, so that
    frozen dataclasses and named tuples satisfy it as well as plain objects."""

    @property
    def model(self) -> str: ...

    @property
    def body(self) -> str: ...

    @property
    def input_tokens(self) -> int: ...

    @property
    def max_tokens(self) -> int | None: ...

    @property
    def endpoint(self) -> str: ...


@dataclass(frozen=True, slots=True)
class ModelEstimate:
    """The requests to one endpoint that would be sent naming one model."""

    endpoint: str  # the endpoint's short name (chat, embeddings, ...)
    model: str  # the model sent, after fallback; an alias stays an alias
    served_by: str | None  # what the catalogue says serves it (fast -> sim-small); None if unknown
    requests: int
    prompt_tokens: int
    completion_tokens: int  # the sum of max_tokens, plus `assumed` × assumed_completion
    assumed: int  # requests without max_tokens, counted as assumed_completion tokens each
    cost: float | None  # USD; None when the catalogue has no prices for the model


@dataclass(frozen=True, slots=True)
class Estimate:
    """A whole batch: what would be sent, per model, and what would fail before a request."""

    models: tuple[ModelEstimate, ...]  # sorted by endpoint, then model
    refused: Mapping[str, int]  # refusal code -> jobs
    fallbacks: int  # jobs that would be sent to a fallback model
    total_cost: float | None  # the sum of the known costs; None when no model is priced
    unpriced_requests: int  # requests to models without prices, which total_cost leaves out
    examples: Mapping[str, str] = field(default_factory=dict)  # refusal code -> one message
    assumed_completion: int = DEFAULT_ASSUMED_COMPLETION  # what a job without max_tokens counted

    @property
    def requests(self) -> int:
        """Requests that would be sent."""
        return sum(model.requests for model in self.models)

    @property
    def jobs(self) -> int:
        """Jobs looked at: sent or refused."""
        return self.requests + sum(self.refused.values())


def estimate(
    jobs: Iterable[JobView],
    catalog: Catalog,
    fallbacks: Fallbacks = Fallbacks(),  # frozen, so one shared default is safe
    drop_unsupported: bool = False,
    assumed_completion: int = DEFAULT_ASSUMED_COMPLETION,
    gone: AbstractSet[str] = frozenset(),
) -> Estimate:
    """Estimate `jobs` against `catalog`, with the run's fallbacks and drop_unsupported setting."""
    # (endpoint, model sent) -> [requests, prompt tokens, completion tokens, assumed]
    totals: dict[tuple[str, str], list[int]] = {}
    refused: dict[str, int] = {}
    examples: dict[str, str] = {}
    fell_back = 0
    for job in jobs:
        max_tokens = job.max_tokens
        endpoint = ENDPOINTS.get(job.endpoint)
        if endpoint is None:
            refused["unknown_endpoint"] = refused.get("unknown_endpoint", 0) + 1
            examples.setdefault("unknown_endpoint", f"this batchrun does not send {job.endpoint}")
            continue
        outcome = prepare(job.model, job.body, job.input_tokens, max_tokens, catalog, fallbacks,
                          drop_unsupported, gone, endpoint)
        if isinstance(outcome, Refused):
            code = outcome.code
            refused[code] = refused.get(code, 0) + 1
            if code not in examples:
                examples[code] = outcome.message
            continue
        if outcome.fallback_reason is not None:
            fell_back += 1
        key = (endpoint.name, outcome.model_sent)
        row = totals.get(key)
        if row is None:
            row = totals[key] = [0, 0, 0, 0]
        prompt, completion = endpoint.budget(job.input_tokens, max_tokens, assumed_completion)
        row[0] += 1
        row[1] += prompt
        row[2] += completion
        if max_tokens is None and endpoint.answers_at_length and endpoint.default_output_cap is None:
            row[3] += 1

    models: list[ModelEstimate] = []
    total_cost: float | None = None
    unpriced = 0
    for endpoint_name, model in sorted(totals):
        requests, prompt_tokens, completion_tokens, assumed = totals[endpoint_name, model]
        info = catalog.resolve(model)
        cost = info.cost(prompt_tokens, completion_tokens) if info is not None else None
        if cost is None:
            unpriced += requests
        else:
            total_cost = cost if total_cost is None else total_cost + cost
        models.append(ModelEstimate(endpoint_name, model, info.id if info is not None else None, requests, prompt_tokens,
                                    completion_tokens, assumed, cost))
    return Estimate(tuple(models), dict(sorted(refused.items())), fell_back, total_cost, unpriced,
                    dict(sorted(examples.items())), assumed_completion)


def estimate_lines(e: Estimate) -> list[str]:
    """The estimate as a table for the terminal, then what would be refused, fallbacks and the total."""
    if not e.models and not e.refused:
        return ["No jobs to estimate."]
    lines: list[str] = []
    if e.models:
        header = ("endpoint", "model", "served by", "requests", "prompt tokens", "completion tokens", "cost (USD)")
        any_assumed = any(m.assumed for m in e.models)  # a footnote mark; the digits stay aligned
        rows = [
            (
                m.endpoint,
                m.model or "(default)",  # a moderation that leaves the model to the provider
                m.served_by or "unknown",
                f"{m.requests:,}",
                f"{m.prompt_tokens:,}",
                f"{m.completion_tokens:,}" + ("*" if m.assumed else " " if any_assumed else ""),
                _usd(m.cost),
            )
            for m in e.models
        ]
        widths = [max(len(header[i]), *(len(row[i]) for row in rows)) for i in range(len(header))]
        numeric = (False, False, False, True, True, True, True)

        def render(cells: tuple[str, ...]) -> str:
            return "  ".join(
                cell.rjust(width) if right else cell.ljust(width)
                for cell, width, right in zip(cells, widths, numeric, strict=True)
            ).rstrip()

        lines.append(render(header))
        lines.append(render(tuple("-" * width for width in widths)))
        lines.extend(render(row) for row in rows)
        endpoints = sorted({m.endpoint for m in e.models})
        if len(endpoints) > 1:
            for name in endpoints:
                mine = [m for m in e.models if m.endpoint == name]
                costs = [m.cost for m in mine if m.cost is not None]
                cost = _usd(sum(costs)) if costs else "unknown"
                lines.append(f"  {name}: {_count(sum(m.requests for m in mine), 'request')}, "
                             f"{sum(m.prompt_tokens for m in mine):,} prompt + "
                             f"{sum(m.completion_tokens for m in mine):,} completion tokens, cost {cost}"
                             + (" (in part)" if costs and len(costs) < len(mine) else ""))
        if any_assumed:
            assumed = sum(m.assumed for m in e.models)
            lines.append(
                f"* includes {_jobs(assumed)} without max_tokens, counted as {e.assumed_completion:,} "
                "completion tokens each (set max_tokens for a firmer estimate)"
            )
        lines.append("Completion tokens count max_tokens in full: an upper bound, as a model may stop sooner.")
    if e.refused:
        lines.append("")
        lines.append(f"Would be refused before sending: {_jobs(sum(e.refused.values()))}")
        for code, count in e.refused.items():
            lines.append(f"  {code}: {_jobs(count)}")
            example = e.examples.get(code)
            if example:
                lines.append(f"    e.g. {example}")
    lines.append("")
    if e.fallbacks:
        lines.append(f"Would use a fallback model: {_jobs(e.fallbacks)}")
    else:
        lines.append("Would use a fallback model: none")
    requests = _count(e.requests, "request")
    if e.total_cost is None:
        lines.append(f"Total: unknown (no prices in the catalogue) for {requests}")
    elif e.unpriced_requests:
        unpriced = _count(e.unpriced_requests, "request")
        lines.append(f"Total: {_usd(e.total_cost)} USD for {requests} "
                     f"(not counting {unpriced} to models without prices)")
    else:
        lines.append(f"Total: {_usd(e.total_cost)} USD for {requests}")
    return lines


def _usd(cost: float | None) -> str:
    return "unknown" if cost is None else f"{cost:.4f}"


def _jobs(count: int) -> str:
    return _count(count, "job")


def _count(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")
