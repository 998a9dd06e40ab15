"""Settings from flags, environment and `batchrun.toml`: precedence, validation, redaction.

click resolves a flag against its environment variable before `build_settings` is called, so "flag"
and "env-derived flag" are the same thing here: a non-None value in the `flags` dict. Every test
works in its own tmp_path as the working directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from batchrun.config import DEFAULT_DB, KEYS_ENV, Settings, build_settings, read_config_file, resolve_db
from batchrun.errors import ConfigError
from batchrun.keys import ApiKey, KeyLimits
from batchrun.units import Rate

SECRET_A = "Zx81secretAAAAAAAAAAAAAAAAAAAAAA"
SECRET_B = "Qv27secretBBBBBBBBBBBBBBBBBBBBBB"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_toml(directory: Path, text: str, name: str = "batchrun.toml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def settings(flags: dict[str, Any] | None = None, environ: dict[str, str] | None = None,
             config_path: str | None = None) -> Settings:
    return build_settings(flags or {}, config_path, {} if environ is None else environ)


FILE = """
db = "sqlite:///from-file.db"
base_url = "https://file.example/v1/"
concurrency = 8
rate_limit = "600/1m"
"""


# --- precedence ----------------------------------------------------------------------------------------


def test_defaults_without_flags_env_or_file(workdir: Path) -> None:
    s = settings()
    assert s.db == DEFAULT_DB == "sqlite:///batchrun.db"
    assert s.base_url is None
    assert s.keys == ()
    assert s.concurrency == 32
    assert s.limits == KeyLimits(None, None)
    assert s.per_key_limits == {}
    assert (s.max_attempts, s.request_timeout, s.lease, s.backoff_base, s.backoff_max) == (5, 600.0, 60.0, 1.0, 30.0)


def test_the_config_file_fills_what_no_flag_gives(workdir: Path) -> None:
    write_toml(workdir, FILE)
    s = settings()
    assert s.db == "sqlite:///from-file.db"
    assert s.base_url == "https://file.example/v1"  # trailing slash dropped
    assert s.concurrency == 8
    assert s.limits.rate == Rate(600, 60.0)


def test_flags_beat_the_config_file(workdir: Path) -> None:
    write_toml(workdir, FILE)
    s = settings({"db": "sqlite:///from-flag.db", "base_url": "http://127.0.0.1:8787/v1",
                  "concurrency": 3, "rate_limit": "20/1s"})
    assert s.db == "sqlite:///from-flag.db"
    assert s.base_url == "http://127.0.0.1:8787/v1"
    assert s.concurrency == 3
    assert s.limits.rate == Rate(20, 1.0)


@pytest.mark.parametrize(
    ("name", "flag_value", "file_text", "attribute", "expected_flag", "expected_file", "expected_default"),
    [
        ("db", "sqlite:///flag.db", 'db = "sqlite:///file.db"', "db",
         "sqlite:///flag.db", "sqlite:///file.db", DEFAULT_DB),
        ("base_url", "https://flag.example/v1", 'base_url = "https://file.example/v1"', "base_url",
         "https://flag.example/v1", "https://file.example/v1", None),
        ("concurrency", 4, "concurrency = 16", "concurrency", 4, 16, 32),
        ("max_attempts", 2, "max_attempts = 9", "max_attempts", 2, 9, 5),
        ("request_timeout", "30s", 'request_timeout = "2m"', "request_timeout", 30.0, 120.0, 600.0),
        ("backoff_max", "100ms", 'backoff_max = "10s"', "backoff_max", 0.1, 10.0, 30.0),
    ],
)
def test_each_setting_is_flag_then_file_then_default(
    workdir: Path, name: str, flag_value: Any, file_text: str, attribute: str,
    expected_flag: Any, expected_file: Any, expected_default: Any,
) -> None:
    assert getattr(settings(), attribute) == expected_default
    write_toml(workdir, file_text)
    assert getattr(settings(), attribute) == expected_file
    # an unset flag arrives as None and never overrides the file
    assert getattr(settings({name: None}), attribute) == expected_file
    assert getattr(settings({name: flag_value}), attribute) == expected_flag


def test_rate_limit_flag_beats_rpm_in_the_file(workdir: Path) -> None:
    write_toml(workdir, "rpm = 120")
    assert settings().limits.rate == Rate(120, 60.0)
    assert settings({"rate_limit": "5/1s"}).limits.rate == Rate(5, 1.0)
    assert settings({"rpm": 30}).limits.rate == Rate(30, 60.0)


def test_tpm_and_token_limit(workdir: Path) -> None:
    assert settings({"tpm": 1000}).limits.tokens == Rate(1000, 60.0)
    assert settings({"token_limit": "200000/1m"}).limits.tokens == Rate(200000, 60.0)


@pytest.mark.parametrize(("rate", "minute"), [("rate_limit", "rpm"), ("token_limit", "tpm")])
def test_both_a_rate_and_its_per_minute_flag_is_an_error(workdir: Path, rate: str, minute: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings({rate: "10/1s", minute: 600})
    assert str(caught.value) == f"--{rate} and {minute} say the same thing: give one"


def test_both_rate_limit_and_rpm_in_the_file_is_an_error_naming_the_file(workdir: Path) -> None:
    write_toml(workdir, 'rate_limit = "10/1s"\nrpm = 600\n')
    with pytest.raises(ConfigError) as caught:
        settings()
    assert "batchrun.toml" in str(caught.value)
    assert "rate_limit and rpm" in str(caught.value)


# --- keys ----------------------------------------------------------------------------------------------


def test_keys_from_the_environ_argument(workdir: Path) -> None:
    s = settings(environ={KEYS_ENV: f"a:{SECRET_A},b:{SECRET_B}"})
    assert [key.id for key in s.keys] == ["a", "b"]
    assert s.keys[0].token == f"a:{SECRET_A}"


def test_the_environ_argument_replaces_the_process_environment(workdir: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEYS_ENV, f"proc:{SECRET_A}")
    assert settings(environ={}).keys == ()
    # without an environ argument, the process environment is read
    assert [key.id for key in build_settings({}, None).keys] == ["proc"]


def test_a_blank_keys_env_var_counts_as_unset(workdir: Path) -> None:
    (workdir / "keys.txt").write_text(f"filekey:{SECRET_A}\n")
    write_toml(workdir, 'keys_file = "keys.txt"')
    assert [key.id for key in settings(environ={KEYS_ENV: "  \n "}).keys] == ["filekey"]


def test_keys_file_flag_beats_env_which_beats_the_files_keys_file(workdir: Path) -> None:
    (workdir / "flag-keys.txt").write_text(f"flagkey:{SECRET_A}\n")
    (workdir / "file-keys.txt").write_text(f"filekey:{SECRET_B}\n")
    write_toml(workdir, 'keys_file = "file-keys.txt"')
    env = {KEYS_ENV: f"envkey:{SECRET_B}"}
    assert [k.id for k in settings({"keys_file": "flag-keys.txt"}, env).keys] == ["flagkey"]
    assert [k.id for k in settings({}, env).keys] == ["envkey"]
    assert [k.id for k in settings({}, {}).keys] == ["filekey"]


def test_api_keys_list_in_the_file(workdir: Path) -> None:
    write_toml(workdir, f'api_keys = ["a:{SECRET_A}", "b:{SECRET_B}"]')
    assert [k.id for k in settings().keys] == ["a", "b"]


def test_a_missing_keys_file_is_a_config_error_naming_it(workdir: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read keys file nope.txt"):
        settings({"keys_file": "nope.txt"})


# --- the config file itself ----------------------------------------------------------------------------


def test_an_unknown_setting_is_an_error_naming_it(workdir: Path) -> None:
    write_toml(workdir, "concurency = 8\n")
    with pytest.raises(ConfigError) as caught:
        settings()
    message = str(caught.value)
    assert message.startswith("batchrun.toml: unknown setting(s): concurency ")
    assert "concurrency" in message  # the list of known settings helps spot the typo


def test_invalid_toml_is_an_error_naming_the_file(workdir: Path) -> None:
    write_toml(workdir, 'base_url = "https://unterminated\n')
    with pytest.raises(ConfigError) as caught:
        settings()
    assert str(caught.value).startswith("batchrun.toml: not valid TOML:")


def test_an_explicit_config_path_is_used_and_named_in_errors(workdir: Path) -> None:
    (workdir / "conf").mkdir()
    path = write_toml(workdir / "conf", "concurrency = 0\n", name="other.toml")
    with pytest.raises(ConfigError, match="concurrency: must be a positive whole number"):
        settings(config_path=str(path))
    write_toml(workdir / "conf", "concurrency = 7\nbogus = 1\n", name="other.toml")
    with pytest.raises(ConfigError, match=r"other\.toml: unknown setting\(s\): bogus"):
        settings(config_path=str(path))


def test_an_explicit_config_path_that_does_not_exist_is_an_error(workdir: Path) -> None:
    with pytest.raises(ConfigError, match="config file missing.toml does not exist"):
        settings(config_path="missing.toml")


def test_no_config_file_in_the_working_directory_is_fine(workdir: Path) -> None:
    assert read_config_file(None) == ({}, None)


def test_read_config_file_returns_the_table_and_its_path(workdir: Path) -> None:
    write_toml(workdir, "concurrency = 4\n")
    assert read_config_file(None) == ({"concurrency": 4}, "batchrun.toml")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("concurrency = 0", "concurrency: must be a positive whole number"),
        ("concurrency = -3", "concurrency: must be a positive whole number"),
        ('concurrency = "many"', "concurrency: 'many' is not a whole number"),
        ("concurrency = true", "concurrency: must be a positive whole number"),
        ("max_attempts = 0", "max_attempts: must be a positive whole number"),
        ('rate_limit = "600"', "rate_limit: '600' is not a rate"),
        ('request_timeout = "soon"', "request_timeout: 'soon' is not a duration"),
        ('lease = "1s"', "lease must be at least 2s"),
        ("limits = 3", "[limits] must be a table of key ids"),
    ],
)
def test_bad_values_are_config_errors_that_say_what_is_wrong(workdir: Path, text: str, words: str) -> None:
    write_toml(workdir, text + "\n")
    with pytest.raises(ConfigError) as caught:
        settings()
    assert words in str(caught.value)


# --- per-key limits ------------------------------------------------------------------------------------


def test_limits_table_overrides_one_keys_rate_and_inherits_the_rest(workdir: Path) -> None:
    write_toml(workdir, """
