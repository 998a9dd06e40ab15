"""The simulator's Files and Batches API, driven by the `openai` SDK over real HTTP.

The SDK (`client.files.create`, `client.batches.create/retrieve/cancel/list`, `client.files.content`)
is the proof the simulator speaks OpenAI's batch API: its models parse every object we return. Each
test starts its own simulator on a thread with a short `batch_processing_seconds`, so a batch's life
takes well under a second; polls are 10 ms apart. Raw HTTP (urllib) only where the SDK cannot go: a
request without a key, the `/_sim` controls.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import openai
import pytest
from click.testing import CliRunner
from openai import OpenAI
from openai.types import Batch

from batchrun.simulator import RunningSimulator, SimulatorConfig, SimulatorThread
from batchrun.simulator.batches import EXPIRED_MESSAGE, parse_input
from batchrun.simulator.cli import simulate_command
from batchrun.units import Rate

KEY = "team-a:s3cret"
CHAT = "/v1/chat/completions"
FINISHED = frozenset({"completed", "failed", "expired", "cancelled"})


@contextmanager
def simulated(**config: Any) -> Iterator[tuple[RunningSimulator, OpenAI]]:
    """A simulator whose batches take 0.3 s unless told otherwise, and an SDK client that never retries."""
    config.setdefault("batch_processing_seconds", 0.3)
    with SimulatorThread(SimulatorConfig(seed=1, **config)) as sim:
        client = OpenAI(base_url=sim.base_url, api_key=KEY, max_retries=0, timeout=10)
        try:
            yield sim, client
        finally:
            client.close()


def chat_line(custom_id: str, text: str | None = None, model: str = "fast", **extra: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": text or f"question {custom_id}"}], **extra}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}


def jsonl(lines: list[Any]) -> bytes:
    return b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)


def upload(client: OpenAI, lines: list[Any], purpose: str = "batch") -> str:
    return client.files.create(file=("jobs.jsonl", io.BytesIO(jsonl(lines))), purpose=purpose).id  # type: ignore[arg-type]


def start(client: OpenAI, lines: list[Any], endpoint: str = CHAT, **extra: Any) -> Batch:
    return client.batches.create(
        input_file_id=upload(client, lines), endpoint=endpoint, completion_window="24h", **extra  # type: ignore[arg-type]
    )


def wait(client: OpenAI, batch_id: str, until: frozenset[str] = FINISHED, timeout: float = 3.0) -> list[Batch]:
    """Poll every 10 ms until the batch's status is one of `until`; every batch object seen, in order."""
    seen = [client.batches.retrieve(batch_id)]
    deadline = time.monotonic() + timeout
    while seen[-1].status not in until:
        assert time.monotonic() < deadline, f"batch still {seen[-1].status} after {timeout} s"
        time.sleep(0.01)
        seen.append(client.batches.retrieve(batch_id))
    return seen


def answered(batch: Batch) -> int:
    return batch.request_counts.completed if batch.request_counts is not None else 0


