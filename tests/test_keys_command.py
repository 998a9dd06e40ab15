"""`batchrun keys` takes the keys the way `run` does (--keys-file, BATCHRUN_API_KEYS, keys_file in
batchrun.toml) and lists the ones no run has used yet beside those the database knows — by id, never
by secret. Run as a subprocess, like a user would."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import Cli, make_keys

from batchrun.store import Store


@pytest.fixture
def known(db_url: str) -> list[str]:
    """Two keys the database has seen: key1 revoked by the provider, key2 used by the last run."""
    keys = make_keys(2)
    with Store.open(db_url) as store:
        store.save_key_run("key1", 7, 0, 1, "600/1m", None)
        store.set_key_state("key1", "revoked", "key revoked in dashboard")
        store.save_key_run("key2", 40, 3, 0, "600/1m", "450/1m")
    return keys


def secrets_of(keys: list[str]) -> list[str]:
    return [key.partition(":")[2] for key in keys]


def rows(result: subprocess.CompletedProcess[str]) -> dict[str, list[str]]:
    """The text table by key id: each row's words."""
    assert result.returncode == 0, result.stderr
    return {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}


def as_json(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    return {entry["id"]: entry for entry in json.loads(result.stdout)}


def assert_no_secret(result: subprocess.CompletedProcess[str], keys: list[str]) -> None:
    for secret in secrets_of(keys):
        assert secret not in result.stdout + result.stderr


def test_keys_file_lists_the_keys_no_run_has_used_beside_the_known_ones(cli: Cli, tmp_path: Path,
                                                                       known: list[str]) -> None:
    configured = [known[1], *make_keys(4)[2:]]  # key2 (known), key3 and key4 (new)
    (tmp_path / "keys.txt").write_text("# production\n" + "\n".join(configured) + "\n")

    text = cli("keys", "--keys-file", "keys.txt")
    listed = as_json(cli("keys", "--keys-file", "keys.txt", "--json"))

    table = rows(text)
    assert list(table) == ["key1", "key2", "key3", "key4"]
    assert table["key1"][1] == "revoked" and "key revoked in dashboard" in text.stdout
    assert table["key2"][1] == "active" and table["key2"][4:7] == ["40", "3", "0"]
    assert "600/1m → 450/1m" in text.stdout
    for new in ("key3", "key4"):
        assert table[new][1] == "new" and " ".join(table[new][-4:]) == "none not used yet"
        assert listed[new]["state"] == "new" and listed[new]["reason"] == "not used yet"
        assert listed[new]["last_run"] is None
    assert listed["key2"]["last_run"]["requests"] == 40 and listed["key2"]["rate_limit"]["adapted"] == "450/1m"
    assert_no_secret(text, configured + known)


def test_env_var_keys_are_listed_with_their_configured_rate(cli: Cli, tmp_path: Path) -> None:
    keys = make_keys(2)
    (tmp_path / "batchrun.toml").write_text('rate_limit = "600/1m"\n[limits.key2]\nrate_limit = "20/1s"\n')

    result = cli("keys", "--json", env={"BATCHRUN_API_KEYS": ",".join(keys)})
    text = cli("keys", env={"BATCHRUN_API_KEYS": "\n".join(keys)})

    listed = as_json(result)
    assert {key: entry["state"] for key, entry in listed.items()} == {"key1": "new", "key2": "new"}
    assert listed["key1"]["rate_limit"] == {"configured": "600/1m", "adapted": None}
    assert listed["key2"]["rate_limit"] == {"configured": "20/1s", "adapted": None}
    assert rows(text)["key2"][:2] == ["key2", "new"] and "20/1s" in rows(text)["key2"]
    assert_no_secret(result, keys)
    assert_no_secret(text, keys)


def test_keys_file_named_in_batchrun_toml_is_read_relative_to_it(cli: Cli, tmp_path: Path,
                                                                 known: list[str]) -> None:
    keys = make_keys(3)
    config_dir = tmp_path / "conf"
    config_dir.mkdir()
    (config_dir / "keys.txt").write_text("\n".join(keys) + "\n")
    (config_dir / "batchrun.toml").write_text('keys_file = "keys.txt"\n')
    (tmp_path / "batchrun.toml").write_text('keys_file = "keys.txt"\n')
    (tmp_path / "keys.txt").write_text(keys[2] + "\n")

    elsewhere = cli("keys", "--config", str(config_dir / "batchrun.toml"))
    here = cli("keys")  # ./batchrun.toml, found by default

    assert {key: row[1] for key, row in rows(elsewhere).items()} == {"key1": "revoked", "key2": "active",
                                                                     "key3": "new"}
    assert {key: row[1] for key, row in rows(here).items()} == {"key1": "revoked", "key2": "active",
                                                                "key3": "new"}
    assert_no_secret(elsewhere, keys + known)
    assert_no_secret(here, keys + known)


def test_flag_beats_env_var_like_run(cli: Cli, tmp_path: Path) -> None:
    from_file, from_env = make_keys(1), [f"other:{make_keys(1)[0].partition(':')[2]}"]
    (tmp_path / "keys.txt").write_text(from_file[0] + "\n")

    result = cli("keys", "--keys-file", "keys.txt", env={"BATCHRUN_API_KEYS": from_env[0]})
    via_env = cli("keys", env={"BATCHRUN_KEYS_FILE": "keys.txt"})

    assert list(rows(result)) == ["key1"]
    assert list(rows(via_env)) == ["key1"]
    assert_no_secret(result, from_file + from_env)


def test_without_a_key_source_only_the_known_keys_are_listed(cli: Cli, known: list[str]) -> None:
    assert list(rows(cli("keys"))) == ["key1", "key2"]
    assert list(as_json(cli("keys", "--json"))) == ["key1", "key2"]


def test_nothing_known_and_nothing_configured_says_so(cli: Cli) -> None:
    result = cli("keys")

    assert result.returncode == 0, result.stderr
    assert "no key is known yet" in result.stdout and "--keys-file" in result.stdout


def test_a_bad_keys_file_is_a_clear_error_naming_the_file_without_the_secret(cli: Cli, tmp_path: Path) -> None:
    good = make_keys(1)[0]
    spaced = "key2:" + make_keys(1)[0].partition(":")[2] + " " + make_keys(1)[0].partition(":")[2]
    (tmp_path / "keys.txt").write_text(f"{good}\n{spaced}\n")
    (tmp_path / "dupes.txt").write_text(f"{good}\nkey1:{make_keys(1)[0].partition(':')[2]}\n")

    malformed = cli("keys", "--keys-file", "keys.txt")
    duplicated = cli("keys", "--keys-file", "dupes.txt", "--json")
    missing = cli("keys", "--keys-file", "absent.txt")

    assert malformed.returncode == 2 and malformed.stdout == ""
    assert "keys.txt: key key2 has whitespace inside it" in malformed.stderr
    assert duplicated.returncode == 2 and "dupes.txt: two different keys share the id key1" in duplicated.stderr
    assert missing.returncode == 2 and "cannot read keys file absent.txt" in missing.stderr
    for result in (malformed, duplicated, missing):
        assert_no_secret(result, [good, spaced, (tmp_path / "dupes.txt").read_text().split()[1]])
        assert "Traceback" not in result.stderr


def test_reset_still_works_beside_the_key_source_options(cli: Cli, tmp_path: Path, known: list[str]) -> None:
    (tmp_path / "keys.txt").write_text(known[0] + "\n")

    reset = cli("keys", "reset", "key1")
    reset_with_file = cli("keys", "--keys-file", "keys.txt", "reset", "key2")
    listed = rows(cli("keys", "--keys-file", "keys.txt"))

    assert reset.returncode == 0 and "key key1 is back in rotation" in reset.stdout
    assert reset_with_file.returncode == 0, reset_with_file.stderr
    assert listed["key1"][1] == "active"
    assert cli("keys", "reset", "nobody").returncode == 1


def test_help_shows_the_key_sources_with_an_example(cli: Cli) -> None:
    result = cli("keys", "--help")

    help_text = " ".join(result.stdout.split())
    assert result.returncode == 0
    assert "--keys-file" in help_text and "BATCHRUN_KEYS_FILE" in help_text and "BATCHRUN_API_KEYS" in help_text
    assert "batchrun keys --keys-file keys.txt" in help_text
    assert "batchrun keys reset k2" in help_text
