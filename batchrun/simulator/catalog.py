"""The simulator's model catalogue: the models it serves, their aliases, and `GET /v1/models`.

A `ModelSpec` says what a model publishes and enforces (context window, supported parameters, the
`response_format` capability, prices); the endpoint modules (`chat`, ...) apply those rules to a
request, `gateway` resolves a request's `model` through `resolve_model`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

#: the `owned_by` of every catalogue entry, so nobody mistakes a rehearsal for the real provider
OWNER = "batchrun-simulator"

#: what a model accepts besides `model` and `messages` unless its spec says otherwise
DEFAULT_SUPPORTED_PARAMETERS: tuple[str, ...] = (
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "response_format",
    "presence_penalty",
    "frequency_penalty",
    "n",
    "user",
    "tools",
    "tool_choice",
    "logprobs",
    "stream",
)


#: what the stock embedding model accepts
EMBEDDING_PARAMETERS: tuple[str, ...] = ("model", "input", "dimensions", "encoding_format", "user")

#: what a text-generating model serves unless its spec says otherwise
TEXT_ENDPOINTS: tuple[str, ...] = ("chat", "completions", "responses")
#: every endpoint the simulator has
ENDPOINT_NAMES: tuple[str, ...] = ("chat", "completions", "responses", "embeddings", "moderations")


@dataclass
class ModelSpec:
    """One model the simulator serves. A `None` field is metadata the provider does not publish.

    Real catalogues often omit context windows, parameter lists or prices; clients must cope, so
    `None` is omitted from `GET /v1/models` and disables the matching check.
    """

    id: str
    context_length: int | None = 8192
    supported_parameters: list[str] | None = field(default_factory=lambda: list(DEFAULT_SUPPORTED_PARAMETERS))
    response_format: bool | None = True
    prompt_price: float | None = None  # USD per prompt token
    completion_price: float | None = None  # USD per completion token
    #: the endpoints (`Endpoint.name`) the model serves; any other answers 400 model_not_supported
    endpoints: list[str] = field(default_factory=lambda: list(TEXT_ENDPOINTS))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """A spec from a JSON object with the field names of this class (the `/_sim/config` form).

        Raises ValueError naming the offending field, because the caller is usually a test or a
        script that needs to know exactly what it got wrong.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a model must be an object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model field(s) {unknown}; known: {sorted(known)}")
        model_id = data.get("id")
        if not isinstance(model_id, str) or not model_id:
            raise ValueError("a model needs a non-empty string 'id'")
        spec = cls(id=model_id)
        if "context_length" in data:
            spec.context_length = _optional_int(data["context_length"], "context_length")
        if "supported_parameters" in data:
            params = data["supported_parameters"]
            if params is not None and not (isinstance(params, list) and all(isinstance(p, str) for p in params)):
                raise ValueError("supported_parameters must be a list of strings or null")
            spec.supported_parameters = None if params is None else list(params)
        if "response_format" in data:
            capability = data["response_format"]
            if capability is not None and not isinstance(capability, bool):
                raise ValueError("response_format must be true, false or null")
            spec.response_format = capability
        if "endpoints" in data:
            served = data["endpoints"]
            if not (isinstance(served, list) and all(name in ENDPOINT_NAMES for name in served)):
                raise ValueError(f"endpoints must be a list of endpoint names out of {list(ENDPOINT_NAMES)}")
            spec.endpoints = list(served)
        for price_field in ("prompt_price", "completion_price"):
            if price_field in data:
                setattr(spec, price_field, _optional_price(data[price_field], price_field))
        return spec

    def to_entry(self, aliases: Iterable[str] = ()) -> dict[str, Any]:
        """The model's `GET /v1/models` entry, leaving out whatever is unknown."""
        entry: dict[str, Any] = {"id": self.id, "object": "model", "owned_by": OWNER}
        if self.context_length is not None:
            entry["context_length"] = self.context_length
        if self.supported_parameters is not None:
            entry["supported_parameters"] = list(self.supported_parameters)
        if self.response_format is not None:
            entry["capabilities"] = {"response_format": self.response_format}
        pricing = {
            name: price
            for name, price in (("prompt", self.prompt_price), ("completion", self.completion_price))
            if price is not None
        }
        if pricing:
            entry["pricing"] = pricing
        if tuple(self.endpoints) != TEXT_ENDPOINTS:  # only the models that are not for text generation
            entry["endpoints"] = list(self.endpoints)
        entry["aliases"] = sorted(aliases)
        return entry


def default_models() -> list[ModelSpec]:
    """The stock catalogue: three text models (a cheap one, an expensive one, and a small one that lacks
    features) serving chat, completions and responses; an embedding model; a moderation model."""
    return [
        ModelSpec("sim-small", context_length=8192, prompt_price=0.10e-6, completion_price=0.40e-6),
        ModelSpec("sim-large", context_length=32768, prompt_price=1.00e-6, completion_price=4.00e-6),
        ModelSpec(
            "sim-mini",
            context_length=2048,
            response_format=False,
            # no structured output and no tools: the model a job file's `tools` or
            # `response_format` must not be routed to
            supported_parameters=[
                p for p in DEFAULT_SUPPORTED_PARAMETERS if p not in ("response_format", "tools", "tool_choice")
            ],
        ),
        ModelSpec(
            "sim-embed",
            context_length=8192,  # per input
            supported_parameters=list(EMBEDDING_PARAMETERS),
            response_format=None,
            prompt_price=0.02e-6,
            completion_price=0.0,
            endpoints=["embeddings"],
        ),
        ModelSpec(
            "sim-moderation",
            context_length=None,
            supported_parameters=["model", "input"],
            response_format=None,
            endpoints=["moderations"],
        ),
    ]


def default_aliases() -> dict[str, str]:
    """The provider's category aliases; they follow the catalogue as it changes."""
    return {"fast": "sim-small", "reasoning": "sim-large", "embed": "sim-embed"}


def catalogue_entries(models: Sequence[ModelSpec], aliases: Mapping[str, str]) -> list[dict[str, Any]]:
    """The `data` of `GET /v1/models`: every model, then every alias whose target is still served."""
    served = {model.id for model in models}
    entries = [
        model.to_entry(alias for alias, target in aliases.items() if target == model.id) for model in models
    ]
    entries.extend(
        {"id": alias, "object": "model", "owned_by": OWNER, "alias_for": target}
        for alias, target in aliases.items()
        if target in served
    )
    return entries


def resolve_model(name: str, models: Sequence[ModelSpec], aliases: Mapping[str, str]) -> ModelSpec | None:
    """The model a request's `model` names, directly or through an alias; None if nothing serves it."""
    by_id = {model.id: model for model in models}
    if name in by_id:
        return by_id[name]
    target = aliases.get(name)
    return by_id.get(target) if target is not None else None


def _optional_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer or null")
    return value


def _optional_price(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{name} must be a non-negative number (USD per token) or null")
    return float(value)
