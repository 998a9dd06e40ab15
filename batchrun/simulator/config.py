"""The simulator's configuration: how it behaves, and the live changes of `POST /_sim/config`.

Handlers read `SimulatorConfig` on every request, so a test or a benchmark can change a running
simulator (remove a model, revoke a key, raise the fail rate) and see the effect on the next request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from batchrun.errors import ConfigError
from batchrun.simulator.catalog import ModelSpec, default_aliases, default_models
from batchrun.units import Rate, parse_duration, parse_rate

__all__ = ["SimulatorConfig", "apply_config_changes"]


@dataclass
class SimulatorConfig:
    """How the simulator behaves. Handlers read it on every request, so changing it mid-run works."""

    models: list[ModelSpec] = field(default_factory=default_models)
    aliases: dict[str, str] = field(default_factory=default_aliases)
    latency: float = 0.0  # seconds before answering a completion
    latency_jitter: float = 0.0  # plus uniform(0, jitter)
    fail_rate: float = 0.0  # probability of 503 no nodes available
    reset_rate: float = 0.0  # probability the connection is dropped with no response
    rate_limit: Rate | None = None  # per key sliding window of requests
    # per key sliding window of tokens: prompt + completion tokens of the answer the simulator gives
    token_limit: Rate | None = None
    random_429_rate: float = 0.0  # probability of a 429 model_overloaded, before (and outside) the limits
    random_429_retry_after: float = 1.0  # its Retry-After, in seconds (fractions allowed)
    revoked: set[str] = field(default_factory=set)  # key ids answered 401 key_revoked
    expired: set[str] = field(default_factory=set)  # key ids answered 401 key_expired
    accepted_keys: set[str] | None = None  # if set, any other key id is 401 invalid_api_key
    require_key_format: bool = False  # tokens must look like `id:secret`
    key_budgets: dict[str, int] = field(default_factory=dict)  # key id -> successful completions allowed
    org_budget: int | None = None  # successful completions allowed across all keys
    revoke_after: dict[str, int] = field(default_factory=dict)  # key id -> requests before revocation
    forbidden: dict[str, set[str]] = field(default_factory=dict)  # key id -> model ids it may not use
    unknown_model_status: int = 404  # 404 (Pinaivu) or 400 (PrivateMind)
    # how the next GET /models requests fail, one entry each, in order (0: the connection is dropped)
    models_failures: list[int] = field(default_factory=list)
    omit_request_id: bool = False
    # False: no x-ratelimit-* headers (providers that send none); the limits still hold, with 429s
    rate_headers: bool = True
    # False: the catalogue leaves out context length, parameters, capabilities and prices (as some real
    # providers do) while the models still enforce them, so clients meet the provider's own 400s
    publish_metadata: bool = True
    seed: int | None = None
    # the Files and Batches API (files.py, batches.py); each batch reads these when it is created
    batch_processing_seconds: float = 1.0  # from created to completed: validating, in_progress, finalizing
    batch_expire_after: float | None = None  # seconds after creation an unfinished batch expires (None: 24 h)
    batch_line_fail_rate: float = 0.0  # probability a batch line is answered 500 server_error
    batch_max_file_bytes: int = 200_000_000  # an upload larger than this is a 400 (OpenAI: 200 MB)
    batch_max_requests: int = 50_000  # a batch file with more lines fails validation (OpenAI: 50,000)


def apply_config_changes(config: SimulatorConfig, changes: Any) -> None:
    """Apply a `POST /_sim/config` object to `config`: all of it, or nothing if any part is bad.

    Keys: remove_models, add_models, aliases (merged; null removes one), revoke, expire, fail_rate,
    reset_rate, random_429_rate, random_429_retry_after, latency, latency_jitter, rate_limit and
    token_limit ("20/1s" or null), org_budget, key_budgets (merged), batch_processing_seconds,
    batch_expire_after (null: none), batch_line_fail_rate, batch_max_file_bytes, batch_max_requests.
    Raises ValueError naming the problem.
    """
    if not isinstance(changes, dict):
        raise ValueError("the body must be a JSON object")
    unknown = sorted(set(changes) - set(_CONFIG_CHANGES))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}; known: {sorted(_CONFIG_CHANGES)}")
    # validate everything first so a bad key cannot leave a half-applied change behind
    steps = [_CONFIG_CHANGES[name](value) for name, value in changes.items()]
    for step in steps:
        step(config)


_Step = Callable[[SimulatorConfig], None]


def _remove_models(value: Any) -> _Step:
    ids = set(_string_list(value, "remove_models"))

    def step(config: SimulatorConfig) -> None:
        config.models[:] = [model for model in config.models if model.id not in ids]

    return step


def _add_models(value: Any) -> _Step:
    if not isinstance(value, list):
        raise ValueError("add_models must be a list of model objects")
    specs = [ModelSpec.from_dict(item) for item in value]

    def step(config: SimulatorConfig) -> None:
        new_ids = {spec.id for spec in specs}
        config.models[:] = [model for model in config.models if model.id not in new_ids] + specs

    return step


def _aliases(value: Any) -> _Step:
    if not isinstance(value, dict) or not all(v is None or isinstance(v, str) for v in value.values()):
        raise ValueError("aliases must be an object of alias -> model id (null removes an alias)")

    def step(config: SimulatorConfig) -> None:
        for alias, target in value.items():
            if target is None:
                config.aliases.pop(alias, None)
            else:
                config.aliases[alias] = target

    return step


def _add_to(attribute: str) -> Callable[[Any], _Step]:
    def parse(value: Any) -> _Step:
        ids = _string_list(value, attribute)
        return lambda config: getattr(config, attribute).update(ids)

    return parse


def _probability(attribute: str) -> Callable[[Any], _Step]:
    def parse(value: Any) -> _Step:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"{attribute} must be a number between 0 and 1")
        return lambda config: setattr(config, attribute, float(value))

    return parse


def _seconds(attribute: str) -> Callable[[Any], _Step]:
    def parse(value: Any) -> _Step:
        try:
            seconds = parse_duration(value, field=attribute)
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return lambda config: setattr(config, attribute, seconds)

    return parse


def _rate(attribute: str) -> Callable[[Any], _Step]:
    def parse(value: Any) -> _Step:
        try:
            rate = None if value is None else parse_rate(str(value), field=attribute)
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return lambda config: setattr(config, attribute, rate)

    return parse


def _org_budget(value: Any) -> _Step:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError("org_budget must be a non-negative integer or null")
    return lambda config: setattr(config, "org_budget", value)


def _key_budgets(value: Any) -> _Step:
    if not isinstance(value, dict) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value.values()
    ):
        raise ValueError("key_budgets must be an object of key id -> non-negative integer")
    return lambda config: config.key_budgets.update(value)


def _optional_seconds(attribute: str) -> Callable[[Any], _Step]:
    def parse(value: Any) -> _Step:
        if value is None:
            return lambda config: setattr(config, attribute, None)
        return _seconds(attribute)(value)

    return parse


def _positive_int(attribute: str) -> Callable[[Any], _Step]:
    def parse(value: Any) -> _Step:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{attribute} must be a positive integer")
        return lambda config: setattr(config, attribute, value)

    return parse


def _string_list(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{name} must be a list of strings")
    return value


_CONFIG_CHANGES: dict[str, Callable[[Any], _Step]] = {
    "remove_models": _remove_models,
    "add_models": _add_models,
    "aliases": _aliases,
    "revoke": _add_to("revoked"),
    "expire": _add_to("expired"),
    "fail_rate": _probability("fail_rate"),
    "reset_rate": _probability("reset_rate"),
    "random_429_rate": _probability("random_429_rate"),
    "random_429_retry_after": _seconds("random_429_retry_after"),
    "latency": _seconds("latency"),
    "latency_jitter": _seconds("latency_jitter"),
    "rate_limit": _rate("rate_limit"),
    "token_limit": _rate("token_limit"),
    "org_budget": _org_budget,
    "key_budgets": _key_budgets,
    "batch_processing_seconds": _seconds("batch_processing_seconds"),
    "batch_expire_after": _optional_seconds("batch_expire_after"),
    "batch_line_fail_rate": _probability("batch_line_fail_rate"),
    "batch_max_file_bytes": _positive_int("batch_max_file_bytes"),
    "batch_max_requests": _positive_int("batch_max_requests"),
}
