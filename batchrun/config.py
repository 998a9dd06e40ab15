"""Settings as one typed object, built from flags, environment and `batchrun.toml`.

Precedence: flag > environment > config file > default. The CLI hands over what click resolved from
flags and environment variables (None where neither was given); this module fills the gaps from the
file and the defaults, and validates everything in one place.

`batchrun.toml` (all keys optional):

    db = "sqlite:///batchrun.db"
    base_url = "https://api.privatemind.com/v1"
    keys_file = "keys.txt"            # one key a line; or set BATCHRUN_API_KEYS
    concurrency = 32
    rate_limit = "600/1m"             # per key; or rpm = 600
    token_limit = "200000/1m"         # per key; or tpm = 200000
    max_attempts = 5
    transient_patience = "10m"        # transient failures (429, 503, resets) fail a job only after
                                      # max_attempts AND this long: an outage does not use up its attempts
    request_timeout = "10m"
    probe_patience = "1m"             # the start-up GET /models is retried this long through blips
    ca_bundle = "corp-ca.pem"         # a private CA (PEM) to verify the provider's TLS certificate
                                      # against; default: SSL_CERT_FILE, else the system's CAs
    backoff_base = "1s"
    backoff_max = "30s"
    require_request_id = false        # a 200 without request_id is retried instead of accepted
    key_format = "auto"               # "id:secret": every key must be `<access_key_id>:<secret>`;
                                      # auto: refuse a list mixing that form with plain keys; any: no check

    drop_unsupported = false          # remove parameters the model does not support instead of failing
    fallback_models = ["fast"]        # like --fallback: tried in order for any model that is gone
    grace = "30s"                     # after a stop, requests in flight get this long to finish
    max_duration = "6h"               # or until = "07:00" (local time, next occurrence)
    max_cost = 25.0                   # USD per run, from catalogue prices
    max_tokens = 5000000              # tokens per run
    wait_for_keys = true              # false: exit 3 at once when other runners hold every key
    via = "live"                      # or "batch-api": through the provider's Batch API (half price)
    batch_discount = 0.5              # a batch's share of the live price
    batch_max_requests = 50000        # per provider batch (one model and endpoint per batch)
    batch_max_bytes = 200000000
    poll_interval = "30s"             # how often --wait polls the provider's batches
    metrics_file = "batchrun.prom"    # Prometheus metrics, rewritten every 15 s and at exit, for
                                      # node_exporter's textfile collector (relative to this file)

    [limits.k1]                       # per-key overrides, by key id
    rate_limit = "20/1s"

    [fallback]                        # per model: what to send when it is not in the catalogue
    "llama-3.1-70b" = ["llama-3.3-70b", "reasoning"]
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# resolve_db and read_config_file are re-exported: the file is part of the settings
from batchrun.configfile import DEFAULT_DB, read_config_file, resolve_db  # noqa: F401
from batchrun.errors import ConfigError
from batchrun.keys import ApiKey, KeyLimits, check_key_format, parse_keys, read_keys_file
from batchrun.units import Rate, next_occurrence, parse_duration, parse_rate

KEYS_ENV = "BATCHRUN_API_KEYS"

KEY_FORMATS = ("auto", "id:secret", "any")

_LIMIT_KEYS = {"rate_limit", "rpm", "token_limit", "tpm"}


@dataclass(frozen=True)
class Settings:
    db: str = DEFAULT_DB
    base_url: str | None = None
    keys: tuple[ApiKey, ...] = ()
    concurrency: int = 32
    limits: KeyLimits = KeyLimits()
    per_key_limits: dict[str, KeyLimits] = field(default_factory=dict)
    max_attempts: int = 5
    transient_patience: float = 600.0
    request_timeout: float = 600.0
    #: how long the start-up `GET /models` is retried through timeouts, resets and 5xx
    probe_patience: float = 60.0
    #: --ca-bundle / BATCHRUN_CA_BUNDLE / `ca_bundle`, else SSL_CERT_FILE: the PEM file TLS is verified against
    ca_bundle: str | None = None
    lease: float = 60.0
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    require_request_id: bool = False
    key_format: str = "auto"
    drop_unsupported: bool = False
    #: --fallback (repeatable) or `fallback_models`: tried in order for any model the catalogue lacks
    fallback_models: tuple[str, ...] = ()
    #: `[fallback]` in batchrun.toml: model -> what to try instead, in order
    fallback_table: dict[str, tuple[str, ...]] = field(default_factory=dict)
    grace: float = 30.0
    #: epoch seconds by which a run must end (from --max-duration or --until), None for no deadline
    deadline: float | None = None
    max_cost: float | None = None
    max_tokens: int | None = None
    wait_for_keys: bool = True
    via: str = "live"
    batch_discount: float = 0.5
    batch_max_requests: int = 50_000
    batch_max_bytes: int = 200 * 1024 * 1024
    poll_interval: float = 30.0
    #: --metrics-file or `metrics_file`: Prometheus text exposition file (`metrics.py`), None for none
    metrics_file: str | None = None

    def __repr__(self) -> str:
        keys = ", ".join(key.id for key in self.keys)
        return (f"Settings(db={self.db!r}, base_url={self.base_url!r}, keys=[{keys}], "
                f"concurrency={self.concurrency}, limits={self.limits}, max_attempts={self.max_attempts})")

    def shown(self) -> dict[str, str]:
        """The settings a run goes by, for its report: keys by id, URLs without credentials; never a secret."""
        from urllib.parse import urlsplit

        def bare(url: str | None) -> str:
            if not url:
                return ""
            parts = urlsplit(url)
            return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl() if "@" in parts.netloc else url

        def limits(limits: KeyLimits) -> str:
            shown = [f"{limits.rate} requests" if limits.rate else "", f"{limits.tokens} tokens" if limits.tokens else ""]
            return ", ".join(part for part in shown if part) or "none"

        options = {
            "base_url": bare(self.base_url), "db": bare(self.db), "keys": ", ".join(key.id for key in self.keys),
            "concurrency": str(self.concurrency), "limits": limits(self.limits),
            **{f"limits[{key}]": limits(value) for key, value in sorted(self.per_key_limits.items())},
            "max_attempts": str(self.max_attempts), "transient_patience": f"{self.transient_patience:g} s",
            "request_timeout": f"{self.request_timeout:g} s", "via": self.via,
        }
        optional = {
            "fallback": ", ".join(self.fallback_models), "drop_unsupported": "yes" if self.drop_unsupported else "",
            "max_cost": f"${self.max_cost:g}" if self.max_cost is not None else "",
            "max_tokens": f"{self.max_tokens:,}" if self.max_tokens is not None else "",
            "deadline": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.deadline)) if self.deadline else "",
            "ca_bundle": self.ca_bundle or "",
        }
        return {**options, **{name: value for name, value in optional.items() if value}}

    def require_provider(self) -> None:
        if not self.base_url:
            raise ConfigError("no provider: pass --base-url URL or set BATCHRUN_BASE_URL "
                              "(e.g. https://api.privatemind.com/v1, or http://127.0.0.1:8787/v1 for "
                              "`batchrun simulate`)")
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"--base-url {self.base_url!r} must start with http:// or https://")
        if not self.keys:
            raise ConfigError(f"no API keys: set {KEYS_ENV} (comma- or newline-separated) or pass "
                              "--keys-file PATH (one key a line)")
        check_key_format(self.keys, self.key_format)


def build_settings(flags: dict[str, Any], config_path: str | None, environ: dict[str, str] | None = None,
                   now: float | None = None) -> Settings:
    """Settings from click's values (flag or env, None when unset), then the file, then defaults."""
    now = time.time() if now is None else now
    environ = dict(os.environ if environ is None else environ)
    data, source = read_config_file(config_path)
    where = source or "config"

    def pick(name: str) -> Any:
        value = flags.get(name)
        return value if value is not None else data.get(name)

    keys = _load_keys(flags.get("keys_file"), environ, data, where)
    rate = _rate(flags, data, "rate_limit", "rpm", where)
    tokens = _rate(flags, data, "token_limit", "tpm", where)
    per_key: dict[str, KeyLimits] = {}
    limits_table = data.get("limits", {})
    if not isinstance(limits_table, dict):
        raise ConfigError(f"{where}: [limits] must be a table of key ids")
    for key_name, table in limits_table.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: [limits.{key_name}] must be a table")
        unknown = sorted(set(table) - _LIMIT_KEYS)
        if unknown:
            raise ConfigError(f"{where}: [limits.{key_name}]: unknown setting(s): {', '.join(unknown)} "
                              f"(known: {', '.join(sorted(_LIMIT_KEYS))})")
        per_key[key_name] = KeyLimits(
            rate=_rate({}, table, "rate_limit", "rpm", f"{where} [limits.{key_name}]") or rate,
            tokens=_rate({}, table, "token_limit", "tpm", f"{where} [limits.{key_name}]") or tokens,
        )
    settings = Settings(
        db=str(pick("db") or DEFAULT_DB),
        base_url=(str(pick("base_url")).rstrip("/") if pick("base_url") else None),
        keys=tuple(keys),
        concurrency=_positive_int(pick("concurrency"), 32, "concurrency"),
        limits=KeyLimits(rate, tokens),
        per_key_limits=per_key,
        max_attempts=_positive_int(pick("max_attempts"), 5, "max_attempts"),
        transient_patience=_duration(pick("transient_patience"), 600.0, "transient_patience"),
        request_timeout=_duration(pick("request_timeout"), 600.0, "request_timeout"),
        probe_patience=_duration(pick("probe_patience"), 60.0, "probe_patience"),
        ca_bundle=_ca_bundle(flags.get("ca_bundle"), data.get("ca_bundle"), environ, where),
        lease=_duration(pick("lease"), 60.0, "lease"),
        backoff_base=_duration(pick("backoff_base"), 1.0, "backoff_base"),
        backoff_max=_duration(pick("backoff_max"), 30.0, "backoff_max"),
        require_request_id=_flag(pick("require_request_id"), "require_request_id"),
        key_format=_choice(pick("key_format"), KEY_FORMATS, "key_format"),
        drop_unsupported=_flag(pick("drop_unsupported"), "drop_unsupported"),
        fallback_models=tuple(flags.get("fallback") or ()) or _names(data.get("fallback_models"),
                                                                       f"{where}: fallback_models"),
        fallback_table=_fallback_table(data.get("fallback"), where),
        grace=_duration(pick("grace"), 30.0, "grace"),
        deadline=_deadline(pick("max_duration"), pick("until"), now),
        max_cost=_positive_float(pick("max_cost"), "max_cost"),
        max_tokens=_positive_int(pick("max_tokens"), 0, "max_tokens") if pick("max_tokens") is not None else None,
        wait_for_keys=not flags.get("no_wait") and data.get("wait_for_keys", True) is not False,
        via=_choice(pick("via"), VIA_CHOICES, "via"),
        batch_discount=_share(pick("batch_discount"), "batch_discount"),
        batch_max_requests=_positive_int(pick("batch_max_requests"), 50_000, "batch_max_requests"),
        batch_max_bytes=_positive_int(pick("batch_max_bytes"), 200 * 1024 * 1024, "batch_max_bytes"),
        poll_interval=_duration(pick("poll_interval"), 30.0, "poll_interval"),
        metrics_file=_file_path(flags.get("metrics_file"), data.get("metrics_file"), where, "metrics_file"),
    )
    if settings.lease < 2:
        raise ConfigError("lease must be at least 2s")
    return settings


