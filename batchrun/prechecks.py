"""Before a job is sent: which model it goes to, and whether the provider could run it at all.

The provider's catalogue (`catalog.py`) changes under a long batch: models are retired, aliases move,
and each model publishes (or not) its context window, the parameters it takes and whether it can
answer in JSON. A request the catalogue already says will be refused is a wasted request, a wasted
attempt and, at scale, a burst of 400s; so `prepare` decides first, as a pure function:

* the model is served (directly or through an alias) → send it, the alias kept as an alias, since the
  provider moves an alias on purpose and the job asked for the category, not today's target;
* it is not → the first served model of its fallback chain, with the body's `model` swapped;
* nothing is → `Refused("model_not_found")`, with what *is* served and how to add a fallback.

Then the served model's published limits are checked; metadata the catalogue leaves out is unknown
and its check is skipped, never guessed. With `drop_unsupported`, parameters the model does not take
are removed instead of failing the job, and listed so the run can say what it changed.

What is checked depends on the job's endpoint (`batchrun.endpoints`): the context window for chat,
completions and responses (input tokens + the output cap), not for embeddings and moderations (whose
window applies per input: the provider judges); `supported_parameters` and the JSON capability only for
chat and completions bodies — catalogues publish them for chat parameters, and judged against a
responses or embeddings body they would refuse what the provider takes.

`prepare` runs for every job on the hot path, so the common case costs a few dict lookups: the body
is parsed only when a check needs it, and re-serialised only when something changed — otherwise the
exact bytes of the original body are sent.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

import orjson

from batchrun.catalog import Catalog, ModelInfo
from batchrun.endpoints import CHAT, Endpoint

__all__ = [
    "CONTEXT_LENGTH_EXCEEDED",
    "MODEL_NOT_FOUND",
    "RESPONSE_FORMAT_UNSUPPORTED",
    "UNKNOWN_ENDPOINT",
    "UNSUPPORTED_PARAMETER",
    "Fallbacks",
    "Prepared",
    "Refused",
    "prepare",
]

MODEL_NOT_FOUND: Final = "model_not_found"
CONTEXT_LENGTH_EXCEEDED: Final = "context_length_exceeded"
UNSUPPORTED_PARAMETER: Final = "unsupported_parameter"
RESPONSE_FORMAT_UNSUPPORTED: Final = "response_format_unsupported"
#: a job whose endpoint this batchrun does not know (stored by a newer one)
UNKNOWN_ENDPOINT: Final = "unknown_endpoint"

#: `response_format.type` values that ask for JSON output and need the capability
_JSON_FORMATS: Final = frozenset(("json_object", "json_schema"))

_loads = orjson.loads
_dumps = orjson.dumps
_JSONDecodeError = orjson.JSONDecodeError


@dataclass(frozen=True, slots=True)
class Fallbacks:
    """What to send instead of a model the provider no longer serves.

    `run` comes from `--fallback` (repeatable) or `fallback_models`, and applies to every model;
    `table` from the `[fallback]` table of batchrun.toml, model by model. The run's list comes first:
    whoever starts a run knows best what this run may spend its budget on.
    """

    run: tuple[str, ...] = ()
    table: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def chain(self, model: str) -> tuple[str, ...]:
        """The models to try for `model`, in order: `run`, then `table[model]`; no duplicates, and
        never `model` itself (it is what is missing)."""
        seen = {model}
        chain: list[str] = []
        for name in (*self.run, *self.table.get(model, ())):
            if name not in seen:
                seen.add(name)
                chain.append(name)
        return tuple(chain)


class Prepared(NamedTuple):
    """Send this: the exact bytes, and the model they name. A tuple, as `records.ClaimedJob` is: one is
    made per job, thousands a second (as a frozen dataclass it took ≈ 1.5 µs, ≈ 0.3 as a tuple)."""

    body: bytes  # the original body, encoded unchanged, unless a fallback or a drop changed it
    model_sent: str  # an alias stays an alias: the provider resolves it at request time
    fallback_reason: str | None  # why another model than the job's is sent; None if it is the job's
    dropped: tuple[str, ...] = ()  # parameters removed under drop_unsupported, in body order


@dataclass(frozen=True, slots=True)
class Refused:
    """Fail the job now, without a request: the provider would refuse it anyway."""

    code: str  # MODEL_NOT_FOUND · CONTEXT_LENGTH_EXCEEDED · UNSUPPORTED_PARAMETER · RESPONSE_FORMAT_UNSUPPORTED
    message: str  # names the model, the numbers or the parameter, and what to do about it


def prepare(
    model: str,
    body: str,
    input_tokens: int,
    max_tokens: int | None,
    catalog: Catalog,
    fallbacks: Fallbacks = Fallbacks(),  # frozen, so one shared default is safe
    drop_unsupported: bool = False,
    gone: AbstractSet[str] = frozenset(),
    endpoint: Endpoint = CHAT,
) -> Prepared | Refused:
    """What to send for one job, or why not to send it.

    `body` is the request's JSON text, naming `model` (or, for an endpoint where a model is optional,
    naming none: `model` is then ""); `input_tokens` and `max_tokens` are the job's (see
    `jobfile.JobSpec`), `endpoint` where it goes: which fields every model takes, which cap its answer,
    whether the context window is checked. `gone` holds the models the provider answered "not found"
    for during this run although the catalogue listed them: they count as absent until the catalogue
    is fetched again.
    """
    if not catalog or not model:  # nothing known about the provider, or no model named: let it judge
        return Prepared(body.encode(), model, None)

    info = _served(model, catalog, gone)
    model_sent = model
    reason = None
    if info is None:
        for candidate in fallbacks.chain(model):
            info = _served(candidate, catalog, gone)
            if info is not None:
                model_sent = candidate
                reason = f"{model} {_why_absent(model, catalog, gone)}; fell back to {candidate}"
                break
        else:
            return _model_not_found(model, catalog, fallbacks, gone)

    params = info.supported_parameters if endpoint.checks_parameters else None
    json_capable = info.response_format if endpoint.checks_parameters else None
    context_length = info.context_length if endpoint.checks_context else None
    if reason is None and params is None and json_capable is not False:
        # The common case with a sparse catalogue: at most the context check, usually without parsing.
        if context_length is not None:
            budget = max_tokens if max_tokens is not None else _budget_from_text(body)
            if budget is None:  # the body may name a cap the caller did not pass: read it
                obj = _parse(body)
                budget = endpoint.body_output_cap(obj) if obj is not None else 0
            refused = _check_context(model_sent, info, input_tokens, budget, endpoint)
            if refused is not None:
                return refused
        return Prepared(body.encode(), model, None)

    obj = _parse(body)
    if obj is None:  # not a JSON object: the provider will answer 400/422, and say why better than us
        return Prepared(body.encode(), model, None)

    unsupported: list[str] = []
    if params is not None:
        allowed = _allowed(params, endpoint)
        if not allowed.issuperset(obj):
            unsupported = [name for name in obj if name not in allowed]
    wants_json = json_capable is False and _wants_json(obj)

    if context_length is not None:
        budget = max_tokens if max_tokens is not None else endpoint.body_output_cap(obj)
        if drop_unsupported and budget and not set(endpoint.output_caps).isdisjoint(unsupported):
            budget = 0  # the cap is dropped (a model takes all its names or none): only the prompt counts
        refused = _check_context(model_sent, info, input_tokens, budget, endpoint)
        if refused is not None:
            return refused

    dropped: tuple[str, ...] = ()
    if unsupported or wants_json:
        if not drop_unsupported:
            if unsupported:
                return _unsupported_parameter(model_sent, info, unsupported)
            return _response_format_unsupported(model_sent, info, obj)
        if wants_json and "response_format" not in unsupported:
            unsupported.append("response_format")
        for name in unsupported:
            del obj[name]
        dropped = tuple(unsupported)

    if reason is None and not dropped:
        return Prepared(body.encode(), model, None)
    if reason is not None:
        obj["model"] = model_sent
    return Prepared(_dumps(obj), model_sent, reason, dropped)


# -- resolution -----------------------------------------------------------------------------------------


def _served(name: str, catalog: Catalog, gone: AbstractSet[str]) -> ModelInfo | None:
    """The entry serving `name`, or None if the catalogue lacks it or the provider disowned it (or,
    for an alias, its target) during this run."""
    info = catalog.resolve(name)
    if info is None:
        return None
    if gone and (name in gone or info.id in gone or (info.alias_for is not None and info.alias_for in gone)):
        return None
    return info


def _why_absent(model: str, catalog: Catalog, gone: AbstractSet[str]) -> str:
    if catalog.resolve(model) is None:
        return "is not in the provider's catalogue"
    entry = catalog.entries.get(model)
    target = entry.alias_for if entry is not None else None
    if target is not None and model not in gone:
        return f"is an alias of {target}, which the provider answered as unknown during this run"
    return "was answered as unknown by the provider during this run"


def _model_not_found(model: str, catalog: Catalog, fallbacks: Fallbacks, gone: AbstractSet[str]) -> Refused:
    message = (f"Model {model!r} {_why_absent(model, catalog, gone)}. "
               f"The catalogue lists: {catalog.describe()}")
    unknown = sorted(name for name in gone if name in catalog.entries)
    if unknown:
        message += f"; answered as unknown during this run: {', '.join(unknown)}"
    chain = fallbacks.chain(model)
    if chain:
        message += f". None of its fallbacks ({', '.join(chain)}) is served either"
    message += (
        f". Add a fallback with --fallback MODEL, or per model in batchrun.toml: "
        f"[fallback] {_toml_key(model)} = [\"MODEL\", ...]"
    )
    return Refused(MODEL_NOT_FOUND, message)


def _toml_key(name: str) -> str:
    if name and all(c.isascii() and (c.isalnum() or c in "-_") for c in name):
        return name
    return _dumps(name).decode()


# -- checks ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _allowed(params: tuple[str, ...], endpoint: Endpoint) -> frozenset[str]:
    """What a model with these supported_parameters takes at `endpoint`: them, the endpoint's core
    fields, and every name of the output cap if it takes one (chat's cap goes by two). Cached: a
    catalogue has few distinct lists."""
    allowed = set(params) | endpoint.core_fields
    if not allowed.isdisjoint(endpoint.output_caps):
        allowed.update(endpoint.output_caps)
    return frozenset(allowed)


def _parse(body: str) -> dict[str, Any] | None:
    try:
        obj = _loads(body)
    except _JSONDecodeError:
        return None
    return obj if type(obj) is dict else None


def _budget_from_text(body: str) -> int | None:
    """0 when the body's text cannot hold a completion cap, else None (parse it to know). Both names
    contain `max_`; orjson never escapes ASCII, so only a `\\u` escape could hide one."""
    if "max_" in body or "\\u" in body:
        return None
    return 0


def _check_context(model_sent: str, info: ModelInfo, prompt_tokens: int, budget: int,
                   endpoint: Endpoint) -> Refused | None:
    context_length = info.context_length
    if context_length is None:
        return None
    if prompt_tokens + budget <= context_length:
        return None
    caps = endpoint.output_caps
    cap = "max_tokens" if "max_tokens" in caps else caps[0] if caps else "max_tokens"
    return Refused(
        CONTEXT_LENGTH_EXCEEDED,
        f"The request needs about {prompt_tokens} prompt tokens + {budget} {cap} > the context window "
        f"of {info.id} ({context_length} tokens){_serving(model_sent, info)}. Shorten the input, lower "
        f"{cap}, or send the job to a model with a larger context window.",
    )


def _unsupported_parameter(model_sent: str, info: ModelInfo, unsupported: list[str]) -> Refused:
    names = ", ".join(repr(name) for name in unsupported)
    plural = "s" if len(unsupported) > 1 else ""
    supported = ", ".join(info.supported_parameters or ()) or "none"
    return Refused(
        UNSUPPORTED_PARAMETER,
        f"Model {_named(model_sent, info)} does not support the parameter{plural} {names} "
        f"(it supports: {supported}). Remove {'them' if plural else 'it'} from the job, send the job "
        "to another model, or run with --drop-unsupported (drop_unsupported = true in batchrun.toml) "
        "to send it without.",
    )


def _response_format_unsupported(model_sent: str, info: ModelInfo, obj: dict[str, Any]) -> Refused:
    kind = obj["response_format"]["type"]
    return Refused(
        RESPONSE_FORMAT_UNSUPPORTED,
        f"Model {_named(model_sent, info)} cannot answer with response_format {kind!r} "
        "(capabilities.response_format is false in the catalogue). Send the job to a model that "
        "can, or run with --drop-unsupported to send it without response_format.",
    )


def _wants_json(obj: dict[str, Any]) -> bool:
    response_format = obj.get("response_format")
    return type(response_format) is dict and response_format.get("type") in _JSON_FORMATS


def _serving(model_sent: str, info: ModelInfo) -> str:
    return f", which serves {model_sent}" if info.id != model_sent else ""


def _named(model_sent: str, info: ModelInfo) -> str:
    """`'fast' (served by sim-small)` for an alias, `'sim-small'` otherwise."""
    if info.id != model_sent:
        return f"{model_sent!r} (served by {info.id})"
    return repr(model_sent)
