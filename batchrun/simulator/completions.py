"""`POST /v1/completions`: the legacy text completion, one echo choice per prompt.

`prompt` is a string or a non-empty list of strings; each prompt gets the choice `echo: <prompt>`,
cut at `max_tokens` (default 16, as OpenAI's) with finish_reason `length`. Prompt tokens are the
estimate of all prompts together; each prompt plus `max_tokens` must fit the context window.
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
    token_usage,
    too_short,
)
from batchrun.simulator.usage import Cut, cut_to_cap, texts_tokens

__all__ = ["COMPLETIONS", "DEFAULT_MAX_TOKENS", "prompts"]

#: the completion cap when the request sets none (OpenAI's default for this endpoint)
DEFAULT_MAX_TOKENS = 16


def prompts(value: Any) -> list[str]:
    """The prompts of a schema-valid `prompt`."""
    return [value] if isinstance(value, str) else list(value)


@dataclass(frozen=True, slots=True)
class _Work:
    cuts: list[Cut]
    prompt_tokens: int
    completion_tokens: int


class Completions(Endpoint):
    name = "completions"
    path = "/v1/completions"
    core_fields = frozenset({"model", "prompt"})
    input_field = "prompt"

    def input_problems(self, value: Any) -> list[dict[str, Any]]:
        if isinstance(value, str):
            return []
        if not isinstance(value, list):
            return [detail(("body", "prompt"), "Input should be a string or a list of strings", "string_type")]
        if not value:
            return [too_short(("body", "prompt"))]
        return [detail(("body", "prompt", index), "Input should be a valid string", "string_type")
                for index, item in enumerate(value) if not isinstance(item, str)]

    def option_problems(self, body: Mapping[str, Any]) -> list[dict[str, Any]]:
        return sampling_problems(body) + int_problems("max_tokens", body.get("max_tokens"))

    def plan(self, model: ModelSpec, body: Mapping[str, Any]) -> Plan:
        texts = prompts(body["prompt"])
        cap = body.get("max_tokens") or DEFAULT_MAX_TOKENS
        cuts = [cut_to_cap("echo: " + text, cap) for text in texts]
        prompt_tokens = texts_tokens(texts)
        completion_tokens = sum(cut.tokens for cut in cuts)
        return Plan(prompt_tokens + completion_tokens, body["prompt"], _Work(cuts, prompt_tokens, completion_tokens))

    def check(self, model: ModelSpec, body: Mapping[str, Any], plan: Plan) -> Refusal | None:
        refusal = super().check(model, body, plan)
        if refusal is not None or model.context_length is None:
            return refusal
        cap = body.get("max_tokens") or DEFAULT_MAX_TOKENS
        single = isinstance(body["prompt"], str)
        for index, text in enumerate(prompts(body["prompt"])):
            where = "the prompt" if single else f"prompt[{index}]"
            refusal = over_context(model, texts_tokens((text,)), where, cap, "max_tokens")
            if refusal is not None:
                return refusal
        return None

    def answer(self, model: ModelSpec, plan: Plan, number: int, request_id: str | None) -> dict[str, Any]:
        work: _Work = plan.work
        answer = answer_head(f"cmpl-{number}", "text_completion", model, request_id)
        answer["choices"] = [
            {"text": cut.text, "index": index, "logprobs": None, "finish_reason": "length" if cut.cut else "stop"}
            for index, cut in enumerate(work.cuts)
        ]
        answer["usage"] = token_usage(work.prompt_tokens, work.completion_tokens)
        return answer


COMPLETIONS = Completions()
