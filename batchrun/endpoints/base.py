"""What every endpoint description provides, and the checks several of them share.

An `Endpoint` knows, for one URL of the OpenAI API, everything that differs between endpoints: how a
request body is validated (and weighed in tokens) before it is queued, which body keys cap its output,
which keys every model takes, whether it answers at length, and what a well-formed 200 looks like and
what usage it carries. Everything that is the same for every endpoint — keys, limits, retries,
fallbacks, spend caps, the store, the export — lives above it and never asks which endpoint a job is.

The validators raise `InvalidField` with a field path relative to the body (``input[3]``); the job file
reader prefixes ``body.`` for batch-form lines. `read_answer` raises `BadAnswer` with a reason; the
provider client turns it into a retried `BadResponse`.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Final, NamedTuple, NoReturn

import orjson

from batchrun.tokens import request_tokens, text_units

__all__ = ["Answer", "BadAnswer", "Endpoint", "InvalidField", "MISSING", "check_common_options", "json_type",
           "positive_int_option", "show", "usage_int"]

MISSING: Final[Any] = object()

_JSON_TYPES: Final[dict[type, str]] = {
    dict: "object",
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


class InvalidField(Exception):
    """A body field that cannot be sent as it is: where (relative to the body) and why."""

    __slots__ = ("field", "reason")

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class BadAnswer(Exception):
    """A 200 whose body is not a well-formed answer of its endpoint (the reason says what is missing)."""


class Answer(NamedTuple):
    """What batchrun reads out of a well-formed answer; the body itself is kept verbatim elsewhere. A
    tuple: one is made per answer, thousands a second (≈ 1 µs less than a frozen dataclass)."""

    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None


class Endpoint:
    """One endpoint of the OpenAI API, as batchrun sends it. Subclasses fill in the class attributes
    and the two methods; instances are stateless singletons (`batchrun.endpoints.ENDPOINTS`)."""

    #: the URL of a batch line, as the OpenAI Batch API names it
    url: ClassVar[str]
    #: a short name for tables and logs
    name: ClassVar[str]
    #: what a well-formed answer is called, for messages ("a chat completion")
    answer: ClassVar[str]
    #: body keys every model of the endpoint takes: never checked against `supported_parameters`
    core_fields: ClassVar[frozenset[str]]
    #: body keys that cap the answer's length, first found wins ((): the answer has no length to cap)
    output_caps: ClassVar[tuple[str, ...]] = ()
    #: the cap the provider applies when the body sets none (completions: 16); None: no fixed cap
    default_output_cap: ClassVar[int | None] = None
    #: whether a model must be named (a moderation may leave it to the provider)
    model_required: ClassVar[bool] = True
    #: whether `input tokens + output cap` must fit the model's context window (chat-like endpoints)
    checks_context: ClassVar[bool] = True
    #: whether the catalogue's `supported_parameters` and `response_format` capability describe this
    #: endpoint's bodies: catalogues publish them for chat (and text completions, which share them);
    #: judged against a responses or embeddings body they would refuse what the provider takes
    checks_parameters: ClassVar[bool] = False

    @property
    def path(self) -> str:
        """The URL below a base URL that ends in the version (``/v1/embeddings`` -> ``/embeddings``)."""
        return self.url[3:] if self.url.startswith("/v1/") else self.url

    @property
    def answers_at_length(self) -> bool:
        """Whether the answer has a length of its own (completion tokens), capped or not."""
        return bool(self.output_caps)

    def check_body(self, body: dict[str, Any]) -> tuple[int, int | None]:
        """Validate `body` (its `model` is checked by the caller); return (input units, output cap).

        Units are quarter tokens (`batchrun.tokens.text_units`), summed over every text of the request;
        the output cap is the body's own, None if it sets none. Raises `InvalidField`.
        """
        raise NotImplementedError

    def read_answer(self, payload: dict[str, Any], request: bytes, memory: dict[Any, Any] | None = None) -> Answer:
        """Check that a 200's JSON object is a complete answer to `request`; read its usage.
        Raises `BadAnswer`. `memory` is this endpoint's notes on earlier answers of the run (the
        provider client keeps one per endpoint), for what no single answer shows."""
        raise NotImplementedError

    def budget(self, input_tokens: int, output_cap: int | None, assumed_completion: int) -> tuple[int, int]:
        """(prompt, completion) tokens one request may cost at most: the one estimate of the token
        limiter's reservation, the spend cap and `batchrun estimate`."""
        cap = output_cap if output_cap is not None else self.default_output_cap
        return request_tokens(input_tokens, cap, self.answers_at_length, assumed_completion)

    def body_output_cap(self, obj: dict[str, Any]) -> int:
        """The output cap `obj` sends, else 0."""
        for name in self.output_caps:
            value = obj.get(name)
            if type(value) is int and value > 0:
                return value
        return 0

    def __repr__(self) -> str:
        return f"<endpoint {self.url}>"


# -- shared checks -----------------------------------------------------------------------------------------


def positive_int_option(body: dict[str, Any], name: str) -> int | None:
    """`body[name]` if it is a positive integer, None if absent; `InvalidField` otherwise."""
    value = body.get(name)
    if value is not None and (type(value) is not int or value <= 0):
        raise InvalidField(name, f"{name} must be a positive integer (got {show(value)})")
    return value


def check_common_options(body: dict[str, Any], caps: tuple[str, ...]) -> int | None:
    """Check the parameters whose wrong type would only waste a request; return the output cap (the
    first of `caps` the body sets)."""
    cap = None
    for name in caps:
        value = positive_int_option(body, name)
        if cap is None:
            cap = value
    temperature = body.get("temperature")
    if temperature is not None and type(temperature) is not float and type(temperature) is not int:
        raise InvalidField("temperature", f"temperature must be a number (got {show(temperature)})")
    stream = body.get("stream")
    if stream is not None and stream is not False:
        raise InvalidField("stream", "stream must be false or absent")
    return cap


def text_or_token_units(value: Any, field: str) -> int:
    """Units of one prompt or input item: a non-blank string, or a non-empty array of token ids."""
    if type(value) is str:
        if not value or value.isspace():
            raise InvalidField(field, "empty input")
        return text_units(value)
    if type(value) is list:
        if not value:
            raise InvalidField(field, "empty token array")
        for j, token in enumerate(value):
            if type(token) is not int or token < 0:
                raise InvalidField(f"{field}[{j}]", f"a token must be a non-negative integer (got {show(token)})")
        return 4 * len(value)  # a token id is one token: four units
    raise InvalidField(field, f"must be a string or an array of token ids (got {json_type(value)})")


def usage_int(usage: Any, name: str) -> int | None:
    """`usage[name]` as a count of tokens, None if the answer does not say (or says nonsense)."""
    value = usage.get(name) if type(usage) is dict else None
    if type(value) is int:
        return value if value >= 0 else None
    if type(value) is float and math.isfinite(value) and value >= 0:
        return int(value)
    return None


def request_object(request: bytes) -> dict[str, Any]:
    """The request body as sent (the endpoint needs it to judge an answer: how many inputs, say)."""
    try:
        obj = orjson.loads(request)
    except orjson.JSONDecodeError:
        return {}
    return obj if type(obj) is dict else {}


def json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def show(value: Any) -> str:
    """A short rendering of a user's value for a reason: a literal for scalars, a type for containers."""
    if value is None or type(value) in (bool, int, float):
        return orjson.dumps(value).decode()
    if type(value) is str:
        return repr(value if len(value) <= 40 else value[:37] + "...")
    return json_type(value)


def invalid(field: str, reason: str) -> NoReturn:
    raise InvalidField(field, reason)
