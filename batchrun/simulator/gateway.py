"""The checks every simulated endpoint shares, in the order a provider gateway runs them.

For every `POST /v1/...` request: key (401), budgets (402), random 429s (before the limiter, so
they use no quota), the per-key request limit (429), the body's JSON and schema (400/422, the
endpoint's `validate`), the model (404 unknown, 403 forbidden for the key, 400 of the wrong kind for
the endpoint), the per-key token limit (429), random faults (a dropped connection, a 503), the model's
own rules (400, the endpoint's `check`), the configured latency, the budgets once more, and the
endpoint's answer with a `request_id`. The counters record what a client did, so a test can prove it
never broke a limit or redid work. A line of a batch (batches.py) takes the body, model and budget
steps only (`answer_batch_line`); the Files and Batches routes check the key alone (`authorise`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import random
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import orjson
from aiohttp import web

from batchrun.keyid import key_id as public_key_id
from batchrun.simulator.catalog import ModelSpec, resolve_model
from batchrun.simulator.config import SimulatorConfig
from batchrun.simulator.endpoint import Endpoint, Plan, Refusal
from batchrun.simulator.state import SimulatorState
from batchrun.units import Rate

__all__ = ["Gateway", "Refused", "answers_refusals", "read_json"]

log = logging.getLogger(__name__)

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


class Refused(Exception):
    """A finished error response, raised from deep inside a check so the handler has one exit."""

    def __init__(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = dict(headers or {})

    @classmethod
    def error(cls, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> Refused:
        """The OpenAI-style `{"error": {...}}` answer."""
        body = {"error": {"message": message, "type": _ERROR_TYPES.get(status, "api_error"), "code": code}}
        return cls(status, body, headers)

    @classmethod
    def over_limit(cls, code: str, limit: str, key: str, wait: float) -> Refused:
        """A 429 of a key's sliding window, with the honest wait rounded up to whole seconds (never 0)."""
        return cls.error(
            429,
            code,
            f"Rate limit exceeded for key {key}: {limit}. Retry after the Retry-After header's seconds.",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )

    @classmethod
    def refusal(cls, status: int, refusal: Refusal) -> Refused:
        return cls.error(status, refusal.code, refusal.message)

    def response(self) -> web.Response:
        return web.json_response(self.body, status=self.status, headers=self.headers)


_Owner = TypeVar("_Owner")
_Route = Callable[[_Owner, web.Request], Awaitable[web.StreamResponse]]


def answers_refusals(handler: _Route[_Owner]) -> _Route[_Owner]:
    """A route method that may raise `Refused` anywhere: the refusal becomes its answer."""

    @functools.wraps(handler)
    async def route(owner: _Owner, request: web.Request) -> web.StreamResponse:
        try:
            return await handler(owner, request)
        except Refused as refused:
            return refused.response()

    return route


class _Dropped(Exception):
    """The simulated fault of a connection that dies without an answer."""


