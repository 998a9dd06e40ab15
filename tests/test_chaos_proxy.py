"""The chaos proxy (tests/chaos_proxy.py) does what the tests that use it rely on.

Unit: the spoiling of bodies as pure functions (embeddings faults included, on a sample body) and the
schedules. Integration: the proxy in front of the bundled simulator, spoken to with http.client, so
what arrives on the wire (status, Content-Length, body) is seen as it is sent.
"""

from __future__ import annotations

import base64
import http.client
import json
import random
import struct
from typing import Any
from urllib.parse import urlsplit

import pytest
from chaos_proxy import ChaosProxy, Fault, NotApplicable, PathRecord, spoil

from batchrun.simulator import RunningSimulator

CHAT = "/v1/chat/completions"
TOKEN = "key1:0123456789abcdef0123456789abcdef"

EMBEDDINGS_BODY = {
    "object": "list",
    "data": [
        {"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3, 0.4]},
        {"object": "embedding", "index": 1, "embedding": [0.5, 0.6, 0.7, 0.8]},
        {"object": "embedding", "index": 2, "embedding": [0.9, 1.0, 1.1, 1.2]},
    ],
    "model": "sim-embed",
    "usage": {"prompt_tokens": 6, "total_tokens": 6},
}


def _body(obj: Any) -> bytes:
    return json.dumps(obj).encode()


# -- spoiling, as pure functions ------------------------------------------------------------------------


def test_cut_keeps_half_the_bytes_and_breaks_the_json() -> None:
    body = _body(EMBEDDINGS_BODY)
    cut = spoil("cut", body)
    assert cut == body[: len(body) // 2]
    with pytest.raises(json.JSONDecodeError):
        json.loads(cut)


def test_drop_last_leaves_one_embedding_fewer() -> None:
    spoiled = json.loads(spoil("drop_last", _body(EMBEDDINGS_BODY)))
    assert [item["index"] for item in spoiled["data"]] == [0, 1]
    assert spoiled["usage"] == EMBEDDINGS_BODY["usage"] and spoiled["model"] == "sim-embed"


def test_short_vector_halves_the_last_embedding_only() -> None:
    spoiled = json.loads(spoil("short_vector", _body(EMBEDDINGS_BODY)))
    assert [len(item["embedding"]) for item in spoiled["data"]] == [4, 4, 2]
    assert spoiled["data"][2]["embedding"] == [0.9, 1.0]


def test_short_vector_halves_a_base64_embedding_to_whole_floats() -> None:
    floats = [0.5, -1.0, 2.25, 3.0, 4.5, 5.0]
    body = {"object": "list", "data": [
        {"object": "embedding", "index": 0, "embedding": base64.b64encode(struct.pack("<6f", *floats)).decode()},
    ]}
    spoiled = json.loads(spoil("short_vector", _body(body)))
    raw = base64.b64decode(spoiled["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == floats[:3]


def test_empty_data_no_choices_no_output() -> None:
    assert json.loads(spoil("empty_data", _body(EMBEDDINGS_BODY)))["data"] == []
    chat = {"id": "c1", "object": "chat.completion", "choices": [{"index": 0}], "usage": {}}
    assert json.loads(spoil("no_choices", _body(chat))) == {"id": "c1", "object": "chat.completion", "usage": {}}
    response = {"id": "r1", "object": "response", "output": [{"type": "message"}], "status": "completed"}
    assert json.loads(spoil("no_output", _body(response))) == {"id": "r1", "object": "response",
                                                               "status": "completed"}


@pytest.mark.parametrize(("kind", "body"), [
    ("drop_last", b"not json"),
    ("drop_last", _body({"object": "list", "data": []})),
    ("short_vector", _body({"data": [{"embedding": [0.1]}]})),
    ("empty_data", _body({"choices": []})),
    ("no_choices", _body({"output": []})),
    ("no_output", _body([1, 2])),
    ("cut", b"x"),
])
def test_a_fault_that_does_not_fit_the_body_says_so(kind: Any, body: bytes) -> None:
    with pytest.raises(NotApplicable):
        spoil(kind, body)


# -- schedules -------------------------------------------------------------------------------------------


def _fired(fault: Fault, answers: int, seed: int = 0) -> list[int]:
    rng, spoiled, fired = random.Random(seed), 0, []
    for nth in range(1, answers + 1):
        if fault.fires(nth, spoiled, rng):
            spoiled += 1
            fired.append(nth)
    return fired


def test_schedules_are_deterministic() -> None:
    assert _fired(Fault(CHAT, "cut", first=3), 10) == [1, 2, 3]
    assert _fired(Fault(CHAT, "cut", every=3), 10) == [3, 6, 9]
    assert _fired(Fault(CHAT, "cut", every=2, limit=2), 10) == [2, 4]
    by_rate = _fired(Fault(CHAT, "cut", rate=0.3), 200, seed=7)
    assert by_rate == _fired(Fault(CHAT, "cut", rate=0.3), 200, seed=7)
    assert 30 <= len(by_rate) <= 90


@pytest.mark.parametrize("kwargs", [{}, {"first": 1, "every": 2}, {"every": 0}, {"rate": 1.5}, {"first": -1}])
def test_a_fault_needs_exactly_one_valid_schedule(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Fault(CHAT, "cut", **kwargs)


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        Fault(CHAT, "explode", first=1)  # type: ignore[arg-type]


# -- the proxy in front of the simulator -----------------------------------------------------------------


def _request(base_url: str, method: str, path: str, payload: dict[str, Any] | None = None,
             token: str | None = TOKEN) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request on a fresh connection; returns status, headers and the body exactly as framed."""
    parts = urlsplit(base_url)
    assert parts.hostname is not None and parts.port is not None
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        body = json.dumps(payload).encode() if payload is not None else None
        connection.request(method, parts.path.rstrip("/") + path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.msg, response.read()
    finally:
        connection.close()


def _chat(base_url: str, prompt: str, **kwargs: Any) -> tuple[int, http.client.HTTPMessage, bytes]:
    payload = {"model": "sim-small", "messages": [{"role": "user", "content": prompt}]}
    return _request(base_url, "POST", "/chat/completions", payload, **kwargs)


def test_base_url_mirrors_the_upstream(sim: RunningSimulator) -> None:
    with ChaosProxy(sim.base_url) as proxy:
        assert proxy.base_url.endswith("/v1") and proxy.base_url != sim.base_url
        assert urlsplit(proxy.base_url).hostname == "127.0.0.1"


def test_without_faults_answers_pass_through_unchanged(sim: RunningSimulator) -> None:
    with ChaosProxy(sim.base_url) as proxy:
        status, headers, body = _chat(proxy.base_url, "hello through the proxy")
        models_status, _, models = _request(proxy.base_url, "GET", "/models")
        refused_status, _, refused = _chat(proxy.base_url, "no key", token=None)
        unknown_status, _, _ = _request(proxy.base_url, "POST", "/chat/completions",
                                        {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]})
        stats = json.loads(_request(sim.base_url.removesuffix("/v1"), "GET", "/_sim/stats")[2])

    assert status == 200 and int(headers["Content-Length"]) == len(body)
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(body)["choices"][0]["message"]["content"]
    assert models_status == 200 and json.loads(models)["data"]
    # the simulator saw the key the client sent, and refused the request that had none
    assert refused_status == 401 and json.loads(refused)["error"]["code"] == "missing_api_key"
    assert "key1" in stats["keys"]
    assert unknown_status == 404
    assert proxy.record(CHAT) == PathRecord(forwarded=3, ok=1)
    assert proxy.record("/v1/models").forwarded == 1
    assert proxy.events() == []


def test_upstream_paths_outside_v1_go_through(sim: RunningSimulator) -> None:
    with ChaosProxy(sim.base_url) as proxy:
        _chat(proxy.base_url, "counted")
        root = proxy.base_url.removesuffix("/v1")
        status, _, stats = _request(root, "GET", "/_sim/stats")
    assert status == 200 and json.loads(stats)["requests_total"] == 1


def test_cut_sends_a_well_framed_prefix(sim: RunningSimulator) -> None:
    with ChaosProxy(sim.base_url, [Fault(CHAT, "cut", every=2)]) as proxy:
        answers = [_chat(proxy.base_url, f"question {i}") for i in range(6)]
        record, events = proxy.record(CHAT), proxy.events(CHAT)

    for i, (status, headers, body) in enumerate(answers):
        assert status == 200
        assert int(headers["Content-Length"]) == len(body)  # a complete response, no transport error
        if i % 2 == 1:
            with pytest.raises(json.JSONDecodeError):
                json.loads(body)
        else:
            assert json.loads(body)["choices"]
    assert record == PathRecord(forwarded=6, ok=6, faults={"cut": 3})
    assert record.injected == 3
    assert [e.nth_ok for e in events] == [2, 4, 6]
    assert all(e.sent_size == e.original_size // 2 for e in events)
    # the event names the request, so a test can tell which job got the cut answer
    assert [json.loads(e.request_body)["messages"][0]["content"] for e in events] == [
        "question 1", "question 3", "question 5"]


def test_truncate_announces_the_whole_body_and_closes_the_connection_half_way(sim: RunningSimulator) -> None:
    with ChaosProxy(sim.base_url, [Fault(CHAT, "truncate", first=1)]) as proxy:
        with pytest.raises(http.client.IncompleteRead) as cut:
            _chat(proxy.base_url, "question 0")
        status, _, whole = _chat(proxy.base_url, "question 1")
        [event] = proxy.events(CHAT)

    # the client read half of what Content-Length announced, then the connection ended: a transport error
    assert len(cut.value.partial) == event.sent_size == event.original_size // 2
    assert cut.value.expected == event.original_size - event.sent_size
    assert status == 200 and json.loads(whole)["choices"]
    assert proxy.record(CHAT).faults == {"truncate": 1}


def test_no_choices_on_the_first_answers_then_faults_replaced(sim: RunningSimulator) -> None:
    with ChaosProxy(sim.base_url, [Fault(CHAT, "no_choices", first=2)]) as proxy:
        first = [json.loads(_chat(proxy.base_url, f"q{i}")[2]) for i in range(3)]
        proxy.faults = [Fault(CHAT, "cut", first=10)]
        _, _, later = _chat(proxy.base_url, "after the change")
        record = proxy.record(CHAT)

    assert ["choices" in answer for answer in first] == [False, False, True]
    assert all(answer["object"] == "chat.completion" for answer in first)
    with pytest.raises(json.JSONDecodeError):
        json.loads(later)
    assert record.faults == {"no_choices": 2, "cut": 1}


def test_errors_are_never_spoiled_and_unfit_bodies_are_counted(sim: RunningSimulator) -> None:
    with ChaosProxy(sim.base_url, [Fault(CHAT, "cut", first=5), Fault("/v1/models", "no_output", first=1)]) as proxy:
        status, _, body = _chat(proxy.base_url, "no key", token=None)
        _request(proxy.base_url, "GET", "/models")
        record, models = proxy.record(CHAT), proxy.record("/v1/models")

    assert status == 401 and json.loads(body)["error"]["code"] == "missing_api_key"
    assert record == PathRecord(forwarded=1, ok=0)
    assert models == PathRecord(forwarded=1, ok=1, skipped={"no_output": 1})


def test_an_upstream_drop_is_a_drop_for_the_client(sim: RunningSimulator) -> None:
    sim.config.reset_rate = 1.0
    with ChaosProxy(sim.base_url, [Fault(CHAT, "cut", first=5)]) as proxy:
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            _chat(proxy.base_url, "dropped")
        record = proxy.record(CHAT)
    assert record.upstream_errors == 1 and record.forwarded == 0 and record.injected == 0
