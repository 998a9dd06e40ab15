"""Each endpoint's description, as pure functions: what a body must hold (the reasons a user reads at
submit), what it weighs in tokens, and which 200s are answers — a cut or short one never is."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from batchrun.endpoints import CHAT, ENDPOINTS, BadAnswer, Endpoint, InvalidField
from batchrun.endpoints.completions import COMPLETIONS
from batchrun.endpoints.embeddings import EMBEDDINGS, MAX_INPUTS
from batchrun.endpoints.moderations import MODERATIONS
from batchrun.endpoints.responses import RESPONSES
from batchrun.tokens import DEFAULT_ASSUMED_COMPLETION


def check(endpoint: Endpoint, body: dict[str, Any]) -> tuple[int, int | None]:
    return endpoint.check_body(body)


def refusal(endpoint: Endpoint, body: dict[str, Any]) -> tuple[str, str]:
    with pytest.raises(InvalidField) as caught:
        endpoint.check_body(body)
    return caught.value.field, caught.value.reason


def read(endpoint: Endpoint, answer: dict[str, Any], request: dict[str, Any],
         memory: dict[Any, Any] | None = None) -> Any:
    return endpoint.read_answer(answer, orjson.dumps(request), memory)


def bad(endpoint: Endpoint, answer: dict[str, Any], request: dict[str, Any],
        memory: dict[Any, Any] | None = None) -> str:
    with pytest.raises(BadAnswer) as caught:
        read(endpoint, answer, request, memory)
    return str(caught.value)


def test_every_endpoint_is_known_by_its_batch_url() -> None:
    assert list(ENDPOINTS) == ["/v1/chat/completions", "/v1/embeddings", "/v1/completions", "/v1/responses",
                               "/v1/moderations"]
    assert [e.path for e in ENDPOINTS.values()] == ["/chat/completions", "/embeddings", "/completions",
                                                    "/responses", "/moderations"]


# --- embeddings ----------------------------------------------------------------------------------------


def test_embeddings_take_a_string_strings_or_token_arrays_and_count_input_tokens_only() -> None:
    assert check(EMBEDDINGS, {"input": "a" * 40}) == (40, None)  # 40 units = 10 tokens, no output cap
    assert check(EMBEDDINGS, {"input": ["abcd", "efgh"]}) == (8, None)
    assert check(EMBEDDINGS, {"input": [1, 2, 3]}) == (12, None)  # one array of token ids: 3 tokens
    assert check(EMBEDDINGS, {"input": [[1, 2], [3]]}) == (12, None)
    assert EMBEDDINGS.budget(10, None, DEFAULT_ASSUMED_COMPLETION) == (10, 0)


@pytest.mark.parametrize(("body", "field", "reason"), [
    ({}, "input", "missing input"),
    ({"input": ""}, "input", "empty input"),
    ({"input": []}, "input", "empty input"),
    ({"input": ["ok", " "]}, "input[1]", "empty input"),
    ({"input": ["ok", 3]}, "input[1]", "must be a string or an array of token ids (got number)"),
    ({"input": [[1, -2]]}, "input[0][1]", "a token must be a non-negative integer (got -2)"),
    ({"input": {"text": "x"}}, "input", "input must be a string, a list of strings or an array of token ids"),
    ({"input": "x", "dimensions": 0}, "dimensions", "dimensions must be a positive integer (got 0)"),
    ({"input": "x", "encoding_format": "hex"}, "encoding_format", "must be 'float' or 'base64' (got 'hex')"),
])
def test_embedding_bodies_that_cannot_be_sent_name_their_field(body: dict[str, Any], field: str, reason: str) -> None:
    got_field, got_reason = refusal(EMBEDDINGS, body)
    assert got_field == field
    assert reason in got_reason


def test_embeddings_take_at_most_2048_inputs() -> None:
    assert check(EMBEDDINGS, {"input": ["x"] * MAX_INPUTS})[0] == MAX_INPUTS
    field, reason = refusal(EMBEDDINGS, {"input": ["x"] * (MAX_INPUTS + 1)})
    assert (field, reason) == ("input", "2,049 inputs; an embeddings request takes at most 2,048: split it over "
                                        "several lines")


def _vectors(*lengths: int) -> dict[str, Any]:
    return {"object": "list", "model": "e",
            "data": [{"object": "embedding", "index": i, "embedding": [0.5] * n} for i, n in enumerate(lengths)],
            "usage": {"prompt_tokens": 7, "total_tokens": 7}}


def test_an_embedding_answer_is_one_vector_per_input_in_order() -> None:
    answer = read(EMBEDDINGS, _vectors(4, 4), {"input": ["a", "b"]})
    assert (answer.finish_reason, answer.prompt_tokens, answer.completion_tokens, answer.total_tokens) == \
        (None, 7, 0, 7)
    assert read(EMBEDDINGS, _vectors(3), {"input": "one text"}).prompt_tokens == 7
    assert read(EMBEDDINGS, _vectors(3), {"input": [5, 6, 7]}).prompt_tokens == 7  # one token array, one vector


def test_a_short_cut_or_shuffled_embedding_answer_is_not_a_result() -> None:
    two = {"input": ["a", "b"]}
    assert bad(EMBEDDINGS, _vectors(4), two) == "1 embedding(s) for 2 input(s)"
    assert bad(EMBEDDINGS, _vectors(4, 2), two) == "data[1].embedding has 2 numbers, data[0] 4: cut short"
    assert bad(EMBEDDINGS, _vectors(4, 4), {**two, "dimensions": 8}) == \
        "data[0].embedding has 4 numbers; the request asked for 8"
    assert read(EMBEDDINGS, _vectors(16, 16), {**two, "dimensions": 8}).prompt_tokens == 7  # dimensions ignored
    assert bad(EMBEDDINGS, {"data": []}, two) == "0 embedding(s) for 2 input(s)"
    assert bad(EMBEDDINGS, {"object": "list"}, two) == "an embeddings answer without data"
    swapped = _vectors(4, 4)
    swapped["data"].reverse()
    assert "out of order" in bad(EMBEDDINGS, swapped, two)
    missing = _vectors(4, 4)
    del missing["data"][1]["embedding"]
    assert bad(EMBEDDINGS, missing, two) == "data[1] has no embedding"


def test_a_base64_embedding_is_an_answer() -> None:
    answer = {"data": [{"index": 0, "embedding": "AAAAPw=="}], "usage": {"prompt_tokens": 1, "total_tokens": 1}}
    assert read(EMBEDDINGS, answer, {"input": "x", "encoding_format": "base64"}).prompt_tokens == 1


# --- chat ----------------------------------------------------------------------------------------------


def test_chat_caps_by_max_completion_tokens_or_max_tokens() -> None:
    messages = [{"role": "user", "content": "abcdefgh"}]
    assert check(CHAT, {"messages": messages, "max_completion_tokens": 1000}) == (8, 1000)
    assert check(CHAT, {"messages": messages, "max_tokens": 50}) == (8, 50)
    assert check(CHAT, {"messages": messages}) == (8, None)
    assert CHAT.budget(2, None, 256) == (2, 256)
    assert CHAT.budget(2, 1000, 256) == (2, 1000)


def test_a_chat_answer_needs_a_message() -> None:
    answer = {"choices": [{"message": {"role": "assistant", "content": "hi"}, "finish_reason": "length"}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
    read_back = read(CHAT, answer, {})
    assert (read_back.finish_reason, read_back.prompt_tokens, read_back.completion_tokens) == ("length", 3, 1)
    assert "no choices[0].message" in bad(CHAT, {"choices": []}, {})


# --- completions ---------------------------------------------------------------------------------------


def test_completions_take_a_prompt_and_default_to_16_tokens() -> None:
    assert check(COMPLETIONS, {"prompt": "abcd"}) == (4, None)
    assert check(COMPLETIONS, {"prompt": ["abcd", "ef"], "max_tokens": 5}) == (6, 5)
    assert COMPLETIONS.budget(1, None, 256) == (1, 16)
    assert refusal(COMPLETIONS, {}) == ("prompt", "missing prompt")
    assert refusal(COMPLETIONS, {"prompt": "x", "max_tokens": "9"}) == \
        ("max_tokens", "max_tokens must be a positive integer (got '9')")


def test_a_completion_answer_needs_text_in_every_choice() -> None:
    answer = {"choices": [{"text": "a", "finish_reason": "stop"}, {"text": "b", "finish_reason": "length"}],
              "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}}
    assert read(COMPLETIONS, answer, {}).finish_reason == "length"  # one cut choice marks it truncated
    assert bad(COMPLETIONS, {"choices": [{"text": "a"}, {"index": 1}]}, {}) == "choices[1] has no text"
    assert bad(COMPLETIONS, {"usage": {}}, {}) == "a text completion without choices"


# --- responses -----------------------------------------------------------------------------------------


def test_responses_take_input_text_or_items_and_cap_by_max_output_tokens() -> None:
    assert check(RESPONSES, {"input": "abcd", "instructions": "ef", "max_output_tokens": 9}) == (6, 9)
    items = [{"role": "user", "content": [{"type": "input_text", "text": "abcd"},
                                          {"type": "input_image", "image_url": "https://x"}]},
             {"type": "function_call_output", "call_id": "c", "output": "{}"}]
    assert check(RESPONSES, {"input": items}) == (4, None)
    assert refusal(RESPONSES, {"input": [{"role": "user"}]}) == ("input[0].content", "missing content")
    assert refusal(RESPONSES, {"input": 3}) == ("input", "input must be a string or a list of items (got number)")


def test_a_response_is_complete_or_incomplete_with_its_reason() -> None:
    usage = {"input_tokens": 5, "output_tokens": 9, "total_tokens": 14}
    done = read(RESPONSES, {"status": "completed", "output": [], "usage": usage}, {})
    assert (done.finish_reason, done.prompt_tokens, done.completion_tokens, done.total_tokens) == ("stop", 5, 9, 14)
    cut = {"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}, "output": []}
    assert read(RESPONSES, cut, {}).finish_reason == "length"
    filtered = {"status": "incomplete", "incomplete_details": {"reason": "content_filter"}, "output": []}
    assert read(RESPONSES, filtered, {}).finish_reason == "content_filter"
    assert bad(RESPONSES, {"status": "failed", "output": []}, {}) == \
        "a response with status 'failed' (expected 'completed' or 'incomplete')"
    assert bad(RESPONSES, {"status": "completed"}, {}) == "a response without output"


# --- moderations ---------------------------------------------------------------------------------------


def test_moderations_count_as_requests_and_need_one_result_per_input() -> None:
    assert check(MODERATIONS, {"input": ["a", "b"]}) == (2, None)
    assert MODERATIONS.budget(1, None, 256) == (0, 0)  # a request, not tokens
    assert not MODERATIONS.model_required
    results = {"results": [{"flagged": False}, {"flagged": True}]}
    assert read(MODERATIONS, results, {"input": ["a", "b"]}).prompt_tokens is None
    assert bad(MODERATIONS, {"results": [{"flagged": False}]}, {"input": ["a", "b"]}) == \
        "1 moderation result(s) for 2 input(s)"
    assert refusal(MODERATIONS, {"input": ["a", 1]}) == ("input[1]", "must be a string (got number)")


def test_a_lone_vector_shorter_than_the_runs_earlier_answers_is_cut_short() -> None:
    memory: dict[Any, Any] = {}
    one = {"input": "x"}
    read(EMBEDDINGS, _vectors(8), one, memory)
    assert "an embedding of 4 numbers where this run's earlier answers from model 'e' had 8: cut short" == \
        bad(EMBEDDINGS, _vectors(4), one, memory)
    read(EMBEDDINGS, _vectors(8), one, memory)
    read(EMBEDDINGS, _vectors(4), {"input": "x", "dimensions": 4}, memory)  # another length asked for
    assert read(EMBEDDINGS, _vectors(4), one).prompt_tokens == 7  # without the run's memory: nothing to go by
