"""Turning a provider's answer into the error tree (`provider.classify`) and a 200 into a Completion.

One test per status the provider docs describe; the bodies are the ones the providers (and the bundled
simulator) actually send. Headers are a real `CIMultiDict`, as aiohttp hands them over.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import pytest
from multidict import CIMultiDict

from batchrun.errors import (
    BadRequest,
    BadResponse,
    EndpointNotFound,
    KeyBudgetExhausted,
    KeyModelForbidden,
    KeyRejected,
    ModelNotFound,
    NoCapacity,
    OrgBudgetExhausted,
    RateLimited,
    ServerError,
    TransientError,
    Unverified,
    ValidationFailed,
)
from batchrun.provider import RateHint, classify, parse_completion, provider_message, rate_hint, retry_after

NO_HEADERS: CIMultiDict[str] = CIMultiDict()


def error_body(code: str, message: str, type_: str = "invalid_request_error") -> str:
    return json.dumps({"error": {"message": message, "type": type_, "code": code}})


def headers(**values: str) -> CIMultiDict[str]:
    return CIMultiDict((name.replace("_", "-"), value) for name, value in values.items())


# --- 401 -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "state"),
    [
        (error_body("key_revoked", "API key revoked", "authentication_error"), "revoked"),
        (error_body("key_expired", "API key expired", "authentication_error"), "expired"),
        (error_body("invalid_api_key", "Invalid API key k9", "authentication_error"), "invalid"),
        (error_body("missing_api_key", "Missing API key: send the header", "authentication_error"), "invalid"),
        ("Unauthorized", "invalid"),
    ],
    ids=["revoked", "expired", "invalid", "missing", "plain-text"],
)
def test_401_is_a_rejected_key_with_its_state(body: str, state: str) -> None:
    error = classify(401, NO_HEADERS, body)
    assert type(error) is KeyRejected
    assert error.key_state == state
    assert error.status == 401
    assert f"401 {state}" in str(error)


def test_401_message_carries_the_providers_words() -> None:
    error = classify(401, NO_HEADERS, error_body("key_revoked", "API key revoked", "authentication_error"))
    assert str(error) == ("the provider rejected the key (401 revoked): API key revoked — "
                          "look for its status in Settings → API Keys")
    assert error.body == {"error": {"message": "API key revoked", "type": "authentication_error",
                                    "code": "key_revoked"}}


# --- 402 -----------------------------------------------------------------------------------------------


def test_402_for_one_key_is_key_budget_exhausted() -> None:
    body = error_body("key_budget_exhausted",
                      "Budget exhausted for key k1: raise the key's budget cap in Settings → API Keys",
                      "insufficient_quota")
    error = classify(402, NO_HEADERS, body)
    assert type(error) is KeyBudgetExhausted
    assert error.key_state == "budget"
    assert "raise the key's budget cap" in str(error)


def test_402_for_the_organisation_is_org_budget_exhausted() -> None:
    body = error_body("org_budget_exhausted",
                      "Budget exhausted: your organisation has spent its monthly budget. Talk to your org admin.",
                      "insufficient_quota")
    error = classify(402, NO_HEADERS, body)
    assert type(error) is OrgBudgetExhausted
    assert error.exit_code == 4
    assert "Talk to your org admin" in str(error)


def test_402_for_a_key_whose_id_contains_org_is_still_the_keys_budget() -> None:
    body = error_body("key_budget_exhausted",
                      "Budget exhausted for key georg-prod: raise the key's budget cap in Settings → API Keys",
                      "insufficient_quota")
    assert type(classify(402, NO_HEADERS, body)) is KeyBudgetExhausted


@pytest.mark.parametrize("text", [
    '{"error": {"message": "Your organization has exceeded its monthly budget."}}',
    '{"error": {"message": "Budget exhausted: your organisation has spent its monthly budget.", '
    '"type": "insufficient_quota"}}',
    '{"detail": "Monthly budget of the org reached"}',
    "Organisation's budget exhausted",  # not even JSON
])
def test_402_with_no_code_is_the_organisations_by_its_words(text: str) -> None:
    error = classify(402, NO_HEADERS, text)
    assert type(error) is OrgBudgetExhausted, error
    assert error.exit_code == 4


@pytest.mark.parametrize("text", [
    '{"error": {"message": "Budget exhausted for key georg-prod"}}',  # "org" only inside a word
    '{"error": {"message": "Payment required", "type": "insufficient_quota"}}',
    "",
])
def test_402_with_no_code_and_no_word_of_an_organisation_is_the_keys(text: str) -> None:
    assert type(classify(402, NO_HEADERS, text)) is KeyBudgetExhausted


# --- 403 -----------------------------------------------------------------------------------------------


def test_403_is_a_model_forbidden_for_this_key() -> None:
    body = error_body("model_not_allowed", "The model `gpt-big` isn't in your org's allowed list",
                      "permission_error")
    error = classify(403, NO_HEADERS, body)
    assert type(error) is KeyModelForbidden
    assert error.code == "model_forbidden"
    assert "gpt-big" in str(error)


# --- 404 -----------------------------------------------------------------------------------------------


def test_404_naming_a_model_is_model_not_found() -> None:
    body = error_body("model_not_found", "The model `llama-3.2-3b` does not exist", "not_found_error")
    error = classify(404, NO_HEADERS, body)
    assert type(error) is ModelNotFound
    assert "llama-3.2-3b" in str(error)


@pytest.mark.parametrize(
    "body",
    ["<html><head><title>404 Not Found</title></head><body><h1>Not Found</h1></body></html>", "",
     json.dumps({"detail": "Not Found"})],
    ids=["html", "empty", "fastapi-default"],
)
def test_404_without_a_model_is_the_endpoint_missing(body: str) -> None:
    error = classify(404, NO_HEADERS, body)
    assert type(error) is EndpointNotFound
    assert error.exit_code == 5
    assert str(error).startswith("not found (404): ")


def test_404_with_an_empty_body_says_so() -> None:
    assert str(classify(404, NO_HEADERS, "")) == "not found (404): (empty body)"


# --- 400 -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    ["Unknown model id: llama-9", "The model `llama-9` does not exist", "model llama-9 not found"],
)
def test_400_for_an_unknown_model_is_model_not_found(message: str) -> None:
    error = classify(400, NO_HEADERS, error_body("invalid_request_error", message))
    assert type(error) is ModelNotFound
    assert message in str(error)


def test_400_with_code_model_not_found_is_model_not_found() -> None:
    error = classify(400, NO_HEADERS, error_body("model_not_found", "That one is gone"))
    assert type(error) is ModelNotFound


@pytest.mark.parametrize(
    "message",
    [
        "Unsupported parameter: 'logprobs' is not supported with this model.",
        "This model's maximum context length is 8192 tokens; you requested 9000",
        "JSON parse error: Expecting ',' delimiter",
    ],
)
def test_400_for_anything_else_is_a_bad_request_carrying_the_providers_message(message: str) -> None:
    error = classify(400, NO_HEADERS, error_body("invalid_request_error", message))
    assert type(error) is BadRequest
    assert error.code == "bad_request"
    assert str(error) == f"bad request (400): {message}"


def test_a_very_long_provider_message_is_clipped() -> None:
    error = classify(400, NO_HEADERS, error_body("x", "y" * 5000))
    assert len(str(error)) < 600
    assert str(error).endswith("…")


# --- 422 -----------------------------------------------------------------------------------------------


def test_422_with_fastapi_detail_names_the_field_and_keeps_the_message_verbatim() -> None:
    msg = "Input should be less than or equal to 2"
    body = json.dumps({"detail": [{"type": "less_than_equal", "loc": ["body", "temperature"],
                                   "msg": msg, "input": 7}]})
    error = classify(422, NO_HEADERS, body)
    assert type(error) is ValidationFailed
    assert error.code == "validation_error"
    assert "body.temperature" in str(error)
    assert msg in str(error)
    assert str(error) == f"validation error (422): body.temperature: {msg}"


def test_422_with_several_problems_lists_each_field() -> None:
    body = json.dumps({"detail": [
        {"loc": ["body", "model"], "msg": "Field required"},
        {"loc": ["body", "messages", 0, "role"], "msg": "Input should be 'system', 'user' or 'assistant'"},
    ]})
    message = str(classify(422, NO_HEADERS, body))
    assert "body.model: Field required" in message
    assert "body.messages.0.role: Input should be 'system', 'user' or 'assistant'" in message


def test_422_with_a_string_detail_uses_it_as_the_message() -> None:
    error = classify(422, NO_HEADERS, json.dumps({"detail": "max_tokens must be positive"}))
    assert type(error) is ValidationFailed
    assert str(error) == "validation error (422): max_tokens must be positive"


# --- 429 -----------------------------------------------------------------------------------------------


RATE_BODY = error_body("rate_limit_exceeded", "Rate limit reached for key k1", "rate_limit_error")


def test_429_with_retry_after_seconds() -> None:
    error = classify(429, headers(Retry_After="7"), RATE_BODY)
    assert type(error) is RateLimited
    assert error.retry_after == 7.0
    assert "Rate limit reached for key k1" in str(error)


def test_429_retry_after_header_name_is_case_insensitive() -> None:
    assert classify(429, CIMultiDict({"retry-after": "3"}), RATE_BODY).retry_after == 3.0


def test_429_with_an_http_date_retry_after() -> None:
    when = datetime.now(timezone.utc) + timedelta(seconds=30)
    error = classify(429, headers(Retry_After=format_datetime(when, usegmt=True)), RATE_BODY)
    assert type(error) is RateLimited
    assert error.retry_after is not None
    # an HTTP date has whole seconds: between 29 and 30 s from now
    assert 28.5 <= error.retry_after <= 30.0


def test_429_with_an_http_date_in_the_past_means_now() -> None:
    when = datetime.now(timezone.utc) - timedelta(minutes=5)
    assert classify(429, headers(Retry_After=format_datetime(when, usegmt=True)), RATE_BODY).retry_after == 0.0


@pytest.mark.parametrize(("reset", "seconds"), [("1.5s", 1.5), ("250ms", 0.25), ("2", 2.0)])
def test_429_with_only_x_ratelimit_reset_requests(reset: str, seconds: float) -> None:
    error = classify(429, headers(x_ratelimit_reset_requests=reset), RATE_BODY)
    assert type(error) is RateLimited
    assert error.retry_after == pytest.approx(seconds)


def test_429_falls_back_to_x_ratelimit_reset_tokens() -> None:
    assert classify(429, headers(x_ratelimit_reset_tokens="800ms"), RATE_BODY).retry_after == pytest.approx(0.8)


def test_429_retry_after_takes_precedence_over_x_ratelimit_reset() -> None:
    error = classify(429, headers(Retry_After="4", x_ratelimit_reset_requests="250ms"), RATE_BODY)
    assert error.retry_after == 4.0


def test_429_without_any_hint_has_no_retry_after() -> None:
    error = classify(429, NO_HEADERS, RATE_BODY)
    assert type(error) is RateLimited
    assert error.retry_after is None
    assert error.code == "rate_limited"


def test_429_with_a_garbled_retry_after_is_still_rate_limited() -> None:
    error = classify(429, headers(Retry_After="soon"), RATE_BODY)
    assert type(error) is RateLimited
    assert error.retry_after is None


def test_429_with_an_openai_style_minutes_reset() -> None:
    assert classify(429, headers(x_ratelimit_reset_tokens="1m30s"), RATE_BODY).retry_after == 90.0


# --- 5xx -----------------------------------------------------------------------------------------------


def test_503_is_transient_and_mentions_no_capacity() -> None:
    body = error_body("no_nodes_available", "No GPU node is available right now", "service_unavailable")
    error = classify(503, NO_HEADERS, body)
    assert type(error) is NoCapacity and error.code == "no_capacity"
    assert "no capacity" in str(error)
    assert "No GPU node is available right now" in str(error)


def test_503_honours_retry_after() -> None:
    assert classify(503, headers(Retry_After="5"), "busy").retry_after == 5.0


@pytest.mark.parametrize("status", [500, 502])
def test_500_and_502_are_transient_server_errors(status: int) -> None:
    error = classify(status, NO_HEADERS, "<html>Bad Gateway</html>")
    assert type(error) is ServerError and error.code == "server_error"
    assert error.status == status
    assert str(error) == f"server error ({status}): <html>Bad Gateway</html>"


def test_an_unknown_4xx_is_a_bad_request() -> None:
    error = classify(418, NO_HEADERS, "I'm a teapot")
    assert type(error) is BadRequest
    assert error.status == 418
    assert str(error) == "bad request (418): I'm a teapot"


# --- provider_message / retry_after ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"error": {"message": "from error.message"}}, "from error.message"),
        ({"error": "a plain error string"}, "a plain error string"),
        ({"detail": "a string detail"}, "a string detail"),
        ({"message": "top-level message"}, "top-level message"),
        (None, "raw text"),
    ],
)
def test_provider_message_finds_the_providers_words(payload: Any, expected: str) -> None:
    assert provider_message(payload, "raw text") == expected


def test_retry_after_without_headers_is_none() -> None:
    assert retry_after(None) is None
    assert retry_after(NO_HEADERS) is None


# --- parse_completion ----------------------------------------------------------------------------------


COMPLETE = {
    "id": "chatcmpl-1",
    "request_id": "req_abc123",
    "object": "chat.completion",
    "model": "llama3.2:3b",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "length"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 34, "total_tokens": 46},
}


def test_parse_completion_reads_the_fields_and_keeps_the_body_verbatim() -> None:
    text = json.dumps(COMPLETE)
    completion = parse_completion(text)
    assert completion.status == 200
    assert completion.body == text
    assert completion.request_id == "req_abc123"
    assert completion.model == "llama3.2:3b"
    assert completion.finish_reason == "length"
    assert (completion.prompt_tokens, completion.completion_tokens, completion.total_tokens) == (12, 34, 46)


def test_parse_completion_accepts_a_missing_request_id() -> None:
    body = {key: value for key, value in COMPLETE.items() if key != "request_id"}
    completion = parse_completion(json.dumps(body))
    assert completion.request_id is None
    assert completion.model == "llama3.2:3b"


def test_parse_completion_without_usage_has_no_token_counts() -> None:
    body = {key: value for key, value in COMPLETE.items() if key != "usage"}
    completion = parse_completion(json.dumps(body))
    assert (completion.prompt_tokens, completion.completion_tokens, completion.total_tokens) == (None, None, None)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("<html>upstream error</html>", "not JSON"),
        ('{"id": "x", "choices": [', "not JSON"),
        (json.dumps({"id": "x", "model": "m"}), "no choices[0].message"),
        (json.dumps({"id": "x", "choices": []}), "no choices[0].message"),
        (json.dumps({"id": "x", "choices": [{"index": 0, "finish_reason": "stop"}]}), "no choices[0].message"),
        (json.dumps([1, 2, 3]), "not a chat completion object"),
    ],
    ids=["html", "truncated", "no-choices", "empty-choices", "choice-without-message", "json-list"],
)
def test_parse_completion_of_a_broken_200_is_a_transient_error(text: str, words: str) -> None:
    with pytest.raises(TransientError) as caught:
        parse_completion(text)
    assert type(caught.value) is BadResponse and caught.value.code == "bad_response"
    assert words in str(caught.value)
    assert caught.value.status == 200


def test_401_for_a_malformed_key_says_what_the_format_must_be() -> None:
    error = classify(401, NO_HEADERS, error_body("invalid_key_format", "Wrong key format"))
    assert isinstance(error, KeyRejected) and error.key_state == "invalid"
    assert "`<access_key_id>:<secret>`" in str(error)


def test_a_200_without_request_id_is_accepted_unless_required() -> None:
    body = json.dumps({"model": "m", "choices": [{"message": {"role": "assistant", "content": "hi"},
                                                  "finish_reason": "length"}]})
    completion = parse_completion(body)
    assert completion.request_id is None and completion.truncated
    with pytest.raises(Unverified) as caught:
        parse_completion(body, require_request_id=True)
    assert caught.value.code == "unverified" and "request_id" in str(caught.value)
    assert isinstance(caught.value, TransientError)


def test_rate_hint_reads_remaining_and_reset_headers() -> None:
    headers = CIMultiDict({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1.5s",
                           "x-ratelimit-remaining-tokens": "900", "x-ratelimit-reset-tokens": "6m0s"})
    hint = rate_hint(headers)
    assert hint == RateHint(0, 1.5, 900, 360.0)
    assert hint.exhausted_for == 1.5
    assert rate_hint(CIMultiDict({"x-ratelimit-remaining-requests": "3"})).exhausted_for is None  # type: ignore[union-attr]
    assert rate_hint(NO_HEADERS) is None
    assert rate_hint(CIMultiDict({"x-ratelimit-remaining-requests": "lots"})) is None


@pytest.mark.parametrize(("limit", "reset", "wait"), [
    (None, 60.0, 60.0),   # no stated limit: the reset, as given
    (10, 0.8, 0.8),       # a sliding window's reset within a second: honoured
    (27, 60.0, 2 * 60.0 / 27),  # a bucket full again in 60 s gives a slot back every 2.2 s: two slots
    (600, 60.0, 1.0),     # at least 1 s
])
def test_a_spent_window_waits_its_reset_but_no_longer_than_two_slots_at_the_stated_limit(
        limit: int | None, reset: float, wait: float) -> None:
    headers = CIMultiDict({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": f"{reset}s"})
    if limit is not None:
        headers["x-ratelimit-limit-requests"] = str(limit)
    hint = rate_hint(headers)
    assert hint is not None and hint.limit_requests == limit
    assert hint.exhausted_for == pytest.approx(wait)
