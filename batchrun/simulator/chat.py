"""`POST /v1/chat/completions`: a deterministic echo of the last user message.

`validate_body` is the schema (a 422), `check_request` the model's own rules (a 400: unsupported
parameters, the context window, the `response_format` capability), `compose_reply` the answer:
`echo: <last user message>`, or `{"echo": ...}` when JSON is asked for, cut at the output cap
(`max_completion_tokens`, OpenAI's current name, or `max_tokens`) with finish_reason `length`.
All pure functions, so they can be read and tested without a socket.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from batchrun.simulator.catalog import ModelSpec
from batchrun.simulator.endpoint import (
    Endpoint,
    Plan,
    Refusal,
    answer_head,
    detail,
    int_problems,
    model_problems,
    over_context,
    sampling_problems,
    token_usage,
    too_short,
    unsupported_parameters,
)
from batchrun.simulator.usage import cut_to_cap, texts_tokens

__all__ = ["CHAT", "Reply", "check_request", "compose_reply", "content_text", "output_cap", "validate_body"]

#: body keys every chat model takes; never reported as unsupported
_CORE_FIELDS = frozenset({"model", "messages"})

#: `response_format.type` values that ask for JSON output and need the capability
_JSON_FORMATS = frozenset({"json_object", "json_schema"})


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


def prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """Prompt tokens of a validated `messages` list: the estimate of all contents together."""
    return texts_tokens(content_text(message.get("content")) for message in messages)


def output_cap(body: Mapping[str, Any]) -> int | None:
    """The completion cap: `max_completion_tokens` when present (it wins, as with OpenAI), else `max_tokens`."""
    cap = body.get("max_completion_tokens")
    return cap if cap is not None else body.get("max_tokens")


def wants_json(body: Mapping[str, Any]) -> bool:
    """Whether the request asks for JSON output through `response_format`."""
    response_format = body.get("response_format")
    return isinstance(response_format, Mapping) and response_format.get("type") in _JSON_FORMATS


def check_request(model: ModelSpec, body: Mapping[str, Any]) -> Refusal | None:
    """The first reason `model` refuses a schema-valid `body` (a 400), or None if it will run it.

    Checks only what the model publishes: a `None` in its spec means the provider does not say,
    and the simulator then accepts, as a real provider with unpublished limits would.
    """
    refusal = unsupported_parameters(model, body, _CORE_FIELDS)
    if refusal is not None:
        return refusal
    if model.context_length is not None:
        refusal = over_context(model, prompt_tokens(body["messages"]), "the messages", output_cap(body) or 0,
                               "max_tokens")
        if refusal is not None:
            return refusal
    if model.response_format is False and wants_json(body):
        return Refusal(
            "unsupported_response_format",
            f"Model '{model.id}' does not support response_format "
            f"{body['response_format'].get('type')} (capabilities.response_format is false)",
        )
    return None


def compose_reply(body: Mapping[str, Any]) -> Reply:
    """The simulated completion: `echo: <last user message>`, or `{"echo": ...}` when JSON is asked for.

    Deterministic so tests and rehearsals can tie each result to its job; cut to the output cap the
    way a provider stops generating, with finish_reason `length`.
    """
    messages: Sequence[Mapping[str, Any]] = body["messages"]
    last_user = next(
        (content_text(message.get("content")) for message in reversed(messages) if message.get("role") == "user"),
        "",
    )
    content = json.dumps({"echo": last_user}) if wants_json(body) else "echo: " + last_user
    cut = cut_to_cap(content, output_cap(body))
    return Reply(cut.text, prompt_tokens(messages), cut.tokens, "length" if cut.cut else "stop")


def validate_body(body: Any) -> list[dict[str, Any]]:
    """The FastAPI-style `detail` entries for a parsed body; empty when its schema is fine.

    Only the schema is checked here (what a 422 is for); whether the model accepts the request is
    `check_request`'s business, answered with a 400.
    """
    if not isinstance(body, dict):
        return [detail(("body",), "Input should be a valid dictionary", "dict_type")]
    problems = model_problems(body)
    messages = body.get("messages")
    if "messages" not in body:
        problems.append(detail(("body", "messages"), "Field required", "missing"))
    elif not isinstance(messages, list):
        problems.append(detail(("body", "messages"), "Input should be a valid list", "list_type"))
    elif not messages:
        problems.append(too_short(("body", "messages")))
    else:
        for index, message in enumerate(messages):
            problems.extend(_message_problems(index, message))
    problems.extend(sampling_problems(body))
    problems.extend(int_problems("max_tokens", body.get("max_tokens")))
    problems.extend(int_problems("max_completion_tokens", body.get("max_completion_tokens")))
    response_format = body.get("response_format")
    if response_format is not None and not (
        isinstance(response_format, dict) and isinstance(response_format.get("type"), str)
    ):
        problems.append(
            detail(("body", "response_format"), "Input should be an object with a string 'type'", "model_type")
        )
    return problems


def _message_problems(index: int, message: Any) -> list[dict[str, Any]]:
    loc = ("body", "messages", index)
    if not isinstance(message, dict):
        return [detail(loc, "Input should be a valid dictionary", "dict_type")]
    problems = []
    if "role" not in message:
        problems.append(detail((*loc, "role"), "Field required", "missing"))
    elif not isinstance(message["role"], str):
        problems.append(detail((*loc, "role"), "Input should be a valid string", "string_type"))
    if "content" not in message:
        problems.append(detail((*loc, "content"), "Field required", "missing"))
    elif not (message["content"] is None or isinstance(message["content"], (str, list))):
        problems.append(detail((*loc, "content"), "Input should be a valid string or list", "string_type"))
    return problems


class Chat(Endpoint):
    name = "chat"
    path = "/v1/chat/completions"
    core_fields = _CORE_FIELDS

    def validate(self, body: Any) -> list[dict[str, Any]]:
        return validate_body(body)

    def plan(self, model: ModelSpec, body: Mapping[str, Any]) -> Plan:
        reply = compose_reply(body)
        return Plan(reply.total_tokens, body["messages"], reply)

    def check(self, model: ModelSpec, body: Mapping[str, Any], plan: Plan) -> Refusal | None:
        return check_request(model, body)

    def answer(self, model: ModelSpec, plan: Plan, number: int, request_id: str | None) -> dict[str, Any]:
        reply: Reply = plan.work
        answer = answer_head(f"chatcmpl-{number}", "chat.completion", model, request_id)
        answer["choices"] = [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.content},
                "finish_reason": reply.finish_reason,
            }
        ]
        answer["usage"] = token_usage(reply.prompt_tokens, reply.completion_tokens)
        return answer


CHAT = Chat()
