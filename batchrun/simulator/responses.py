"""`POST /v1/responses`: the Responses API, answering an echo of the last user input.

`input` is a string (one user message) or a list of items `{role, content}` (with `type: "message"`
optional), content a string or parts `{type: "input_text", text}`; `instructions` is optional. The
answer is one `message` item with one `output_text`: `echo: <last user text>`, cut at
`max_output_tokens` with status `incomplete` and `incomplete_details.reason` `max_output_tokens`.
Input tokens are the estimate of the instructions and every input text together.
"""

from __future__ import annotations

from collections.abc import Mapping
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
    over_context,
    sampling_problems,
    too_short,
)
from batchrun.simulator.usage import Cut, cut_to_cap, texts_tokens

__all__ = ["RESPONSES", "input_messages"]

_ROLES = frozenset({"user", "assistant", "system", "developer"})
_TEXT_PARTS = frozenset({"input_text", "output_text"})


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(part["text"] for part in content if part.get("type") in _TEXT_PARTS)


def input_messages(value: Any) -> list[tuple[str, str]]:
    """(role, text) of each item of a schema-valid `input`; a string is one user message."""
    if isinstance(value, str):
        return [("user", value)]
    return [(item["role"], _content_text(item["content"])) for item in value]


def _item_problems(index: int, item: Any) -> list[dict[str, Any]]:
    loc: tuple[str | int, ...] = ("body", "input", index)
    if not isinstance(item, dict):
        return [detail(loc, "Input should be a valid dictionary", "dict_type")]
    problems = []
    if item.get("type", "message") != "message":
        problems.append(detail((*loc, "type"), "Input should be 'message' (the simulator takes message items)",
                               "literal_error"))
    if item.get("role") not in _ROLES:
        problems.append(detail((*loc, "role"), "Input should be 'user', 'assistant', 'system' or 'developer'",
                               "literal_error"))
    content = item.get("content")
    if "content" not in item:
        problems.append(detail((*loc, "content"), "Field required", "missing"))
    elif isinstance(content, list):
        for number, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") in _TEXT_PARTS | {"input_image", "input_file"}
                    and (part.get("type") not in _TEXT_PARTS or isinstance(part.get("text"), str))):
                problems.append(detail((*loc, "content", number),
                                       "Input should be a part {type: 'input_text', text}", "model_type"))
    elif not isinstance(content, str):
        problems.append(detail((*loc, "content"), "Input should be a valid string or list", "string_type"))
    return problems


@dataclass(frozen=True, slots=True)
class _Work:
    cut: Cut
    input_tokens: int


class Responses(Endpoint):
    name = "responses"
    path = "/v1/responses"
    core_fields = frozenset({"model", "input", "instructions"})

    def input_problems(self, value: Any) -> list[dict[str, Any]]:
        if isinstance(value, str):
            return []
        if not isinstance(value, list):
            return [detail(("body", "input"), "Input should be a string or a list of items", "string_type")]
        if not value:
            return [too_short(("body", "input"))]
        return [problem for index, item in enumerate(value) for problem in _item_problems(index, item)]

    def option_problems(self, body: Mapping[str, Any]) -> list[dict[str, Any]]:
        problems = sampling_problems(body) + int_problems("max_output_tokens", body.get("max_output_tokens"))
        instructions = body.get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            problems.append(detail(("body", "instructions"), "Input should be a valid string", "string_type"))
        return problems

    def plan(self, model: ModelSpec, body: Mapping[str, Any]) -> Plan:
        messages = input_messages(body["input"])
        instructions = body.get("instructions") or ""
        input_tokens = texts_tokens([instructions, *(text for _, text in messages)])
        last_user = next((text for role, text in reversed(messages) if role == "user"), "")
        cut = cut_to_cap("echo: " + last_user, body.get("max_output_tokens"))
        served = {"input": body["input"], "instructions": body.get("instructions")}
        return Plan(input_tokens + cut.tokens, served, _Work(cut, input_tokens))

    def check(self, model: ModelSpec, body: Mapping[str, Any], plan: Plan) -> Refusal | None:
        # A model's supported_parameters describe chat bodies (as every catalogue publishes them): the
        # Responses API's own parameters (reasoning, text, store...) are not judged against them.
        work: _Work = plan.work
        return over_context(model, work.input_tokens, "the input", body.get("max_output_tokens") or 0,
                            "max_output_tokens")

    def answer(self, model: ModelSpec, plan: Plan, number: int, request_id: str | None) -> dict[str, Any]:
        work: _Work = plan.work
        status = "incomplete" if work.cut.cut else "completed"
        answer = answer_head(f"resp_{number:024x}", "response", model, request_id, created="created_at")
        answer["status"] = status
        answer["incomplete_details"] = {"reason": "max_output_tokens"} if work.cut.cut else None
        answer["output"] = [
            {
                "type": "message",
                "id": f"msg_{number:024x}",
                "status": status,
                "role": "assistant",
                "content": [{"type": "output_text", "text": work.cut.text, "annotations": []}],
            }
        ]
        answer["usage"] = {
            "input_tokens": work.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": work.cut.tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": work.input_tokens + work.cut.tokens,
        }
        return answer


RESPONSES = Responses()