def _load_keys(keys_file: str | None, environ: dict[str, str], data: dict[str, Any], where: str) -> list[ApiKey]:
    if keys_file:
        return read_keys_file(keys_file)
    if environ.get(KEYS_ENV, "").strip():
        return parse_keys(environ[KEYS_ENV], KEYS_ENV)
    if data.get("keys_file"):
        # relative to the config file, not to wherever cron happens to start us
        return read_keys_file(str(Path(where).parent / str(data["keys_file"])))
    if data.get("api_keys"):
        raw = data["api_keys"]
        text = "\n".join(raw) if isinstance(raw, list) else str(raw)
        return parse_keys(text, f"{where} api_keys")
    return []


def _file_path(flag: Any, value: Any, where: str, name: str) -> str | None:
    """A path from a flag as given; from the config file relative to its folder, like keys_file."""
    if flag:
        return str(flag)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {name} must be a file path")
    return str(Path(where).parent / value)


def _ca_bundle(flag: Any, value: Any, environ: dict[str, str], where: str) -> str | None:
    """The CA bundle's path: the flag (or BATCHRUN_CA_BUNDLE), the config file's, else SSL_CERT_FILE
    (as OpenSSL reads it: when it names no file, the system's CAs)."""
    path = _file_path(flag, value, where, "ca_bundle")
    if path is None:
        cert_file = environ.get("SSL_CERT_FILE")
        return cert_file if cert_file and os.path.isfile(cert_file) else None
    if not os.path.isfile(path):
        raise ConfigError(f"CA bundle {path} is not a file (--ca-bundle, BATCHRUN_CA_BUNDLE or ca_bundle)")
    return path