rate_limit = "600/1m"
token_limit = "100000/1m"

[limits.k1]
rate_limit = "20/1s"

[limits.k2]
tpm = 5000
""")
    s = settings()
    assert s.limits == KeyLimits(Rate(600, 60.0), Rate(100000, 60.0))
    assert s.per_key_limits == {
        "k1": KeyLimits(Rate(20, 1.0), Rate(100000, 60.0)),
        "k2": KeyLimits(Rate(600, 60.0), Rate(5000, 60.0)),
    }


def test_limits_table_with_both_rate_and_rpm_is_an_error_naming_the_key(workdir: Path) -> None:
    write_toml(workdir, '[limits.k1]\nrate_limit = "20/1s"\nrpm = 60\n')
    with pytest.raises(ConfigError, match=r"\[limits\.k1\]"):
        settings()


def test_an_unknown_setting_in_a_limits_table_is_an_error(workdir: Path) -> None:
    write_toml(workdir, '[limits.k1]\nrate_limt = "20/1s"\n')
    with pytest.raises(ConfigError, match="rate_limt"):
        settings()


# --- secrets and the provider check --------------------------------------------------------------------


def test_repr_of_settings_never_shows_a_secret(workdir: Path) -> None:
    plain = "sk-" + SECRET_B  # a key without an access id: shown by fingerprint
    s = settings({"base_url": "https://api.example/v1"}, {KEYS_ENV: f"team-a:{SECRET_A}\n{plain}"})
    for text in (repr(s), str(s), f"{s}", f"{s!r}"):
        assert SECRET_A not in text
        assert SECRET_B not in text
        assert "team-a" in text
        assert "key-" in text


def test_repr_of_settings_lists_the_useful_values(workdir: Path) -> None:
    s = settings({"base_url": "https://api.example/v1", "rate_limit": "20/1s"}, {KEYS_ENV: f"k1:{SECRET_A}"})
    assert repr(s) == ("Settings(db='sqlite:///batchrun.db', base_url='https://api.example/v1', keys=[k1], "
                       "concurrency=32, limits=KeyLimits(rate=Rate(count=20, period=1.0), tokens=None), "
                       "max_attempts=5)")


def test_require_provider_without_base_url_names_the_flag_and_env_var(workdir: Path) -> None:
    s = settings(environ={KEYS_ENV: f"k1:{SECRET_A}"})
    with pytest.raises(ConfigError) as caught:
        s.require_provider()
    assert "--base-url" in str(caught.value)
    assert "BATCHRUN_BASE_URL" in str(caught.value)


def test_require_provider_rejects_a_base_url_without_a_scheme(workdir: Path) -> None:
    s = settings({"base_url": "api.example/v1"}, {KEYS_ENV: f"k1:{SECRET_A}"})
    with pytest.raises(ConfigError, match="must start with http:// or https://"):
        s.require_provider()


def test_require_provider_without_keys_names_the_env_var_and_flag(workdir: Path) -> None:
    s = settings({"base_url": "https://api.example/v1"})
    with pytest.raises(ConfigError) as caught:
        s.require_provider()
    assert "BATCHRUN_API_KEYS" in str(caught.value)
    assert "--keys-file" in str(caught.value)
    assert caught.value.exit_code == 2


def test_require_provider_accepts_a_complete_setup(workdir: Path) -> None:
    s = settings({"base_url": "http://127.0.0.1:8787/v1"}, {KEYS_ENV: f"k1:{SECRET_A}"})
    s.require_provider()
    assert s.keys == (ApiKey("k1", f"k1:{SECRET_A}"),)


# --- resolve_db ----------------------------------------------------------------------------------------


def test_resolve_db_is_flag_then_file_then_default(workdir: Path) -> None:
    assert resolve_db(None, None) == DEFAULT_DB
    write_toml(workdir, 'db = "sqlite:///file.db"\n')
    assert resolve_db(None, None) == "sqlite:///file.db"
    assert resolve_db("sqlite:///flag.db", None) == "sqlite:///flag.db"


def test_resolve_db_reports_a_broken_config_file(workdir: Path) -> None:
    write_toml(workdir, "db = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve_db(None, None)


def test_a_keys_file_named_in_a_config_file_is_found_next_to_it(workdir: Path) -> None:
    elsewhere = workdir / "etc"
    elsewhere.mkdir()
    (elsewhere / "keys.txt").write_text("nightly:" + "s" * 24 + "\n")
    config = write_toml(elsewhere, 'keys_file = "keys.txt"')

    loaded = build_settings({}, str(config), environ={})

    assert [key.id for key in loaded.keys] == ["nightly"]
