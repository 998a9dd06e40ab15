"""The simulator's endpoints beside chat — embeddings, completions, responses, moderations — over real HTTP.

Each test starts a simulator (`running_simulator`, or `SimulatorThread` for synchronous code) and
asserts the bodies a client sees: shapes, usage, deterministic vectors, and that the checks every
endpoint shares (auth, budgets, request and token limits, faults, the catalogue) apply to them too.
"""

from __future__ import annotations

import base64
import json
import math
import struct
import urllib.request
from typing import Any

import aiohttp
import pytest

from test_simulator import KEY, simulator

from batchrun.simulator import RunningSimulator, SimulatorConfig, SimulatorThread
from batchrun.simulator.catalog import ModelSpec, default_aliases, default_models
from batchrun.simulator.embeddings import DEFAULT_DIMENSIONS, MAX_INPUTS, embedding_for
from batchrun.simulator.moderations import CATEGORIES
from batchrun.units import Rate


async def post(sim: RunningSimulator, session: aiohttp.ClientSession, path: str, body: Any,
               key: str | None = KEY) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    async with session.post(f"{sim.base_url}{path}", json=body, headers=headers) as response:
        return response.status, await response.json()


def tokens(text: str) -> int:
    return math.ceil(len(text) / 4)  # the estimate for ASCII text


# -- catalogue -----------------------------------------------------------------------------------------


def test_the_catalogue_has_an_embedding_and_a_moderation_model_beside_the_chat_models() -> None:
    models = {model.id: model for model in default_models()}
    assert models["sim-embed"].endpoints == ["embeddings"] and models["sim-embed"].context_length == 8192
    assert models["sim-embed"].completion_price == 0 and models["sim-embed"].prompt_price
    assert models["sim-moderation"].endpoints == ["moderations"] and models["sim-moderation"].prompt_price is None
    for chat_model in ("sim-small", "sim-large", "sim-mini"):
        assert models[chat_model].endpoints == ["chat", "completions", "responses"]
    assert default_aliases() == {"fast": "sim-small", "reasoning": "sim-large", "embed": "sim-embed"}


async def test_models_lists_what_each_model_serves() -> None:
    async with simulator() as (sim, session):
        async with session.get(f"{sim.base_url}/models", headers={"Authorization": f"Bearer {KEY}"}) as response:
            entries = {entry["id"]: entry for entry in (await response.json())["data"]}
    assert entries["sim-embed"]["endpoints"] == ["embeddings"]
    assert entries["sim-embed"]["supported_parameters"] == ["model", "input", "dimensions", "encoding_format", "user"]
    assert entries["embed"]["alias_for"] == "sim-embed"
    assert entries["sim-moderation"]["endpoints"] == ["moderations"] and "pricing" not in entries["sim-moderation"]
    assert "endpoints" not in entries["sim-small"]  # a text model serves the text endpoints


# -- embeddings ----------------------------------------------------------------------------------------


async def test_embeddings_answer_one_deterministic_unit_vector_per_input_in_order() -> None:
    inputs = ["the first text", "a second, longer text", "the first text"]
    async with simulator() as (sim, session):
        status, body = await post(sim, session, "/embeddings", {"model": "embed", "input": inputs})
    assert status == 200, body
    assert body["object"] == "list" and body["model"] == "sim-embed" and body["request_id"].startswith("req_")
    assert [item["index"] for item in body["data"]] == [0, 1, 2]
    assert all(item["object"] == "embedding" for item in body["data"])
    vectors = [item["embedding"] for item in body["data"]]
    assert vectors == [embedding_for(text) for text in inputs]
    assert len(vectors[0]) == DEFAULT_DIMENSIONS and math.isclose(math.fsum(x * x for x in vectors[0]), 1.0)
    assert vectors[0] == vectors[2] != vectors[1]
    # units summed over all inputs, rounded once
    assert body["usage"] == {"prompt_tokens": tokens("".join(inputs)), "total_tokens": tokens("".join(inputs))}
    assert sim.state.snapshot()["by_endpoint"] == {"embeddings": {"requests": 1, "ok": 1}}