def _rate(flags: dict[str, Any], data: dict[str, Any], rate_name: str, per_minute_name: str, where: str) -> Rate | None:
    for source, label in ((flags, "--"), (data, f"{where}: ")):
        rate_value, minute_value = source.get(rate_name), source.get(per_minute_name)
        if rate_value is not None and minute_value is not None:
            raise ConfigError(f"{label}{rate_name} and {per_minute_name} say the same thing: give one")
        if rate_value is not None:
            return parse_rate(str(rate_value), field=rate_name)
        if minute_value is not None:
            return Rate(_positive_int(minute_value, 0, per_minute_name), 60.0)
    return None


def _positive_int(value: Any, default: int, name: str) -> int:
    if value is None:
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: {value!r} is not a whole number") from None
    if number <= 0 or isinstance(value, bool):
        raise ConfigError(f"{name}: must be a positive whole number, not {value!r}")
    return number


def _names(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: must be a list of model names, e.g. [\"fast\"]")
    return tuple(value)


def _fallback_table(value: Any, where: str) -> dict[str, tuple[str, ...]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [fallback] must be a table of model = [\"fallback\", ...]")
    return {str(model): _names(chain, f"{where}: [fallback] {model}") for model, chain in value.items()}


def _deadline(max_duration: Any, until: Any, now: float) -> float | None:
    if max_duration is not None and until is not None:
        raise ConfigError("max_duration and until both set a deadline: give one")
    if max_duration is not None:
        return now + parse_duration(max_duration, field="max_duration")
    if until is not None:
        return next_occurrence(str(until), now)
    return None


def _positive_float(value: Any, name: str) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: {value!r} is not a number") from None
    if not number > 0 or isinstance(value, bool):
        raise ConfigError(f"{name}: must be a positive number, not {value!r}")
    return number


def _flag(value: Any, name: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ConfigError(f"{name}: must be true or false, not {value!r}")
    return value


#: how `run` sends the queue: live requests, or the provider's Batch API
VIA_CHOICES = ("live", "batch-api")


def _share(value: Any, name: str) -> float:
    """A price share in (0, 1]; 0.5 by default (the OpenAI Batch API's discount)."""
    if value is None:
        return 0.5
    try:
        share = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected a number in (0, 1], not {value!r}") from None
    if not 0 < share <= 1:
        raise ConfigError(f"{name}: expected a number in (0, 1], not {value!r}")
    return share


def _choice(value: Any, choices: tuple[str, ...], name: str) -> str:
    if value is None:
        return choices[0]
    if value not in choices:
        raise ConfigError(f"{name}: must be one of {', '.join(choices)}, not {value!r}")
    return str(value)


def _duration(value: Any, default: float, name: str) -> float:
    return default if value is None else parse_duration(value, field=name)
