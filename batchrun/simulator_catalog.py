"""What the provider simulator serves: its model catalogue and what each model does with a request.

Kept apart from the HTTP server so that the rules a model imposes (supported parameters, context
window, `response_format` capability) and the deterministic answer it gives are pure functions that
can be read and tested without a socket. `batchrun.simulator` turns their verdicts into HTTP.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

#: the `owned_by` of every catalogue entry, so nobody mistakes a rehearsal for the real provider
OWNER = "batchrun-simulator"

#: what a model accepts besides `model` and `messages` unless its spec says otherwise
DEFAULT_SUPPORTED_PARAMETERS: tuple[str, ...] = (
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "response_format",
    "presence_penalty",
    "frequency_penalty",
    "n",
    "user",
    "tools",
    "tool_choice",
    "logprobs",
    "stream",
)

#: body keys every model takes; never reported as unsupported
_CORE_FIELDS = frozenset({"model", "messages"})

#: `response_format.type` values that ask for JSON output and need the capability
_JSON_FORMATS = frozenset({"json_object", "json_schema"})

#: the simulator's stand-in for a tokenizer: providers bill roughly four characters per token
CHARS_PER_TOKEN = 4


@dataclass
class ModelSpec:
    """One model the simulator serves. A `None` field is metadata the provider does not publish.

    Real catalogues often omit context windows, parameter lists or prices; clients must cope, so
    `None` is omitted from `GET /v1/models` and disables the matching check.
    """

    id: str
    context_length: int | None = 8192
    supported_parameters: list[str] | None = field(default_factory=lambda: list(DEFAULT_SUPPORTED_PARAMETERS))
    response_format: bool | None = True
    prompt_price: float | None = None  # USD per prompt token
    completion_price: float | None = None  # USD per completion token

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """A spec from a JSON object with the field names of this class (the `/_sim/config` form).

        Raises ValueError naming the offending field, because the caller is usually a test or a
        script that needs to know exactly what it got wrong.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a model must be an object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model field(s) {unknown}; known: {sorted(known)}")
        model_id = data.get("id")
        if not isinstance(model_id, str) or not model_id:
            raise ValueError("a model needs a non-empty string 'id'")
        spec = cls(id=model_id)
        if "context_length" in data:
            spec.context_length = _optional_int(data["context_length"], "context_length")
        if "supported_parameters" in data:
            params = data["supported_parameters"]
            if params is not None and not (isinstance(params, list) and all(isinstance(p, str) for p in params)):
                raise ValueError("supported_parameters must be a list of strings or null")
            spec.supported_parameters = None if params is None else list(params)
        if "response_format" in data:
            capability = data["response_format"]
            if capability is not None and not isinstance(capability, bool):
                raise ValueError("response_format must be true, false or null")
            spec.response_format = capability
        for price_field in ("prompt_price", "completion_price"):
            if price_field in data:
                setattr(spec, price_field, _optional_price(data[price_field], price_field))
        return spec

    def to_entry(self, aliases: Iterable[str] = ()) -> dict[str, Any]:
        """The model's `GET /v1/models` entry, leaving out whatever is unknown."""
        entry: dict[str, Any] = {"id": self.id, "object": "model", "owned_by": OWNER}
        if self.context_length is not None:
            entry["context_length"] = self.context_length
        if self.supported_parameters is not None:
            entry["supported_parameters"] = list(self.supported_parameters)
        if self.response_format is not None:
            entry["capabilities"] = {"response_format": self.response_format}
        pricing = {
            name: price
            for name, price in (("prompt", self.prompt_price), ("completion", self.completion_price))
            if price is not None
        }
        if pricing:
            entry["pricing"] = pricing
        entry["aliases"] = sorted(aliases)
        return entry


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a model will not run a request: the error `code` and a message a user can act on."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Reply:
    """The deterministic answer to a request, so a test can match every result to its job."""

    content: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def default_models() -> list[ModelSpec]:
    """The stock catalogue: a cheap model, an expensive one, and a small one that lacks features."""
    return [
        ModelSpec("sim-small", context_length=8192, prompt_price=0.10e-6, completion_price=0.40e-6),
        ModelSpec("sim-large", context_length=32768, prompt_price=1.00e-6, completion_price=4.00e-6),
        ModelSpec(
            "sim-mini",
            context_length=2048,
            response_format=False,
            # no structured output and no tools: the model a job file's `tools` or
            # `response_format` must not be routed to
            supported_parameters=[
                p for p in DEFAULT_SUPPORTED_PARAMETERS if p not in ("response_format", "tools", "tool_choice")
            ],
        ),
    ]


