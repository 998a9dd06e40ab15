"""`POST /v1/moderations`: a deterministic verdict per input, with no usage.

`input` is a string, a list of strings (one result each) or a list of multimodal parts (one result
for their text parts together); `model` is optional and defaults to the first model that serves
moderations (`sim-moderation` in the stock catalogue). A category is flagged exactly when the
input's text contains the category's name (case-insensitive; "violence" flags `violence`), so a
test knows every verdict in advance. A moderation counts against request limits, never tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from batchrun.simulator.catalog import ModelSpec
from batchrun.simulator.endpoint import Endpoint, Plan, detail, too_short

__all__ = ["CATEGORIES", "MODERATIONS", "moderation_for"]

#: OpenAI's moderation categories
CATEGORIES: tuple[str, ...] = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)

_FLAGGED_SCORE = 0.98
_CLEAN_SCORE = 0.0001
_PART_TYPES = frozenset({"text", "image_url"})


def moderation_for(text: str) -> dict[str, Any]:
    """The result the simulator answers for one input's text."""
    lowered = text.lower()
    categories = {category: category in lowered for category in CATEGORIES}
    return {
        "flagged": any(categories.values()),
        "categories": categories,
        "category_scores": {
            category: _FLAGGED_SCORE if flagged else _CLEAN_SCORE for category, flagged in categories.items()
        },
    }


def input_texts(value: Any) -> list[str]:
    """The text of each input of a schema-valid `input`: multimodal parts are one input."""
    if isinstance(value, str):
        return [value]
    if all(isinstance(item, str) for item in value):
        return list(value)
    return ["".join(part.get("text", "") for part in value if part.get("type") == "text")]


def _input_problems(value: Any) -> list[dict[str, Any]]:
    loc: tuple[str | int, ...] = ("body", "input")
    if isinstance(value, str):
        return []
    if not isinstance(value, list):
        return [detail(loc, "Input should be a string, a list of strings or a list of parts", "type_error")]
    if not value:
        return [too_short(loc)]
    if all(isinstance(item, str) for item in value):
        return []
    return [
        detail((*loc, index), "Input should be a part {type: 'text', text} or {type: 'image_url', ...}",
               "model_type")
        for index, part in enumerate(value)
        if not (isinstance(part, dict) and part.get("type") in _PART_TYPES
                and (part["type"] != "text" or isinstance(part.get("text"), str)))
    ]


class Moderations(Endpoint):
    name = "moderations"
    path = "/v1/moderations"
    core_fields = frozenset({"model", "input"})
    model_required = False

    def input_problems(self, value: Any) -> list[dict[str, Any]]:
        return _input_problems(value)

    def model_name(self, body: Mapping[str, Any], models: Sequence[ModelSpec]) -> str | None:
        if "model" in body:
            return super().model_name(body, models)
        return next((model.id for model in models if self.name in model.endpoints), None)

    def plan(self, model: ModelSpec, body: Mapping[str, Any]) -> Plan:
        return Plan(None, body["input"], input_texts(body["input"]))

    def answer(self, model: ModelSpec, plan: Plan, number: int, request_id: str | None) -> dict[str, Any]:
        answer: dict[str, Any] = {"id": f"modr-{number}", "model": model.id}
        if request_id is not None:
            answer["request_id"] = request_id
        answer["results"] = [moderation_for(text) for text in plan.work]
        return answer


MODERATIONS = Moderations()
