"""The provider simulator against a real server on a free port, spoken to over HTTP.

Most tests start their own simulator (it costs a few milliseconds) so each one states the
configuration it relies on. The sliding-window arithmetic is tested with explicit times.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner

from batchrun.errors import ConfigError
from batchrun.simulator import (
    STATE_KEY,
    ModelSpec,
    RunningSimulator,
    SimulatorConfig,
    SimulatorThread,
    SlidingWindow,
    create_app,
    running_simulator,
    validate_body,
)
from batchrun.simulator.chat import check_request, compose_reply
from batchrun.simulator.cli import simulate_command
from batchrun.units import Rate

KEY = "team-a:s3cret"
OTHER_KEY = "team-b:hunter2"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _scrub_batchrun_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("BATCHRUN_"):
            monkeypatch.delenv(name)


@asynccontextmanager
async def simulator(**config: Any) -> AsyncIterator[tuple[RunningSimulator, aiohttp.ClientSession]]:
    async with running_simulator(SimulatorConfig(**config)) as sim, aiohttp.ClientSession() as session:
        yield sim, session


def chat(text: str = "hello", model: str = "sim-small", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


async def post(
    sim: RunningSimulator,
    session: aiohttp.ClientSession,
    body: Any = None,
    *,
    key: str | None = KEY,
    raw: bytes | None = None,
) -> tuple[int, Any, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    data = raw if raw is not None else json.dumps(body if body is not None else chat()).encode()
    headers["Content-Type"] = "application/json"
    async with session.post(f"{sim.base_url}/chat/completions", data=data, headers=headers) as response:
        return response.status, await response.json(), response.headers


def error_code(body: dict[str, Any]) -> str:
    return str(body["error"]["code"])


# -- catalogue ----------------------------------------------------------------------------------


async def test_models_lists_catalogue_with_metadata_and_aliases() -> None:
    async with simulator() as (sim, session):
        async with session.get(f"{sim.base_url}/models", headers={"Authorization": f"Bearer {KEY}"}) as response:
            assert response.status == 200
            listing = await response.json()
        assert sim.state.models_requests == 1
    assert listing["object"] == "list"
    entries = {entry["id"]: entry for entry in listing["data"]}
    assert set(entries) == {"sim-small", "sim-large", "sim-mini", "sim-embed", "sim-moderation", "fast", "reasoning", "embed"}
    small = entries["sim-small"]
    assert small["object"] == "model" and small["owned_by"] == "batchrun-simulator"
    assert small["context_length"] == 8192
    assert small["pricing"] == {"prompt": pytest.approx(0.10e-6), "completion": pytest.approx(0.40e-6)}
    assert small["capabilities"] == {"response_format": True}
    assert small["aliases"] == ["fast"]
    assert entries["sim-large"]["pricing"] == {"prompt": pytest.approx(1e-6), "completion": pytest.approx(4e-6)}
    assert entries["sim-large"]["context_length"] == 32768
    mini = entries["sim-mini"]
    assert mini["context_length"] == 2048 and mini["capabilities"] == {"response_format": False}
    assert "response_format" not in mini["supported_parameters"] and "tools" not in mini["supported_parameters"]
    assert "pricing" not in mini  # unknown metadata is omitted, never null
    assert entries["fast"] == {"id": "fast", "object": "model", "owned_by": "batchrun-simulator", "alias_for": "sim-small"}
    assert entries["reasoning"]["alias_for"] == "sim-large"


async def test_models_omits_unknown_metadata_and_dangling_aliases() -> None:
    bare = ModelSpec("bare", context_length=None, supported_parameters=None, response_format=None)
    async with simulator(models=[bare], aliases={"fast": "bare", "gone": "removed-model"}) as (sim, session):
        async with session.get(f"{sim.base_url}/models", headers={"Authorization": f"Bearer {KEY}"}) as response:
            listing = await response.json()
    assert listing["data"] == [
        {"id": "bare", "object": "model", "owned_by": "batchrun-simulator", "aliases": ["fast"]},
        {"id": "fast", "object": "model", "owned_by": "batchrun-simulator", "alias_for": "bare"},
    ]


async def test_models_requires_a_valid_key() -> None:
    async with simulator(revoked={"team-a"}) as (sim, session):
        async with session.get(f"{sim.base_url}/models") as response:
            assert response.status == 401
            assert error_code(await response.json()) == "missing_api_key"
        async with session.get(f"{sim.base_url}/models", headers={"Authorization": f"Bearer {KEY}"}) as response:
            assert response.status == 401
            assert error_code(await response.json()) == "key_revoked"


# -- successful completions -----------------------------------------------------------------------


async def test_completion_echoes_last_user_message_through_alias() -> None:
    body = {
        "model": "fast",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "what is 2+2?"},
        ],
    }
    async with simulator() as (sim, session):
        status, answer, _ = await post(sim, session, body)
    assert status == 200
    assert answer["object"] == "chat.completion"
    assert re.fullmatch(r"chatcmpl-\d+", answer["id"])
    assert re.fullmatch(r"req_[0-9a-f]{32}", answer["request_id"])
    assert isinstance(answer["created"], int) and abs(answer["created"] - time.time()) < 60
    assert answer["model"] == "sim-small"  # the served model, not the alias
    choice = answer["choices"][0]
    assert choice == {
        "index": 0,
        "message": {"role": "assistant", "content": "echo: what is 2+2?"},
        "finish_reason": "stop",
    }
    prompt_chars = len("be brief") + len("first") + len("ok") + len("what is 2+2?")
    assert answer["usage"] == {
        "prompt_tokens": -(-prompt_chars // 4),
        "completion_tokens": -(-len("echo: what is 2+2?") // 4),
        "total_tokens": -(-prompt_chars // 4) + -(-len("echo: what is 2+2?") // 4),
    }


async def test_completion_joins_text_parts_and_can_omit_request_id() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}, {"type": "text", "text": "b"}]
    async with simulator(omit_request_id=True) as (sim, session):
        status, answer, _ = await post(sim, session, {"model": "sim-large", "messages": [{"role": "user", "content": parts}]})
    assert status == 200
    assert answer["choices"][0]["message"]["content"] == "echo: ab"
    assert "request_id" not in answer


async def test_max_tokens_cuts_the_answer_with_finish_reason_length() -> None:
    async with simulator() as (sim, session):
        status, answer, _ = await post(sim, session, chat("x" * 100, max_tokens=3))
    assert status == 200
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["choices"][0]["message"]["content"] == ("echo: " + "x" * 100)[:12]
    assert answer["usage"]["completion_tokens"] == 3


async def test_json_object_response_format_returns_json_content() -> None:
    async with simulator() as (sim, session):
        status, answer, _ = await post(sim, session, chat('say "hi"', response_format={"type": "json_object"}))
    assert status == 200
    assert json.loads(answer["choices"][0]["message"]["content"]) == {"echo": 'say "hi"'}


async def test_duplicates_and_distinct_prompts_are_counted() -> None:
    async with simulator() as (sim, session):
        for text in ("one", "two", "one"):
            assert (await post(sim, session, chat(text)))[0] == 200
        assert (await post(sim, session, chat("two", model="sim-large")))[0] == 200  # same messages, other model
        snap = sim.state.snapshot()
    assert snap["completions_ok"] == 4
    assert snap["prompts_served"] == 2
    assert snap["duplicates"] == 2
    assert snap["requests_total"] == 4
    assert snap["by_status"] == {"200": 4}
    assert snap["keys"]["team-a"] == {"requests": 4, "ok": 4, "random_429s": 0, "by_status": {"200": 4},
                                      "max_window": 0, "max_token_window": 0}
    json.dumps(snap)  # JSON-able


# -- keys ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "authorization", "code"),
    [
        ({}, None, "missing_api_key"),
        ({}, "Basic dXNlcjpwYXNz", "missing_api_key"),
        ({}, "Bearer ", "missing_api_key"),
        ({"require_key_format": True}, "Bearer justthesecret", "invalid_key_format"),
        ({"require_key_format": True}, "Bearer team-a:s3 cret", "invalid_key_format"),
        ({"accepted_keys": {"team-b"}}, f"Bearer {KEY}", "invalid_api_key"),
        ({"revoked": {"team-a"}}, f"Bearer {KEY}", "key_revoked"),
        ({"expired": {"team-a"}}, f"Bearer {KEY}", "key_expired"),
    ],
)
async def test_key_problems_are_401(config: dict[str, Any], authorization: str | None, code: str) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    async with simulator(**config) as (sim, session):
        async with session.post(f"{sim.base_url}/chat/completions", json=chat(), headers=headers) as response:
            assert response.status == 401
            body = await response.json()
        assert sim.state.by_status == {401: 1}
    assert error_code(body) == code
    if code == "missing_api_key":
        assert "Authorization: Bearer" in body["error"]["message"]
    if code == "invalid_key_format":
        assert "<access_key_id>:<secret>" in body["error"]["message"]


async def test_well_formed_accepted_key_passes_every_key_check() -> None:
    async with simulator(require_key_format=True, accepted_keys={"team-a"}, revoked={"team-b"}) as (sim, session):
        assert (await post(sim, session))[0] == 200


async def test_revoke_after_revokes_a_key_mid_run() -> None:
    async with simulator(revoke_after={"team-a": 2}) as (sim, session):
        statuses = [(await post(sim, session, chat(str(i))))[0] for i in range(4)]
        _, body, _ = await post(sim, session)
        other, _, _ = await post(sim, session, key=OTHER_KEY)
    assert statuses == [200, 200, 401, 401]
    assert error_code(body) == "key_revoked"
    assert other == 200


async def test_forbidden_model_is_403_for_that_key_only() -> None:
    async with simulator(forbidden={"team-a": {"sim-large"}}) as (sim, session):
        status, body, _ = await post(sim, session, chat(model="reasoning"))
        other, _, _ = await post(sim, session, chat(model="reasoning"), key=OTHER_KEY)
        allowed, _, _ = await post(sim, session, chat(model="sim-small"))
    assert (status, error_code(body)) == (403, "model_not_allowed")
    assert "sim-large" in body["error"]["message"]
    assert (other, allowed) == (200, 200)


# -- budgets ------------------------------------------------------------------------------------


async def test_key_budget_gives_402_after_n_successes() -> None:
    async with simulator(key_budgets={"team-a": 2}) as (sim, session):
        statuses = [(await post(sim, session, chat(str(i))))[0] for i in range(3)]
        _, body, _ = await post(sim, session)
        other, _, _ = await post(sim, session, key=OTHER_KEY)
    assert statuses == [200, 200, 402]
    assert error_code(body) == "key_budget_exhausted" and "budget cap" in body["error"]["message"]
    assert other == 200


async def test_concurrent_requests_never_overspend_a_budget() -> None:
    async with simulator(key_budgets={"team-a": 3}, latency=0.05) as (sim, session):
        results = await asyncio.gather(*(post(sim, session, chat(str(i))) for i in range(8)))
        assert sim.state.key("team-a").ok == 3
    assert sorted(status for status, _, _ in results) == [200] * 3 + [402] * 5


async def test_org_budget_stops_every_key_and_wins_over_key_budget() -> None:
    async with simulator(org_budget=2, key_budgets={"team-b": 0}) as (sim, session):
        assert (await post(sim, session, chat("1")))[0] == 200
        assert (await post(sim, session, chat("2"), key="team-c:x"))[0] == 200
        results = [await post(sim, session, key=key) for key in (KEY, OTHER_KEY)]
    for status, body, _ in results:
        assert (status, error_code(body)) == (402, "org_budget_exhausted")
        assert "organisation" in body["error"]["message"] and "monthly budget" in body["error"]["message"]


# -- rate limit ---------------------------------------------------------------------------------


def test_sliding_window_admits_count_per_period_and_says_when_to_retry() -> None:
    rate = Rate(3, 1.0)
    window = SlidingWindow()
    assert [window.arrive(t, rate) for t in (0.0, 0.1, 0.2)] == [None, None, None]
    assert window.arrive(0.5, rate) == pytest.approx(0.5)  # 0.0 leaves the window at 1.0
    assert window.remaining(0.5, rate) == 0
    assert window.reset_in(0.5, rate) == pytest.approx(0.5)
    assert window.arrive(1.0, rate) is None  # exactly one period later the first slot is free
    assert window.arrive(1.05, rate) == pytest.approx(0.05)
    assert window.max_window == 5  # 0.1, 0.2, 0.5, 1.0, 1.05 all lie within (0.05, 1.05]


def test_sliding_window_max_window_stays_at_limit_for_a_paced_client() -> None:
    rate = Rate(20, 1.0)
    window = SlidingWindow()
    refused = [window.arrive(i * 0.05, rate) for i in range(200)]  # exactly 20 per second
    assert refused == [None] * 200
    assert window.max_window == 20
    assert window.arrive(9.96, rate) is not None  # one more inside the last second is too many
    assert window.max_window == 21


async def test_rate_limit_429_with_retry_after_and_headers() -> None:
    # a window far longer than the test: the 4th request falls in it however slow the machine (the
    # window sliding on is the pure SlidingWindow's, tested above with exact times)
    async with simulator(rate_limit=Rate(3, 60.0)) as (sim, session):
        first = [await post(sim, session, chat(str(i))) for i in range(3)]
        status, body, headers = await post(sim, session)
        other, _, _ = await post(sim, session, key=OTHER_KEY)  # each key has its own window
        assert sim.state.max_window == {"team-a": 4, "team-b": 1}
    assert [s for s, _, _ in first] == [200, 200, 200]
    assert [h["x-ratelimit-remaining-requests"] for _, _, h in first] == ["2", "1", "0"]
    assert first[0][2]["x-ratelimit-limit-requests"] == "3"
    reset = re.fullmatch(r"(\d+(?:\.\d+)?)s", first[0][2]["x-ratelimit-reset-requests"])
    assert reset and 50 < float(reset.group(1)) <= 60
    assert (status, error_code(body)) == (429, "rate_limit_exceeded")
    assert 50 < int(headers["Retry-After"]) <= 60  # the whole seconds left of the window (ceil: never 0)
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert other == 200


async def test_no_rate_limit_headers_without_a_limit() -> None:
    async with simulator() as (sim, session):
        _, _, headers = await post(sim, session)
    assert "x-ratelimit-limit-requests" not in headers


async def test_retry_after_rounds_up_whole_seconds() -> None:
    async with simulator(rate_limit=Rate(1, 2.5)) as (sim, session):
        assert (await post(sim, session))[0] == 200
        status, _, headers = await post(sim, session)
    assert status == 429 and headers["Retry-After"] == "3"


# -- bodies ------------------------------------------------------------------------------------


async def test_malformed_json_is_400_invalid_json() -> None:
    async with simulator() as (sim, session):
        status, body, _ = await post(sim, session, raw=b'{"model": "sim-small",')
    assert (status, error_code(body)) == (400, "invalid_json")
    assert body["error"]["message"].startswith("JSON parse error: ")


@pytest.mark.parametrize(
    ("body", "loc", "kind"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, ["body", "model"], "missing"),
        ({"model": 7, "messages": [{"role": "user", "content": "x"}]}, ["body", "model"], "string_type"),
        ({"model": "sim-small"}, ["body", "messages"], "missing"),
        ({"model": "sim-small", "messages": "hi"}, ["body", "messages"], "list_type"),
        ({"model": "sim-small", "messages": []}, ["body", "messages"], "too_short"),
        ({"model": "sim-small", "messages": ["hi"]}, ["body", "messages", 0], "dict_type"),
        ({"model": "sim-small", "messages": [{"content": "x"}]}, ["body", "messages", 0, "role"], "missing"),
        ({"model": "sim-small", "messages": [{"role": "user"}]}, ["body", "messages", 0, "content"], "missing"),
        (chat(temperature=2.5), ["body", "temperature"], "less_than_equal"),
        (chat(temperature=-0.1), ["body", "temperature"], "greater_than_equal"),
        (chat(top_p=1.5), ["body", "top_p"], "less_than_equal"),
        (chat(max_tokens=0), ["body", "max_tokens"], "greater_than"),
        (chat(max_tokens=1.5), ["body", "max_tokens"], "int_type"),
        ([chat()], ["body"], "dict_type"),
    ],
)
async def test_schema_problems_are_422_with_detail(body: Any, loc: list[Any], kind: str) -> None:
    async with simulator() as (sim, session):
        status, answer, _ = await post(sim, session, body)
    assert status == 422
    assert "error" not in answer
    assert {"loc": loc, "type": kind} in [{"loc": d["loc"], "type": d["type"]} for d in answer["detail"]]
    assert all(isinstance(d["msg"], str) and d["msg"] for d in answer["detail"])


def test_validate_body_accepts_edge_values_and_reports_every_problem() -> None:
    assert validate_body(chat(temperature=0, top_p=1, max_tokens=1)) == []
    assert validate_body(chat(temperature=2, top_p=0)) == []
    locs = [d["loc"] for d in validate_body({"messages": [{"role": "user"}], "temperature": 3})]
    assert locs == [["body", "model"], ["body", "messages", 0, "content"], ["body", "temperature"]]


# -- models and their limits ---------------------------------------------------------------------


@pytest.mark.parametrize("status", [404, 400])
async def test_unknown_model_uses_configured_status(status: int) -> None:
    async with simulator(unknown_model_status=status) as (sim, session):
        got, body, _ = await post(sim, session, chat(model="llama-3.2-3b"))
    assert (got, error_code(body)) == (status, "model_not_found")
    assert body["error"]["message"] == "The model 'llama-3.2-3b' does not exist or is not available"


async def test_unsupported_parameter_is_400_naming_it() -> None:
    async with simulator() as (sim, session):
        status, body, _ = await post(sim, session, chat(model="sim-mini", tools=[], temperature=0.5))
    assert (status, error_code(body)) == (400, "unsupported_parameter")
    assert "'tools'" in body["error"]["message"] and "temperature" not in body["error"]["message"]


async def test_context_length_counts_prompt_and_max_tokens() -> None:
    async with simulator() as (sim, session):
        fits, _, _ = await post(sim, session, chat("x" * 4000, model="sim-mini", max_tokens=1048))
        status, body, _ = await post(sim, session, chat("x" * 4000, model="sim-mini", max_tokens=1049))
    assert fits == 200
    assert (status, error_code(body)) == (400, "context_length_exceeded")
    assert "2048" in body["error"]["message"] and "2049" in body["error"]["message"]


async def test_response_format_needs_the_capability() -> None:
    plain = ModelSpec("plain", response_format=False)
    async with simulator(models=[plain]) as (sim, session):
        status, body, _ = await post(sim, session, chat(model="plain", response_format={"type": "json_object"}))
        text_ok, _, _ = await post(sim, session, chat(model="plain", response_format={"type": "text"}))
    assert (status, error_code(body)) == (400, "unsupported_response_format")
    assert text_ok == 200


def test_unknown_metadata_disables_the_model_checks() -> None:
    unknown = ModelSpec("u", context_length=None, supported_parameters=None, response_format=None)
    body = chat("x" * 10**6, model="u", anything=1, response_format={"type": "json_object"}, max_tokens=10**6)
    assert check_request(unknown, body) is None
    assert compose_reply(chat("x", max_tokens=1)).finish_reason == "length"


# -- faults and latency --------------------------------------------------------------------------


async def test_fail_rate_one_is_503_no_nodes_available() -> None:
    async with simulator(fail_rate=1.0) as (sim, session):
        status, body, _ = await post(sim, session)
    assert (status, error_code(body)) == (503, "no_nodes_available")
    assert body["error"]["message"] == "No nodes available: all GPU nodes are at capacity"


async def test_reset_rate_one_drops_the_connection() -> None:
    async with simulator(reset_rate=1.0) as (sim, session):
        with pytest.raises(aiohttp.ClientConnectionError):
            await post(sim, session)
        assert sim.state.resets == 1
        assert sim.state.completions_ok == 0 and sim.state.by_status == {}


async def test_seeded_faults_replay_identically() -> None:
    async def statuses() -> list[int]:
        async with simulator(fail_rate=0.5, seed=42) as (sim, session):
            return [(await post(sim, session, chat(str(i))))[0] for i in range(30)]

    first, second = await statuses(), await statuses()
    assert first == second
    assert set(first) == {200, 503}


async def test_latency_applies_and_concurrent_requests_are_tracked() -> None:
    async with simulator(latency=0.2) as (sim, session):
        started = time.monotonic()
        results = await asyncio.gather(*(post(sim, session, chat(str(i))) for i in range(5)))
        elapsed = time.monotonic() - started
        snap = sim.state.snapshot()
    assert [status for status, _, _ in results] == [200] * 5
    assert elapsed >= 0.2  # slept (a busy machine only makes it later) ...
    assert snap["max_in_flight"] == 5 and snap["in_flight"] == 0  # ... and all five at once


# -- changing a running simulator ----------------------------------------------------------------


async def test_config_object_changes_take_effect_mid_run() -> None:
    async with simulator() as (sim, session):
        assert (await post(sim, session, chat(model="sim-large")))[0] == 200
        sim.config.models[:] = [m for m in sim.config.models if m.id != "sim-large"]
        sim.config.revoked.add("team-b")
        gone, body, _ = await post(sim, session, chat(model="reasoning"))
        revoked, _, _ = await post(sim, session, key=OTHER_KEY)
    assert (gone, error_code(body)) == (404, "model_not_found")
    assert revoked == 401


async def test_control_endpoints_change_config_report_and_reset() -> None:
    async with simulator() as (sim, session):
        base = sim.base_url.removesuffix("/v1")
        change = {
            "remove_models": ["sim-small"],
            "add_models": [{"id": "sim-new", "context_length": 100, "prompt_price": 1e-6}],
            "aliases": {"fast": "sim-new"},
            "revoke": ["team-b"],
            "key_budgets": {"team-c": 0},
        }
        async with session.post(f"{base}/_sim/config", json=change) as response:
            assert response.status == 200
        status, answer, _ = await post(sim, session, chat(model="fast"))
        assert (status, answer["model"]) == (200, "sim-new")
        assert (await post(sim, session, chat(model="sim-small")))[0] == 404
        assert (await post(sim, session, key=OTHER_KEY))[0] == 401
        assert (await post(sim, session, key="team-c:x"))[0] == 402
        async with session.post(f"{base}/_sim/config", json={"fail_rate": 1, "latency": "10ms"}) as response:
            assert response.status == 200
        assert sim.config.latency == pytest.approx(0.01)
        assert (await post(sim, session, chat(model="fast")))[0] == 503

        async with session.get(f"{base}/_sim/stats") as response:
            stats = await response.json()
        assert stats == sim.state.snapshot()
        assert stats["by_status"] == {"200": 1, "401": 1, "402": 1, "404": 1, "503": 1}
        assert stats["requests_total"] == 5

        async with session.post(f"{base}/_sim/reset") as response:
            assert response.status == 200
        assert sim.state.snapshot()["requests_total"] == 0 and sim.state.keys == {}


@pytest.mark.parametrize(
    "change",
    [{"fail_rate": 2}, {"nonsense": 1}, {"add_models": [{"id": "x", "colour": "red"}]}, {"revoke": "team-a"}, []],
)
async def test_bad_config_change_is_400_and_changes_nothing(change: Any) -> None:
    async with simulator() as (sim, session):
        base = sim.base_url.removesuffix("/v1")
        async with session.post(f"{base}/_sim/config", json={"revoke": ["team-z"], **change} if isinstance(change, dict) else change) as response:
            assert response.status == 400
            assert (await response.json())["error"]["code"] == "invalid_config"
        assert sim.config.revoked == set() and sim.config.fail_rate == 0


async def test_create_app_exposes_the_state_its_server_keeps() -> None:
    from aiohttp.test_utils import TestServer

    app = create_app(SimulatorConfig())
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        url = str(server.make_url("/v1/chat/completions"))
        async with session.post(url, json=chat(), headers={"Authorization": f"Bearer {KEY}"}) as response:
            assert response.status == 200
    snapshot = app[STATE_KEY].snapshot()
    assert snapshot["requests_total"] == 1 and snapshot["completions_ok"] == 1


# -- thread and CLI ------------------------------------------------------------------------------


def _get_json(url: str, key: str | None = None, body: Any = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode())
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def test_simulator_thread_serves_and_stops() -> None:
    thread = SimulatorThread(SimulatorConfig(expired={"team-b"}))
    with thread as sim:
        assert _get_json(f"{sim.base_url}/chat/completions", KEY, chat())[0] == 200
        assert _get_json(f"{sim.base_url}/chat/completions", OTHER_KEY, chat())[0] == 401
        assert sim.state.snapshot()["by_status"] == {"200": 1, "401": 1}
        url = sim.base_url
    assert thread._thread is not None and not thread._thread.is_alive()
    with pytest.raises(OSError):
        _get_json(f"{url}/models", KEY)


def test_simulator_thread_reports_a_port_in_use() -> None:
    with SimulatorThread() as sim:
        with pytest.raises(ConfigError, match="cannot listen"):
            with SimulatorThread(port=sim.port):
                pass


@pytest.fixture
def cli_process() -> Iterator[subprocess.Popen[str]]:
    code = "from batchrun.simulator.cli import simulate_command; simulate_command()"
    args = ["--port", "0", "--revoked", "team-b", "--budget", "team-c=0", "--unknown-model-status", "400",
            "--rate-limit", "100/1s", "--seed", "3"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, env=env)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        assert process.stdout is not None
        process.stdout.close()


def test_cli_prints_listening_line_serves_and_exits_0_on_sigterm(cli_process: subprocess.Popen[str]) -> None:
    assert cli_process.stdout is not None
    line = cli_process.stdout.readline()
    match = re.fullmatch(r"batchrun simulator listening on (http://127\.0\.0\.1:(\d+)/v1)\n", line)
    assert match, line
    base_url = match.group(1)
    assert int(match.group(2)) != 0
    assert _get_json(f"{base_url}/chat/completions", KEY, chat())[0] == 200
    assert _get_json(f"{base_url}/chat/completions", OTHER_KEY, chat())[0] == 401
    assert _get_json(f"{base_url}/chat/completions", "team-c:x", chat())[0] == 402
    assert _get_json(f"{base_url}/chat/completions", KEY, chat(model="nope"))[0] == 400
    cli_process.send_signal(signal.SIGTERM)
    assert cli_process.wait(timeout=5) == 0
    assert cli_process.stdout.read() == ""  # exactly one line


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--rate-limit", "fast"], "--rate-limit"),
        (["--budget", "team-a"], "KEYID=N"),
        (["--latency", "soon"], "--latency"),
        (["--fail-rate", "1.5"], "--fail-rate"),
        (["--unknown-model-status", "500"], "--unknown-model-status"),
    ],
)
def test_cli_rejects_bad_options(args: list[str], fragment: str) -> None:
    result = CliRunner().invoke(simulate_command, args)
    assert result.exit_code == 2
    assert fragment in result.output


def test_cli_reads_options_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHRUN_SIM_RATE_LIMIT", "sometimes")
    result = CliRunner().invoke(simulate_command, [])
    assert result.exit_code == 2
    assert "sometimes" in result.output


def test_cli_help_has_an_example() -> None:
    result = CliRunner().invoke(simulate_command, ["--help"])
    assert result.exit_code == 0
    assert "batchrun simulate --port 0" in result.output