def default_aliases() -> dict[str, str]:
    """The provider's category aliases; they follow the catalogue as it changes."""
    return {"fast": "sim-small", "reasoning": "sim-large"}


def catalogue_entries(models: Sequence[ModelSpec], aliases: Mapping[str, str]) -> list[dict[str, Any]]:
    """The `data` of `GET /v1/models`: every model, then every alias whose target is still served."""
    served = {model.id for model in models}
    entries = [
        model.to_entry(alias for alias, target in aliases.items() if target == model.id) for model in models
    ]
    entries.extend(
        {"id": alias, "object": "model", "owned_by": OWNER, "alias_for": target}
        for alias, target in aliases.items()
        if target in served
    )
    return entries


def resolve_model(name: str, models: Sequence[ModelSpec], aliases: Mapping[str, str]) -> ModelSpec | None:
    """The model a request's `model` names, directly or through an alias; None if nothing serves it."""
    by_id = {model.id: model for model in models}
    if name in by_id:
        return by_id[name]
    target = aliases.get(name)
    return by_id.get(target) if target is not None else None


def content_text(content: Any) -> str:
    """The text of a message's `content`: a string, or the text parts of a list of parts, joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    return ""


def estimate_tokens(text_length: int) -> int:
    """Tokens for `text_length` characters, rounded up, as the simulator bills them."""
    return math.ceil(text_length / CHARS_PER_TOKEN)


def estimate_prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """Prompt tokens of a validated `messages` list: all content characters / 4, rounded up."""
    return estimate_tokens(sum(len(content_text(message.get("content"))) for message in messages))


def wants_json(body: Mapping[str, Any]) -> bool:
    """Whether the request asks for JSON output through `response_format`."""
    response_format = body.get("response_format")
    return isinstance(response_format, Mapping) and response_format.get("type") in _JSON_FORMATS


def check_request(model: ModelSpec, body: Mapping[str, Any]) -> Refusal | None:
    """The first reason `model` refuses a schema-valid `body` (a 400), or None if it will run it.

    Checks only what the model publishes: a `None` in its spec means the provider does not say,
    and the simulator then accepts, as a real provider with unpublished limits would.
    """
    if model.supported_parameters is not None:
        supported = set(model.supported_parameters) | _CORE_FIELDS
        unsupported = [name for name in body if name not in supported]
        if unsupported:
            names = ", ".join(f"'{name}'" for name in unsupported)
            return Refusal(
                "unsupported_parameter",
                f"Unsupported parameter {names} for model '{model.id}'; "
                "check supported_parameters in GET /v1/models",
            )
    if model.context_length is not None:
        prompt_tokens = estimate_prompt_tokens(body["messages"])
        max_tokens = body.get("max_tokens") or 0
        if prompt_tokens + max_tokens > model.context_length:
            return Refusal(
                "context_length_exceeded",
                f"This model's maximum context length is {model.context_length} tokens, but the request "
                f"asks for {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages + "
                f"{max_tokens} for max_tokens). Reduce the prompt or max_tokens.",
            )
    if model.response_format is False and wants_json(body):
        return Refusal(
            "unsupported_response_format",
            f"Model '{model.id}' does not support response_format "
            f"{body['response_format'].get('type')} (capabilities.response_format is false)",
        )
    return None


def compose_reply(body: Mapping[str, Any]) -> Reply:
    """The simulated completion: `echo: <last user message>`, or `{"echo": ...}` when JSON is asked for.

    Deterministic so tests and rehearsals can tie each result to its job; cut to `max_tokens` the way
    a provider stops generating, with finish_reason `length`.
    """
    messages: Sequence[Mapping[str, Any]] = body["messages"]
    last_user = next(
        (content_text(message.get("content")) for message in reversed(messages) if message.get("role") == "user"),
        "",
    )
    content = json.dumps({"echo": last_user}) if wants_json(body) else "echo: " + last_user
    completion_tokens = estimate_tokens(len(content))
    finish_reason = "stop"
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and completion_tokens > max_tokens:
        content = content[: max_tokens * CHARS_PER_TOKEN]
        completion_tokens = max_tokens
        finish_reason = "length"
    return Reply(content, estimate_prompt_tokens(messages), completion_tokens, finish_reason)


def validate_body(body: Any) -> list[dict[str, Any]]:
    """The FastAPI-style `detail` entries for a parsed body; empty when its schema is fine.

    Only the schema is checked here (what a 422 is for); whether the model accepts the request is
    `check_request`'s business, answered with a 400.
    """
    if not isinstance(body, dict):
        return [_detail(("body",), "Input should be a valid dictionary", "dict_type")]
    problems: list[dict[str, Any]] = []
    if "model" not in body:
        problems.append(_detail(("body", "model"), "Field required", "missing"))
    elif not isinstance(body["model"], str):
        problems.append(_detail(("body", "model"), "Input should be a valid string", "string_type"))
    messages = body.get("messages")
    if "messages" not in body:
        problems.append(_detail(("body", "messages"), "Field required", "missing"))
    elif not isinstance(messages, list):
        problems.append(_detail(("body", "messages"), "Input should be a valid list", "list_type"))
    elif not messages:
        problems.append(
            _detail(("body", "messages"), "List should have at least 1 item after validation, not 0", "too_short")
        )
    else:
        for index, message in enumerate(messages):
            problems.extend(_message_problems(index, message))
    problems.extend(_number_problem("temperature", body.get("temperature"), 0, 2))
    problems.extend(_number_problem("top_p", body.get("top_p"), 0, 1))
    max_tokens = body.get("max_tokens")
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
            problems.append(_detail(("body", "max_tokens"), "Input should be a valid integer", "int_type"))
        elif max_tokens <= 0:
            problems.append(_detail(("body", "max_tokens"), "Input should be greater than 0", "greater_than"))
    response_format = body.get("response_format")
    if response_format is not None and not (
        isinstance(response_format, dict) and isinstance(response_format.get("type"), str)
    ):
        problems.append(
            _detail(("body", "response_format"), "Input should be an object with a string 'type'", "model_type")
        )
    return problems


def _message_problems(index: int, message: Any) -> list[dict[str, Any]]:
    loc = ("body", "messages", index)
    if not isinstance(message, dict):
        return [_detail(loc, "Input should be a valid dictionary", "dict_type")]
    problems = []
    if "role" not in message:
        problems.append(_detail((*loc, "role"), "Field required", "missing"))
    elif not isinstance(message["role"], str):
        problems.append(_detail((*loc, "role"), "Input should be a valid string", "string_type"))
    if "content" not in message:
        problems.append(_detail((*loc, "content"), "Field required", "missing"))
    elif not (message["content"] is None or isinstance(message["content"], (str, list))):
        problems.append(_detail((*loc, "content"), "Input should be a valid string or list", "string_type"))
    return problems


def _number_problem(name: str, value: Any, low: float, high: float) -> list[dict[str, Any]]:
    if value is None:
        return []
    loc = ("body", name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return [_detail(loc, "Input should be a valid number", "float_type")]
    if value < low:
        return [_detail(loc, f"Input should be greater than or equal to {low}", "greater_than_equal")]
    if value > high:
        return [_detail(loc, f"Input should be less than or equal to {high}", "less_than_equal")]
    return []


def _detail(loc: Sequence[str | int], msg: str, kind: str) -> dict[str, Any]:
    return {"loc": list(loc), "msg": msg, "type": kind}


def _optional_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer or null")
    return value


def _optional_price(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{name} must be a non-negative number (USD per token) or null")
    return float(value)