async def test_embeddings_honour_dimensions_base64_and_token_arrays() -> None:
    async with simulator() as (sim, session):
        status, one = await post(sim, session, "/embeddings",
                                 {"model": "sim-embed", "input": "hello", "dimensions": 5})
        assert status == 200 and one["data"][0]["embedding"] == embedding_for("hello", 5)
        status, b64 = await post(sim, session, "/embeddings",
                                 {"model": "sim-embed", "input": ["hello", "world"], "encoding_format": "base64",
                                  "dimensions": 12})
        assert status == 200
        for item, text in zip(b64["data"], ["hello", "world"]):
            floats = struct.unpack("<12f", base64.b64decode(item["embedding"]))
            assert floats == pytest.approx(embedding_for(text, 12), rel=1e-6)
        status, tokens_body = await post(sim, session, "/embeddings", {"model": "sim-embed", "input": [1, 2, 3]})
        assert status == 200 and len(tokens_body["data"]) == 1
        assert tokens_body["data"][0]["embedding"] == embedding_for([1, 2, 3])
        assert tokens_body["usage"]["prompt_tokens"] == 3  # one token per element
        status, arrays = await post(sim, session, "/embeddings",
                                    {"model": "sim-embed", "input": [[1, 2], [3, 4, 5]]})
        assert status == 200 and [d["embedding"] for d in arrays["data"]] == [embedding_for([1, 2]),
                                                                               embedding_for([3, 4, 5])]
        assert arrays["usage"]["prompt_tokens"] == 5


async def test_embeddings_limits_are_openai_s() -> None:
    async with simulator() as (sim, session):
        status, body = await post(sim, session, "/embeddings",
                                  {"model": "sim-embed", "input": ["x"] * (MAX_INPUTS + 1)})
        assert status == 400 and body["error"]["code"] == "invalid_value"
        assert "maximum array size is 2048" in body["error"]["message"]
        status, body = await post(sim, session, "/embeddings", {"model": "sim-embed", "input": ["x"] * MAX_INPUTS})
        assert status == 200 and len(body["data"]) == MAX_INPUTS
        status, body = await post(sim, session, "/embeddings",
                                  {"model": "sim-embed", "input": ["short", "y" * (8192 * 4 + 1)]})
        assert status == 400 and body["error"]["code"] == "context_length_exceeded"
        assert "maximum context length is 8192 tokens" in body["error"]["message"] and "input[1]" in body["error"]["message"]
        for bad in ({"model": "sim-embed", "input": ""}, {"model": "sim-embed", "input": []},
                    {"model": "sim-embed", "input": [1, "a"]}, {"model": "sim-embed", "input": "a", "dimensions": 0},
                    {"model": "sim-embed", "input": "a", "encoding_format": "int8"}, {"input": "a"}):
            status, body = await post(sim, session, "/embeddings", bad)
            assert status == 422 and body["detail"], bad
        status, body = await post(sim, session, "/embeddings", {"model": "sim-embed", "input": "a", "top_p": 1})
        assert status == 400 and body["error"]["code"] == "unsupported_parameter"


# -- the catalogue rules on every endpoint -------------------------------------------------------------


@pytest.mark.parametrize(("path", "body"), [
    ("/chat/completions", {"model": "sim-embed", "messages": [{"role": "user", "content": "hi"}]}),
    ("/completions", {"model": "embed", "prompt": "hi"}),
    ("/responses", {"model": "sim-moderation", "input": "hi"}),
    ("/embeddings", {"model": "fast", "input": "hi"}),
    ("/moderations", {"model": "sim-small", "input": "hi"}),
])
async def test_a_model_of_the_wrong_kind_is_400_and_an_unknown_one_404(path: str, body: dict[str, Any]) -> None:
    async with simulator() as (sim, session):
        status, answer = await post(sim, session, path, body)
        assert status == 400 and answer["error"]["code"] == "model_not_supported", answer
        assert f"does not serve /v1{path}" in answer["error"]["message"]
        status, answer = await post(sim, session, path, {**body, "model": "no-such-model"})
        assert status == 404 and answer["error"]["code"] == "model_not_found"


# -- chat's max_completion_tokens ----------------------------------------------------------------------


