"""`batchrun.toml`: finding and reading it, and the database URL alone.

Split from `config` so that the commands that only need the database (`status`, `export`, `retry`,
...) do not import the key pool, the rate limiters and asyncio that `config.Settings` brings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from batchrun.errors import ConfigError

DEFAULT_DB = "sqlite:///batchrun.db"
DEFAULT_CONFIG = "batchrun.toml"

FILE_KEYS = {
    "db", "base_url", "keys_file", "api_keys", "concurrency", "rate_limit", "rpm", "token_limit", "tpm",
    "max_attempts", "transient_patience", "request_timeout", "lease", "backoff_base", "backoff_max", "limits",
    "require_request_id", "key_format", "drop_unsupported", "fallback_models", "fallback",
    "grace", "max_duration", "until", "max_cost", "max_tokens", "wait_for_keys",
    "via", "batch_discount", "batch_max_requests", "batch_max_bytes", "poll_interval", "metrics_file",
    "probe_patience", "ca_bundle",
}


def read_config_file(path: str | None) -> tuple[dict[str, Any], str | None]:
    """The config file's table, and its path; `batchrun.toml` in the working directory if present."""
    explicit = path is not None
    candidate = Path(path if path is not None else DEFAULT_CONFIG)
    if not candidate.exists():
        if explicit:
            raise ConfigError(f"config file {candidate} does not exist")
        return {}, None
    import tomllib  # only when there is a file to read

    try:
        data = tomllib.loads(candidate.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {candidate}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{candidate}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - FILE_KEYS)
    if unknown:
        raise ConfigError(f"{candidate}: unknown setting(s): {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(FILE_KEYS))})")
    return data, str(candidate)


def resolve_db(flag: str | None, config_path: str | None) -> str:
    """The database URL alone (for commands that need nothing else)."""
    if flag:
        return flag
    data, _ = read_config_file(config_path)
    return str(data.get("db") or DEFAULT_DB)
