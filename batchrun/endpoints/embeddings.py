"""`/v1/embeddings`: one vector per input.

Body: `input` — a non-blank string, a list of them, an array of token ids, or a list of such arrays —
at most 2,048 items; `dimensions` (a positive integer) and `encoding_format` (`float` or `base64`)
optional. Only input tokens count: there is no completion. A well-formed answer has one `data` item
per input, in order (`index` 0, 1, …), each with its `embedding` (a non-empty list of numbers, all of
one length, at least `dimensions` long when the request set it — some servers ignore the parameter and
send the model's full length; or a base64 string); anything less — a body cut short, an embedding
missing or shortened — is a bad answer, retried, never a result. A lone vector is also held to the length
of the run's earlier answers from the same model (and `dimensions`): shorter is cut short. (The first
answer of a run has nothing to be held to: a lone vector cut short there passes.)
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
    positive_int_option,
    request_object,
    show,
    text_or_token_units,
    usage_int,
)
from batchrun.tokens import text_units

__all__ = ["EMBEDDINGS", "MAX_INPUTS", "Embeddings", "input_count"]

#: items one request may embed (OpenAI's limit)
MAX_INPUTS: Final = 2048
_ENCODINGS: Final = ("float", "base64")


class Embeddings(Endpoint):
    url = "/v1/embeddings"
    name = "embeddings"
    answer = "an embeddings list"
    core_fields = frozenset(("model", "input"))
    checks_context = False  # the window applies to each input, not to their sum: the provider judges

    def check_body(self, body: dict[str, Any]) -> tuple[int, int | None]:
        value = body.get("input", MISSING)
        if type(value) is str and value and not value.isspace():  # the usual shapes, inline: the hot path
            units = len(value) if value.isascii() else text_units(value)
        elif type(value) is list and 0 < len(value) <= MAX_INPUTS and (units := _plain_texts(value)):
            pass
        elif type(value) is str:
            units = text_or_token_units(value, "input")
        elif type(value) is list:
            if not value:
                raise InvalidField("input", "empty input")
            if len(value) > MAX_INPUTS:
                raise InvalidField("input", f"{len(value):,} inputs; an embeddings request takes at most "
                                            f"{MAX_INPUTS:,}: split it over several lines")
            if type(value[0]) is int:  # one array of token ids
                units = text_or_token_units(value, "input")
            else:
                units = 0
                for i, item in enumerate(value):
                    units += text_or_token_units(item, f"input[{i}]")
        elif value is MISSING:
            raise InvalidField("input", "missing input")
        else:
            raise InvalidField("input", "input must be a string, a list of strings or an array of token ids "
                                        f"(got {json_type(value)})")
        positive_int_option(body, "dimensions")
        encoding = body.get("encoding_format")
        if encoding is not None and encoding not in _ENCODINGS:
            raise InvalidField("encoding_format", f"encoding_format must be 'float' or 'base64' (got {show(encoding)})")
        return units, None

    def read_answer(self, payload: dict[str, Any], request: bytes, memory: dict[Any, Any] | None = None) -> Answer:
        sent = request_object(request)
        expected = input_count(sent.get("input"))
        dimensions = sent.get("dimensions")
        data = payload.get("data")
        if type(data) is not list:
            raise BadAnswer("an embeddings answer without data")
        if len(data) != expected:
            raise BadAnswer(f"{len(data)} embedding(s) for {expected} input(s)")
        length = None
        for i, item in enumerate(data):
            if type(item) is not dict:
                raise BadAnswer(f"data[{i}] is not an object")
            index = item.get("index", i)
            if index != i:
                raise BadAnswer(f"data[{i}] has index {show(index)}: embeddings out of order")
            vector = item.get("embedding")
            if type(vector) is str:
                if not vector:
                    raise BadAnswer(f"data[{i}].embedding is empty")
                continue
            if type(vector) is not list or not vector:
                raise BadAnswer(f"data[{i}] has no embedding")
            if length is None:
                length = len(vector)
                # Longer is a server that ignores `dimensions` (llmock does): the whole vector, not a cut one.
                if type(dimensions) is int and length < dimensions:
                    raise BadAnswer(f"data[{i}].embedding has {length} numbers; the request asked for {dimensions}")
            elif len(vector) != length:
                raise BadAnswer(f"data[{i}].embedding has {len(vector)} numbers, data[0] {length}: cut short")
        if length is not None and memory is not None:
            _check_length(memory, (payload.get("model"), dimensions if type(dimensions) is int else None), length)
        usage = payload.get("usage")
        prompt = usage_int(usage, "prompt_tokens")
        total = usage_int(usage, "total_tokens")
        return Answer(None, prompt, 0 if prompt is not None else None, total if total is not None else prompt)


EMBEDDINGS: Final = Embeddings()


def _check_length(memory: dict[Any, Any], key: tuple[Any, Any], length: int) -> None:
    """A model answers vectors of one length (for one `dimensions`): shorter than an earlier answer's
    is a vector cut short, even when it is alone in its answer."""
    longest = memory.get(key, 0)
    if length < longest:
        raise BadAnswer(f"an embedding of {length} numbers where this run's earlier answers from model {key[0]!r} "
                        f"had {longest}: cut short")
    if length > longest:
        memory[key] = length


def _plain_texts(items: list[Any]) -> int:
    """Units of a list of non-blank strings, 0 if it is anything else (left to the thorough checks)."""
    units = 0
    for item in items:
        if type(item) is not str or not item or item.isspace():
            return 0
        units += len(item) if item.isascii() else text_units(item)
    return units


def input_count(value: Any) -> int:
    """How many vectors an `input` asks for: 1 for a string or one array of token ids."""
    if type(value) is list and value and type(value[0]) is not int:
        return len(value)
    return 1
