"""The batchrun CLI against llmock, a third-party OpenAI-compatible chaos server, as a subprocess.

A second opinion besides our own simulator: llmock enforces its per-key quota as a token bucket,
samples random 429s and 503s before it, and records what it served (`/_llmock/requests`), so the
assertions are about what a provider we did not write saw. llmock's catalogue publishes no context
length or prices and its answers carry no request_id.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import FAST_RETRY, Cli, make_keys, read_jsonl, submit_jobs
from llmock_server import LLMock

MODEL = "gpt-4o-mini"  # in llmock's catalogue
StartLLMock = Callable[..., LLMock]


def run(cli: Cli, mock: LLMock, keys: int, *args: str, timeout: float = 120) -> Any:
    env = {"BATCHRUN_BASE_URL": mock.base_url, "BATCHRUN_API_KEYS": ",".join(make_keys(keys))}
    return cli("run", "--no-progress", *FAST_RETRY, *args, env=env, timeout=timeout)


def assert_every_job_done_once(cli: Cli, tmp_path: Path, prompts: dict[str, str], mock: LLMock) -> None:
    result = cli("export", "--output", str(tmp_path / "results.jsonl"), "--errors", str(tmp_path / "errors.jsonl"))
    assert result.returncode == 0, result.stderr
    rows = read_jsonl(tmp_path / "results.jsonl")
    assert read_jsonl(tmp_path / "errors.jsonl") == []
    assert sorted(row["custom_id"] for row in rows) == sorted(prompts)  # each one exactly once
    for row in rows:
        assert row["response"]["status_code"] == 200 and row["error"] is None
        assert prompts[row["custom_id"]] in row["response"]["body"]["choices"][0]["message"]["content"]
    served = [r for r in mock.completions() if r["status"] == 200]
    assert len(served) == len(prompts)  # no job was answered twice: no work redone
    assert_retry_after_waited(mock.completions())
    # llmock's own judgement: nothing retried that cannot succeed, no retry storm. (Its Retry-After check
    # is the one above with more slack: under load llmock stamps an answer's end late, after the client
    # already has it, and a retry sent exactly on time then looks early.)
    verdict = mock.verdict()
    errors = [f for f in verdict["findings"] if f["severity"] == "error" and f["code"] != "retry_after_ignored"]
    assert errors == [], verdict["findings"]


#: how late llmock may stamp the end of an answer on a busy machine
STAMP_SLACK = 0.25


def assert_retry_after_waited(records: list[dict[str, Any]]) -> None:
    """Every resend of a body that failed with a Retry-After came no sooner than it asked."""
    last: dict[str, dict[str, Any]] = {}
    for record in sorted(records, key=lambda r: r["started_at"]):
        before = last.get(record["fingerprint"])
        if before is not None and before["status"] >= 400 and before["retry_after"] is not None:
            waited = record["started_at"] - before["ended_at"]
            assert waited >= before["retry_after"] - STAMP_SLACK, (before, record)
        last[record["fingerprint"]] = record


def busiest(times: list[float], span: float) -> int:
    """The most of `times` inside any window of `span` seconds."""
    times, most, first = sorted(times), 0, 0
    for last, now in enumerate(times):
        while times[first] <= now - span:
            first += 1
        most = max(most, last - first + 1)
    return most


def test_rpm_quota_and_random_429s_and_503s_every_job_once(cli: Cli, tmp_path: Path,
                                                            start_llmock: StartLLMock) -> None:
    # 600 rpm per key is a bucket of 600 refilled at 10/s; batchrun's 10/1s stays inside it
    # 10 % of each fault: ≈ 130 requests then show both at least once but for a chance of ≈ 10⁻⁶ (at 5 %,
    # no 429 at all came once in a few hundred runs, and the premise below failed)
    mock = start_llmock("--rpm", "600", "--error-rate", "429=0.1", "--error-rate", "503=0.1",
                        "--response-style", "echo")
    prompts = submit_jobs(cli, tmp_path, 120, model=MODEL)

    result = run(cli, mock, 2, "--rate-limit", "10/1s")

    assert result.returncode == 0, result.stdout + result.stderr
    assert_every_job_done_once(cli, tmp_path, prompts, mock)
    completions = mock.completions()
    faults = [r["fault"] for r in completions]
    assert "chaos:429" in faults and "chaos:503" in faults  # the chaos really happened
    assert not [f for f in faults if f and f.startswith("ratelimit")]  # llmock's per-key quota never refused
    # llmock does not record the key; both keys together stayed within 2 × 10 in any 0.9 s
    assert busiest([r["started_at"] for r in completions], 0.9) <= 20


# batchrun obeys `x-ratelimit-remaining-requests: 0` by pausing the key for `x-ratelimit-reset-requests`,
# which llmock (like OpenAI) sends as the time until its bucket is full again: about 60 s here
@pytest.mark.timeout(200)
def test_provider_quota_below_the_configured_rate_every_job_once(cli: Cli, tmp_path: Path,
                                                                 start_llmock: StartLLMock) -> None:
    # 27 per key at once, then one every 2.2 s: 60 jobs on 2 keys must wait for the bucket
    mock = start_llmock("--rpm", "27", "--response-style", "echo")
    prompts = submit_jobs(cli, tmp_path, 60, model=MODEL)

    result = run(cli, mock, 2, "--rate-limit", "600/1m", timeout=180)

    assert result.returncode == 0, result.stdout + result.stderr
    assert len(prompts) > 2 * 27  # more than the two buckets hold: the quota had to bite
    assert_every_job_done_once(cli, tmp_path, prompts, mock)


def test_catalogue_without_context_length_or_prices(cli: Cli, tmp_path: Path, start_llmock: StartLLMock) -> None:
    mock = start_llmock("--response-style", "echo")
    prompts = submit_jobs(cli, tmp_path, 10, model=MODEL, extra={"max_tokens": 50})

    result = run(cli, mock, 1)

    assert result.returncode == 0, result.stdout + result.stderr
    assert_every_job_done_once(cli, tmp_path, prompts, mock)
    status = cli("status")
    assert status.returncode == 0, status.stderr
    assert "unknown" in status.stdout  # the cost: llmock publishes no prices
    as_json = cli("status", "--json")
    assert as_json.returncode == 0, as_json.stderr
    batch = json.loads(as_json.stdout)["batches"][0]
    assert (batch["succeeded"], batch["cost"], batch["unpriced"]) == (10, None, 10)
