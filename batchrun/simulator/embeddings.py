"""`POST /v1/embeddings`: one deterministic unit vector per input.

`input` is a string, a list of strings, one token array (a list of ints) or a list of token arrays:
at most 2,048 items, each at most the model's context window, 300,000 tokens in all (OpenAI's
limits). A text weighs batchrun's one estimate, a token array one token per element.

The vector of an input is `embedding_for(input, dimensions)`: its signs come from SHAKE-256 of the
input and its magnitudes from a fixed profile of unit norm, so every vector is exactly unit-length,
two inputs almost never share one, and a test can tell which result belongs to which input. The
answer is built for speed (benchmarks push a million requests through it): the JSON text (or the
little-endian float32 bytes, for `encoding_format: base64`) of every 8-component chunk is
precomputed for each of its 256 sign patterns, so a vector costs dimensions/8 table lookups and a
join, handed to orjson as a ready `Fragment` — no per-float Python work.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import math
import random
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, Union

import orjson

from batchrun.simulator.catalog import ModelSpec
from batchrun.simulator.endpoint import Endpoint, Plan, Refusal, detail, int_problems, too_short
from batchrun.tokens import UNITS_PER_TOKEN, text_units, tokens_for_units

__all__ = ["DEFAULT_DIMENSIONS", "EMBEDDINGS", "MAX_DIMENSIONS", "MAX_INPUTS", "MAX_REQUEST_TOKENS",
           "embedding_for", "input_items"]

#: the vector length when the request sets no `dimensions`
DEFAULT_DIMENSIONS = 1536
#: the most `dimensions` the simulator serves (text-embedding-3-large's native size)
MAX_DIMENSIONS = 3072
#: items one request may embed
MAX_INPUTS = 2048
#: tokens summed over all inputs of one request
MAX_REQUEST_TOKENS = 300_000

_ENCODINGS = ("float", "base64")
_CORE_FIELDS = frozenset({"model", "input"})

#: one input: a text or an array of token ids
Item = Union[str, list[int]]
_T = TypeVar("_T", str, bytes)


def input_items(value: Any) -> list[Item]:
    """The inputs of a schema-valid `input`: a string or one token array is one item."""
    if isinstance(value, str) or (value and all(_is_token(token) for token in value)):
        return [value]
    return list(value)


def embedding_for(item: Item, dimensions: int = DEFAULT_DIMENSIONS) -> list[float]:
    """The vector the simulator answers for one input (a text or a token array): unit-length, deterministic."""
    magnitudes = _profile(dimensions)
    signs = _signs(item, dimensions)
    return [
        magnitude if signs[i >> 3] >> (i & 7) & 1 else -magnitude for i, magnitude in enumerate(magnitudes)
    ]


def _signs(item: Item, dimensions: int) -> bytes:
    """One bit per component (bit k of byte j is component 8j+k): set means positive."""
    if isinstance(item, str):
        key = b"s" + item.encode("utf-8", "surrogatepass")
    else:
        key = b"t" + ",".join(map(str, item)).encode()
    return hashlib.shake_256(key).digest((dimensions + 7) // 8)


@functools.lru_cache(maxsize=8)
def _profile(dimensions: int) -> tuple[float, ...]:
    """Fixed magnitudes of unit norm, varied as real embeddings' are (half-normal, seeded by the size)."""
    rng = random.Random(f"batchrun-sim-embed-{dimensions}")
    raw = [abs(rng.gauss(0.0, 1.0)) + 0.01 for _ in range(dimensions)]
    norm = math.sqrt(math.fsum(x * x for x in raw))
    return tuple(x / norm for x in raw)


def _chunk_table(dimensions: int, encode: Callable[[tuple[float, ...]], _T], join: Callable[[_T, _T], _T]
                 ) -> tuple[tuple[_T, ...], ...]:
    """For each chunk of 8 components, its encoding under each of the 256 sign patterns.

    Built from the 16 patterns of each half (bits 0-3 and 4-7), so only 32 encodings per chunk are computed.
    """
    magnitudes = _profile(dimensions)
    table = []
    for start in range(0, dimensions, 8):
        low, high = magnitudes[start : start + 4], magnitudes[start + 4 : start + 8]
        lows = [encode(_signed(low, pattern)) for pattern in range(16)]
        if not high:
            table.append(tuple(lows[pattern & 15] for pattern in range(256)))
            continue
        highs = [encode(_signed(high, pattern)) for pattern in range(16)]
        table.append(tuple(join(lows[pattern & 15], highs[pattern >> 4]) for pattern in range(256)))
    return tuple(table)


def _signed(magnitudes: tuple[float, ...], pattern: int) -> tuple[float, ...]:
    return tuple(m if pattern >> k & 1 else -m for k, m in enumerate(magnitudes))


@functools.lru_cache(maxsize=4)
def _json_table(dimensions: int) -> tuple[tuple[str, ...], ...]:
    """For each chunk, the JSON text of its components under each sign pattern (repr: exact round trip)."""
    return _chunk_table(dimensions, lambda values: ",".join(map(repr, values)), lambda a, b: a + "," + b)


