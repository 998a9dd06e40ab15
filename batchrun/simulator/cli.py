"""`batchrun simulate`: run the provider simulator from the command line.

Only parses options into a `SimulatorConfig` and calls `batchrun.simulator.serve`; the main CLI
registers `simulate_command` in its group.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from batchrun.errors import ConfigError
from batchrun.units import Rate, parse_duration, parse_rate

FC = TypeVar("FC", bound=Callable[..., Any])


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float:
    try:
        return parse_duration(value if value is not None else 0, field=f"--{param.name}".replace("_", "-"))
    except ConfigError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from exc


def _optional_duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    return None if value is None else _duration(ctx, param, value)


def _rate(ctx: click.Context, param: click.Parameter, value: str | None) -> Rate | None:
    if value is None:
        return None
    try:
        return parse_rate(value, field=f"--{param.name}".replace("_", "-"))
    except ConfigError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from exc


def _budgets(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> dict[str, int]:
    budgets: dict[str, int] = {}
    for value in values:
        key, _, count = value.rpartition("=")
        if not key or not count.isdigit():
            raise click.BadParameter(
                f"{value!r} is not KEYID=N with N a whole number >= 0 (e.g. team-a=100)", ctx=ctx, param=param
            )
        budgets[key] = int(count)
    return budgets


def _option(flag: str, **kwargs: Any) -> Callable[[FC], FC]:
    """A `--flag` option that can also come from `BATCHRUN_SIM_FLAG`, shown in --help."""
    envvar = "BATCHRUN_SIM_" + flag.lstrip("-").replace("-", "_").upper()
    return click.option(flag, envvar=envvar, show_envvar=True, **kwargs)


@click.command("simulate")
@_option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@_option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8787,
    show_default=True,
    help="Port to listen on; 0 picks a free one (the listening line shows which).",
)
@_option("--latency", default="0", callback=_duration, help="Time before each request is answered, e.g. 50ms.")
@_option("--latency-jitter", default="0", callback=_duration, help="Extra latency, uniform between 0 and this.")
@_option("--fail-rate", type=click.FloatRange(0, 1), default=0.0, help="Probability of a 503 no_nodes_available.")
@_option("--reset-rate", type=click.FloatRange(0, 1), default=0.0, help="Probability a connection is dropped.")
@_option("--rate-limit", metavar="N/DURATION", callback=_rate, help="Per-key sliding window, e.g. 20/1s or 600/1m.")
@_option(
    "--token-limit",
    metavar="N/DURATION",
    callback=_rate,
    help="Per-key sliding window of tokens (prompt + completion), e.g. 10000/1m.",
)
@_option(
    "--rate-limited-rate",
    metavar="P",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Probability of a 429 model_overloaded that no client rate causes (it uses no quota).",
)
@_option(
    "--rate-limited-retry-after",
    metavar="SECONDS",
    default="1",
    callback=_duration,
    show_default=True,
    help="The Retry-After of those random 429s, e.g. 1, 0.5 or 250ms.",
)
@_option("--revoked", metavar="KEYID", multiple=True, help="Answer this key id 401 key_revoked. Repeatable.")
@_option("--expired", metavar="KEYID", multiple=True, help="Answer this key id 401 key_expired. Repeatable.")
@_option(
    "--budget",
    metavar="KEYID=N",
    multiple=True,
    callback=_budgets,
    help="The key gets 402 after N successful answers (any endpoint). Repeatable.",
)
@_option(
    "--org-budget",
    type=click.IntRange(min=0),
    metavar="N",
    help="Every key gets 402 after N successful answers in total.",
)
@_option(
    "--unknown-model-status",
    type=click.Choice(["404", "400"]),
    default="404",
    show_default=True,
    help="Status for an unknown model: 404 (Pinaivu) or 400 (PrivateMind).",
)
@_option("--omit-request-id", is_flag=True, help="Leave request_id out of successful responses.")
@_option("--no-rate-headers", is_flag=True,
         help="Send no x-ratelimit-* headers (the limits still hold): a client must learn them from 429s.")
@_option("--seed", type=int, help="Seed the random faults and jitter, to replay a run.")
@_option("--require-key-format", is_flag=True, help="Answer keys that are not id:secret with 401.")
@_option(
    "--batch-processing-seconds",
    metavar="DURATION",
    default="1s",
    callback=_duration,
    show_default=True,
    help="How long a batch takes from validating to completed; its lines are answered one by one meanwhile.",
)
@_option(
    "--batch-expire-after",
    metavar="DURATION",
    callback=_optional_duration,
    help="A batch not finished this long after its creation expires (default: the 24h window).",
)
@_option(
    "--batch-line-fail-rate",
    metavar="P",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Probability a batch line is answered 500 server_error (it goes to the error file).",
)
@_option(
    "--batch-max-file-bytes",
    metavar="N",
    type=click.IntRange(min=1),
    default=200_000_000,
    show_default=True,
    help="A larger upload to POST /files is a 400 file_too_large.",
)
@_option(
    "--batch-max-requests",
    metavar="N",
    type=click.IntRange(min=1),
    default=50_000,
    show_default=True,
    help="A batch input file with more lines fails validation (too_many_tasks).",
)
def simulate_command(
    host: str,
    port: int,
    latency: float,
    latency_jitter: float,
    fail_rate: float,
    reset_rate: float,
    rate_limit: Rate | None,
    token_limit: Rate | None,
    rate_limited_rate: float,
    rate_limited_retry_after: float,
    revoked: tuple[str, ...],
    expired: tuple[str, ...],
    budget: dict[str, int],
    org_budget: int | None,
    unknown_model_status: str,
    omit_request_id: bool,
    no_rate_headers: bool,
    seed: int | None,
    require_key_format: bool,
    batch_processing_seconds: float,
    batch_expire_after: float | None,
    batch_line_fail_rate: float,
    batch_max_file_bytes: int,
    batch_max_requests: int,
) -> None:
    """Run an offline OpenAI-compatible provider to rehearse a job file against.

    \b
    It serves, under <base URL> = http://HOST:PORT/v1:
      POST /chat/completions  POST /completions  POST /responses
                              sim-small, sim-large, sim-mini (aliases fast, reasoning);
                              the answer is `echo: <last user message or prompt>`
      POST /embeddings        sim-embed (alias embed): one deterministic unit vector per input
      POST /moderations       sim-moderation: flags a category its input names ("violence")
      GET  /models            the catalogue
      POST /files  GET /files/ID[/content]  DELETE /files/ID
                              the Files API: batch input files (purpose=batch) and outputs
      POST /batches  GET /batches[/ID]  POST /batches/ID/cancel
                              the Batch API: a batch of any endpoint above runs in
                              --batch-processing-seconds, validating, in_progress (lines
                              answered one by one), finalizing, completed; it can be
                              cancelled, expire (--batch-expire-after) or fail lines

    Every endpoint fails on demand the way real providers do (the options below). It prints one
    line with its base URL, then serves until Ctrl-C or SIGTERM.

    Example, a flaky, rate-limited provider on a free port:

        batchrun simulate --port 0 --latency 50ms --fail-rate 0.05 --rate-limit 20/1s --seed 7

    Example, a provider that also limits tokens and sheds load with random 429s:

        batchrun simulate --port 0 --token-limit 10000/1m --rate-limited-rate 0.05

    Example, batches that take 30 s, fail 2% of their lines and expire after 20 s:

    \b
        batchrun simulate --port 0 --batch-processing-seconds 30s \\
            --batch-line-fail-rate 0.02 --batch-expire-after 20s
    """
    # imported here: `batchrun status` should not pay for loading aiohttp's server
    from batchrun.simulator import SimulatorConfig, serve

    config = SimulatorConfig(
        latency=latency,
        latency_jitter=latency_jitter,
        fail_rate=fail_rate,
        reset_rate=reset_rate,
        rate_limit=rate_limit,
        token_limit=token_limit,
        random_429_rate=rate_limited_rate,
        random_429_retry_after=rate_limited_retry_after,
        revoked=set(revoked),
        expired=set(expired),
        key_budgets=budget,
        org_budget=org_budget,
        unknown_model_status=int(unknown_model_status),
        omit_request_id=omit_request_id,
        rate_headers=not no_rate_headers,
        seed=seed,
        require_key_format=require_key_format,
        batch_processing_seconds=batch_processing_seconds,
        batch_expire_after=batch_expire_after,
        batch_line_fail_rate=batch_line_fail_rate,
        batch_max_file_bytes=batch_max_file_bytes,
        batch_max_requests=batch_max_requests,
    )
    try:
        serve(config, host, port)
    except ConfigError as exc:  # the address cannot be listened on
        raise click.BadParameter(str(exc), param_hint="'--host' / '--port'") from exc