async def test_chat_max_completion_tokens_cuts_like_max_tokens() -> None:
    text = "a long prompt that the echo repeats word for word"
    async with simulator() as (sim, session):
        status, body = await post(sim, session, "/chat/completions",
                                  {"model": "sim-small", "messages": [{"role": "user", "content": text}],
                                   "max_completion_tokens": 3})
        assert status == 200, body
        assert body["choices"][0] == {"index": 0, "message": {"role": "assistant", "content": ("echo: " + text)[:12]},
                                      "finish_reason": "length"}
        assert body["usage"]["completion_tokens"] == 3
        status, body = await post(sim, session, "/chat/completions",
                                  {"model": "sim-mini", "messages": [{"role": "user", "content": "hi"}],
                                   "max_completion_tokens": 2048})
        assert status == 400 and body["error"]["code"] == "context_length_exceeded"
        status, body = await post(sim, session, "/chat/completions",
                                  {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}],
                                   "max_completion_tokens": 0})
        assert status == 422 and body["detail"][0]["loc"] == ["body", "max_completion_tokens"]


# -- completions ---------------------------------------------------------------------------------------


async def test_completions_give_one_echo_choice_per_prompt_cut_at_16_tokens_by_default() -> None:
    long = "word " * 40
    async with simulator() as (sim, session):
        status, body = await post(sim, session, "/completions", {"model": "fast", "prompt": ["Say hi", long]})
    assert status == 200, body
    assert body["object"] == "text_completion" and body["model"] == "sim-small" and body["id"].startswith("cmpl-")
    assert body["choices"][0] == {"text": "echo: Say hi", "index": 0, "logprobs": None, "finish_reason": "stop"}
    assert body["choices"][1] == {"text": ("echo: " + long)[:64], "index": 1, "logprobs": None,
                                  "finish_reason": "length"}
    prompt = tokens("Say hi" + long)
    assert body["usage"] == {"prompt_tokens": prompt, "completion_tokens": tokens("echo: Say hi") + 16,
                             "total_tokens": prompt + tokens("echo: Say hi") + 16}


async def test_completions_check_the_context_window_per_prompt() -> None:
    async with simulator() as (sim, session):
        status, body = await post(sim, session, "/completions",
                                  {"model": "sim-mini", "prompt": "x" * 8000, "max_tokens": 100})
        assert status == 400 and body["error"]["code"] == "context_length_exceeded"
        status, body = await post(sim, session, "/completions", {"model": "sim-mini", "prompt": 7})
        assert status == 422


# -- responses -----------------------------------------------------------------------------------------


async def test_responses_answer_a_message_item_with_usage() -> None:
    body = {"model": "sim-large", "instructions": "Be brief.",
            "input": [{"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"},
                      {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "second"}]}]}
    async with simulator() as (sim, session):
        status, answer = await post(sim, session, "/responses", body)
        assert status == 200, answer
        assert answer["object"] == "response" and answer["status"] == "completed"
        assert answer["incomplete_details"] is None and answer["model"] == "sim-large"
        [item] = answer["output"]
        assert item["type"] == "message" and item["role"] == "assistant" and item["status"] == "completed"
        assert item["content"] == [{"type": "output_text", "text": "echo: second", "annotations": []}]
        input_tokens = tokens("Be brief.firstoksecond")
        usage = answer["usage"]
        assert (usage["input_tokens"], usage["output_tokens"]) == (input_tokens, tokens("echo: second"))
        assert usage["total_tokens"] == input_tokens + tokens("echo: second")
        status, cut = await post(sim, session, "/responses",
                                 {"model": "sim-small", "input": "a string input, long enough", "max_output_tokens": 2})
        assert status == 200
        assert cut["status"] == "incomplete" and cut["incomplete_details"] == {"reason": "max_output_tokens"}
        assert cut["output"][0]["content"][0]["text"] == "echo: a "
        assert cut["usage"]["output_tokens"] == 2
        status, bad = await post(sim, session, "/responses", {"model": "sim-small", "input": [{"role": "robot",
                                                                                              "content": "x"}]})
        assert status == 422 and bad["detail"][0]["loc"] == ["body", "input", 0, "role"]


# -- moderations ---------------------------------------------------------------------------------------