class Gateway:
    """The shared checks, bound to one config, one state and one seeded random source."""

    def __init__(self, config: SimulatorConfig, state: SimulatorState) -> None:
        self.config = config
        self.state = state
        self.random = random.Random(config.seed)

    async def handle(self, request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
        """Answer one request to `endpoint`, counting it, its status and its rate headers."""
        self.state.begin_completion()
        self.state.count_endpoint_request(endpoint.name)
        key: str | None = None
        try:
            try:
                token, key = self.identify(request)
                response = await self._answer(request, endpoint, token, key)
            except Refused as refused:
                response = refused.response()
            except _Dropped:
                return self._drop(request, key, endpoint)
            requests, tokens = self.config.rate_limit, self.config.token_limit
            if key is not None and self.config.rate_headers and (requests is not None or tokens is not None):
                response.headers.update(self.state.rate_headers(key, requests, tokens))
            self.state.record_status(key, response.status)
            log.info("%s key=%s status=%s", endpoint.name, key or "-", response.status)
            return response
        finally:
            self.state.end_completion()

    async def _answer(self, request: web.Request, endpoint: Endpoint, token: str, key: str) -> web.Response:
        config, state = self.config, self.state
        requests_from_key = state.count_key_request(key)
        limit = config.revoke_after.get(key)
        if limit is not None and requests_from_key > limit:
            config.revoked.add(key)
        self.check_key(token, key)
        self._check_budgets(key)
        if self._happens(config.random_429_rate):
            state.count_random_429(key)
            raise Refused.error(
                429,
                "model_overloaded",
                "The model is currently overloaded with other requests. Retry after the Retry-After "
                "header's seconds.",
                headers=_retry_after_headers(config.random_429_retry_after),
            )
        if config.rate_limit is not None:
            wait = state.admit(key, config.rate_limit)
            if wait is not None:
                raise Refused.over_limit("rate_limit_exceeded", f"{config.rate_limit} requests", key, wait)
        body = await read_json(request)
        model, plan = self.admit(endpoint, body, key)
        if config.token_limit is not None and plan.tokens is not None:
            self._admit_tokens(key, config.token_limit, plan.tokens)
        if self._happens(config.reset_rate):
            await self._wait_latency()
            raise _Dropped
        if self._happens(config.fail_rate):
            await self._wait_latency()
            raise Refused.error(503, "no_nodes_available", "No nodes available: all GPU nodes are at capacity")
        self._check_model_rules(endpoint, model, body, plan)
        await self._wait_latency()
        answer = self._succeed(endpoint, model, plan, key)
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    def admit(self, endpoint: Endpoint, body: Any, key: str) -> tuple[ModelSpec, Plan]:
        """The body's schema (422), its model (404, 403, 400 of the wrong kind), and the endpoint's plan."""
        problems = endpoint.validate(body)
        if problems:
            raise Refused(422, {"detail": problems})
        model = self._resolve(endpoint, body, key)
        return model, endpoint.plan(model, body)

    def answer_batch_line(self, endpoint: Endpoint, body: Any, key: str) -> dict[str, Any]:
        """The 200 body for one line of a batch (batches.py), created by `key`; raises `Refused` otherwise.

        A batch line meets the same schema, catalogue and model rules and the same budgets as a live
        request, but none of the live path's per-key request and token limits (the batch API has its own
        pool), random faults or latency: the batch's own config decides its pace and its failures.
        """
        model, plan = self.admit(endpoint, body, key)
        self._check_model_rules(endpoint, model, body, plan)
        return self._succeed(endpoint, model, plan, key)

    def _check_model_rules(self, endpoint: Endpoint, model: ModelSpec, body: Any, plan: Plan) -> None:
        refusal = endpoint.check(model, body, plan)
        if refusal is not None:
            raise Refused.refusal(400, refusal)

    def _succeed(self, endpoint: Endpoint, model: ModelSpec, plan: Plan, key: str) -> dict[str, Any]:
        # budgets again, with no await before the success is counted: concurrent requests that
        # all passed the first check must not overspend a budget
        self._check_budgets(key)
        number = self.state.record_success(key, plan.served, endpoint.name)
        request_id = None if self.config.omit_request_id else f"req_{uuid.uuid4().hex}"
        return endpoint.answer(model, plan, number, request_id)

    def _admit_tokens(self, key: str, limit: Rate, tokens: int) -> None:
        wait = self.state.admit_tokens(key, limit, tokens)
        if wait is None:
            return
        if math.isinf(wait):
            raise Refused.error(
                429,
                "request_too_large",
                f"Request too large for key {key}: it needs {tokens} tokens, more than the limit of "
                f"{limit} tokens allows. Reduce the prompt or max_tokens.",
            )
        needs = f"{limit} tokens; this request needs {tokens}"
        raise Refused.over_limit("tokens_rate_limit_exceeded", needs, key, wait)

    def identify(self, request: web.Request) -> tuple[str, str]:
        """The bearer token and its public key id; never log the token."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Refused.error(
                401,
                "missing_api_key",
                "Missing API key: send the header `Authorization: Bearer $KEY` on every request, "
                "not just the first one",
            )
        return token, public_key_id(token)

    def authorise(self, request: web.Request) -> str:
        """The public key id of a request's key, or the 401 a missing or unusable key gets."""
        token, key = self.identify(request)
        self.check_key(token, key)
        return key

    def check_key(self, token: str, key: str) -> None:
        """401 for a malformed, unknown, revoked or expired key."""
        config = self.config
        if config.require_key_format and not _well_formed(token):
            raise Refused.error(
                401,
                "invalid_key_format",
                "Wrong key format: the full token is `<access_key_id>:<secret>`, including the colon, "
                "with no whitespace",
            )
        if config.accepted_keys is not None and key not in config.accepted_keys:
            raise Refused.error(401, "invalid_api_key", f"Invalid API key {key}")
        if key in config.revoked:
            raise Refused.error(401, "key_revoked", "API key revoked")
        if key in config.expired:
            raise Refused.error(401, "key_expired", "API key expired")

    def _check_budgets(self, key: str) -> None:
        config = self.config
        total, of_key = self.state.successes(key)
        if config.org_budget is not None and total >= config.org_budget:
            raise Refused.error(
                402,
                "org_budget_exhausted",
                "Budget exhausted: your organisation has spent its monthly budget. Talk to your org admin.",
            )
        budget = config.key_budgets.get(key)
        if budget is not None and of_key >= budget:
            raise Refused.error(
                402,
                "key_budget_exhausted",
                f"Budget exhausted for key {key}: raise the key's budget cap in Settings → API Keys",
            )

    def _resolve(self, endpoint: Endpoint, body: Mapping[str, Any], key: str) -> ModelSpec:
        config = self.config
        models = list(config.models)
        name = endpoint.model_name(body, models)
        model = None if name is None else resolve_model(name, models, dict(config.aliases))
        if model is None:
            raise Refused.error(
                config.unknown_model_status,
                "model_not_found",
                f"The model '{name}' does not exist or is not available"
                if name is not None
                else f"No model serves {endpoint.path}: name one in 'model'",
            )
        forbidden = config.forbidden.get(key, set())
        if model.id in forbidden or name in forbidden:
            raise Refused.error(
                403, "model_not_allowed", f"The model '{model.id}' is not in the allowed list for key {key}"
            )
        if endpoint.name not in model.endpoints:
            serves = ", ".join(model.endpoints) or "no endpoint"
            raise Refused.error(
                400,
                "model_not_supported",
                f"The model '{model.id}' does not serve {endpoint.path} (it serves: {serves}); "
                "use a model of that kind",
            )
        return model

    def _happens(self, probability: float) -> bool:
        # draw only when the fault is configured, so a seed replays the same faults
        return probability > 0 and self.random.random() < probability

    async def _wait_latency(self) -> None:
        delay = self.config.latency
        if self.config.latency_jitter > 0:
            delay += self.random.uniform(0, self.config.latency_jitter)
        if delay > 0:
            await asyncio.sleep(delay)

    def _drop(self, request: web.Request, key: str | None, endpoint: Endpoint) -> web.Response:
        """Close the connection without answering; the client sees a disconnect, not a status."""
        self.state.count_reset()
        log.info("%s key=%s dropped", endpoint.name, key or "-")
        if request.transport is not None:
            request.transport.abort()
        # never sent: writing to the aborted transport fails and aiohttp drops it quietly
        return web.Response(status=500)


def _retry_after_headers(seconds: float) -> dict[str, str]:
    """`Retry-After` in whole seconds when `seconds` is whole (else as a decimal), and `retry-after-ms`."""
    text = str(int(seconds)) if seconds == int(seconds) else f"{seconds:.3f}".rstrip("0")
    return {"Retry-After": text, "retry-after-ms": str(round(seconds * 1000))}


def _well_formed(token: str) -> bool:
    access_id, sep, secret = token.partition(":")
    return bool(sep and access_id and secret) and not any(char.isspace() for char in token)


async def read_json(request: web.Request) -> Any:
    """The parsed body, or a 400 naming where its JSON breaks."""
    raw = await request.read()
    try:
        return orjson.loads(raw)  # the fast path; json below only to accept NaN and to name the error
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(raw)
    except UnicodeDecodeError as exc:
        raise Refused.error(400, "invalid_json", f"JSON parse error: body is not UTF-8 ({exc.reason})") from exc
    except json.JSONDecodeError as exc:
        raise Refused.error(
            400, "invalid_json", f"JSON parse error: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
