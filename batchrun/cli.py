"""The `batchrun` command: parse options, build objects, call the library, map errors to exit codes.

No business logic lives here. Every `BatchrunError` becomes one line on stderr and its exit code,
in `BatchrunGroup.invoke`. Log handlers are set up here too (in `logsetup`), never by the library.

Start-up time matters (`status` on a large queue, the first request of `run`): this module imports
only what every command needs. The store (SQLAlchemy), the settings (key pool, limiters, asyncio),
the loader, the exporter and the network are imported by the commands that use them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click
import orjson

from batchrun import __version__, eventloop, logsetup
from batchrun.configfile import resolve_db
from batchrun.endpoints import DEFAULT, ENDPOINTS
from batchrun.errors import BatchrunError, ConfigError
from batchrun.exitcodes import EXIT_MEANINGS
from batchrun.simulator.cli import simulate_command
from batchrun.statustext import key_json as _key_json
from batchrun.statustext import when as _when

if TYPE_CHECKING:
    from batchrun.config import Settings
    from batchrun.store import Store
    from batchrun.view import QueueView

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("batchrun")


class BatchrunGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BatchrunError as exc:
            logsetup.report_error(str(exc), exc.exit_code)
            ctx.exit(exc.exit_code)


def db_options(fn: F) -> F:
    fn = click.option("--config", "config_path", envvar="BATCHRUN_CONFIG", show_envvar=True,
                      type=click.Path(dir_okay=False),
                      help="Config file (default: ./batchrun.toml when it exists).")(fn)
    fn = click.option("--db", envvar="BATCHRUN_DB", show_envvar=True,
                      help="Queue database URL. [default: sqlite:///batchrun.db]")(fn)
    return fn


def keys_file_option(fn: F) -> F:
    """The key source a flag gives; `build_settings` falls back to BATCHRUN_API_KEYS, then `keys_file`
    in batchrun.toml. Shared by every command that takes keys (`run`, `models`, `estimate`, `keys`)."""
    return click.option("--keys-file", envvar="BATCHRUN_KEYS_FILE", show_envvar=True,
                        type=click.Path(dir_okay=False),
                        help="API keys, one a line (# comments). Or set BATCHRUN_API_KEYS=k1,k2, or "
                             "keys_file in batchrun.toml.")(fn)


def provider_options(fn: F) -> F:
    fn = keys_file_option(fn)
    fn = click.option("--ca-bundle", envvar="BATCHRUN_CA_BUNDLE", show_envvar=True, type=click.Path(dir_okay=False),
                      help="Verify the provider's TLS certificate against this CA bundle (PEM), e.g. a "
                           "corporate CA. [default: SSL_CERT_FILE, else the system's CAs] The proxy "
                           "variables HTTPS_PROXY, HTTP_PROXY and NO_PROXY are honoured.")(fn)
    fn = click.option("--base-url", envvar="BATCHRUN_BASE_URL", show_envvar=True,
                      help="Provider URL including the version prefix, e.g. https://api.privatemind.com/v1")(fn)
    return fn


def fallback_options(fn: F) -> F:
    fn = click.option("--drop-unsupported", is_flag=True, default=None,
                      help="Remove parameters the model does not support (recorded) instead of failing the job.")(fn)
    fn = click.option("--fallback", multiple=True, metavar="MODEL_OR_ALIAS",
                      help="Send jobs whose model left the catalogue to this one instead; repeatable, "
                           "tried in order (e.g. --fallback fast).")(fn)
    return fn


def _open_store(db: str | None, config_path: str | None) -> Store:
    from batchrun.store import Store

    store = Store.open(resolve_db(db, config_path))
    click.get_current_context().call_on_close(store.close)
    return store


def _open_view(db: str | None, config_path: str | None) -> QueueView:
    """What `status` reads: through the bare sqlite3 driver where it can — importing SQLAlchemy would
    be most of its time on a large queue — else through the store (which also migrates)."""
    from batchrun.view import open_sqlite_view

    url = resolve_db(db, config_path)
    view = open_sqlite_view(url)
    if view is None:
        return _open_store(url, None).view
    click.get_current_context().call_on_close(view.close)
    return view


def _batch_id(store: Store | QueueView, batch: str | None) -> int | None:
    """The id of the batch named on the command line (None for all batches)."""
    if batch is None:
        return None
    found = store.batch_id(batch)
    if found is None:
        raise ConfigError(f"no batch named {batch!r} in {store.url} (see `batchrun status`)")
    return found


@click.group(cls=BatchrunGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="batchrun")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for every request).")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """Run large batches of chat-completion requests against OpenAI-compatible providers.

    \b
      batchrun submit jobs/example.jsonl
      BATCHRUN_API_KEYS=k1:s1,k2:s2 BATCHRUN_BASE_URL=https://api.privatemind.com/v1 batchrun run
      batchrun status
      batchrun export --output results.jsonl --errors errors.jsonl
    """
    logsetup.configure(verbose)
    # The root context closes last, after an error has been reported: the log file gets that line too.
    ctx.call_on_close(logsetup.close)


@cli.command()
@click.argument("file", type=str)
@click.option("--batch", help="Batch name. [default: the file's stem]")
@click.option("--strict", is_flag=True, help="Any bad or conflicting line rejects the whole file.")
@click.option("--estimate", "show_estimate", is_flag=True,
              help="Then print what the batch would cost (see `batchrun estimate`); sends no completion.")
@click.option("--endpoint", "bare_endpoint", type=click.Choice(list(ENDPOINTS)), default=DEFAULT.url,
              show_default=True,
              help="Where lines in bare form (a request body alone) go; a batch-form line's own `url` "
                   "always wins, so one file may mix endpoints.")
@click.option("--workers", type=click.IntRange(min=1), envvar="BATCHRUN_SUBMIT_WORKERS", show_envvar=True,
              help="Processes that parse and insert a big file side by side (1: this process only). "
                   "[default: the usable cores, at most 4]")
@db_options
def submit(file: str, batch: str | None, strict: bool, show_estimate: bool, bare_endpoint: str,
           workers: int | None, db: str | None, config_path: str | None) -> None:
    """Load a JSONL job file (FILE, or - for stdin) into the queue.

    Each line is an OpenAI Batch input line (its `url` picks the endpoint: chat completions,
    embeddings, completions, responses, moderations) or a bare request body (chat completions unless
    --endpoint says otherwise). Bad lines are reported as FILE:LINE: FIELD: reason and skipped; good
    lines load. Resubmitting a file is idempotent.

    \b
    Exit codes: 0 everything loaded or already there; 1 some lines rejected or in
    conflict (with --strict: nothing loaded); 2 usage error or unreadable file.

    \b
      batchrun submit jobs/example.jsonl
      cat jobs.jsonl | batchrun submit - --batch nightly --strict
      batchrun submit corpus.jsonl --endpoint /v1/embeddings
    """
    from batchrun.loader import submit_file

    store = _open_store(db, config_path)
    report = submit_file(store, file, batch, strict, lambda line: click.echo(line, err=True), workers=workers,
                         bare=ENDPOINTS[bare_endpoint])
    if report.strict_rejected:
        click.echo(f"batch {report.batch}: rejected: {report.rejected} bad line(s), {report.conflicts} "
                   "conflict(s); --strict: nothing loaded")
    else:
        click.echo(f"batch {report.batch}: loaded {report.loaded}, duplicates skipped {report.duplicates}, "
                   f"conflicts {report.conflicts}, rejected {report.rejected}")
    if show_estimate and not report.strict_rejected:
        flags = {"db": db, "base_url": os.environ.get("BATCHRUN_BASE_URL"),
                 "keys_file": os.environ.get("BATCHRUN_KEYS_FILE")}
        _print_estimate(store, store.batch_id(report.batch), _settings(flags, config_path))
    if not report.clean:
        sys.exit(1)


_RUN_HELP = "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_MEANINGS.items())


@cli.command(epilog="\b\nExit codes:\n" + _RUN_HELP)
@click.option("--batch", help="Work only this batch. [default: every batch with queued jobs]")
@provider_options
@fallback_options
@click.option("--concurrency", type=int, envvar="BATCHRUN_CONCURRENCY", show_envvar=True,
              help="Requests in flight at most. [default: 32]")
@click.option("--rpm", type=int, help="Requests per minute, per key (= --rate-limit N/1m).")
@click.option("--rate-limit", envvar="BATCHRUN_RATE_LIMIT", show_envvar=True,
              help="Requests per sliding window, per key: N/DURATION, e.g. 20/1s, 600/1m.")
@click.option("--tpm", type=int, help="Tokens per minute, per key (= --token-limit N/1m).")
@click.option("--token-limit", envvar="BATCHRUN_TOKEN_LIMIT", show_envvar=True,
              help="Tokens per sliding window, per key, e.g. 100000/1m.")
@click.option("--max-attempts", type=int, envvar="BATCHRUN_MAX_ATTEMPTS", show_envvar=True,
              help="Attempts per job before a transient failure is final. [default: 5]")
@click.option("--transient-patience", envvar="BATCHRUN_TRANSIENT_PATIENCE", show_envvar=True,
              help="Transient failures (429, 503, resets, timeouts) fail a job only once they have also "
                   "gone on this long, so an outage does not use up its attempts; 0: --max-attempts "
                   "alone. [default: 10m]")
@click.option("--request-timeout", help="Give up on one request after this long. [default: 10m]")
@click.option("--probe-patience", envvar="BATCHRUN_PROBE_PATIENCE", show_envvar=True, metavar="DURATION",
              help="At start, retry GET /models this long through timeouts, resets and 5xx before "
                   "giving up with exit 5 (a 404 exits 5 at once). [default: 1m]")
@click.option("--lease", help="How long a claimed job stays reserved without a heartbeat. [default: 60s]")
@click.option("--backoff-base", help="First retry delay, doubling up to --backoff-max. [default: 1s]")
@click.option("--backoff-max", help="Longest retry delay. [default: 30s]")
@click.option("--require-request-id", is_flag=True, default=None,
              help="Retry a 200 that has no request_id instead of accepting it as unverified.")
@click.option("--key-format", type=click.Choice(["auto", "id:secret", "any"]),
              help="id:secret: refuse, before any request, a key that is not <access_key_id>:<secret>; "
                   "auto (default): refuse a list that mixes that form with plain keys; any: no check.")
@click.option("--grace", envvar="BATCHRUN_GRACE", show_envvar=True,
              help="After SIGINT/SIGTERM, a deadline or a cap: how long requests in flight may take to "
                   "finish before they are abandoned (their jobs stay queued). [default: 30s]")
@click.option("--max-duration", envvar="BATCHRUN_MAX_DURATION", show_envvar=True,
              help="Stop claiming so the run ends within this long (e.g. 6h); exit 3 if work is left.")
@click.option("--until", envvar="BATCHRUN_UNTIL", show_envvar=True, metavar="HH:MM",
              help="Like --max-duration, to a local time of day (next occurrence), e.g. 07:00.")
@click.option("--max-cost", type=float, envvar="BATCHRUN_MAX_COST", show_envvar=True, metavar="USD",
              help="Spend at most this much in this run (catalogue prices; requests in flight reserved).")
@click.option("--max-tokens", type=int, envvar="BATCHRUN_MAX_TOKENS", show_envvar=True,
              help="Use at most this many tokens in this run (requests in flight reserved).")
@click.option("--no-wait", is_flag=True, default=None,
              help="If other runners hold every key, exit 3 at once instead of waiting for one.")
@click.option("--via", type=click.Choice(["live", "batch-api"]), envvar="BATCHRUN_VIA", show_envvar=True,
              help="live: send each job as a request; batch-api: through the provider's Batch API (files + "
                   "batches, about half the price, results within its 24 h window): submits what is queued, "
                   "collects what is ready, exit 3 while batches are at the provider. [default: live]")
@click.option("--wait", "wait_batches", is_flag=True, default=None,
              help="With --via batch-api: poll until every provider batch is collected (or the deadline).")
@click.option("--batch-discount", type=float, help="With --via batch-api: the share of the live price a batch "
                                                   "costs. [default: 0.5]")
@click.option("--batch-max-requests", type=int, help="With --via batch-api: requests per provider batch at most. "
                                                     "[default: 50000]")
@click.option("--batch-max-bytes", type=int, help="With --via batch-api: bytes per provider batch file at most. "
                                                  "[default: 200000000]")
@click.option("--poll-interval", help="With --via batch-api --wait: how often to poll. [default: 30s]")
@click.option("--live-after", metavar="DURATION",
              help="With --via batch-api --wait: after this long, cancel at the provider what it has not "
                   "finished and finish it live. [default: with --max-duration/--until, at three quarters of "
                   "the time to the deadline]")
@click.option("--processes", type=int, envvar="BATCHRUN_PROCESSES", show_envvar=True, metavar="N",
              help="Spread the run over N processes (N cores; each needs a key of its own): the concurrency "
                   "and the spend caps are divided between them. [default: 1]")
@click.option("--started-with", type=int, default=1, hidden=True)  # a process of `--processes N` (spread.py)
@click.option("--no-progress", is_flag=True, help="No progress bar even on a terminal.")
@click.option("--log-file", envvar="BATCHRUN_LOG_FILE", show_envvar=True, type=click.Path(dir_okay=False),
              help="Also append the log (warnings, progress lines, opening and closing summary) to this "
                   "file, each line with its time.")
@click.option("--log-format", type=click.Choice(logsetup.FORMATS), default="text", show_default=True,
              envvar="BATCHRUN_LOG_FORMAT", show_envvar=True,
              help="json: one JSON object per line (time, level, logger, message) on stderr and in --log-file.")
@click.option("--metrics-file", envvar="BATCHRUN_METRICS_FILE", show_envvar=True, type=click.Path(dir_okay=False),
              help="Keep Prometheus metrics (jobs, requests, tokens, cost, exit code) in this file, rewritten "
                   "atomically every 15 s and at exit: for node_exporter's textfile collector (a *.prom file).")
@db_options
def run(batch: str | None, no_progress: bool, log_file: str | None, log_format: str, db: str | None,
        config_path: str | None, **flags: Any) -> None:
    """Work the queue until no job is left: across all keys, within their limits.

    \b
      BATCHRUN_API_KEYS=k1:s1,k2:s2 batchrun run --base-url https://api.privatemind.com/v1
      batchrun run --batch nightly --rate-limit 20/1s --keys-file keys.txt
      batchrun run --no-progress --log-file /var/log/batchrun.log   # from cron
    """
    # First, so that even a configuration error ends up in the log file.
    logsetup.configure(click.get_current_context().find_root().params.get("verbose", 0), log_format, log_file)
    # The network and the event loop are only loaded by the command that needs them.
    import asyncio

    from batchrun.keys import lanes_for
    from batchrun.metrics import record_run
    from batchrun.progress import show_live, show_plain, summary_lines
    from batchrun.provider import ProviderClient
    from batchrun.retry import Backoff, RetryPolicy
    from batchrun.runner import Runner
    from batchrun.runstate import RunOptions

    wait_batches = flags.pop("wait_batches", None)
    processes = flags.pop("processes", None) or 1
    started_with = flags.pop("started_with")
    settings = _settings({**flags, "db": db}, config_path)
    settings.require_provider()
    assert settings.base_url is not None
    store = _open_store(settings.db, None)
    lanes = lanes_for(settings.keys, settings.limits, settings.per_key_limits,
                      {key: (rec.state, rec.reason) for key, rec in store.key_records().items()})
    if processes > 1:
        usable = sum(lane.usable for lane in lanes)
        if (spread_code := _run_spread(store, settings, batch, processes, usable)) is not None:
            sys.exit(spread_code)
    if settings.via == "batch-api":
        code = _run_batch_api(store, settings, batch, bool(wait_batches), flags.get("live_after"))
        if code is not None:
            sys.exit(code)  # else: what the provider did not finish in time is finished live
    options = RunOptions(
        batch=batch, concurrency=settings.concurrency, lease=settings.lease,
        policy=RetryPolicy(settings.max_attempts, Backoff(settings.backoff_base, settings.backoff_max),
                           settings.transient_patience),
        fallbacks=_fallbacks(settings), drop_unsupported=settings.drop_unsupported,
        grace=settings.grace, deadline=settings.deadline, max_cost=settings.max_cost,
        max_tokens=settings.max_tokens, wait_for_keys=settings.wait_for_keys,
        probe_patience=settings.probe_patience,
        described=(("batch", batch or "(all)"), *settings.shown().items()), started_with=started_with,
    )
    live = not no_progress and sys.stderr.isatty()

    async def main() -> int:
        async with ProviderClient(settings.base_url or "", request_timeout=settings.request_timeout,
                                  connections=settings.concurrency + 8, ca_bundle=settings.ca_bundle,
                                  require_request_id=settings.require_request_id) as client:
            runner = Runner(store, client, lanes, options)
            _install_signal_handlers(runner)
            display: asyncio.Task[None] | None = None

            def start_display(stats: Any) -> None:
                nonlocal display
                display = asyncio.create_task(show_live(stats, lanes) if live else show_plain(stats))

            try:
                report = await record_run(settings.metrics_file, settings.db, batch,
                                          lambda: runner.attempt_log.counters,
                                          lambda: runner.run(on_start=start_display))
            finally:
                if display is not None:
                    display.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await display
        lines = summary_lines(report)
        for line in lines:
            click.echo(line)
        logsetup.record_outcome(lines, report.exit_code)
        return report.exit_code

    sys.exit(eventloop.run(main()))


def _run_batch_api(store: Store, settings: Any, batch: str | None, wait: bool, live_after: str | None) -> int | None:
    """`run --via batch-api`: the queue through the provider's Batch API (`batch_dispatch.py`); its
    exit code, or None when what is left must be finished live (the deadline comes)."""
    import asyncio
    import time

    from batchrun.batch_dispatch import BatchApiOptions, BatchDispatcher, live_switch
    from batchrun.units import parse_duration
    from batchrun.provider import ProviderClient
    from batchrun.retry import Backoff, RetryPolicy

    options = BatchApiOptions(
        batch=batch, max_requests=settings.batch_max_requests, max_bytes=settings.batch_max_bytes,
        discount=settings.batch_discount, wait=wait, poll_interval=settings.poll_interval,
        deadline=settings.deadline,
        live_at=live_switch(time.time(), settings.deadline, parse_duration(live_after) if live_after else None)
        if wait else None,
        policy=RetryPolicy(settings.max_attempts, Backoff(settings.backoff_base, settings.backoff_max),
                           settings.transient_patience))

    async def main() -> int | None:
        async with ProviderClient(settings.base_url or "", request_timeout=settings.request_timeout,
                                  ca_bundle=settings.ca_bundle,
                                  require_request_id=settings.require_request_id) as client:
            report = await BatchDispatcher(store, client, list(settings.keys), options).run()
        lines = report.lines()
        for line in lines:
            click.echo(line)
        if report.hand_over:
            return None
        logsetup.record_outcome(lines, report.exit_code)
        return report.exit_code

    return asyncio.run(main())


def _run_spread(store: Store, settings: Settings, batch: str | None, asked: int, usable_keys: int) -> int | None:
    """`run --processes N` (`spread`); None when one process is all there can be: then this one runs."""
    from batchrun.spread import spread_run

    ended = spread_run(store, settings, batch, asked, usable_keys, sys.argv[1:])
    if ended is None:
        return None
    code, message = ended
    click.echo(message)
    logsetup.record_outcome([message], code)
    return code


def _install_signal_handlers(runner: Any) -> None:
    """First SIGINT/SIGTERM: stop claiming, let requests in flight finish. Second: stop now."""
    import asyncio

    loop = asyncio.get_running_loop()
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        if len(received) == 1:
            runner.request_stop(f"interrupted by {signal.Signals(signum).name}")
        else:
            runner.abort()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)


@cli.command()
@click.option("--batch", help="Only this batch.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@db_options
def status(batch: str | None, as_json: bool, db: str | None, config_path: str | None) -> None:
    """Show each batch's jobs by state, tokens used, key states and the last run.

    \b
      batchrun status
      batchrun status --batch example --json
    """
    from batchrun.statustext import show_status

    view = _open_view(db, config_path)
    show_status(view, _batch_id(view, batch), as_json, click.echo)


@cli.command()
@click.option("--batch", help="Only this batch. [default: every batch]")
@click.option("--code", metavar="CODE",
              help="Only jobs that failed with this error code, e.g. no_capacity, rate_limited, "
                   "model_not_found (see `batchrun status`). [default: every failed job]")
@db_options
def retry(batch: str | None, code: str | None, db: str | None, config_path: str | None) -> None:
    """Put failed jobs back in the queue with fresh attempts; the next `batchrun run` sends them again.

    Succeeded results are never touched. Exit 0 also when no failed job matched.

    \b
      batchrun retry --batch nightly --code no_capacity
      batchrun retry && batchrun run
    """
    store = _open_store(db, config_path)
    batch_id = _batch_id(store, batch)
    requeued = store.requeue_failed(batch_id, code)
    scope = (f" (code {code})" if code else "") + (f" in batch {batch}" if batch else "")
    if requeued:
        click.echo(f"re-queued {requeued} failed job(s){scope}; `batchrun run` sends them again")
        return
    failed: dict[str, int] = {}
    for counts in store.counts(batch_id):
        for failed_code, n in counts.failed_by_code.items():
            failed[failed_code] = failed.get(failed_code, 0) + n
    listed = ", ".join(f"{failed_code} {n}" for failed_code, n in sorted(failed.items()))
    click.echo(f"no failed job{scope} to re-queue" + (f" (failed jobs by code: {listed})" if listed else ""))


@cli.command()
@click.option("--batch", help="Only this batch. [default: every batch]")
@provider_options
@db_options
def cancel(batch: str | None, db: str | None, config_path: str | None, **flags: Any) -> None:
    """Cancel the queued jobs: `batchrun run` no longer sends them and `export` leaves them out.

    Finished results stay; jobs in flight in a running `batchrun run` finish. `batchrun retry` does
    not bring cancelled jobs back: submit them again in a new batch. Batches at the provider's Batch
    API (`run --via batch-api`) are cancelled there too, given the provider and its keys: the next
    `run --via batch-api` collects what they finished and cancels the rest.

    \b
      batchrun cancel --batch nightly
    """
    store = _open_store(db, config_path)
    batch_id = _batch_id(store, batch)
    _cancel_provider_batches(store, batch_id, {**flags, "db": db}, config_path)
    cancelled = store.cancel_queued(batch_id)
    scope = f" in batch {batch}" if batch else ""
    in_flight = sum(counts.running for counts in store.counts(batch_id))
    note = f"; {in_flight} job(s) in flight were left to finish" if in_flight else ""
    if cancelled:
        click.echo(f"cancelled {cancelled} queued job(s){scope}; finished results stay{note}")
    else:
        click.echo(f"no queued job to cancel{scope}{note}")


def _cancel_provider_batches(store: Store, batch_id: int | None, flags: dict[str, Any], config_path: str | None) -> None:
    open_batches = store.provider_batches.open(batch_id)
    if not open_batches:
        return
    settings = _settings(flags, config_path)
    if not settings.base_url or not settings.keys:
        jobs = sum(b.requests for b in open_batches)
        click.echo(f"{len(open_batches)} provider batch(es) with {jobs} job(s) are at the provider's Batch API: "
                   "give --base-url and the keys (BATCHRUN_API_KEYS) to cancel them there too")
        return
    import asyncio

    from batchrun.batch_dispatch import cancel_provider_batches
    from batchrun.provider import ProviderClient

    async def main() -> tuple[int, int]:
        async with ProviderClient(settings.base_url or "", ca_bundle=settings.ca_bundle) as client:
            return await cancel_provider_batches(store, client, list(settings.keys), batch_id)

    at_provider, dropped = asyncio.run(main())
    click.echo(f"asked the provider to cancel {at_provider} batch(es) (the next `run --via batch-api` collects "
               f"what they finished and cancels the rest); {dropped} job(s) of batches not yet at the provider "
               "cancelled")


def _settings(flags: dict[str, Any], config_path: str | None) -> Settings:
    """Every setting, from flags, environment and file (imported here: it brings the key pool)."""
    from batchrun.config import build_settings

    return build_settings(flags, config_path)


def _fallbacks(settings: Any) -> Any:
    from batchrun.prechecks import Fallbacks

    return Fallbacks(settings.fallback_models, settings.fallback_table)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@provider_options
@db_options
def models(as_json: bool, db: str | None, config_path: str | None, **flags: Any) -> None:
    """Refresh the provider's model catalogue and show it: ids, aliases, context, capabilities, prices.

    
      batchrun models --base-url https://api.privatemind.com/v1
      batchrun models --json | jq '.[] | select(.alias_for == null) | .id'
    """
    store = _open_store(resolve_db(db, config_path), None)
    catalog = _refresh_catalog(store, _settings({**flags, "db": db}, config_path))
    if as_json:
        click.echo(orjson.dumps([_model_json(m) for m in catalog.entries.values()],
                                option=orjson.OPT_INDENT_2).decode())
        return
    from batchrun.catalog import catalog_lines

    for line in catalog_lines(catalog):
        click.echo(line)


def _refresh_catalog(store: Store, settings: Any) -> Any:
    import asyncio

    from batchrun.provider import ProviderClient

    settings.require_provider()

    async def fetch() -> Any:
        async with ProviderClient(settings.base_url, request_timeout=30, ca_bundle=settings.ca_bundle) as client:
            return await client.fetch_catalog(settings.keys)

    catalog = asyncio.run(fetch())
    store.save_catalog(list(catalog.entries.values()))
    return catalog


def _model_json(model: Any) -> dict[str, Any]:
    return {"id": model.id, "alias_for": model.alias_for, "context_length": model.context_length,
            "supported_parameters": None if model.supported_parameters is None else list(model.supported_parameters),
            "response_format": model.response_format, "prompt_price": model.prompt_price,
            "completion_price": model.completion_price}


@cli.command()
@click.option("--batch", help="Only this batch. [default: every unfinished job]")
@provider_options
@fallback_options
@db_options
def estimate(batch: str | None, db: str | None, config_path: str | None, **flags: Any) -> None:
    """Estimate a batch before spending: requests per model after fallback, tokens, cost, and jobs
    that would fail the prechecks. Sends no completion request (it reads the catalogue only).

    
      batchrun estimate --batch nightly
      batchrun estimate --fallback fast
    """
    store = _open_store(resolve_db(db, config_path), None)
    batch_id = _batch_id(store, batch)
    _print_estimate(store, batch_id, _settings({**flags, "db": db}, config_path))


def _print_estimate(store: Store, batch_id: int | None, settings: Any) -> None:
    from batchrun.estimate import estimate as estimate_jobs
    from batchrun.estimate import estimate_lines

    if settings.base_url and settings.keys:
        catalog = _refresh_catalog(store, settings)
    else:
        catalog = store.load_catalog()
        if not catalog:
            raise ConfigError("no catalogue to estimate with: give --base-url and keys (BATCHRUN_API_KEYS) "
                              "or run `batchrun models` once")
        click.echo(f"(catalogue from {_when(catalog.fetched_at)}, not refreshed: no provider configured)", err=True)
    result = estimate_jobs(store.unfinished_jobs(batch_id), catalog, _fallbacks(settings), settings.drop_unsupported)
    for line in estimate_lines(result):
        click.echo(line)


@cli.command()
@click.option("--batch", help="Only this batch.")
@click.option("--output", "-o", default="-", show_default=True, help="Results file (- for stdout).")
@click.option("--errors", "errors_path", help="Write failed jobs here (OpenAI Batch error format).")
@db_options
def export(batch: str | None, output: str, errors_path: str | None, db: str | None,
           config_path: str | None) -> None:
    """Write succeeded jobs in OpenAI Batch output format, in input order.

    \b
      batchrun export --output results.jsonl --errors errors.jsonl
      batchrun export --batch nightly | jq .response.body.choices[0].message.content
    """
    from batchrun.export import write_lines
    from batchrun.store import FAILED, SUCCEEDED

    store = _open_store(db, config_path)
    batch_id = _batch_id(store, batch)
    results = _export_to(output, lambda out: write_lines(store.export_rows([SUCCEEDED], batch_id), out, False))
    summary = f"exported {results} result(s)" + ("" if output == "-" else f" to {output}")
    if errors_path:
        errors = _export_to(errors_path,
                            lambda out: write_lines(store.export_rows([FAILED], batch_id), out, True))
        summary += f"; {errors} failed job(s) to {errors_path}"
    click.echo(summary, err=True)


@cli.command()
@click.option("--batch", help="Only this batch's attempts (and, with --run last, the last run that worked on it).")
@click.option("--run", "run_id", default="last", show_default=True,
              help="The run: `last` (the last one that sent or refused a request) or its id (`status --json`).")
@click.option("--output", "-o", default="report.html", show_default=True, help="The HTML file (- for stdout).")
@db_options
def report(batch: str | None, run_id: str, output: str, db: str | None, config_path: str | None) -> None:
    """Write one self-contained HTML page about a run: throughput, errors and 429s per key over time,
    latency percentiles, tokens and cost by model and hour, fallbacks, prechecks, top failures.

    It opens without a network (charts are inline SVG) and prints well.

    \b
      batchrun report --output report.html
      batchrun report --batch nightly --run 42 -o night-42.html
    """
    from batchrun.report_html import render

    store = _open_store(db, config_path)
    data = store.report_data(run_id, batch)
    page = render(data).encode()
    _export_to(output, lambda out: out.write(page))
    where = "" if output == "-" else f" to {output}"
    click.echo(f"report of run {data.run.id} ({data.attempts:,} request(s)){where}", err=True)


@cli.command()
@click.option("--older-than", "older_than", required=True, metavar="DURATION",
              help="Drop the attempts and events of runs that ended longer ago than this (e.g. 30d, 12h).")
@db_options
def prune(older_than: str, db: str | None, config_path: str | None) -> None:
    """Drop old runs' attempts (what `batchrun report` is drawn from); jobs and results stay.

    \b
      batchrun prune --older-than 30d
    """
    import time

    from batchrun.units import parse_duration

    age = parse_duration(older_than, field="--older-than")
    store = _open_store(db, config_path)
    attempts, events = store.attempts.prune(time.time() - age)
    click.echo(f"pruned {attempts:,} attempt(s) and {events:,} event(s) of runs that ended more than "
               f"{older_than} ago")


def _export_to(path: str, write: Callable[[Any], int]) -> int:
    from batchrun.export import atomic_output

    if path == "-":
        count = write(sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return count
    try:
        with atomic_output(path) as out:
            return write(out)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@keys_file_option
@db_options
@click.pass_context
def keys(ctx: click.Context, as_json: bool, keys_file: str | None, db: str | None, config_path: str | None) -> None:
    """Show every key: state (active, cooling, revoked, expired, invalid, budget), why and since when,
    the last run's requests, 429s and errors, and its rate limit (configured → adapted).

    Given keys the way `run` takes them (--keys-file, BATCHRUN_API_KEYS or keys_file in batchrun.toml),
    it also lists those no run has used yet, as state new. Keys are shown by their id, never their secret.

    \b
      batchrun keys
      batchrun keys --keys-file keys.txt
      BATCHRUN_API_KEYS=k1:s1,k2:s2 batchrun keys --json
      batchrun keys reset k2
    """
    ctx.obj = (db, config_path)
    if ctx.invoked_subcommand is not None:
        return
    # The keys first: a bad keys file is reported before anything else happens.
    settings = _settings({"keys_file": keys_file}, config_path)
    store = _open_store(db, config_path)
    records = store.key_records()
    unseen = [(key.id, settings.per_key_limits.get(key.id, settings.limits).rate)
              for key in settings.keys if key.id not in records]
    if as_json:
        listed = [_key_json(r) for r in records.values()]
        listed += [{"id": key, "state": "new", "reason": "not used yet", "since": None, "last_run": None,
                    "rate_limit": {"configured": str(rate) if rate else None, "adapted": None}}
                   for key, rate in unseen]
        click.echo(orjson.dumps(listed, option=orjson.OPT_INDENT_2).decode())
        return
    if not records and not unseen:
        click.echo(f"no key is known yet in {store.url} (keys are recorded when a run uses them; "
                   "give --keys-file or BATCHRUN_API_KEYS to list keys no run has used yet)")
        return
    click.echo(f"{'key':<16} {'state':<8} {'since':<20} {'requests':>8} {'429s':>6} {'errors':>6}  "
               f"{'rate (configured → adapted)':<28} reason")
    for record in records.values():
        rate = (record.rate_configured or "none") + (f" → {record.rate_adapted}" if record.rate_adapted else "")
        click.echo(f"{record.id:<16} {record.state:<8} {_when(record.since):<20} {record.requests:>8} "
                   f"{record.rate_limited:>6} {record.errors:>6}  {rate:<28} {record.reason or ''}")
    for key, configured in unseen:
        click.echo(f"{key:<16} {'new':<8} {'-':<20} {'-':>8} {'-':>6} {'-':>6}  {str(configured or 'none'):<28} "
                   "not used yet")


@keys.command("reset")
@click.argument("key_id")
@click.pass_context
def keys_reset(ctx: click.Context, key_id: str) -> None:
    """Put a key back into rotation after you fixed it (e.g. renewed or raised its budget).

    \b
      batchrun keys reset k2
    """
    db, config_path = ctx.obj
    store = _open_store(db, config_path)
    if not store.reset_key(key_id):
        raise BatchrunError(f"no key {key_id!r} is recorded in {store.url} (see `batchrun keys`)")
    click.echo(f"key {key_id} is back in rotation")


@cli.group()
def db() -> None:
    """Manage the queue database."""


@db.command("upgrade")
@db_options
def db_upgrade(db: str | None, config_path: str | None) -> None:
    """Bring the database schema up to date (every command also does this by itself).

    \b
      batchrun db upgrade --db postgresql://user@host/batchrun
    """
    store = _open_store(db, config_path)
    click.echo(f"database {store.url} is up to date")


cli.add_command(simulate_command)


def main() -> None:
    cli(prog_name="batchrun")