async def test_moderations_flag_deterministically_default_the_model_and_bill_no_tokens() -> None:
    async with simulator(token_limit=Rate(1, 60.0)) as (sim, session):  # a token limit no text request could meet
        status, body = await post(sim, session, "/moderations", {"input": ["a calm text", "graphic VIOLENCE"]})
        assert status == 200, body
        assert body["model"] == "sim-moderation" and body["id"].startswith("modr-") and "usage" not in body
        calm, violent = body["results"]
        assert calm["flagged"] is False and not any(calm["categories"].values())
        assert set(calm["categories"]) == set(CATEGORIES) == set(calm["category_scores"])
        assert violent["flagged"] is True and violent["categories"]["violence"] is True
        assert violent["categories"]["hate"] is False
        assert violent["category_scores"]["violence"] > 0.5 > violent["category_scores"]["hate"]
        status, one = await post(sim, session, "/moderations", {"model": "sim-moderation", "input": "fine"})
        assert status == 200 and len(one["results"]) == 1
        status, _ = await post(sim, session, "/embeddings", {"model": "sim-embed", "input": "a few tokens"})
        assert status == 429


# -- the shared checks apply to every endpoint ---------------------------------------------------------

BODIES = {
    "/embeddings": {"model": "embed", "input": "hello"},
    "/completions": {"model": "fast", "prompt": "hello"},
    "/responses": {"model": "fast", "input": "hello"},
    "/moderations": {"input": "hello"},
}


@pytest.mark.parametrize("path", list(BODIES))
async def test_auth_budgets_and_request_limits_apply(path: str) -> None:
    async with simulator(key_budgets={"team-a": 1}, rate_limit=Rate(3, 60.0), revoked={"team-r"}) as (sim, session):
        status, body = await post(sim, session, path, BODIES[path], key=None)
        assert status == 401 and body["error"]["code"] == "missing_api_key"
        status, body = await post(sim, session, path, BODIES[path], key="team-r:x")
        assert status == 401 and body["error"]["code"] == "key_revoked"
        status, _ = await post(sim, session, path, BODIES[path])
        assert status == 200
        status, body = await post(sim, session, path, BODIES[path])
        assert status == 402 and body["error"]["code"] == "key_budget_exhausted"
        sim.config.key_budgets.clear()
        statuses = [(await post(sim, session, path, BODIES[path]))[0] for _ in range(3)]
        assert statuses == [200, 200, 429]  # the 402 was answered before the limiter: it used no quota
        endpoint = path.strip("/")
        assert sim.state.snapshot()["by_endpoint"][endpoint] == {"requests": 7, "ok": 3}


@pytest.mark.parametrize("path", [p for p in BODIES if p != "/moderations"])
async def test_token_limits_charge_the_usage(path: str) -> None:
    async with simulator(token_limit=Rate(1, 60.0)) as (sim, session):
        status, body = await post(sim, session, path, BODIES[path])
        assert status == 429 and body["error"]["code"] == "request_too_large", body


@pytest.mark.parametrize("path", list(BODIES))
async def test_faults_and_omit_request_id_apply(path: str) -> None:
    async with simulator(fail_rate=1.0) as (sim, session):
        status, body = await post(sim, session, path, BODIES[path])
        assert status == 503 and body["error"]["code"] == "no_nodes_available"
    async with simulator(random_429_rate=1.0) as (sim, session):
        status, body = await post(sim, session, path, BODIES[path])
        assert status == 429 and body["error"]["code"] == "model_overloaded"
    async with simulator(reset_rate=1.0) as (sim, session):
        with pytest.raises(aiohttp.ClientError):
            await post(sim, session, path, BODIES[path])
        assert sim.state.resets == 1
    async with simulator(omit_request_id=True) as (sim, session):
        status, body = await post(sim, session, path, BODIES[path])
        assert status == 200 and "request_id" not in body


def test_a_simulator_thread_serves_embeddings_to_synchronous_code() -> None:
    with SimulatorThread(SimulatorConfig(models=[ModelSpec("vec", endpoints=["embeddings"])])) as sim:
        request = urllib.request.Request(f"{sim.base_url}/embeddings", method="POST",
                                         data=json.dumps({"model": "vec", "input": "hi"}).encode(),
                                         headers={"Authorization": f"Bearer {KEY}",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            body = json.load(response)
    assert body["data"][0]["embedding"] == embedding_for("hi")
