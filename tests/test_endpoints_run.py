"""Every endpoint end to end, through the CLI: submit, run, status, estimate and export of embeddings,
completions, responses and moderations beside chat — against the bundled simulator and against llmock
(a server no one here wrote), on SQLite and PostgreSQL, and through a chaos proxy that cuts and shortens
embedding answers, which must be retried and never exported."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from chaos_proxy import ChaosProxy, Fault
from conftest import FAST_RETRY, Cli, make_keys, provider_env, read_jsonl

from batchrun.simulator import RunningSimulator
from batchrun.simulator.embeddings import embedding_for

JOBS = Path(__file__).resolve().parent.parent / "jobs"
THIRD_PARTY = Path(__file__).resolve().parent / "fixtures" / "third_party"


def lines_of(path: Path) -> dict[str, dict[str, Any]]:
    return {line["custom_id"]: line for line in read_jsonl(path)}


def run_all(cli: Cli, base_url: str, *extra: str, keys: int = 2) -> Any:
    env = {"BATCHRUN_BASE_URL": base_url, "BATCHRUN_API_KEYS": ",".join(make_keys(keys))}
    return cli("run", "--no-progress", *FAST_RETRY, *extra, env=env, timeout=180)


def export(cli: Cli, tmp_path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    result = cli("export", "--output", str(tmp_path / "out.jsonl"), "--errors", str(tmp_path / "errors.jsonl"))
    assert result.returncode == 0, result.stderr
    return lines_of(tmp_path / "out.jsonl"), lines_of(tmp_path / "errors.jsonl")


def assert_vectors_belong_to_their_inputs(results: dict[str, dict[str, Any]], sent: dict[str, dict[str, Any]]) -> None:
    for custom_id, row in results.items():
        body = sent[custom_id]["body"]
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = row["response"]["body"]["data"]
        assert [item["index"] for item in data] == list(range(len(inputs)))
        for text, item in zip(inputs, data):
            assert item["embedding"] == pytest.approx(embedding_for(text, body.get("dimensions", 1536)), abs=1e-6)


def test_the_embeddings_example_runs_end_to_end_at_the_simulator(cli: Cli, sim: RunningSimulator,
                                                                  tmp_path: Path) -> None:
    submitted = cli("submit", str(JOBS / "embeddings.jsonl"))
    assert submitted.returncode == 0, submitted.stderr
    assert "loaded 25" in submitted.stdout

    result = run_all(cli, sim.base_url)
    assert result.returncode == 0, result.stderr

    results, errors = export(cli, tmp_path)
    sent = lines_of(JOBS / "embeddings.jsonl")
    assert set(results) == set(sent) and errors == {}
    assert_vectors_belong_to_their_inputs(results, sent)
    assert {row["batchrun"]["endpoint"] for row in results.values()} == {"/v1/embeddings"}
    assert {row["batchrun"]["model_served"] for row in results.values()} == {"sim-embed"}
    # one request an embeddings job, to the embeddings endpoint only
    assert sim.state.snapshot()["by_endpoint"] == {"embeddings": {"requests": 25, "ok": 25}}
    status = json.loads(cli("status", "--json").stdout)
    (batch,) = status["batches"]
    assert list(batch["endpoints"]) == ["/v1/embeddings"]
    embeddings = batch["endpoints"]["/v1/embeddings"]
    assert embeddings["succeeded"] == 25 and embeddings["usage"]["completion_tokens"] == 0
    assert embeddings["usage"]["prompt_tokens"] > 0 and embeddings["cost"] > 0


def test_bare_lines_go_where_submit_endpoint_says(cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"custom_id": f"d{i}", "model": "embed", "input": f"text {i}"}) + "\n"
                              for i in range(5)))
    as_chat = cli("submit", str(corpus), "--batch", "wrong")
    assert as_chat.returncode == 1
    assert f"{corpus}:1: messages: missing messages" in as_chat.stderr
    right = cli("submit", str(corpus), "--endpoint", "/v1/embeddings")
    assert right.returncode == 0 and "loaded 5" in right.stdout, right.stderr
    assert run_all(cli, sim.base_url).returncode == 0
    results, _ = export(cli, tmp_path)
    assert [results[f"d{i}"]["response"]["body"]["data"][0]["embedding"][:3] for i in range(5)] == \
        [pytest.approx(embedding_for(f"text {i}")[:3], abs=1e-6) for i in range(5)]


def test_one_file_mixing_all_five_endpoints_loads_runs_and_exports(any_db_url: str, sim: RunningSimulator,
                                                                   tmp_path: Path) -> None:
    cli = Cli(tmp_path, {"BATCHRUN_DB": any_db_url})
    assert cli("submit", str(JOBS / "mixed.jsonl")).returncode == 0
    estimate = cli("estimate", env=provider_env(sim, make_keys(1)))
    assert estimate.returncode == 0, estimate.stderr
    rows = {line.split()[0]: line.split() for line in estimate.stdout.splitlines()[2:7]}
    assert set(rows) == {"chat", "completions", "embeddings", "moderations", "responses"}
    assert rows["embeddings"][1:3] == ["embed", "sim-embed"]
    assert rows["embeddings"][5] == "0"  # no completion tokens for embeddings
    assert rows["completions"][5] == "20" and rows["responses"][5] == "60" and rows["chat"][5] == "100"
    assert rows["moderations"][1:6] == ["(default)", "unknown", "1", "0", "0"]  # a request, no tokens
    assert "  embeddings: 1 request," in estimate.stdout

    result = run_all(cli, sim.base_url)
    assert result.returncode == 0, result.stderr
    results, errors = export(cli, tmp_path)
    assert errors == {} and sorted(results) == sorted(lines_of(JOBS / "mixed.jsonl"))
    by_id = {cid: row["response"]["body"] for cid, row in results.items()}
    assert by_id["chat-1"]["choices"][0]["message"]["content"] == "echo: Explain tides in one sentence."
    assert len(by_id["embed-1"]["data"]) == 2
    assert by_id["complete-1"]["choices"][0]["text"]
    assert by_id["respond-1"]["status"] == "completed" and by_id["respond-1"]["output"][0]["type"] == "message"
    assert [r["flagged"] for r in by_id["moderate-1"]["results"]] == [False, True]
    assert {cid: row["batchrun"]["endpoint"] for cid, row in results.items()} == {
        "chat-1": "/v1/chat/completions", "embed-1": "/v1/embeddings", "complete-1": "/v1/completions",
        "respond-1": "/v1/responses", "moderate-1": "/v1/moderations"}
    moderation = results["moderate-1"]["batchrun"]  # no model in the line: the provider's default, said as such
    assert moderation["model_requested"] is None and moderation["model_served"], moderation

    (batch,) = json.loads(cli("status", "--json").stdout)["batches"]
    assert {url: e["succeeded"] for url, e in batch["endpoints"].items()} == {
        "/v1/chat/completions": 1, "/v1/completions": 1, "/v1/embeddings": 1, "/v1/moderations": 1,
        "/v1/responses": 1}
    assert batch["endpoints"]["/v1/moderations"]["usage"]["total_tokens"] == 0
    assert batch["endpoints"]["/v1/responses"]["usage"]["completion_tokens"] > 0
    text = cli("status").stdout
    assert "  /v1/embeddings: 1 jobs, 0 queued, 0 running, 1 succeeded, 0 failed" in text


@pytest.mark.parametrize("kind", ["cut", "drop_last", "short_vector", "empty_data"])
def test_a_cut_or_short_embedding_answer_is_retried_never_exported(kind: str, cli: Cli, sim: RunningSimulator,
                                                                   tmp_path: Path) -> None:
    assert cli("submit", str(JOBS / "embeddings.jsonl")).returncode == 0
    # one request at a time, so that the run's first answer (which a lone short vector cannot be held
    # against) is a whole one: the proxy spoils every third
    with ChaosProxy(sim.base_url, [Fault("/v1/embeddings", kind, every=3)]) as proxy:  # type: ignore[arg-type]
        result = run_all(cli, proxy.base_url, "--max-attempts", "10", "--concurrency", "1")
        record = proxy.record("/v1/embeddings")
    assert result.returncode == 0, result.stderr
    assert record.faults.get(kind, 0) >= 5, record  # the proxy spoiled answers...
    assert record.ok == 25 + record.injected  # ...each one answered again
    results, errors = export(cli, tmp_path)
    assert errors == {}
    sent = lines_of(JOBS / "embeddings.jsonl")
    assert set(results) == set(sent)
    assert_vectors_belong_to_their_inputs(results, sent)  # whole, and the right ones
    assert sum(row["batchrun"]["attempts"] for row in results.values()) == 25 + record.injected


# --- llmock: a server no one here wrote ----------------------------------------------------------------


def test_the_embeddings_example_runs_at_llmock(cli: Cli, start_llmock: Any, tmp_path: Path) -> None:
    mock = start_llmock("--response-style", "echo")
    assert cli("submit", str(JOBS / "embeddings.jsonl")).returncode == 0
    # llmock has no `embed` alias: the fallback sends its own embedding model
    result = run_all(cli, mock.base_url, "--fallback", "text-embedding-3-small")
    assert result.returncode == 0, result.stderr
    results, errors = export(cli, tmp_path)
    assert errors == {} and len(results) == 25
    sent = lines_of(JOBS / "embeddings.jsonl")
    for custom_id, row in results.items():
        inputs = sent[custom_id]["body"]["input"]
        data = row["response"]["body"]["data"]
        assert len(data) == (len(inputs) if isinstance(inputs, list) else 1)
        # llmock ignores `dimensions` and sends its model's 1,536: whole vectors, kept
        assert {len(item["embedding"]) for item in data} == {1536}
        assert row["response"]["request_id"] is None and row["batchrun"]["unverified"] is True
        assert row["batchrun"]["model_sent"] == "text-embedding-3-small"
    received = [r for r in mock.requests() if r["path"] == "/v1/embeddings"]
    assert len(received) == 25
    assert {r["body"]["model"] for r in received} == {"text-embedding-3-small"}


def test_a_short_embedding_from_llmock_is_retried(cli: Cli, start_llmock: Any, tmp_path: Path) -> None:
    mock = start_llmock("--response-style", "echo")
    assert cli("submit", str(JOBS / "embeddings.jsonl")).returncode == 0
    faults = [Fault("/v1/embeddings", "short_vector", every=2), Fault("/v1/embeddings", "cut", every=5)]
    with ChaosProxy(mock.base_url, faults) as proxy:
        result = run_all(cli, proxy.base_url, "--fallback", "text-embedding-3-small", "--max-attempts", "10",
                         "--concurrency", "1")
        record = proxy.record("/v1/embeddings")
    assert result.returncode == 0, result.stderr
    assert record.faults.get("short_vector", 0) >= 5 and record.faults.get("cut", 0) >= 2, record
    assert record.ok == 25 + record.injected  # every spoiled answer was asked again
    results, errors = export(cli, tmp_path)
    assert errors == {} and len(results) == 25
    for row in results.values():
        lengths = {len(item["embedding"]) for item in row["response"]["body"]["data"]}
        assert lengths == {1536}, row["custom_id"]


def test_a_mixed_file_at_llmock_fails_only_the_endpoints_it_lacks(cli: Cli, start_llmock: Any,
                                                                  tmp_path: Path) -> None:
    mock = start_llmock("--response-style", "echo")
    lines = [
        {"custom_id": f"chat-{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"hi {i}"}]}} for i in range(3)
    ] + [
        {"custom_id": f"resp-{i}", "method": "POST", "url": "/v1/responses",
         "body": {"model": "gpt-4o-mini", "input": f"hello {i}", "max_output_tokens": 50}} for i in range(3)
    ] + [
        {"custom_id": f"mod-{i}", "method": "POST", "url": "/v1/moderations", "body": {"input": f"text {i}"}}
        for i in range(4)
    ] + [
        {"custom_id": f"comp-{i}", "method": "POST", "url": "/v1/completions",
         "body": {"model": "gpt-4o-mini", "prompt": f"once {i}"}} for i in range(4)
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert cli("submit", str(path)).returncode == 0
    result = run_all(cli, mock.base_url, "--concurrency", "1", keys=1)
    assert result.returncode == 1, result.stderr  # some jobs failed
    results, errors = export(cli, tmp_path)
    assert sorted(results) == [f"chat-{i}" for i in range(3)] + [f"resp-{i}" for i in range(3)]
    assert results["resp-0"]["response"]["body"]["output"][0]["content"][0]["text"] == "Hello! You said: hello 0"
    assert sorted(errors) == sorted([f"mod-{i}" for i in range(4)] + [f"comp-{i}" for i in range(4)])
    for row in errors.values():
        assert row["error"]["code"] == "endpoint_not_served"
        assert "the provider does not serve /v1/" in row["error"]["message"]
    # one 404 per endpoint says it: the other jobs of that endpoint fail without a request
    received = [r["path"] for r in mock.requests() if r["method"] == "POST"]
    assert received.count("/v1/moderations") == 1 and received.count("/v1/completions") == 1


# --- job files no one here wrote -----------------------------------------------------------------------


def test_vllm_and_openai_example_batch_files_run_at_the_simulator(cli: Cli, sim: RunningSimulator,
                                                                   tmp_path: Path) -> None:
    files = ["vllm_openai_example_batch.jsonl", "vllm_readme_embedding_batch.jsonl",
             "openai_batch_guide_chat.jsonl", "openai_batch_guide_moderations.jsonl",
             "openai_openapi_batch_request_input.jsonl", "openai_cookbook_nightly_support_qa_batch.jsonl"]
    expected: dict[str, str] = {}
    for name in files:
        batch = Path(name).stem
        submitted = cli("submit", str(THIRD_PARTY / name), "--batch", batch)
        assert submitted.returncode == 0, (name, submitted.stderr)
        for custom_id, line in lines_of(THIRD_PARTY / name).items():
            expected[f"{batch}/{custom_id}"] = line["url"]
    # their models are not the simulator's: fallbacks stand in, model by model (batchrun.toml)
    fallbacks = {"meta-llama/Meta-Llama-3-8B-Instruct": "fast", "gpt-3.5-turbo-0125": "fast", "gpt-4o-mini": "fast",
                 "gpt-5.4-nano": "fast", "intfloat/e5-mistral-7b-instruct": "embed",
                 "omni-moderation-latest": "sim-moderation"}
    (tmp_path / "batchrun.toml").write_text(
        "[fallback]\n" + "".join(f'"{model}" = ["{target}"]\n' for model, target in fallbacks.items()))
    result = run_all(cli, sim.base_url)
    assert result.returncode == 0, result.stderr
    exported = cli("export", "--output", str(tmp_path / "out.jsonl"))
    assert exported.returncode == 0
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert len(rows) == len(expected)
    assert sorted(row["batchrun"]["endpoint"] for row in rows) == sorted(expected.values())
    # vLLM's own file caps its answers with max_completion_tokens: accepted, and counted in the estimate
    by_endpoint = {row["batchrun"]["endpoint"] for row in rows}
    assert by_endpoint == {"/v1/chat/completions", "/v1/embeddings", "/v1/moderations", "/v1/responses"}


def test_a_vllm_score_line_is_refused_at_submit_with_the_endpoints_batchrun_sends(cli: Cli) -> None:
    result = cli("submit", str(THIRD_PARTY / "vllm_readme_score_batch.jsonl"))
    assert result.returncode == 1
    assert "vllm_readme_score_batch.jsonl:1: url: unsupported url '/v1/score' (expected one of: " in result.stderr
