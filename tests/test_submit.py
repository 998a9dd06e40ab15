"""`batchrun submit` as a user runs it: bad lines named by file and line, good lines loaded,
resubmission idempotent, conflicts reported, --strict all or nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import Cli, write_jobs

GOOD = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}


def line(obj: object) -> str:
    return json.dumps(obj)


BAD_LINES = [
    ("{not json", None, "JSON"),
    ('["a", "list"]', None, "object"),
    (line({"custom_id": "m1", "method": "GET", "url": "/v1/chat/completions", "body": GOOD}), "method", ""),
    (line({"custom_id": "u1", "method": "POST", "url": "/v1/images/generations", "body": GOOD}), "url", ""),
    (line({"custom_id": "nm", "messages": [{"role": "user", "content": "x"}]}), "model", ""),
    (line({"custom_id": "nmsg", "model": "fast"}), "messages", ""),
    (line({"custom_id": "emsg", "model": "fast", "messages": []}), "messages", "empty"),
    (line({"custom_id": "lmsg", "model": "fast", "messages": "hello"}), "messages", ""),
    (line({"custom_id": "norole", "model": "fast", "messages": [{"content": "x"}]}), "messages[0].role", ""),
    (line({"custom_id": "nocontent", "model": "fast", "messages": [{"role": "user"}]}), "messages[0].content", ""),
    (line({"custom_id": "badrole", "model": "fast", "messages": [{"role": "bot", "content": "x"}]}),
     "messages[0].role", "bot"),
    (line({"custom_id": "empty", "model": "fast", "messages": [{"role": "user", "content": "  "}]}),
     "messages[0].content", "empty"),
    (line({"custom_id": "asst", "model": "fast",
           "messages": [{"role": "assistant", "content": "I start"}, {"role": "user", "content": "x"}]}),
     "messages[0].role", "assistant"),
]


def test_each_bad_line_is_reported_with_its_line_number_and_good_lines_load(cli: Cli, tmp_path: Path) -> None:
    lines = [line({"custom_id": "good-first", **GOOD})]
    for bad, _, _ in BAD_LINES:
        lines.append(bad)
        lines.append("")  # blank lines are ignored, but still count for line numbers
    lines.append(line({"custom_id": "good-last", **GOOD}))
    job_file = tmp_path / "mixed.jsonl"
    job_file.write_text("\n".join(lines) + "\n")

    result = cli("submit", str(job_file))

    assert result.returncode == 1, result.stderr
    reported = result.stderr.strip().splitlines()
    assert len(reported) == len(BAD_LINES), result.stderr
    for index, (_, field, words) in enumerate(BAD_LINES):
        expected_line = 2 + 2 * index
        message = reported[index]
        assert message.startswith(f"{job_file}:{expected_line}: "), message
        if field:
            assert field in message, message
        if words:
            assert words.lower() in message.lower(), message
    assert "loaded 2" in result.stdout and f"rejected {len(BAD_LINES)}" in result.stdout
    status = json.loads(cli("status", "--json").stdout)
    assert status["batches"][0]["name"] == "mixed"
    assert status["batches"][0]["queued"] == 2


def test_resubmitting_the_same_file_is_idempotent(cli: Cli, tmp_path: Path) -> None:
    job_file = tmp_path / "nightly.jsonl"
    write_jobs(job_file, 30)
    # Lines without custom_id get a stable one derived from the body.
    with job_file.open("a") as out:
        out.write(line({"model": "fast", "messages": [{"role": "user", "content": "no id here"}]}) + "\n")

    first = cli("submit", str(job_file))
    second = cli("submit", str(job_file))

    assert first.returncode == 0, first.stderr
    assert "loaded 31, duplicates skipped 0" in first.stdout
    assert second.returncode == 0, second.stderr
    assert "loaded 0, duplicates skipped 31" in second.stdout
    status = json.loads(cli("status", "--json").stdout)
    assert status["batches"] == [status["batches"][0]] and status["batches"][0]["total"] == 31


def test_same_custom_id_with_another_body_is_a_conflict_and_not_loaded(cli: Cli, tmp_path: Path) -> None:
    job_file = tmp_path / "b.jsonl"
    job_file.write_text(line({"custom_id": "a", **GOOD}) + "\n")
    assert cli("submit", str(job_file)).returncode == 0
    changed = dict(GOOD, messages=[{"role": "user", "content": "something else"}])
    job_file.write_text(line({"custom_id": "a", **changed}) + "\n" + line({"custom_id": "b", **GOOD}) + "\n")

    result = cli("submit", str(job_file))

    assert result.returncode == 1
    assert f"{job_file}:1: custom_id: 'a'" in result.stderr and "conflict" in result.stderr
    assert "loaded 1" in result.stdout and "conflicts 1" in result.stdout


def test_strict_rejects_the_whole_file(cli: Cli, tmp_path: Path) -> None:
    job_file = tmp_path / "strict.jsonl"
    job_file.write_text(line({"custom_id": "a", **GOOD}) + "\n{oops\n" + line({"custom_id": "c", **GOOD}) + "\n")

    result = cli("submit", "--strict", str(job_file))

    assert result.returncode == 1
    assert f"{job_file}:2: " in result.stderr
    assert "nothing loaded" in result.stdout
    status = json.loads(cli("status", "--json").stdout)
    assert sum(batch["total"] for batch in status["batches"]) == 0


def test_stdin_and_batch_name(cli: Cli) -> None:
    data = (line({"custom_id": "s1", **GOOD}) + "\n").encode()
    result = cli("submit", "-", "--batch", "piped", input=data)
    assert result.returncode == 0, result.stderr
    status = json.loads(cli("status", "--json").stdout)
    assert [(b["name"], b["total"]) for b in status["batches"]] == [("piped", 1)]


def test_unreadable_file_is_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    result = cli("submit", str(tmp_path / "missing.jsonl"))
    assert result.returncode == 2
    assert "missing.jsonl" in result.stderr


def test_bad_database_url_says_what_is_wrong(cli: Cli, tmp_path: Path) -> None:
    job_file = tmp_path / "x.jsonl"
    write_jobs(job_file, 1)
    result = cli("submit", str(job_file), env={"BATCHRUN_DB": "sqlite:////no/such/folder/q.db"})
    assert result.returncode != 0
    assert "/no/such/folder" in result.stderr and "does not exist" in result.stderr


def test_resubmitting_skips_clean_chunks_without_parsing_and_reports_bad_lines_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from batchrun import loader
    from batchrun.jobfile import LineChunk
    from batchrun.store import Store

    monkeypatch.setattr(loader, "CHUNK", 4)
    parsed: list[int] = []
    real_parse = LineChunk.parse

    def counting_parse(self: LineChunk, *args):  # type: ignore[no-untyped-def]
        parsed.append(self.first_line)
        return real_parse(self, *args)

    monkeypatch.setattr(LineChunk, "parse", counting_parse)
    path = tmp_path / "grow.jsonl"
    lines = [line({"custom_id": f"c{i}", **GOOD}) for i in range(10)]
    lines[6] = "{broken"  # lines 5-8 are one chunk with a bad line in it
    path.write_text("\n".join(lines) + "\n")
    messages: list[str] = []
    with Store.open(f"sqlite:///{tmp_path / 'q.db'}") as store:
        first = loader.submit_file(store, str(path), None, False, messages.append)
        parsed.clear()
        messages.clear()
        second = loader.submit_file(store, str(path), None, False, messages.append)
        # the file grows by two lines and one line of the first chunk changes its body
        lines[0] = line({"custom_id": "c0", "model": "fast", "messages": [{"role": "user", "content": "other"}]})
        path.write_text("\n".join(lines + [line({"custom_id": "new1", **GOOD}), line({"custom_id": "new2", **GOOD})])
                        + "\n")
        parsed_second = list(parsed)
        parsed.clear()
        messages_second = list(messages)
        messages.clear()
        third = loader.submit_file(store, str(path), None, False, messages.append)

    assert (first.loaded, first.rejected) == (9, 1)
    assert (second.loaded, second.duplicates, second.rejected) == (0, 9, 1)
    assert parsed_second == [5]  # the clean chunks (lines 1-4 and 9-10) were not parsed again
    assert len(messages_second) == 1 and messages_second[0].startswith(f"{path}:7: not valid JSON")
    assert (third.loaded, third.conflicts, third.rejected) == (2, 1, 1)
    assert 1 in parsed and any(m.startswith(f"{path}:1: custom_id: 'c0'") for m in messages)


def test_jobs_load_in_file_order_across_chunks_and_conflicts_span_chunks(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from batchrun import loader
    from batchrun.store import Store

    monkeypatch.setattr(loader, "CHUNK", 7)
    path = tmp_path / "big.jsonl"
    lines = [line({"custom_id": f"c{i}", **GOOD}) for i in range(50)]
    lines[20] = "[1]"
    lines[33] = line({"custom_id": "c5", "model": "other", "messages": [{"role": "user", "content": "x"}]})
    path.write_text("\n".join(lines) + "\n")
    messages: list[str] = []
    with Store.open(f"sqlite:///{tmp_path / 'q.db'}") as store:
        report = loader.submit_file(store, str(path), None, False, messages.append)
        rows = list(store.export_rows(["queued"]))

    assert (report.loaded, report.rejected, report.conflicts) == (48, 1, 1)
    assert [m.split(":")[1] for m in messages] == ["21", "34"]  # in file order
    assert [r.custom_id for r in rows] == [f"c{i}" for i in range(50) if i not in (20, 33)]
