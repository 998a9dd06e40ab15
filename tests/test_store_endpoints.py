"""The store keeps each job's endpoint and token estimate: old databases upgrade to chat with the
estimate they had, and `status` breaks a batch down by endpoint — on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic import command
from conftest import database_at, migrate
from sqlalchemy import text

from batchrun.jobfile import JobSpec, parse_line
from batchrun.records import Failed, Succeeded
from batchrun.schema import SCHEMA_REVISION
from batchrun.database import alembic_config as _alembic_config
from batchrun.store import Store

LINES = [
    '{"custom_id": "chat", "model": "m", "messages": [{"role": "user", "content": "hello there"}]}',
    '{"custom_id": "emb", "method": "POST", "url": "/v1/embeddings", "body": {"model": "e", "input": ["abcd", "efgh"]}}',
    '{"custom_id": "emb2", "method": "POST", "url": "/v1/embeddings", "body": {"model": "e", "input": "你好世界"}}',
    '{"custom_id": "mod", "method": "POST", "url": "/v1/moderations", "body": {"input": "fine?"}}',
]


def specs() -> list[JobSpec]:
    jobs = [parse_line(line, number) for number, line in enumerate(LINES, 1)]
    assert all(isinstance(job, JobSpec) for job in jobs), jobs
    return jobs  # type: ignore[return-value]


def test_a_database_at_0004_upgrades_its_jobs_to_chat_keeping_their_estimates(any_db_url: str) -> None:
    with database_at(any_db_url, "0004") as conn:
        conn.execute(text("INSERT INTO batches (name, created_at) VALUES ('old', 1.0)"))
        batch_id = conn.execute(text("SELECT id FROM batches WHERE name = 'old'")).scalar_one()
        for line, chars in ((1, 9), (2, 0), (3, 4000)):
            conn.execute(text(
                "INSERT INTO jobs (batch_id, line, custom_id, body_hash, body, model, prompt_chars, max_tokens, "
                "state, attempts, not_before) VALUES (:batch, :line, :cid, 'h', '{}', 'm', :chars, 5, 'queued', 0, 0.0)"
            ), {"batch": batch_id, "line": line, "cid": f"j{line}", "chars": chars})
        conn.execute(text("INSERT INTO batches (name, created_at) VALUES ('empty', 2.0)"))

    with Store.open(any_db_url) as store:
        assert store._current_revision() == SCHEMA_REVISION
        jobs = list(store.unfinished_jobs())
        assert [(j.custom_id, j.endpoint, j.input_tokens, j.max_tokens) for j in jobs] == [
            ("j1", "/v1/chat/completions", 3, 5), ("j2", "/v1/chat/completions", 0, 5),
            ("j3", "/v1/chat/completions", 1000, 5)]
        old, empty = store.counts()
        assert [e.endpoint for e in old.endpoints] == ["/v1/chat/completions"]
        assert old.endpoints[0].queued == 3
        assert empty.endpoints == ()
        config = _alembic_config(store._engine)
    command.check(config)  # the upgraded database is exactly the models


def test_0005_downgrades_to_0004_keeping_the_chat_jobs(any_db_url: str) -> None:
    with Store.open(any_db_url) as store:
        store.add_jobs(store.ensure_batch("b"), specs()[:1])
        migrate(store, "0004", command.downgrade)
        with store.transaction() as conn:
            assert conn.execute(text("SELECT custom_id, prompt_chars FROM jobs")).all() == [("chat", 12)]


def test_each_job_keeps_its_endpoint_and_status_breaks_a_mixed_batch_down(any_db_url: str) -> None:
    with Store.open(any_db_url) as store:
        batch_id = store.ensure_batch("mixed")
        assert store.add_jobs(batch_id, specs()).loaded == 4
        claimed = {job.custom_id: job for job in store.claim("r", 10, lease_seconds=30)}
        assert {cid: (job.endpoint, job.input_tokens) for cid, job in claimed.items()} == {
            "chat": ("/v1/chat/completions", 3), "emb": ("/v1/embeddings", 2), "emb2": ("/v1/embeddings", 5),
            "mod": ("/v1/moderations", 2)}
        store.record("r", [
            Succeeded(claimed["emb"].id, 1, "k1", 200, None, '{"data": []}', "e", None, 2, 0, 2, cost=0.5),
            Succeeded(claimed["chat"].id, 1, "k1", 200, "r", "{}", "m", "stop", 3, 7, 10, cost=0.25),
            Failed(claimed["mod"].id, 1, "k1", 400, None, "bad_request", "no"),
        ])
        (counts,) = store.counts(batch_id)
        by_url = {e.endpoint: e for e in counts.endpoints}
        assert list(by_url) == ["/v1/chat/completions", "/v1/embeddings", "/v1/moderations"]
        chat, emb, mod = by_url.values()
        assert (chat.total, chat.succeeded, chat.total_tokens, chat.cost) == (1, 1, 10, 0.25)
        assert (emb.total, emb.succeeded, emb.running, emb.prompt_tokens, emb.completion_tokens, emb.cost) == \
            (2, 1, 1, 2, 0, 0.5)
        assert (mod.total, mod.failed) == (1, 1)
        assert sum(e.total for e in counts.endpoints) == counts.total
        exported = {row.custom_id: row.endpoint for row in store.export_rows(["succeeded", "failed"], batch_id)}
        assert exported == {"chat": "/v1/chat/completions", "emb": "/v1/embeddings", "mod": "/v1/moderations"}


def test_a_batch_of_one_endpoint_is_its_own_breakdown(any_db_url: str) -> None:
    with Store.open(any_db_url) as store:
        batch_id = store.ensure_batch("embeddings")
        store.add_jobs(batch_id, specs()[1:3])
        store.add_jobs(batch_id, specs()[1:3])  # duplicates change nothing
        (counts,) = store.counts(batch_id)
        (only,) = counts.endpoints
        assert (only.endpoint, only.total, only.queued) == ("/v1/embeddings", 2, 2)