def read_file(client: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def raw(sim: RunningSimulator, method: str, path: str, body: Any = None, key: str | None = KEY) -> tuple[int, Any]:
    """A request outside the SDK: `path` under the server's root (`/v1/...`, `/_sim/...`)."""
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    data = None if body is None else json.dumps(body).encode()
    root = sim.base_url.removesuffix("/v1")
    request = urllib.request.Request(f"{root}{path}", data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


# -- files -----------------------------------------------------------------------------------------


def test_a_file_is_uploaded_read_back_listed_and_deleted() -> None:
    lines = [chat_line(f"job-{i}") for i in range(3)]
    with simulated() as (sim, client):
        created = client.files.create(file=("jobs.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
        assert created.id.startswith("file-") and created.object == "file" and created.purpose == "batch"
        assert created.bytes == len(jsonl(lines)) and created.filename == "jobs.jsonl" and created.created_at > 0
        assert client.files.retrieve(created.id) == created
        assert client.files.content(created.id).content == jsonl(lines)
        assert [f.id for f in client.files.list()] == [created.id]
        deleted = client.files.delete(created.id)
        assert deleted.id == created.id and deleted.deleted
        with pytest.raises(openai.NotFoundError):
            client.files.retrieve(created.id)
        with pytest.raises(openai.NotFoundError):
            client.files.content(created.id)
        stats = sim.state.snapshot()["batches"]
    assert (stats["files_uploaded"], stats["file_bytes_uploaded"], stats["files_deleted"]) == (1, created.bytes, 1)


def test_an_upload_over_the_size_limit_is_a_400_and_the_limit_changes_at_runtime() -> None:
    lines = [chat_line(f"job-{i}") for i in range(5)]
    with simulated(batch_max_file_bytes=100) as (sim, client):
        with pytest.raises(openai.BadRequestError) as refused:
            upload(client, lines)
        assert refused.value.code == "file_too_large" and "100 bytes" in refused.value.message
        assert sim.state.snapshot()["batches"]["files_uploaded"] == 0
        assert raw(sim, "POST", "/_sim/config", {"batch_max_file_bytes": 10_000}) == (200, {"ok": True})
        assert upload(client, lines).startswith("file-")


def test_the_batch_settings_change_at_runtime_all_or_nothing() -> None:
    with simulated() as (sim, _):
        changes = {"batch_processing_seconds": "50ms", "batch_expire_after": 30, "batch_line_fail_rate": 0.25,
                   "batch_max_requests": 7}
        assert raw(sim, "POST", "/_sim/config", changes) == (200, {"ok": True})
        config = sim.config
        assert (config.batch_processing_seconds, config.batch_expire_after) == (0.05, 30.0)
        assert (config.batch_line_fail_rate, config.batch_max_requests) == (0.25, 7)
        assert raw(sim, "POST", "/_sim/config", {"batch_expire_after": None})[0] == 200
        assert config.batch_expire_after is None
        for bad in ({"batch_line_fail_rate": 2}, {"batch_max_requests": 0}, {"batch_max_file_bytes": "big"},
                    {"batch_processing_seconds": -1}, {"batch_max_requests": 3, "batch_expire_after": "soon"}):
            status, body = raw(sim, "POST", "/_sim/config", bad)
            assert (status, body["error"]["code"]) == (400, "invalid_config"), bad
        assert config.batch_max_requests == 7  # the half-good change left nothing behind


def test_simulate_help_shows_the_batch_api_and_its_options() -> None:
    result = CliRunner().invoke(simulate_command, ["--help"])
    assert result.exit_code == 0
    for text in ("POST /batches", "POST /files", "--batch-processing-seconds", "--batch-expire-after",
                 "--batch-line-fail-rate", "--batch-max-file-bytes", "--batch-max-requests"):
        assert text in result.output


def test_an_upload_needs_a_known_purpose_and_a_file() -> None:
    with simulated() as (_, client):
        with pytest.raises(openai.BadRequestError) as refused:
            upload(client, [chat_line("a")], purpose="nonsense")
        assert refused.value.code == "invalid_value"


def test_every_route_takes_the_same_keys_as_the_endpoints() -> None:
    with simulated(revoked={"team-b"}) as (sim, client):
        file_id = upload(client, [chat_line("a")])
        batch = client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
        revoked = OpenAI(base_url=sim.base_url, api_key="team-b:hunter2", max_retries=0)
        for call in (
            lambda: revoked.files.create(file=("x.jsonl", io.BytesIO(b"{}\n")), purpose="batch"),
            lambda: revoked.files.retrieve(file_id),
            lambda: revoked.files.content(file_id),
            lambda: revoked.files.delete(file_id),
            lambda: revoked.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h"),
            lambda: revoked.batches.retrieve(batch.id),
            lambda: revoked.batches.cancel(batch.id),
            lambda: revoked.batches.list(),
        ):
            with pytest.raises(openai.AuthenticationError) as refused:
                call()
            assert refused.value.code == "key_revoked"
        revoked.close()
        for method, path in (("GET", f"/v1/files/{file_id}"), ("GET", f"/v1/batches/{batch.id}"),
                             ("GET", "/v1/batches")):
            status, body = raw(sim, method, path, key=None)
            assert (status, body["error"]["code"]) == (401, "missing_api_key")


# -- a batch's life -----------------------------------------------------------------------------------


def test_a_batch_goes_validating_in_progress_finalizing_completed_with_counts_growing() -> None:
    lines = [chat_line(f"job-{i}") for i in range(8)]
    with simulated(batch_processing_seconds=0.5) as (_, client):
        created = start(client, lines, metadata={"run": "r1"})
        seen = [created, *wait(client, created.id)]
        done = seen[-1]
        output = read_file(client, done.output_file_id)
    assert created.id.startswith("batch_") and created.object == "batch" and created.status == "validating"
    assert created.endpoint == CHAT and created.completion_window == "24h" and created.metadata == {"run": "r1"}
    statuses = [b.status for b in seen]
    order = ["validating", "in_progress", "finalizing", "completed"]
    assert [s for i, s in enumerate(statuses) if i == 0 or s != statuses[i - 1]] == order
    counts = [b.request_counts.completed for b in seen if b.request_counts is not None]
    assert counts == sorted(counts) and any(0 < n < 8 for n in counts), counts
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (8, 8, 0)
    assert done.model == "fast" and done.error_file_id is None and done.errors is None
    assert done.in_progress_at and done.finalizing_at and done.completed_at and done.created_at <= done.completed_at
    assert done.failed_at is None and done.cancelled_at is None and done.expired_at is None
    assert done.expires_at == done.created_at + 24 * 3600
    assert sorted(line["custom_id"] for line in output) == [f"job-{i}" for i in range(8)]
    for line in output:
        assert line["id"].startswith("batch_req_") and line["error"] is None
        response = line["response"]
        assert response["status_code"] == 200 and response["request_id"].startswith("req_")
        assert response["body"]["object"] == "chat.completion" and response["body"]["model"] == "sim-small"
        assert response["body"]["choices"][0]["message"]["content"] == f"echo: question {line['custom_id']}"
    usage = [line["response"]["body"]["usage"] for line in output]
    assert done.usage is not None
    assert done.usage.input_tokens == sum(u["prompt_tokens"] for u in usage) > 0
    assert done.usage.output_tokens == sum(u["completion_tokens"] for u in usage) > 0
    assert done.usage.total_tokens == done.usage.input_tokens + done.usage.output_tokens


def test_the_output_file_is_a_batch_output_file() -> None:
    with simulated(batch_processing_seconds=0) as (_, client):
        done = wait(client, start(client, [chat_line("a")]).id)[-1]
        assert done.output_file_id is not None
        stored = client.files.retrieve(done.output_file_id)
    assert stored.purpose == "batch_output" and stored.filename == f"{done.id}_output.jsonl"


def test_lines_the_endpoint_refuses_go_to_the_error_file_the_others_to_the_output() -> None:
    lines = [
        chat_line("ok-1"),
        chat_line("too-long", max_tokens=10_000),  # sim-small's context is 8192: the model's own 400
        {"custom_id": "no-messages", "method": "POST", "url": CHAT, "body": {"model": "fast"}},  # schema
        chat_line("ok-2"),
    ]
    with simulated() as (_, client):
        done = wait(client, start(client, lines).id)[-1]
        output, errors = read_file(client, done.output_file_id), read_file(client, done.error_file_id)
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 2)
    assert sorted(line["custom_id"] for line in output) == ["ok-1", "ok-2"]
    by_id = {line["custom_id"]: line for line in errors}
    assert set(by_id) == {"too-long", "no-messages"}
    for line in errors:  # OpenAI's shape: the HTTP error in response.body, `error` null
        assert set(line) == {"id", "custom_id", "response", "error"} and line["error"] is None
        assert line["response"]["status_code"] == 400 and line["response"]["request_id"].startswith("req_")
    assert by_id["too-long"]["response"]["body"]["error"]["code"] == "context_length_exceeded"
    schema = by_id["no-messages"]["response"]["body"]["error"]
    assert schema["code"] == "invalid_request_body" and schema["param"] == "messages"
    assert schema["type"] == "invalid_request_error" and "Field required" in schema["message"]


def test_the_line_fail_rate_answers_lines_500_into_the_error_file() -> None:
    lines = [chat_line(f"job-{i}") for i in range(20)]
    with simulated(batch_line_fail_rate=0.5) as (_, client):
        done = wait(client, start(client, lines).id)[-1]
        output, errors = read_file(client, done.output_file_id), read_file(client, done.error_file_id)
    assert done.request_counts is not None and done.request_counts.failed == len(errors) > 0
    assert done.request_counts.completed == len(output) > 0 and len(output) + len(errors) == 20
    for line in errors:
        assert line["response"]["status_code"] == 500 and line["error"] is None
        assert line["response"]["body"]["error"]["code"] == "server_error"


def test_a_batch_line_meets_budgets_and_the_catalogue_but_not_the_live_rate_limits() -> None:
    lines = [chat_line(f"job-{i}") for i in range(4)]
    with simulated(rate_limit=Rate(1, 60.0), token_limit=Rate(5, 60.0), key_budgets={"team-a": 3}) as (sim, client):
        done = wait(client, start(client, lines).id)[-1]
        errors = read_file(client, done.error_file_id)
        snapshot = sim.state.snapshot()
        forbidden = wait(client, start(client, [chat_line("x", model="no-such-model")]).id)[-1]
        unknown = read_file(client, forbidden.error_file_id)
    assert done.request_counts is not None and (done.request_counts.completed, done.request_counts.failed) == (3, 1)
    assert errors[0]["response"]["status_code"] == 402
    assert errors[0]["response"]["body"]["error"]["code"] == "key_budget_exhausted"
    assert snapshot["completions_ok"] == 3 and snapshot["requests_total"] == 0  # batch lines are not live requests
    assert snapshot["by_endpoint"]["chat"]["ok"] == 3 and snapshot["keys"]["team-a"]["ok"] == 3
    assert unknown[0]["response"]["status_code"] == 404
    assert unknown[0]["response"]["body"]["error"]["code"] == "model_not_found"


def test_embeddings_and_moderations_batches_use_their_endpoints() -> None:
    embed = [{"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
              "body": {"model": "embed", "input": f"text {i}"}} for i in range(3)]
    moderate = [{"custom_id": "m0", "method": "POST", "url": "/v1/moderations", "body": {"input": "violence"}}]
    with simulated(batch_processing_seconds=0.1) as (_, client):
        embedded = wait(client, start(client, embed, endpoint="/v1/embeddings").id)[-1]
        moderated = wait(client, start(client, moderate, endpoint="/v1/moderations").id)[-1]
        vectors = read_file(client, embedded.output_file_id)
        verdicts = read_file(client, moderated.output_file_id)
    assert embedded.status == moderated.status == "completed"
    assert [line["response"]["body"]["data"][0]["object"] for line in vectors] == ["embedding"] * 3
    assert embedded.usage is not None and embedded.usage.input_tokens > 0 and embedded.usage.output_tokens == 0
    assert verdicts[0]["response"]["body"]["results"][0]["categories"]["violence"] is True
    assert moderated.model is None  # the file names none: the default moderation model answered


# -- validation ----------------------------------------------------------------------------------------


def test_a_file_that_breaks_the_rules_fails_the_batch_with_one_error_per_line() -> None:
    lines: list[Any] = [
        chat_line("a"),
        b"{not json",
        chat_line("a"),  # duplicate custom_id
        {**chat_line("b"), "url": "/v1/embeddings"},
        {**chat_line("c"), "method": "GET"},
        chat_line("d", model="reasoning"),  # a second model
        {"custom_id": "e", "method": "POST", "url": CHAT},  # no body
    ]
    with simulated() as (_, client):
        seen = wait(client, start(client, lines).id)
    failed = seen[-1]
    assert {b.status for b in seen} <= {"validating", "failed"} and failed.status == "failed"
    assert failed.errors is not None and failed.errors.data is not None
    codes = [(error.code, error.line) for error in failed.errors.data]
    assert codes == [("invalid_json_line", 2), ("duplicate_custom_id", 3), ("url_mismatch", 4),
                     ("invalid_method", 5), ("model_mismatch", 6), ("missing_required_parameter", 7)]
    assert failed.failed_at and failed.in_progress_at is None and failed.output_file_id is None
    assert failed.error_file_id is None and failed.request_counts is not None and failed.request_counts.total == 0


def test_a_file_with_more_requests_than_allowed_fails_too_many_tasks() -> None:
    with simulated(batch_max_requests=3) as (_, client):
        failed = wait(client, start(client, [chat_line(f"job-{i}") for i in range(4)]).id)[-1]
    assert failed.status == "failed" and failed.errors is not None and failed.errors.data is not None
    assert [(e.code, e.line) for e in failed.errors.data] == [("too_many_tasks", None)]


def test_the_create_call_refuses_what_it_can_see_at_once() -> None:
    with simulated() as (_, client):
        batch_file = upload(client, [chat_line("a")])
        other_file = upload(client, [chat_line("a")], purpose="user_data")
        refusals = [  # (what the message names, the create params)
            ("file-nope", dict(input_file_id="file-nope", endpoint=CHAT, completion_window="24h")),
            ("purpose 'batch'", dict(input_file_id=other_file, endpoint=CHAT, completion_window="24h")),
            ("'endpoint'", dict(input_file_id=batch_file, endpoint="/v1/images/generations", completion_window="24h")),
            ("'completion_window'", dict(input_file_id=batch_file, endpoint=CHAT, completion_window="48h")),
            ("'metadata'", dict(input_file_id=batch_file, endpoint=CHAT, completion_window="24h",
                                metadata={f"k{i}": "v" for i in range(17)})),
        ]
        for named, params in refusals:
            with pytest.raises(openai.BadRequestError) as refused:
                client.batches.create(**params)  # type: ignore[arg-type]
            assert named in refused.value.message
        assert list(client.batches.list()) == []


def test_parse_input_reads_good_lines_and_skips_blank_ones() -> None:
    data = jsonl([chat_line("a"), chat_line("b")]) + b"\n  \n"
    lines, errors = parse_input(data, CHAT, 10)
    assert errors == [] and [(line.number, line.custom_id) for line in lines] == [(1, "a"), (2, "b")]
    assert parse_input(b"\n", CHAT, 10)[1][0]["code"] == "empty_file"


# -- cancel and expiry -------------------------------------------------------------------------------------


def test_a_batch_cancelled_midway_keeps_the_lines_already_answered() -> None:
    lines = [chat_line(f"job-{i}") for i in range(10)]
    with simulated(batch_processing_seconds=1.5) as (sim, client):
        batch = start(client, lines)
        wait(client, batch.id, until=frozenset({"in_progress"}))
        while answered(client.batches.retrieve(batch.id)) < 2:
            time.sleep(0.01)
        cancelling = client.batches.cancel(batch.id)
        done = wait(client, batch.id)[-1]
        output = read_file(client, done.output_file_id)
        with pytest.raises(openai.BadRequestError):
            client.batches.cancel(batch.id)
        ledger = sim.state.snapshot()["batches"]
    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    assert done.status == "cancelled" and done.cancelled_at and done.completed_at is None
    assert done.request_counts is not None and done.request_counts.total == 10
    assert 2 <= done.request_counts.completed == len(output) < 10 and done.request_counts.failed == 0
    assert done.error_file_id is None  # the lines never answered leave no line anywhere
    assert {line["custom_id"] for line in output} <= {f"job-{i}" for i in range(10)}
    assert ledger["by_status"] == {"cancelled": 1}


def test_a_batch_cancelled_while_validating_ends_cancelled_with_no_files() -> None:
    with simulated(batch_processing_seconds=2) as (_, client):
        batch = start(client, [chat_line("a")])
        assert client.batches.cancel(batch.id).status == "cancelling"
        done = wait(client, batch.id)[-1]
    assert done.status == "cancelled" and done.output_file_id is None and done.error_file_id is None
    assert done.in_progress_at is None


def test_an_expired_batch_keeps_its_answers_and_writes_batch_expired_lines_for_the_rest() -> None:
    lines = [chat_line(f"job-{i}") for i in range(10)]
    with simulated(batch_processing_seconds=2, batch_expire_after=0.6) as (_, client):
        batch = start(client, lines)
        done = wait(client, batch.id)[-1]
        output, errors = read_file(client, done.output_file_id), read_file(client, done.error_file_id)
    assert batch.expires_at == batch.created_at + 1  # 0.6 s, rounded up to the whole second
    assert done.status == "expired" and done.expired_at and done.completed_at is None
    assert done.request_counts is not None and 0 < len(output) == done.request_counts.completed < 10
    assert done.request_counts.failed == len(errors) == 10 - len(output)
    answered = {line["custom_id"] for line in output}
    assert answered | {line["custom_id"] for line in errors} == {f"job-{i}" for i in range(10)}
    for line in errors:
        assert line["id"].startswith("batch_req_") and line["custom_id"] not in answered
        assert line["response"] is None
        assert line["error"] == {"code": "batch_expired", "message": EXPIRED_MESSAGE}
    assert EXPIRED_MESSAGE == "This request could not be executed before the completion window expired."


def test_a_batch_that_expires_while_validating_has_every_line_expired() -> None:
    with simulated(batch_processing_seconds=2, batch_expire_after=0.05) as (_, client):
        done = wait(client, start(client, [chat_line("a"), chat_line("b")]).id)[-1]
        errors = read_file(client, done.error_file_id)
    assert done.status == "expired" and done.output_file_id is None and done.in_progress_at is None
    assert sorted(line["custom_id"] for line in errors) == ["a", "b"]
    assert done.request_counts is not None and (done.request_counts.total, done.request_counts.failed) == (2, 2)


# -- listing, stats, config -----------------------------------------------------------------------------------


def test_batches_are_listed_newest_first_a_page_at_a_time() -> None:
    with simulated(batch_processing_seconds=0) as (sim, client):
        ids = [start(client, [chat_line(f"job-{i}")]).id for i in range(3)]
        page = client.batches.list(limit=2)
        assert [b.id for b in page.data] == ids[:0:-1] and page.has_more
        assert [b.id for b in client.batches.list(limit=2)] == ids[::-1]  # the SDK follows `after`
        status, body = raw(sim, "GET", f"/v1/batches?limit=2&after={ids[1]}")
        assert status == 200 and [b["id"] for b in body["data"]] == [ids[0]] and body["has_more"] is False
        assert raw(sim, "GET", "/v1/batches?limit=0")[0] == 400
        with pytest.raises(openai.NotFoundError):
            client.batches.retrieve("batch_nope")


def test_stats_show_each_batch_with_its_custom_ids_and_the_ones_sent_twice() -> None:
    with simulated(batch_processing_seconds=0.1) as (sim, client):
        first = start(client, [chat_line("b"), chat_line("a"), chat_line("c")])
        second = start(client, [chat_line("c"), chat_line("d")])
        for batch in (first, second):
            wait(client, batch.id)
        status, stats = raw(sim, "GET", "/_sim/stats")
    assert status == 200
    ledger = stats["batches"]
    assert ledger["created"] == 2 and ledger["by_status"] == {"completed": 2} and ledger["files_uploaded"] == 2
    assert ledger["requests"] == {"total": 5, "completed": 5, "failed": 0}
    items = {item["id"]: item for item in ledger["items"]}
    assert items[first.id]["custom_ids"] == ["a", "b", "c"] and items[second.id]["custom_ids"] == ["c", "d"]
    assert items[first.id]["custom_ids_sha256"] == hashlib.sha256(b"a\nb\nc").hexdigest()
    assert items[first.id]["input_file_id"] == first.input_file_id and items[first.id]["endpoint"] == CHAT
    assert items[second.id]["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
    assert ledger["custom_id_batches"] == {"c": 2} and ledger["duplicate_custom_ids"] == 1
    assert ledger["redone_custom_ids"] == 1  # "c" was answered by both
    assert stats["duplicates"] == 1  # and the simulator's own count: the same prompt answered twice


def test_the_server_stops_at_once_with_a_batch_in_progress() -> None:
    with simulated(batch_processing_seconds=60) as (_, client):
        batch = start(client, [chat_line(f"job-{i}") for i in range(5)])
        wait(client, batch.id, until=frozenset({"in_progress"}), timeout=10)
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 2  # its processing task was cancelled, not waited for
