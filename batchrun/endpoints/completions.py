"""`/v1/completions`: the legacy text completion, a prompt in, text out.

Body: `prompt` — a non-blank string, a list of them, an array of token ids or a list of such arrays;
`max_tokens` caps each answer (the provider's default is 16 when the body sets none). A well-formed
answer has `choices`, each with its `text`; usage is `prompt_tokens`/`completion_tokens`.
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
    text_or_token_units,
    usage_int,
)

__all__ = ["COMPLETIONS", "Completions"]

_CAPS: Final = ("max_tokens",)


class Completions(Endpoint):
    url = "/v1/completions"
    name = "completions"
    answer = "a text completion"
    core_fields = frozenset(("model", "prompt"))
    output_caps = _CAPS
    checks_parameters = True
    default_output_cap = 16  # OpenAI's documented default for max_tokens

    def check_body(self, body: dict[str, Any]) -> tuple[int, int | None]:
        prompt = body.get("prompt", MISSING)
        if type(prompt) is str or (type(prompt) is list and prompt and type(prompt[0]) is int):
            units = text_or_token_units(prompt, "prompt")
        elif type(prompt) is list:
            if not prompt:
                raise InvalidField("prompt", "empty prompt")
            units = sum(text_or_token_units(item, f"prompt[{i}]") for i, item in enumerate(prompt))
        elif prompt is MISSING:
            raise InvalidField("prompt", "missing prompt")
        else:
            raise InvalidField("prompt", f"prompt must be a string, a list of strings or an array of token ids "
                                         f"(got {json_type(prompt)})")
        return units, check_common_options(body, _CAPS)

    def read_answer(self, payload: dict[str, Any], request: bytes, memory: dict[Any, Any] | None = None) -> Answer:
        choices = payload.get("choices")
        if type(choices) is not list or not choices:
            raise BadAnswer("a text completion without choices")
        for i, choice in enumerate(choices):
            if type(choice) is not dict or type(choice.get("text")) is not str:
                raise BadAnswer(f"choices[{i}] has no text")
        # the first choice that stopped at its cap marks the result truncated
        reasons = [choice.get("finish_reason") for choice in choices]
        finish_reason = "length" if "length" in reasons else reasons[0] if type(reasons[0]) is str else None
        usage = payload.get("usage")
        return Answer(finish_reason, usage_int(usage, "prompt_tokens"), usage_int(usage, "completion_tokens"),
                      usage_int(usage, "total_tokens"))


COMPLETIONS: Final = Completions()
