"""Prechecks as a pure function: job + catalogue -> what to send, or why not. No I/O.

Catalogues are built by hand from `ModelInfo` entries, including aliases (`alias_for`) and entries
whose metadata is missing, as real providers publish them.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from batchrun.catalog import Catalog, ModelInfo, parse_catalog
from batchrun.prechecks import (
    CONTEXT_LENGTH_EXCEEDED,
    MODEL_NOT_FOUND,
    RESPONSE_FORMAT_UNSUPPORTED,
    UNSUPPORTED_PARAMETER,
    Fallbacks,
    Prepared,
    Refused,
    prepare,
)
from batchrun.simulator.catalog import (
    DEFAULT_SUPPORTED_PARAMETERS,
    ModelSpec,
    catalogue_entries,
    default_aliases,
    default_models,
    resolve_model,
)
from batchrun.simulator.chat import check_request

PARAMS = ("max_tokens", "temperature", "top_p", "stop", "seed", "response_format", "tools", "tool_choice")
MINI_PARAMS = ("max_tokens", "temperature", "top_p", "stop", "seed")


def catalog(*extra: ModelInfo) -> Catalog:
    """sim-small / sim-large with full metadata, sim-mini without JSON or tools, sim-bare with none,
    and the aliases fast -> sim-small, reasoning -> sim-large, tiny -> sim-mini."""
    return Catalog([
        ModelInfo("sim-small", context_length=8192, supported_parameters=PARAMS, response_format=True,
                  prompt_price=0.1e-6, completion_price=0.4e-6),
        ModelInfo("sim-large", context_length=32768, supported_parameters=PARAMS, response_format=True,
                  prompt_price=1e-6, completion_price=4e-6),
        ModelInfo("sim-mini", context_length=2048, supported_parameters=MINI_PARAMS, response_format=False),
        ModelInfo("sim-bare"),
        ModelInfo("fast", alias_for="sim-small"),
        ModelInfo("reasoning", alias_for="sim-large"),
        ModelInfo("tiny", alias_for="sim-mini"),
        *extra,
    ])


def body_of(model: str = "sim-small", *, content: str = "Hello there", **params: Any) -> str:
    """The body as the job file loader stores it: orjson, compact, keys in the file's order."""
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": content}], **params}).decode()


def cap(name: str, value: int) -> dict[str, Any]:
    """A completion cap under either of its names, as keyword arguments for `body_of`."""
    return {name: value}


