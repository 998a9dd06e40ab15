"""`/v1/moderations`: is this text (or image) harmful?

Body: `input` — a non-blank string, a list of them, or a list of multimodal parts (`{"type": "text",
"text": …}`, `{"type": "image_url", …}`); `model` may be left to the provider. There is no completion
and no usage: a moderation counts as a request, not as tokens, and costs what the catalogue cannot say.
A well-formed answer has one `results` item per input.
"""

from __future__ import annotations

from typing import Any, Final

from batchrun.endpoints.base import (
    MISSING,
    Answer,
    BadAnswer,
    Endpoint,
    InvalidField,
    json_type,
    request_object,
    text_or_token_units,
)
from batchrun.endpoints.chat import content_parts

__all__ = ["MODERATIONS", "Moderations"]


class Moderations(Endpoint):
    url = "/v1/moderations"
    name = "moderations"
    answer = "a moderation"
    core_fields = frozenset(("model", "input"))
    model_required = False
    checks_context = False

    def check_body(self, body: dict[str, Any]) -> tuple[int, int | None]:
        value = body.get("input", MISSING)
        if type(value) is str:
            return text_or_token_units(value, "input"), None
        if type(value) is list and value and all(type(item) is dict for item in value):
            units, has_content = content_parts(value, "input", ("text",))
            if not has_content:
                raise InvalidField("input", "empty input")
            return units, None
        if type(value) is list:
            if not value:
                raise InvalidField("input", "empty input")
            units = 0
            for i, item in enumerate(value):
                if type(item) is not str:
                    raise InvalidField(f"input[{i}]", f"must be a string (got {json_type(item)})")
                units += text_or_token_units(item, f"input[{i}]")
            return units, None
        if value is MISSING:
            raise InvalidField("input", "missing input")
        raise InvalidField("input", f"input must be a string or a list of strings (got {json_type(value)})")

    def budget(self, input_tokens: int, output_cap: int | None, assumed_completion: int) -> tuple[int, int]:
        """A moderation counts as a request, not as tokens: nothing to reserve against a token limit."""
        return 0, 0

    def read_answer(self, payload: dict[str, Any], request: bytes, memory: dict[Any, Any] | None = None) -> Answer:
        results = payload.get("results")
        if type(results) is not list or not results:
            raise BadAnswer("a moderation without results")
        sent = request_object(request).get("input")
        expected = len(sent) if type(sent) is list and sent and type(sent[0]) is str else 1
        if len(results) != expected:
            raise BadAnswer(f"{len(results)} moderation result(s) for {expected} input(s)")
        for i, result in enumerate(results):
            if type(result) is not dict or "flagged" not in result:
                raise BadAnswer(f"results[{i}] has no verdict (flagged)")
        return Answer(None, None, None, None)


MODERATIONS: Final = Moderations()
