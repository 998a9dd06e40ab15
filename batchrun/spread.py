"""`run --processes N`: one run spread over N `batchrun run` processes, so that it uses N cores.

One event loop is the bound of a fast run: at thousands of answers a second its core is full (bench 1–2).
Several runners on one queue already share it safely — claims are leases, and each key is held by one
runner at a time (`keyshare`), so no key's limits are ever split — so a run of N processes is N ordinary
runners started together, each with `--processes 1`, no progress bar, its share of the keys from its
first lease on (before the others have registered, the first would take them all) and of what the run was
given: the concurrency and the spend caps (`--max-cost`, `--max-tokens`) are divided between them, so the
whole run stays within them. A process needs a key of its own: with fewer usable keys than N, as many
processes as keys.

SIGINT and SIGTERM go to every process once (they run in sessions of their own, so a terminal's Ctrl-C
is not delivered twice); a second signal stops them at once, as for a single run. The run's exit code is
the worst of theirs (5, 2, 4, 3, 1, 0, in that order; a code outside these — a crash, a process killed —
first), except that when the queue holds no work any more, the run finished: 1 if a process saw jobs fail
for good, else 0 (a process whose keys were all revoked says 4 even when another one finished its jobs).
"""

from __future__ import annotations

import logging
import math
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType

from batchrun.config import Settings
from batchrun.errors import ConfigError
from batchrun.exitcodes import EXIT_MEANINGS
from batchrun.store import Store

__all__ = ["Share", "combined_exit_code", "process_count", "run_processes", "shares", "spread_run"]

log = logging.getLogger(__name__)

#: exit codes from the worst to the best (`exitcodes.EXIT_MEANINGS`)
_WORST_FIRST = (5, 2, 4, 3, 1, 0)


@dataclass(frozen=True, slots=True)
class Share:
    """What one process of the run is given."""

    concurrency: int
    max_cost: float | None
    max_tokens: int | None
    of: int = 1  # processes in the run

    def arguments(self) -> list[str]:
        """Options appended to the run's own (click keeps the last value of an option given twice)."""
        args = ["--processes", "1", "--started-with", str(self.of), "--no-progress",
                "--concurrency", str(self.concurrency)]
        if self.max_cost is not None:
            args += ["--max-cost", repr(self.max_cost)]
        if self.max_tokens is not None:
            args += ["--max-tokens", str(self.max_tokens)]
        return args


def process_count(asked: int, usable_keys: int, warn: Callable[[str], None]) -> int:
    """The processes to start: `asked`, but no more than there are usable keys."""
    if asked < 1:
        raise ConfigError(f"--processes must be at least 1, not {asked}")
    if 1 < usable_keys < asked:
        warn(f"--processes {asked}, but only {usable_keys} usable keys: a process needs a key of its own; "
             f"starting {usable_keys}")
        return usable_keys
    if usable_keys <= 1 < asked:
        warn(f"--processes {asked}, but only one usable key: a process needs a key of its own; running one")
        return 1
    return asked


def shares(processes: int, concurrency: int, max_cost: float | None, max_tokens: int | None) -> list[Share]:
    """Each process's share: the concurrency split (at least 1 each) and the caps divided, rounding down,
    so that together they never exceed what the run was given."""
    base, extra = divmod(concurrency, processes)
    return [Share(max(1, base + (i < extra)),
                  None if max_cost is None else math.floor(max_cost / processes * 1e6) / 1e6,
                  None if max_tokens is None else max(1, max_tokens // processes), processes)
            for i in range(processes)]


def combined_exit_code(codes: Sequence[int], work_left: bool) -> int:
    """The run's exit code from its processes' (see the module's docstring)."""
    if not work_left and all(code in (0, 1, 3, 4) for code in codes):
        return 1 if 1 in codes else 0
    unknown = [code for code in codes if code not in _WORST_FIRST]  # a crash, a process killed: passed on
    if unknown:
        return max(unknown)
    return next(code for code in _WORST_FIRST if code in codes)


def run_processes(argv: Sequence[str], parts: Sequence[Share]) -> list[int]:
    """Start `python -m batchrun` with `argv` + each share's options, forward SIGINT/SIGTERM to all of
    them, wait for every one; returns their exit codes (a process killed by a signal: 128 + its number)."""
    children: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        for part in parts:
            children.append(subprocess.Popen([sys.executable, "-m", "batchrun", *argv, *part.arguments()],
                                             start_new_session=True))
        codes = []
        for child in children:
            code = child.wait()
            codes.append(128 - code if code < 0 else code)
        return codes
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for child in children:  # the parent failed before its children ended: they go too
            if child.poll() is None:
                child.kill()
                child.wait()


def spread_run(store: Store, settings: Settings, batch: str | None, asked: int, usable_keys: int,
               argv: Sequence[str]) -> tuple[int, str] | None:
    """The run of `argv` (this command's own arguments) over `asked` processes: (exit code, the line that
    says it), or None when one process is all there can be (one usable key), to run in this one."""
    if settings.via == "batch-api":
        raise ConfigError("--processes applies to live runs: --via batch-api sends one file per batch anyway")
    if settings.metrics_file:
        raise ConfigError(f"--processes {asked} cannot keep one metrics file ({settings.metrics_file}) yet: "
                          "run without --metrics-file / metrics_file, or with --processes 1")
    count = process_count(asked, usable_keys, log.warning)
    if count == 1:
        return None
    parts = shares(count, settings.concurrency, settings.max_cost, settings.max_tokens)
    log.info("spreading the run over %d processes, %d requests in flight each", count, parts[0].concurrency)
    codes = run_processes(argv, parts)
    batch_id = store.batch_id(batch) if batch else None
    work_left = not (batch and batch_id is None) and not store.pending(batch_id).empty
    code = combined_exit_code(codes, work_left)
    return code, (f"{count} processes ended with exit codes {', '.join(map(str, codes))}: exit {code} — "
                  f"{EXIT_MEANINGS.get(code, '')}")
