"""`/v1/responses`: OpenAI's newer conversation endpoint.

Body: `input` — a non-blank string, or a list of items (messages `{role, content}` whose content is a
string or parts such as `{"type": "input_text", "text": …}`, or other items such as function call
outputs, not ours to look into); `instructions` optional; `max_output_tokens` caps the answer. A
well-formed answer has `output` (a list) and `status`: `completed`, or `incomplete` with its
`incomplete_details.reason` recorded as the finish reason (`max_output_tokens` becomes `length`, like a
chat completion cut at its cap). Usage is `input_tokens`/`output_tokens`, kept as prompt/completion.
"""

from __future__ import annotations

from typing import Any, Final

from batchrun.endpoints.base import (
    MISSING,
    Answer,
    BadAnswer,
    Endpoint,
    InvalidField,
    check_common_options,
    json_type,
    show,
    usage_int,
)
from batchrun.endpoints.chat import content_parts
from batchrun.tokens import text_units

__all__ = ["RESPONSES", "Responses"]

_CAPS: Final = ("max_output_tokens",)
_TEXT_PARTS: Final = ("input_text", "output_text", "text")


class Responses(Endpoint):
    url = "/v1/responses"
    name = "responses"
    answer = "a response"
    core_fields = frozenset(("model", "input"))
    output_caps = _CAPS

    def check_body(self, body: dict[str, Any]) -> tuple[int, int | None]:
        value = body.get("input", MISSING)
        if type(value) is str:
            if not value or value.isspace():
                raise InvalidField("input", "empty input")
            units = text_units(value)
        elif type(value) is list:
            if not value:
                raise InvalidField("input", "empty input")
            units = sum(_item_units(item, i) for i, item in enumerate(value))
        elif value is MISSING:
            raise InvalidField("input", "missing input")
        else:
            raise InvalidField("input", f"input must be a string or a list of items (got {json_type(value)})")
        instructions = body.get("instructions")
        if instructions is not None:
            if type(instructions) is not str:
                raise InvalidField("instructions", f"instructions must be a string (got {show(instructions)})")
            units += text_units(instructions)
        return units, check_common_options(body, _CAPS)

    def read_answer(self, payload: dict[str, Any], request: bytes, memory: dict[Any, Any] | None = None) -> Answer:
        output = payload.get("output")
        if type(output) is not list:
            raise BadAnswer("a response without output")
        status = payload.get("status")
        if status == "completed":
            finish_reason = "stop"
        elif status == "incomplete":
            details = payload.get("incomplete_details")
            reason = details.get("reason") if type(details) is dict else None
            finish_reason = "length" if reason in (None, "max_output_tokens") else str(reason)
        else:
            raise BadAnswer(f"a response with status {show(status)} (expected 'completed' or 'incomplete')")
        usage = payload.get("usage")
        return Answer(finish_reason, usage_int(usage, "input_tokens"), usage_int(usage, "output_tokens"),
                      usage_int(usage, "total_tokens"))


RESPONSES: Final = Responses()


def _item_units(item: Any, i: int) -> int:
    field = f"input[{i}]"
    if type(item) is not dict:
        raise InvalidField(field, f"an input item must be an object (got {json_type(item)})")
    content = item.get("content", MISSING)
    if content is MISSING:
        if "role" in item:
            raise InvalidField(f"{field}.content", "missing content")
        return 0  # a function call output, a reasoning item...: the provider judges it
    if type(content) is str:
        if not content or content.isspace():
            raise InvalidField(f"{field}.content", "empty content")
        return text_units(content)
    if type(content) is list:
        units, has_content = content_parts(content, f"{field}.content", _TEXT_PARTS)
        if not has_content:
            raise InvalidField(f"{field}.content", "empty content")
        return units
    raise InvalidField(f"{field}.content", f"content must be a string or a list of parts (got {json_type(content)})")
