"""What happens to a key when the provider refuses it (401, 402, 403), seen as a user sees it:
`batchrun keys --json`, `status --json`, the exports, the exit code and the messages, and how many
requests the simulator received from each key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import Cli, batch_status, export, make_keys, provider_env, submit_jobs, write_jobs
from conftest import keys_json as key_table

from batchrun.simulator import RunningSimulator

pytestmark = pytest.mark.both_databases


def completions_from(sim: RunningSimulator, key: str) -> int:
    return int(sim.state.snapshot()["keys"].get(key, {}).get("requests", 0))


def test_revoked_expired_and_unknown_keys_get_their_state_and_no_further_request(
        cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    keys = make_keys(4)
    sim.config.revoked.add("key1")
    sim.config.expired.add("key2")
    sim.config.accepted_keys = {"key1", "key2", "key4"}  # key3 is unknown to the provider
    submit_jobs(cli, tmp_path, 30)

    first = cli("run", "--no-progress", env=provider_env(sim, keys))
    second = cli("run", "--no-progress", env=provider_env(sim, keys))

    assert first.returncode == 0, first.stderr
    for key, word in (("key1", "revoked"), ("key2", "expired"), ("key3", "invalid")):
        assert f"key {key} taken out of rotation" in first.stderr and word in first.stderr
    assert "Settings → API Keys" in first.stderr
    # Each bad key was refused once, when the catalogue was fetched, and then never used again.
    assert [completions_from(sim, k) for k in ("key1", "key2", "key3")] == [0, 0, 0]
    assert completions_from(sim, "key4") == 30
    table = key_table(cli)
    assert {k: table[k]["state"] for k in ("key1", "key2", "key3", "key4")} == {
        "key1": "revoked", "key2": "expired", "key3": "invalid", "key4": "active"}
    assert "API key revoked" in table["key1"]["reason"] and "Invalid API key" in table["key3"]["reason"]
    assert table["key4"]["last_run"]["requests"] == 30
    results, errors = export(cli, tmp_path)
    assert len(results) == 30 and errors == []
    assert {row["batchrun"]["attempts"] for row in results} == {1}
    # The states persist: the next run does not even try them.
    assert second.returncode == 0
    assert "key1 is revoked" in second.stderr and "batchrun keys reset key1" in second.stderr
    listed = cli("keys").stdout
    assert "revoked" in listed and "expired" in listed and "invalid" in listed


def test_a_key_revoked_mid_run_gets_no_request_after_its_401(cli: Cli, sim: RunningSimulator,
                                                             tmp_path: Path) -> None:
    sim.config.revoke_after["key1"] = 10
    submit_jobs(cli, tmp_path, 60)

    result = cli("run", "--no-progress", "--concurrency", "1", env=provider_env(sim, make_keys(2)))

    assert result.returncode == 0, result.stderr
    key1 = sim.state.snapshot()["keys"]["key1"]
    assert key1["by_status"]["401"] == 1 and key1["requests"] == key1["by_status"]["200"] + 1
    results, errors = export(cli, tmp_path)
    assert len(results) == 60 and errors == []
    # the job that met the 401 went back to the queue without spending an attempt
    assert {row["batchrun"]["attempts"] for row in results} == {1}
    assert key_table(cli)["key1"]["state"] == "revoked"


def test_a_key_not_in_id_secret_form_is_refused_before_any_request(cli: Cli, sim: RunningSimulator,
                                                                   tmp_path: Path) -> None:
    submit_jobs(cli, tmp_path, 3)
    half = "0123456789abcdef0123456789abcdef"  # only the secret half was pasted

    told = cli("run", "--key-format", "id:secret", env=provider_env(sim, [half]))
    mixed = cli("run", env=provider_env(sim, [*make_keys(2), half]))

    for result in (told, mixed):
        assert result.returncode == 2, result.stderr
        assert "`<access_key_id>:<secret>`" in result.stderr and half not in result.stderr
    assert sim.state.snapshot()["requests_total"] == 0 and sim.state.snapshot()["models_requests"] == 0

    # a user who really mixes key styles says so
    allowed = cli("run", "--no-progress", "--key-format", "any", env=provider_env(sim, [*make_keys(2), half]))
    assert allowed.returncode == 0, allowed.stderr


def test_a_401_for_the_key_format_says_what_the_format_must_be(cli: Cli, sim: RunningSimulator,
                                                              tmp_path: Path) -> None:
    sim.config.require_key_format = True
    submit_jobs(cli, tmp_path, 3)
    half = "fedcba98765432100123456789abcdef"

    result = cli("run", "--no-progress", env=provider_env(sim, [half]))

    assert result.returncode == 4, result.stderr
    assert "<access_key_id>:<secret>" in result.stderr and half not in result.stdout + result.stderr
    assert batch_status(cli)["queued"] == 3


def test_a_key_out_of_budget_leaves_and_the_others_carry_on(cli: Cli, sim: RunningSimulator,
                                                            tmp_path: Path) -> None:
    keys = make_keys(2)
    sim.config.key_budgets = {"key1": 5}
    submit_jobs(cli, tmp_path, 40)

    first = cli("run", "--no-progress", "--concurrency", "2", env=provider_env(sim, keys))

    assert first.returncode == 0, first.stderr
    assert "key key1 taken out of rotation" in first.stderr and "raise that key's budget cap" in first.stderr
    assert sim.state.snapshot()["keys"]["key1"]["ok"] == 5
    table = key_table(cli)
    assert table["key1"]["state"] == "budget" and table["key2"]["state"] == "active"
    results, errors = export(cli, tmp_path)
    assert len(results) == 40 and errors == []

    # `budget` is not sticky: after the cap is raised, the next run uses the key again.
    sim.config.key_budgets = {}
    write_jobs(tmp_path / "more.jsonl", 10, prefix="more")
    cli("submit", str(tmp_path / "more.jsonl"))
    second = cli("run", "--no-progress", "--concurrency", "2", env=provider_env(sim, keys))
    assert second.returncode == 0, second.stderr
    assert sim.state.snapshot()["keys"]["key1"]["ok"] > 5
    assert key_table(cli)["key1"]["state"] == "active"


def test_every_key_out_of_budget_exits_4_and_says_so(cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    sim.config.key_budgets = {"key1": 3, "key2": 3}
    submit_jobs(cli, tmp_path, 20)

    result = cli("run", "--no-progress", "--concurrency", "2", env=provider_env(sim, make_keys(2)))

    assert result.returncode == 4, result.stderr
    assert "every key's budget is spent" in result.stderr and "exit 4" in result.stdout
    status = batch_status(cli)
    assert status["succeeded"] == 6 and status["queued"] == 14 and status["failed"] == 0


def test_the_org_budget_stops_the_run_and_the_next_run_finishes_the_rest(cli: Cli, sim: RunningSimulator,
                                                                         tmp_path: Path) -> None:
    keys = make_keys(3)
    sim.config.org_budget = 25
    submit_jobs(cli, tmp_path, 60)

    first = cli("run", "--no-progress", "--concurrency", "4", env=provider_env(sim, keys))

    assert first.returncode == 4, first.stderr
    assert "organisation's monthly budget is spent" in first.stderr + first.stdout
    status = batch_status(cli)
    assert status["succeeded"] == 25 and status["failed"] == 0 and status["queued"] == 35
    refused = sim.state.snapshot()["by_status"]["402"]
    assert refused <= 4  # it stopped claiming: only requests already in flight met the cap
    assert all(entry["state"] == "active" for entry in key_table(cli).values())  # no key was blamed

    sim.config.org_budget = None  # the admin raised the cap
    second = cli("run", "--no-progress", "--concurrency", "4", env=provider_env(sim, keys))

    assert second.returncode == 0, second.stderr
    results, errors = export(cli, tmp_path)
    assert len(results) == 60 and len({r["custom_id"] for r in results}) == 60 and errors == []
    assert sim.state.snapshot()["duplicates"] == 0


def test_403_moves_the_job_to_a_key_that_may_use_the_model(cli: Cli, sim: RunningSimulator,
                                                           tmp_path: Path) -> None:
    sim.config.forbidden = {"key1": {"sim-large"}}
    submit_jobs(cli, tmp_path, 20, model="reasoning")

    result = cli("run", "--no-progress", "--concurrency", "2", env=provider_env(sim, make_keys(2)))

    assert result.returncode == 0, result.stderr
    assert "key key1 may not use model reasoning" in result.stderr
    results, errors = export(cli, tmp_path)
    assert len(results) == 20 and errors == []
    assert {row["batchrun"]["key"] for row in results} == {"key2"}
    # after the first 403 came back, key1 got no more of these jobs (only those already in flight)
    assert sim.state.snapshot()["keys"]["key1"]["by_status"]["403"] <= 2
    assert {row["batchrun"]["attempts"] for row in results} == {1}
    assert key_table(cli)["key1"]["state"] == "active"  # the key is fine for other models


def test_403_on_every_key_fails_the_job_naming_the_model_and_the_catalogue(cli: Cli, sim: RunningSimulator,
                                                                          tmp_path: Path) -> None:
    sim.config.forbidden = {"key1": {"sim-large"}, "key2": {"sim-large"}}
    job_file = tmp_path / "jobs.jsonl"
    write_jobs(job_file, 6, model="sim-large", prefix="large")
    with job_file.open("a") as out:
        out.write(json.dumps({"custom_id": "small", "model": "sim-small",
                              "messages": [{"role": "user", "content": "hi"}]}) + "\n")
    cli("submit", str(job_file))

    result = cli("run", "--no-progress", "--concurrency", "2", env=provider_env(sim, make_keys(2)))

    assert result.returncode == 1, result.stderr
    results, errors = export(cli, tmp_path)
    assert [row["custom_id"] for row in results] == ["small"]
    assert len(errors) == 6
    for row in errors:
        assert row["error"]["code"] == "model_forbidden"
        message = row["error"]["message"]
        assert "no key may use model 'sim-large'" in message
        assert "sim-small" in message and "sim-mini" in message  # what the catalogue offers
    # once every key had refused the model, the remaining jobs failed without another request:
    # fewer 403s than trying each job on each key (12) would give
    assert sim.state.snapshot()["by_status"].get("403", 0) <= 6


def test_three_keys_one_revoked_one_out_of_budget_the_third_finishes(cli: Cli, sim: RunningSimulator,
                                                                     tmp_path: Path) -> None:
    # One request at a time: the keys take turns at the one slot (its waiters are served in order), so
    # each key gets its share of the 200 jobs whatever the machine's load — key1 meets its 401 at its
    # 16th request and key2 its 402 at its 11th. (At 16 in flight, a busy machine once gave key2 only 8
    # of 700 jobs: the test assumed a share of the work instead of making it.)
    sim.config.revoke_after = {"key1": 15}
    sim.config.key_budgets = {"key2": 10}
    submit_jobs(cli, tmp_path, 200)

    result = cli("run", "--no-progress", "--concurrency", "1", env=provider_env(sim, make_keys(3)))

    assert result.returncode == 0, result.stderr
    stats = sim.state.snapshot()
    # no request after the 401 and after the 402: the key left at its answer
    assert stats["keys"]["key1"]["by_status"] == {"200": 15, "401": 1}, stats["keys"]["key1"]
    assert stats["keys"]["key2"]["by_status"] == {"200": 10, "402": 1}, stats["keys"]["key2"]
    assert stats["keys"]["key3"]["by_status"] == {"200": 200 - 15 - 10}, stats["keys"]["key3"]
    assert stats["duplicates"] == 0
    table = key_table(cli)
    assert (table["key1"]["state"], table["key2"]["state"], table["key3"]["state"]) == ("revoked", "budget", "active"), stats
    results, errors = export(cli, tmp_path)
    assert len({row["custom_id"] for row in results}) == 200 and errors == []
    # the jobs that met the 401 and the 402 went to key3 without spending an attempt
    assert {row["batchrun"]["attempts"] for row in results} == {1}