def run(model: str, body: str | None = None, input_tokens: int | None = None, max_tokens: int | None = None,
        cat: Catalog | None = None, **kwargs: Any) -> Prepared | Refused:
    body = body if body is not None else body_of(model)
    if input_tokens is None:
        input_tokens = -(-sum(len(m["content"]) for m in json.loads(body)["messages"]) // 4)
    return prepare(model, body, input_tokens, max_tokens, cat if cat is not None else catalog(), **kwargs)


def sent(result: Prepared | Refused) -> Prepared:
    assert isinstance(result, Prepared), result
    return result


def refused(result: Prepared | Refused, code: str) -> Refused:
    assert isinstance(result, Refused), result
    assert result.code == code, result
    return result


# --- Fallbacks.chain -------------------------------------------------------------------------------------


def test_chain_puts_the_run_list_before_the_table_without_duplicates_or_the_model_itself() -> None:
    fallbacks = Fallbacks(run=("fast", "sim-large", "fast"), table={"old": ("sim-large", "old", "sim-mini")})
    assert fallbacks.chain("old") == ("fast", "sim-large", "sim-mini")
    assert fallbacks.chain("other") == ("fast", "sim-large")
    assert Fallbacks(run=("fast",)).chain("fast") == ()
    assert Fallbacks().chain("old") == ()
    assert Fallbacks(table={"old": ("a", "b")}).chain("old") == ("a", "b")


def test_fallbacks_is_frozen() -> None:
    with pytest.raises(AttributeError):
        Fallbacks().run = ("x",)  # type: ignore[misc]


# --- an unknown catalogue -----------------------------------------------------------------------------------


def test_empty_catalogue_sends_the_body_unchanged_without_checks() -> None:
    body = body_of("anything", tools=[{"type": "function"}], response_format={"type": "json_object"})
    result = sent(prepare("anything", body, 10**9, 10**9, Catalog([]), Fallbacks(run=("fast",)),
                          gone=frozenset({"anything"})))
    assert result == Prepared(body.encode(), "anything", None, ())


# --- availability, aliases, fallbacks ------------------------------------------------------------------


def test_available_model_is_sent_byte_identical() -> None:
    # Key order and spacing a re-serialisation would change: the bytes must be the original ones.
    body = '{"messages": [{"role": "user", "content": "Hi"}], "model": "sim-small", "temperature": 0.50}'
    result = sent(run("sim-small", body))
    assert result.body == body.encode()
    assert result.model_sent == "sim-small"
    assert result.fallback_reason is None
    assert result.dropped == ()


def test_non_ascii_body_is_encoded_as_utf8_unchanged() -> None:
    body = body_of("sim-bare", content="Grüße, 世界 🙂")
    assert sent(run("sim-bare", body)).body == body.encode("utf-8")


def test_alias_stays_an_alias() -> None:
    body = body_of("fast")
    result = sent(run("fast", body, max_tokens=100))
    assert result.model_sent == "fast"
    assert result.body == body.encode()
    assert b'"model":"fast"' in result.body


def test_absent_model_falls_back_and_only_the_model_field_changes() -> None:
    body = body_of("sim-old", temperature=0.2, max_tokens=50)
    result = sent(run("sim-old", body, max_tokens=50, fallbacks=Fallbacks(run=("fast",))))
    assert result.model_sent == "fast"  # the alias is sent, not its target
    assert result.fallback_reason == "sim-old is not in the provider's catalogue; fell back to fast"
    assert result.dropped == ()
    original = json.loads(body)
    resent = json.loads(result.body)
    assert list(resent) == list(original)  # same keys, same order
    assert resent == {**original, "model": "fast"}


def test_first_available_fallback_wins_and_the_run_list_comes_before_the_table() -> None:
    fallbacks = Fallbacks(run=("sim-gone", "reasoning"), table={"sim-old": ("fast",)})
    assert sent(run("sim-old", fallbacks=fallbacks)).model_sent == "reasoning"
    table_only = Fallbacks(run=("sim-gone",), table={"sim-old": ("nope", "fast", "reasoning")})
    assert sent(run("sim-old", fallbacks=table_only)).model_sent == "fast"


def test_table_applies_only_to_its_model() -> None:
    fallbacks = Fallbacks(table={"sim-old": ("fast",)})
    assert sent(run("sim-old", fallbacks=fallbacks)).model_sent == "fast"
    refused(run("sim-older", fallbacks=fallbacks), MODEL_NOT_FOUND)


def test_no_fallback_refuses_with_model_not_found_listing_the_models_and_how_to_add_one() -> None:
    result = refused(run("sim-old"), MODEL_NOT_FOUND)
    assert "'sim-old'" in result.message
    assert catalog().describe() in result.message
    for name in ("sim-small", "sim-large", "sim-mini", "fast → sim-small"):
        assert name in result.message
    assert "--fallback MODEL" in result.message
    assert "[fallback]" in result.message and "batchrun.toml" in result.message


def test_model_not_found_names_the_fallbacks_that_were_tried() -> None:
    result = refused(run("sim-old", fallbacks=Fallbacks(run=("sim-older",), table={"sim-old": ("x",)})),
                     MODEL_NOT_FOUND)
    assert "sim-older, x" in result.message


def test_model_not_found_quotes_a_toml_key_that_needs_it() -> None:
    result = refused(run("llama-3.1-70b"), MODEL_NOT_FOUND)
    assert '[fallback] "llama-3.1-70b" = ["MODEL", ...]' in result.message


def test_gone_model_counts_as_absent() -> None:
    gone = frozenset({"sim-small"})
    result = refused(run("sim-small", gone=gone), MODEL_NOT_FOUND)
    assert "answered as unknown" in result.message
    fell = sent(run("sim-small", gone=gone, fallbacks=Fallbacks(run=("sim-large",))))
    assert fell.model_sent == "sim-large"
    assert fell.fallback_reason is not None and fell.fallback_reason.startswith("sim-small ")
    assert fell.fallback_reason.endswith("; fell back to sim-large")


def test_alias_whose_target_is_gone_is_gone_and_is_skipped_as_a_fallback() -> None:
    gone = frozenset({"sim-small"})
    result = refused(run("fast", gone=gone), MODEL_NOT_FOUND)
    assert "alias of sim-small" in result.message
    fallbacks = Fallbacks(run=("fast", "reasoning"))
    assert sent(run("sim-old", gone=gone, fallbacks=fallbacks)).model_sent == "reasoning"
    # the alias itself named as gone, while its target is fine
    assert sent(run("fast", gone=frozenset({"fast"}), fallbacks=Fallbacks(run=("sim-small",)))).model_sent \
        == "sim-small"


def test_alias_whose_target_the_catalogue_lacks_is_available_with_unknown_metadata() -> None:
    cat = Catalog([ModelInfo("sim-small", context_length=10), ModelInfo("odd", alias_for="missing")])
    body = body_of("odd", content="x" * 1000, tools=[])
    assert sent(run("odd", body, max_tokens=10**6, cat=cat)).body == body.encode()
    refused(run("odd", body, cat=cat, gone=frozenset({"missing"})), MODEL_NOT_FOUND)


def test_checks_apply_to_the_fallback_model() -> None:
    body = body_of("sim-old", tools=[{"type": "function"}], temperature=1)
    result = refused(run("sim-old", body, fallbacks=Fallbacks(run=("tiny",))), UNSUPPORTED_PARAMETER)
    assert "'tools'" in result.message and "tiny" in result.message and "sim-mini" in result.message
    dropped = sent(run("sim-old", body, fallbacks=Fallbacks(run=("tiny",)), drop_unsupported=True))
    assert dropped.model_sent == "tiny"
    assert dropped.dropped == ("tools",)
    assert json.loads(dropped.body) == {"model": "tiny", "messages": json.loads(body)["messages"],
                                        "temperature": 1}


# --- a) the context window --------------------------------------------------------------------------------


def test_context_check_counts_the_input_tokens_plus_max_tokens() -> None:
    # sim-mini: 2048 tokens.
    body = body_of("sim-mini", max_tokens=1047)
    sent(run("sim-mini", body, input_tokens=1001, max_tokens=1047))  # 1001 + 1047 = 2048: fits exactly
    result = refused(run("sim-mini", body, input_tokens=1001, max_tokens=1048), CONTEXT_LENGTH_EXCEEDED)
    assert "about 1001 prompt tokens + 1048 max_tokens > the context window of sim-mini (2048 tokens)" \
        in result.message
    assert "max_tokens" in result.message


def test_context_check_names_the_alias_and_its_target() -> None:
    result = refused(run("fast", input_tokens=10_000), CONTEXT_LENGTH_EXCEEDED)
    assert "10000 prompt tokens + 0 max_tokens > the context window of sim-small (8192 tokens)" in result.message
    assert "fast" in result.message


def test_context_budget_comes_from_the_body_when_the_argument_is_none() -> None:
    for name in ("max_tokens", "max_completion_tokens"):
        body = body_of("sim-small", **cap(name, 8000))
        result = refused(run("sim-small", body, input_tokens=200), CONTEXT_LENGTH_EXCEEDED)
        assert "200 prompt tokens + 8000 max_tokens" in result.message
    # the same on a model whose only metadata is its context window (the no-parse path)
    cat = Catalog([ModelInfo("ctx-only", context_length=1000)])
    body = body_of("ctx-only", max_completion_tokens=900)
    assert refused(run("ctx-only", body, input_tokens=200, cat=cat), CONTEXT_LENGTH_EXCEEDED)
    assert sent(run("ctx-only", body_of("ctx-only"), input_tokens=200, cat=cat))
    # max_completion_tokens before max_tokens
    both = body_of("ctx-only", max_tokens=10, max_completion_tokens=900)
    refused(run("ctx-only", both, input_tokens=200, cat=cat), CONTEXT_LENGTH_EXCEEDED)


def test_the_max_tokens_argument_overrides_the_body() -> None:
    body = body_of("sim-small", max_tokens=8000)
    assert sent(run("sim-small", body, input_tokens=200, max_tokens=100)).body == body.encode()


def test_context_check_comes_before_the_parameter_checks() -> None:
    body = body_of("sim-mini", tools=[])
    refused(run("sim-mini", body, input_tokens=2_500, max_tokens=1), CONTEXT_LENGTH_EXCEEDED)


def test_dropping_the_completion_cap_leaves_only_the_prompt_to_fit() -> None:
    cat = Catalog([ModelInfo("nocap", context_length=1000, supported_parameters=("temperature",))])
    body = body_of("nocap", max_tokens=5000)
    refused(run("nocap", body, input_tokens=100, max_tokens=5000, cat=cat), CONTEXT_LENGTH_EXCEEDED)
    result = sent(run("nocap", body, input_tokens=100, max_tokens=5000, cat=cat, drop_unsupported=True))
    assert result.dropped == ("max_tokens",)
    assert "max_tokens" not in json.loads(result.body)


# --- b) supported parameters ------------------------------------------------------------------------------


def test_unsupported_parameters_are_refused_naming_them_and_the_model() -> None:
    body = body_of("sim-mini", tools=[{"type": "function"}], temperature=0, tool_choice="auto", logprobs=True)
    result = refused(run("sim-mini", body), UNSUPPORTED_PARAMETER)
    assert "'tools', 'tool_choice', 'logprobs'" in result.message
    assert "'sim-mini'" in result.message
    assert "--drop-unsupported" in result.message
    assert "temperature" in result.message  # listed among what it supports


def test_drop_unsupported_removes_them_in_body_order_and_records_them() -> None:
    body = body_of("sim-mini", tools=[{"type": "function"}], temperature=0, tool_choice="auto")
    result = sent(run("sim-mini", body, drop_unsupported=True))
    assert result.dropped == ("tools", "tool_choice")
    assert result.model_sent == "sim-mini"
    assert result.fallback_reason is None
    expected = json.loads(body)
    del expected["tools"], expected["tool_choice"]
    assert json.loads(result.body) == expected
    assert list(json.loads(result.body)) == ["model", "messages", "temperature"]


def test_model_and_messages_are_always_allowed() -> None:
    cat = Catalog([ModelInfo("strict", supported_parameters=())])
    body = body_of("strict")
    assert sent(run("strict", body, cat=cat)).body == body.encode()
    refused(run("strict", body_of("strict", temperature=1), cat=cat), UNSUPPORTED_PARAMETER)


@pytest.mark.parametrize(("listed", "used"), [("max_tokens", "max_completion_tokens"),
                                              ("max_completion_tokens", "max_tokens")])
def test_either_name_of_the_completion_cap_allows_the_other(listed: str, used: str) -> None:
    cat = Catalog([ModelInfo("m", supported_parameters=(listed,))])
    body = body_of("m", **cap(used, 10))
    assert sent(run("m", body, cat=cat)).body == body.encode()


def test_supported_body_with_all_metadata_known_is_byte_identical() -> None:
    body = body_of("sim-small", max_tokens=64, temperature=0.7, response_format={"type": "json_object"})
    result = sent(run("sim-small", body, max_tokens=64))
    assert result == Prepared(body.encode(), "sim-small", None, ())


# --- c) response_format --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["json_object", "json_schema"])
def test_json_response_format_on_a_model_without_the_capability_is_refused(kind: str) -> None:
    cat = Catalog([ModelInfo("nojson", response_format=False)])  # parameters unknown: only the capability
    body = body_of("nojson", response_format={"type": kind})
    result = refused(run("nojson", body, cat=cat), RESPONSE_FORMAT_UNSUPPORTED)
    assert kind in result.message and "'nojson'" in result.message
    dropped = sent(run("nojson", body, cat=cat, drop_unsupported=True))
    assert dropped.dropped == ("response_format",)
    assert "response_format" not in json.loads(dropped.body)


def test_text_response_format_needs_no_capability() -> None:
    cat = Catalog([ModelInfo("nojson", response_format=False)])
    body = body_of("nojson", response_format={"type": "text"})
    assert sent(run("nojson", body, cat=cat)).body == body.encode()


def test_response_format_unlisted_and_incapable_is_an_unsupported_parameter_dropped_once() -> None:
    body = body_of("tiny", response_format={"type": "json_object"}, seed=1)
    refused(run("tiny", body), UNSUPPORTED_PARAMETER)
    result = sent(run("tiny", body, drop_unsupported=True))
    assert result.dropped == ("response_format",)
    assert result.model_sent == "tiny"


# --- missing metadata -------------------------------------------------------------------------------------


def test_missing_metadata_skips_every_check() -> None:
    body = body_of("sim-bare", tools=[], response_format={"type": "json_schema"}, whatever=1)
    result = sent(run("sim-bare", body, input_tokens=10**8, max_tokens=10**8))
    assert result == Prepared(body.encode(), "sim-bare", None, ())


def test_each_piece_of_metadata_is_checked_on_its_own() -> None:
    cat = Catalog([
        ModelInfo("ctx", context_length=100),
        ModelInfo("params", supported_parameters=("temperature",)),
        ModelInfo("fmt", response_format=False),
    ])
    big = 10_000
    refused(run("ctx", body_of("ctx", tools=[], response_format={"type": "json_object"}), input_tokens=big,
                cat=cat), CONTEXT_LENGTH_EXCEEDED)
    sent(run("ctx", body_of("ctx", tools=[], response_format={"type": "json_object"}), cat=cat))
    refused(run("params", body_of("params", tools=[]), input_tokens=big, cat=cat), UNSUPPORTED_PARAMETER)
    sent(run("params", body_of("params", temperature=1), input_tokens=big, max_tokens=big, cat=cat))
    refused(run("fmt", body_of("fmt", response_format={"type": "json_object"}), cat=cat),
            RESPONSE_FORMAT_UNSUPPORTED)
    sent(run("fmt", body_of("fmt", tools=[]), input_tokens=big, max_tokens=big, cat=cat))


# --- bodies that are not JSON objects ------------------------------------------------------------------


@pytest.mark.parametrize("body", ['["model", "sim-mini"]', "not json", '"sim-mini"', "{"])
def test_a_body_that_is_not_a_json_object_is_sent_as_is(body: str) -> None:
    assert sent(run("sim-mini", body, input_tokens=1)) == Prepared(body.encode(), "sim-mini", None, ())
    # even when a fallback would be due: there is no model field to change
    assert sent(run("sim-old", body, input_tokens=1, fallbacks=Fallbacks(run=("tiny",)))).body == body.encode()


# --- agreement with the simulator ------------------------------------------------------------------------


SIM_BODIES: list[dict[str, Any]] = [
    {"max_tokens": 100},
    {"max_tokens": 5000},
    {"tools": [{"type": "function", "function": {"name": "f"}}]},
    {"response_format": {"type": "json_object"}},
    {"response_format": {"type": "text"}},
    {"temperature": 0.3, "seed": 7},
    {"logit_bias": {"1": 2}},
]


@pytest.mark.parametrize("extra", SIM_BODIES)
@pytest.mark.parametrize("model", ["sim-small", "sim-large", "sim-mini", "fast", "reasoning"])
@pytest.mark.parametrize("chars", [10, 9000, 40_000])
def test_prepare_refuses_exactly_what_the_simulator_refuses(model: str, extra: dict[str, Any], chars: int) -> None:
    models, aliases = default_models(), default_aliases()
    cat = parse_catalog(catalogue_entries(models, aliases))
    raw = {"model": model, "messages": [{"role": "user", "content": "x" * chars}], **extra}
    spec = resolve_model(model, models, aliases)
    assert spec is not None
    simulator = check_request(spec, raw)
    ours = prepare(model, orjson.dumps(raw).decode(), -(-chars // 4), extra.get("max_tokens"), cat)
    assert isinstance(ours, Refused) == (simulator is not None), (ours, simulator)
    if simulator is not None and isinstance(ours, Refused) and chars == 10:  # one reason at most
        assert ours.code == {"unsupported_response_format": RESPONSE_FORMAT_UNSUPPORTED}.get(
            simulator.code, simulator.code)


def test_simulator_defaults_are_what_these_tests_assume() -> None:
    assert "tools" in DEFAULT_SUPPORTED_PARAMETERS
    assert ModelSpec("x").response_format is True


# --- the hot path -------------------------------------------------------------------------------------


def test_the_hot_path_with_full_metadata_sends_each_body_as_it_is() -> None:
    # (how fast is bench/'s business: a wall-clock bound here fails on a busy machine first)
    cat = catalog()
    bodies = [body_of("fast", content=f"question {i} " * 20, max_tokens=100, temperature=0.5) for i in range(2000)]
    jobs = [(b, len(json.loads(b)["messages"][0]["content"])) for b in bodies]
    for body, chars in jobs:
        prepared = prepare("fast", body, chars, 100, cat)
        assert isinstance(prepared, Prepared), prepared
        assert prepared.model_sent == "fast" and prepared.body == body.encode() and not prepared.dropped
