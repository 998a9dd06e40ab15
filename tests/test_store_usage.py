"""Schema 0002 on real databases (SQLite files and PostgreSQL): costs and fallbacks of jobs, usage per
key and per model, the last run's counts per key, the stored model catalogue, and the migration of a
database made at revision 0001."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from alembic import command
from conftest import in_threads, job_specs, migrate
from sqlalchemy import text

from batchrun.catalog import ModelInfo
from batchrun.records import Failed, Succeeded
from batchrun.schema import SCHEMA_REVISION
from batchrun.database import alembic_config as _alembic_config
from batchrun.store import Store


specs = job_specs


@pytest.fixture
def store(any_db_url: str) -> Iterator[Store]:
    with Store.open(any_db_url) as opened:
        yield opened


# --- jobs: cost, model sent, fallback ---------------------------------------------------------------

def test_cost_model_sent_and_fallback_are_recorded_exported_and_counted(store: Store) -> None:
    one, two = store.ensure_batch("one"), store.ensure_batch("two")
    store.add_jobs(one, specs(5))
    store.add_jobs(two, specs(1, start=100))
    a, b, c, d, e = store.claim("r", 5, lease_seconds=30, batch_id=one)
    (f,) = store.claim("r", 5, lease_seconds=30, batch_id=two)

    landed = store.record("r", [
        Succeeded(a.id, 1, "k1", 200, "req-a", '{"a": 1}', "m-small-2025", "stop", 10, 5, 15,
                  cost=0.5, model_sent="m-small"),
        # No request id (unverified), cut at max_tokens (truncated), sent to a fallback, no price known.
        Succeeded(b.id, 2, "k2", 200, None, '{"b": 1}', None, "length", 1, 2, 3,
                  cost=None, model_sent="m-big", fallback_reason="m-small: model not found (404)"),
        # The positional form of before 0002 still works: no cost, no model sent, no fallback.
        Succeeded(c.id, 1, "k1", 200, "req-c", '{"c": 1}', "m", "length", 4, 4, 8),
        Failed(d.id, 3, "k1", 404, "{}", "model_not_found", "gone", "m-big", "m-small: retired"),
        Succeeded(f.id, 1, "k1", 200, "req-f", '{"f": 1}', "m", "stop", 2, 2, 4, cost=0.25, model_sent="m"),
    ])
    assert landed == 5

    rows = {row.custom_id: row for row in store.export_rows(["succeeded", "failed", "running"], one)}
    assert (rows[a.custom_id].cost, rows[a.custom_id].model_sent, rows[a.custom_id].fallback_reason) == \
        (0.5, "m-small", None)
    assert (rows[a.custom_id].prompt_tokens, rows[a.custom_id].completion_tokens,
            rows[a.custom_id].total_tokens) == (10, 5, 15)
    assert rows[a.custom_id].model_served == "m-small-2025"
    assert (rows[b.custom_id].cost, rows[b.custom_id].model_sent, rows[b.custom_id].fallback_reason) == \
        (None, "m-big", "m-small: model not found (404)")
    assert (rows[c.custom_id].cost, rows[c.custom_id].model_sent, rows[c.custom_id].fallback_reason) == \
        (None, None, None)
    failed = rows[d.custom_id]
    assert (failed.state, failed.model_sent, failed.fallback_reason, failed.cost) == \
        ("failed", "m-big", "m-small: retired", None)
    assert rows[e.custom_id].state == "running" and rows[e.custom_id].total_tokens is None

    counts = {count.name: count for count in store.counts()}
    first = counts["one"]
    assert (first.succeeded, first.failed, first.running) == (3, 1, 1)
    assert (first.unverified, first.truncated, first.fallbacks, first.priced) == (1, 2, 1, 1)
    assert first.cost == 0.5
    second = counts["two"]
    assert (second.succeeded, second.unverified, second.truncated, second.fallbacks) == (1, 0, 0, 0)
    assert (second.cost, second.priced) == (0.25, 1)
    (only_two,) = store.counts(two)
    assert (only_two.name, only_two.cost, only_two.priced) == ("two", 0.25, 1)


def test_counts_of_a_batch_without_results_are_zero(store: Store) -> None:
    batch = store.ensure_batch("empty")
    store.add_jobs(batch, specs(2))

    (counts,) = store.counts(batch)

    assert (counts.queued, counts.unverified, counts.truncated, counts.fallbacks, counts.priced) == (2, 0, 0, 0, 0)
    assert counts.cost == 0.0 and isinstance(counts.cost, float)


# --- usage per key and per model --------------------------------------------------------------------

def test_usage_by_key_and_by_model_counts_succeeded_jobs_only(store: Store) -> None:
    one, two = store.ensure_batch("one"), store.ensure_batch("two")
    store.add_jobs(one, specs(4, model="alias"))
    store.add_jobs(two, specs(1, start=100, model="other"))
    a, b, c, d = store.claim("r", 4, lease_seconds=30, batch_id=one)
    (e,) = store.claim("r", 1, lease_seconds=30, batch_id=two)
    store.record("r", [
        # served as reported by the provider
        Succeeded(a.id, 1, "k2", 200, "ra", "{}", "served-x", "stop", 10, 20, 30, cost=0.5, model_sent="sent-x"),
        # the provider did not say: the model sent counts
        Succeeded(b.id, 1, "k1", 200, "rb", "{}", None, "stop", 1, 2, 3, cost=None, model_sent="served-x"),
        # neither known: the model requested counts
        Succeeded(c.id, 1, "k1", 200, "rc", "{}", None, "stop", None, None, None),
        Failed(d.id, 1, "k1", 500, None, "server_error", "boom", "served-x"),
        Succeeded(e.id, 1, "k1", 200, "re", "{}", "served-x", "stop", 100, 100, 200, cost=0.25),
    ])

    by_key = store.usage("key")
    assert [row.name for row in by_key] == ["k1", "k2"]
    k1, k2 = by_key
    assert (k1.requests, k1.prompt_tokens, k1.completion_tokens, k1.total_tokens, k1.cost, k1.priced) == \
        (3, 101, 102, 203, 0.25, 1)
    assert (k2.requests, k2.prompt_tokens, k2.completion_tokens, k2.total_tokens, k2.cost, k2.priced) == \
        (1, 10, 20, 30, 0.5, 1)

    by_model = {row.name: row for row in store.usage("model")}
    assert list(by_model) == ["alias", "served-x"]
    assert (by_model["served-x"].requests, by_model["served-x"].total_tokens) == (3, 233)
    assert (by_model["served-x"].cost, by_model["served-x"].priced) == (0.75, 2)
    assert (by_model["alias"].requests, by_model["alias"].total_tokens, by_model["alias"].cost,
            by_model["alias"].priced) == (1, 0, 0.0, 0)

    in_one = {row.name: row for row in store.usage("model", batch_id=one)}
    assert (in_one["served-x"].requests, in_one["served-x"].cost) == (2, 0.5)
    assert [row.name for row in store.usage("key", batch_id=two)] == ["k1"]
    assert store.usage("key", batch_id=two + 1000) == []


def test_usage_by_anything_else_is_an_error(store: Store) -> None:
    with pytest.raises(ValueError, match="day"):
        store.usage("day")


# --- keys: the last run's counts ----------------------------------------------------------------------

def test_save_key_run_upserts_and_keeps_a_sticky_state(store: Store) -> None:
    store.save_key_run("k1", 10, 2, 1, "20/1s", "15/1s", now=100.0)
    fresh = store.key_records()["k1"]
    assert (fresh.state, fresh.reason, fresh.since) == ("active", None, 100.0)
    assert (fresh.requests, fresh.rate_limited, fresh.errors, fresh.last_run_at) == (10, 2, 1, 100.0)
    assert (fresh.rate_configured, fresh.rate_adapted) == ("20/1s", "15/1s")

    store.set_key_state("k1", "revoked", "401 invalid key", now=200.0)
    revoked = store.key_records()["k1"]
    assert (revoked.state, revoked.since, revoked.requests, revoked.rate_adapted) == \
        ("revoked", 200.0, 10, "15/1s")

    store.save_key_run("k1", 3, 0, 3, None, None, now=300.0)
    after = store.key_records()["k1"]
    assert (after.state, after.reason, after.since) == ("revoked", "401 invalid key", 200.0)
    assert (after.requests, after.rate_limited, after.errors, after.last_run_at) == (3, 0, 3, 300.0)
    assert (after.rate_configured, after.rate_adapted) == (None, None)

    # A key first seen through set_key_state has zero counts and no run yet.
    store.set_key_state("k2", "budget", "402", now=400.0)
    k2 = store.key_records()["k2"]
    assert (k2.state, k2.requests, k2.rate_limited, k2.errors, k2.last_run_at) == ("budget", 0, 0, 0, None)


def test_reset_key_reactivates_and_keeps_the_counts(store: Store) -> None:
    store.save_key_run("k1", 7, 1, 2, "20/1s", "10/1s", now=100.0)
    store.set_key_state("k1", "expired", "key expired", now=200.0)

    assert store.reset_key("k1", now=300.0) is True
    assert store.reset_key("nobody") is False

    records = store.key_records()
    assert list(records) == ["k1"]
    reset = records["k1"]
    assert (reset.state, reset.reason, reset.since, reset.rate_adapted) == ("active", None, 300.0, None)
    assert (reset.requests, reset.rate_limited, reset.errors, reset.last_run_at, reset.rate_configured) == \
        (7, 1, 2, 100.0, "20/1s")


def test_runners_saving_the_same_new_key_at_once_do_not_fail(any_db_url: str) -> None:
    with Store.open(any_db_url):
        pass
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def saver(index: int) -> None:
        try:
            with Store.open(any_db_url) as mine:
                start.wait(timeout=30)
                for round_ in range(5):
                    mine.save_key_run(f"new-{round_}", index, 0, 0, None, None)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    in_threads(saver, list(range(4)))

    assert errors == []
    with Store.open(any_db_url) as store:
        records = store.key_records()
    assert sorted(records) == [f"new-{i}" for i in range(5)]
    assert all(record.state == "active" and record.requests in range(4) for record in records.values())


# --- the model catalogue -------------------------------------------------------------------------------

def test_catalog_round_trip_and_replacement(store: Store) -> None:
    empty = store.load_catalog()
    assert not empty and empty.fetched_at is None

    entries = [
        ModelInfo("sim-large", context_length=128000, supported_parameters=("temperature", "response_format"),
                  response_format=True, prompt_price=0.5, completion_price=1.5),
        ModelInfo("sim-small", supported_parameters=(), response_format=False, prompt_price=0.0),
        ModelInfo("bare"),
        ModelInfo("fast", alias_for="sim-small"),
    ]
    store.save_catalog(entries, now=1000.0)

    loaded = store.load_catalog()
    assert loaded.fetched_at == 1000.0
    assert loaded.entries == {entry.id: entry for entry in entries}
    assert loaded.entries["sim-small"].supported_parameters == ()  # known to be none, not unknown
    assert loaded.entries["bare"].supported_parameters is None
    assert loaded.entries["sim-small"].response_format is False
    assert loaded.resolve("fast") == entries[1]

    replacement = [ModelInfo("sim-next", prompt_price=0.25, completion_price=0.75),
                   ModelInfo("sim-next", context_length=8),  # the same id twice: the last one wins
                   ModelInfo("fast", alias_for="sim-next")]
    store.save_catalog(replacement, now=2000.0)

    again = store.load_catalog()
    assert again.fetched_at == 2000.0
    assert again.entries == {"sim-next": ModelInfo("sim-next", context_length=8),
                             "fast": ModelInfo("fast", alias_for="sim-next")}

    store.save_catalog([], now=3000.0)
    cleared = store.load_catalog()
    assert not cleared and cleared.fetched_at is None


# --- the migration from 0001 ----------------------------------------------------------------------------

def test_a_database_at_0001_upgrades_to_0002_keeping_its_jobs_and_keys(any_db_url: str) -> None:
    with Store.open(any_db_url, migrate=False) as old:
        migrate(old, "0001", command.upgrade)
        with old.transaction() as conn:
            conn.execute(text("INSERT INTO batches (name, created_at) VALUES ('old', 1.0)"))
            batch_id = conn.execute(text("SELECT id FROM batches WHERE name = 'old'")).scalar_one()
            conn.execute(text(
                "INSERT INTO jobs (batch_id, line, custom_id, body_hash, body, model, prompt_chars, state, "
                "attempts, not_before, key_id, status_code, request_id, response, finish_reason, "
                "prompt_tokens, completion_tokens, total_tokens, finished_at) VALUES (:batch, 1, 'done', 'h', "
                "'{}', 'm', 2, 'succeeded', 1, 0.0, 'k1', 200, 'req', '{\"ok\": 1}', 'stop', 1, 2, 3, 5.0)"
            ), {"batch": batch_id})
            conn.execute(text(
                "INSERT INTO jobs (batch_id, line, custom_id, body_hash, body, model, prompt_chars, state, "
                "attempts, not_before) VALUES (:batch, 2, 'todo', 'h2', '{}', 'm', 2, 'queued', 0, 0.0)"
            ), {"batch": batch_id})
            conn.execute(text("INSERT INTO api_keys (id, state, reason, since) VALUES ('k1', 'revoked', 'x', 9.0)"))
        assert old._current_revision() == "0001"

    with Store.open(any_db_url) as store:
        assert store._current_revision() == SCHEMA_REVISION
        (done,) = store.export_rows(["succeeded"])
        assert (done.custom_id, done.response, done.total_tokens) == ("done", '{"ok": 1}', 3)
        assert (done.cost, done.model_sent, done.fallback_reason) == (None, None, None)
        (counts,) = store.counts()
        assert (counts.succeeded, counts.queued, counts.unverified, counts.cost, counts.priced) == (1, 1, 0, 0.0, 0)
        key = store.key_records()["k1"]
        assert (key.state, key.reason, key.requests, key.rate_limited, key.errors, key.last_run_at) == \
            ("revoked", "x", 0, 0, 0, None)

        # The new columns are in use at once.
        (todo,) = store.claim("r", 5, lease_seconds=30)
        store.record("r", [Succeeded(todo.id, 1, "k1", 200, "r2", "{}", "m", "stop", 1, 1, 2,
                                     cost=0.125, model_sent="m")])
        assert [row.name for row in store.usage("key")] == ["k1"] and store.usage("key")[0].cost == 0.125
        store.save_catalog([ModelInfo("m", prompt_price=0.5)], now=7.0)
        assert store.load_catalog().fetched_at == 7.0
        config = _alembic_config(store._engine)
    command.check(config)  # the upgraded database is exactly the models


def test_0002_downgrades_to_0001_keeping_the_jobs(any_db_url: str) -> None:
    with Store.open(any_db_url) as store:
        store.add_jobs(store.ensure_batch("b"), [spec for spec in specs(2)])
        store.save_key_run("k1", 1, 0, 0, None, None)
        migrate(store, "0001", command.downgrade)
        assert store._current_revision() == "0001"
        with store.transaction() as conn:
            assert conn.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 2
            assert conn.execute(text("SELECT state FROM api_keys WHERE id = 'k1'")).scalar_one() == "active"
        store.upgrade()
        assert store._current_revision() == SCHEMA_REVISION
        assert len(list(store.export_rows(["queued"]))) == 2