@functools.lru_cache(maxsize=4)
def _float32_table(dimensions: int) -> tuple[tuple[bytes, ...], ...]:
    """For each chunk, its components as little-endian float32 under each sign pattern."""
    return _chunk_table(dimensions, lambda values: struct.pack(f"<{len(values)}f", *values), bytes.__add__)


def vector_json(item: Item, dimensions: int) -> orjson.Fragment:
    """`embedding_for(item, dimensions)` as ready JSON."""
    table = _json_table(dimensions)
    return orjson.Fragment("[" + ",".join([row[b] for row, b in zip(table, _signs(item, dimensions))]) + "]")


def vector_base64(item: Item, dimensions: int) -> str:
    """`embedding_for(item, dimensions)` as base64 of little-endian float32, OpenAI's `base64` format."""
    table = _float32_table(dimensions)
    raw = b"".join([row[b] for row, b in zip(table, _signs(item, dimensions))])
    return base64.b64encode(raw).decode("ascii")


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _item_tokens(item: Item) -> int:
    return tokens_for_units(_item_units(item))


def _item_units(item: Item) -> int:
    return text_units(item) if isinstance(item, str) else len(item) * UNITS_PER_TOKEN


def _input_problems(value: Any) -> list[dict[str, Any]]:
    loc: tuple[str | int, ...] = ("body", "input")
    if isinstance(value, str):
        return [] if value else [detail(loc, "String should have at least 1 character", "string_too_short")]
    if not isinstance(value, list):
        return [detail(loc, "Input should be a string, a list of strings or an array of token ids", "type_error")]
    if not value:
        return [too_short(loc)]
    if all(_is_token(token) for token in value):
        return []
    problems = []
    for index, item in enumerate(value):
        if isinstance(item, str):
            if not item:
                problems.append(detail((*loc, index), "String should have at least 1 character", "string_too_short"))
        elif isinstance(item, list) and item and all(_is_token(token) for token in item):
            continue
        else:
            problems.append(
                detail((*loc, index), "Input should be a non-empty string or a non-empty array of token ids",
                       "type_error")
            )
    return problems


@dataclass(frozen=True, slots=True)
class _Work:
    items: list[Item]
    tokens: list[int]  # per item, for the context window
    prompt_tokens: int  # all items together, rounded once
    dimensions: int
    base64: bool


class Embeddings(Endpoint):
    name = "embeddings"
    path = "/v1/embeddings"
    core_fields = _CORE_FIELDS

    def input_problems(self, value: Any) -> list[dict[str, Any]]:
        return _input_problems(value)

    def option_problems(self, body: Mapping[str, Any]) -> list[dict[str, Any]]:
        problems = int_problems("dimensions", body.get("dimensions"))
        encoding = body.get("encoding_format")
        if encoding is not None and encoding not in _ENCODINGS:
            problems.append(detail(("body", "encoding_format"), "Input should be 'float' or 'base64'", "enum"))
        return problems

    def plan(self, model: ModelSpec, body: Mapping[str, Any]) -> Plan:
        items = input_items(body["input"])
        prompt_tokens = tokens_for_units(sum(_item_units(item) for item in items))
        dimensions = body.get("dimensions") or DEFAULT_DIMENSIONS
        work = _Work(items, [_item_tokens(item) for item in items], prompt_tokens, dimensions,
                     body.get("encoding_format") == "base64")
        return Plan(prompt_tokens, {"input": body["input"], "dimensions": dimensions}, work)

    def check(self, model: ModelSpec, body: Mapping[str, Any], plan: Plan) -> Refusal | None:
        refusal = super().check(model, body, plan)
        if refusal is not None:
            return refusal
        work: _Work = plan.work
        if len(work.items) > MAX_INPUTS:
            return Refusal("invalid_value", f"Invalid 'input': maximum array size is {MAX_INPUTS}, "
                                            f"got {len(work.items)}. Split the inputs over several requests.")
        if work.dimensions > MAX_DIMENSIONS:
            return Refusal("invalid_value", f"This model does not support specifying dimensions larger than "
                                            f"{MAX_DIMENSIONS} (got {work.dimensions}).")
        if model.context_length is not None:
            for index, tokens in enumerate(work.tokens):
                if tokens > model.context_length:
                    return Refusal(
                        "context_length_exceeded",
                        f"This model's maximum context length is {model.context_length} tokens, however you "
                        f"requested {tokens} tokens in input[{index}]. Please reduce your input.",
                    )
        if work.prompt_tokens > MAX_REQUEST_TOKENS:
            return Refusal("max_tokens_per_request", f"Requested {work.prompt_tokens} tokens, max "
                                                     f"{MAX_REQUEST_TOKENS} tokens per request.")
        return None

    def answer(self, model: ModelSpec, plan: Plan, number: int, request_id: str | None) -> dict[str, Any]:
        work: _Work = plan.work
        vector = vector_base64 if work.base64 else vector_json
        answer: dict[str, Any] = {
            "object": "list",
            "data": [
                {"object": "embedding", "index": index, "embedding": vector(item, work.dimensions)}
                for index, item in enumerate(work.items)
            ],
            "model": model.id,
        }
        if request_id is not None:
            answer["request_id"] = request_id
        answer["usage"] = {"prompt_tokens": work.prompt_tokens, "total_tokens": work.prompt_tokens}
        return answer


EMBEDDINGS = Embeddings()

