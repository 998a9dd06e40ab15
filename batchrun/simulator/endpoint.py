"""What an endpoint module gives the gateway, and the pieces of a verdict every endpoint uses.

The gateway (`gateway.py`) runs the checks every endpoint shares — key, budgets, limits, faults,
latency — and asks the endpoint only what differs: is the body's schema valid (`validate`, a 422
with FastAPI's `detail` entries), which model does it name (`model_name`), what will the answer cost
(`plan`: the tokens the token limit charges), will the model run it (`check`: a `Refusal`, a 400),
and the answer itself (`answer`). The endpoint methods are pure: no socket, no clock, no counters.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from batchrun.simulator.catalog import ModelSpec

__all__ = ["Endpoint", "Plan", "Refusal", "answer_head", "detail", "int_problems", "model_problems",
           "number_problems", "over_context", "sampling_problems", "token_usage", "too_short", "unsupported_parameters"]

#: the names of a request's output cap; a model listing one of them accepts every one of them
CAP_NAMES = frozenset({"max_tokens", "max_completion_tokens", "max_output_tokens"})


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a model will not run a request: the error `code` and a message a user can act on."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Plan:
    """What a request will cost and what it will answer, decided before any fault or latency.

    `tokens` is what the token limit charges (None: the endpoint is not limited by tokens);
    `served` identifies the work, so answering the same work twice counts as a duplicate;
    `work` is the endpoint's own precomputed answer material.
    """

    tokens: int | None
    served: Any
    work: Any


class Endpoint:
    """One URL of the simulated API. Subclasses set the class attributes and override the methods."""

    #: the name a `ModelSpec.endpoints` lists, and the key of the per-endpoint counters
    name: ClassVar[str]
    #: the route, e.g. "/v1/chat/completions"
    path: ClassVar[str]
    #: body keys every model takes, never reported as unsupported
    core_fields: ClassVar[frozenset[str]] = frozenset({"model"})

    #: the body field that carries the work (`input`, `prompt`); validated by `input_problems`
    input_field: ClassVar[str] = "input"
    #: whether `model` must be present
    model_required: ClassVar[bool] = True

    def validate(self, body: Any) -> list[dict[str, Any]]:
        """FastAPI-style `detail` entries for a parsed body; empty when its schema is fine."""
        if not isinstance(body, dict):
            return [detail(("body",), "Input should be a valid dictionary", "dict_type")]
        problems = model_problems(body, self.model_required)
        if self.input_field not in body:
            problems.append(detail(("body", self.input_field), "Field required", "missing"))
        else:
            problems.extend(self.input_problems(body[self.input_field]))
        problems.extend(self.option_problems(body))
        return problems

    def input_problems(self, value: Any) -> list[dict[str, Any]]:
        """The `detail` entries for the value of `input_field`."""
        return []

    def option_problems(self, body: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The `detail` entries for the optional fields."""
        return []

    def model_name(self, body: Mapping[str, Any], models: Sequence[ModelSpec]) -> str | None:
        """The model a schema-valid body asks for; None when it names none and there is no default."""
        name = body.get("model")
        return name if isinstance(name, str) else None

    def plan(self, model: ModelSpec, body: Mapping[str, Any]) -> Plan:
        raise NotImplementedError

    def check(self, model: ModelSpec, body: Mapping[str, Any], plan: Plan) -> Refusal | None:
        """The first reason `model` refuses the request (a 400), or None if it runs it."""
        return unsupported_parameters(model, body, self.core_fields)

    def answer(self, model: ModelSpec, plan: Plan, number: int, request_id: str | None) -> dict[str, Any]:
        """The 200 body; `number` is the success's sequence number (for ids), `request_id` None to omit it."""
        raise NotImplementedError


def unsupported_parameters(model: ModelSpec, body: Iterable[str], core: Iterable[str]) -> Refusal | None:
    """The 400 for body keys the model does not list (None when it lists them all or publishes no list).

    Either name of the output cap allows the others, as clients treat them (batchrun's prechecks).
    """
    if model.supported_parameters is None:
        return None
    supported = set(model.supported_parameters) | set(core)
    if supported & CAP_NAMES:
        supported |= CAP_NAMES
    unsupported = [name for name in body if name not in supported]
    if not unsupported:
        return None
    names = ", ".join(f"'{name}'" for name in unsupported)
    return Refusal(
        "unsupported_parameter",
        f"Unsupported parameter {names} for model '{model.id}'; check supported_parameters in GET /v1/models",
    )


def over_context(model: ModelSpec, prompt: int, where: str, cap: int, cap_name: str) -> Refusal | None:
    """The 400 when `prompt` tokens (in `where`) plus the output cap do not fit the context window."""
    if model.context_length is None or prompt + cap <= model.context_length:
        return None
    return Refusal(
        "context_length_exceeded",
        f"This model's maximum context length is {model.context_length} tokens, but the request "
        f"asks for {prompt + cap} tokens ({prompt} in {where} + {cap} for {cap_name}). "
        f"Reduce the prompt or {cap_name}.",
    )


def detail(loc: Sequence[str | int], msg: str, kind: str) -> dict[str, Any]:
    """One FastAPI `detail` entry."""
    return {"loc": list(loc), "msg": msg, "type": kind}


def number_problems(name: str, value: Any, low: float, high: float) -> list[dict[str, Any]]:
    """The `detail` for an optional number outside [low, high] (none when absent or fine)."""
    if value is None:
        return []
    loc = ("body", name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return [detail(loc, "Input should be a valid number", "float_type")]
    if value < low:
        return [detail(loc, f"Input should be greater than or equal to {low}", "greater_than_equal")]
    if value > high:
        return [detail(loc, f"Input should be less than or equal to {high}", "less_than_equal")]
    return []


def int_problems(name: str, value: Any) -> list[dict[str, Any]]:
    """The `detail` for an optional positive integer (a cap, `dimensions`) that is not one."""
    if value is None:
        return []
    if isinstance(value, bool) or not isinstance(value, int):
        return [detail(("body", name), "Input should be a valid integer", "int_type")]
    if value <= 0:
        return [detail(("body", name), "Input should be greater than 0", "greater_than")]
    return []


def too_short(loc: Sequence[str | int]) -> dict[str, Any]:
    """The `detail` of an empty list."""
    return detail(loc, "List should have at least 1 item after validation, not 0", "too_short")


def sampling_problems(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The `detail` for `temperature` and `top_p` out of their ranges."""
    return number_problems("temperature", body.get("temperature"), 0, 2) + number_problems(
        "top_p", body.get("top_p"), 0, 1
    )


def answer_head(answer_id: str, kind: str, model: ModelSpec, request_id: str | None,
                created: str = "created") -> dict[str, Any]:
    """The first keys of a generated answer: id, object, creation time, model, and the request id."""
    answer: dict[str, Any] = {"id": answer_id, "object": kind, created: int(time.time()), "model": model.id}
    if request_id is not None:
        answer["request_id"] = request_id
    return answer


def token_usage(prompt: int, completion: int) -> dict[str, int]:
    """The `usage` of a chat or text completion."""
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def model_problems(body: Mapping[str, Any], required: bool = True) -> list[dict[str, Any]]:
    """The `detail` for a missing (when required) or non-string `model`."""
    if "model" not in body:
        return [detail(("body", "model"), "Field required", "missing")] if required else []
    if not isinstance(body["model"], str):
        return [detail(("body", "model"), "Input should be a valid string", "string_type")]
    return []
