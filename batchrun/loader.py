"""Loading a job file into the queue: stream, validate, insert in chunks, report every problem.

Good lines load even when others are bad; with `strict`, one bad or conflicting line rejects the
whole file and nothing is loaded (everything happens in one transaction that is rolled back).

The file is read in chunks of `CHUNK` raw lines. A chunk that loaded cleanly before (same bytes, same
place, same batch) is counted as duplicates without being parsed again: resubmitting a file, or a file
that grew at its end, costs little more than reading it. When more than `PARALLEL_LINES` lines are left
to load, worker processes parse and insert the chunks side by side, committing in file order
(`parallel_load`); fewer load in this process, which saves starting the workers.

`submit --workers N` (``BATCHRUN_SUBMIT_WORKERS``) sets the worker processes (default one per core this
process may use, at most 4; 1 loads in this process); ``BATCHRUN_SUBMIT_PARALLEL_LINES`` (default
`PARALLEL_LINES`) the size above which they start, mostly for tests.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import itertools
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from batchrun.endpoints import DEFAULT, Endpoint
from batchrun.errors import BatchrunError, ConfigError
from batchrun.jobfile import BadLine, LineChunk, batch_name_for, open_job_file, read_line_chunks
from batchrun.store import JobRows, Store

CHUNK = 5000
#: more lines than this left to load (after the chunks known from an earlier submit) start the workers
PARALLEL_LINES = 20_000


@dataclass(frozen=True, slots=True)
class SubmitReport:
    batch: str
    loaded: int
    duplicates: int
    conflicts: int
    rejected: int
    strict_rejected: bool = False

    @property
    def clean(self) -> bool:
        return not (self.conflicts or self.rejected)


@dataclass(frozen=True, slots=True)
class ChunkOutcome:
    """What loading one chunk did; `problems` are its bad lines and conflicts, in line order."""

    loaded: int
    duplicates: int
    rejected: int
    conflicts: int
    problems: tuple[BadLine, ...]


@dataclass(frozen=True, slots=True)
class _Prepared:
    chunk: LineChunk
    digest: str | None  # of a chunk without bad lines: it is recorded if no line conflicts
    rows: JobRows
    bad: list[BadLine]


class ChunkLoader:
    """Loads the chunks of one file into one batch: `prepare` parses a chunk and builds its rows (no
    database), `commit` inserts them in the caller's transaction; `load` is both, in a transaction of
    its own. In worker processes, each has its own copy."""

    def __init__(self, store: Store, batch: str, batch_id: int | None, bare: Endpoint = DEFAULT) -> None:
        self.store = store
        self.batch = batch
        self.batch_id = batch_id  # None until the batch has a job: a file of bad lines creates no batch
        self.bare = bare  # the endpoint of bare-form lines
        self.in_turn = False  # one of several processes loading in turn (see `after_commit`)

    def digest(self, chunk: LineChunk) -> str:
        """What identifies the chunk's jobs: its bytes, and (but for chat) where its bare lines go."""
        if self.bare is DEFAULT:
            return chunk.digest
        return hashlib.sha256(f"{self.bare.url}\n{chunk.digest}".encode()).hexdigest()

    def prepare(self, chunk: LineChunk, digest: str | None = None) -> _Prepared:
        jobs, bad = chunk.parse(self.bare)
        return _Prepared(chunk, None if bad else digest or self.digest(chunk), JobRows.of(jobs), bad)

    def commit(self, prepared: _Prepared, conn: Any) -> ChunkOutcome:
        rows, bad = prepared.rows, prepared.bad
        if not (rows.rows or rows.duplicates or rows.conflicts):
            return ChunkOutcome(0, 0, len(bad), 0, tuple(bad))
        if self.batch_id is None:
            self.batch_id = self.store.ensure_batch(self.batch, conn)
        result = self.store.insert_jobs(self.batch_id, rows, conn)
        conflicts = [BadLine(job.line, "custom_id", f"{job.custom_id!r} is already queued with a different body "
                             "(conflict; not loaded)") for job in result.conflicts]
        chunk = prepared.chunk
        if prepared.digest is not None and not conflicts:
            self.store.record_chunk(self.batch_id, chunk.first_line, chunk.line_count, prepared.digest,
                                    result.loaded + result.duplicates, conn)
        problems = sorted(bad + conflicts, key=lambda problem: problem.line) if conflicts else bad
        return ChunkOutcome(result.loaded, result.duplicates, len(bad), len(conflicts), tuple(problems))

    def load(self, prepared: _Prepared) -> ChunkOutcome:
        with self.store.loading_transaction(in_turn=self.in_turn) as conn:
            return self.commit(prepared, conn)

    def after_commit(self) -> None:
        """Once the next process has the write lock: the checkpoint `load` left out."""
        self.store.checkpoint()

    def close(self) -> None:
        self.store.close()


class _StrictRollback(Exception):
    """Raised inside the strict transaction to roll it back."""


class _Tally:
    """What the chunks did so far, and up to which line every chunk is done (they may finish out of order:
    a chunk known from an earlier submit is done as soon as it is read)."""

    def __init__(self) -> None:
        self.loaded = self.duplicates = self.conflicts = self.rejected = 0
        self.done = 0  # every line up to this one is dealt with
        self._ahead: dict[int, int] = {}  # first line -> last line, of chunks done after a gap

    def add(self, chunk: LineChunk, outcome: ChunkOutcome) -> None:
        self.loaded += outcome.loaded
        self.duplicates += outcome.duplicates
        self.conflicts += outcome.conflicts
        self.rejected += outcome.rejected
        self._ahead[chunk.first_line] = chunk.first_line + chunk.line_count - 1
        while self.done + 1 in self._ahead:
            self.done = self._ahead.pop(self.done + 1)


def submit_file(store: Store, path: str, batch: str | None, strict: bool, report: Callable[[str], None],
                *, workers: int | None = None, parallel_lines: int | None = None,
                bare: Endpoint = DEFAULT) -> SubmitReport:
    """Load `path` ("-" for stdin) into batch `batch` (default: the file's stem); `bare` is the endpoint
    of bare-form lines.

    `workers` defaults to the usable cores (at most 4), `parallel_lines` to the environment's setting
    (see the module's docstring).
    """
    name = batch or batch_name_for(path)
    if parallel_lines is None:
        parallel_lines = _setting("BATCHRUN_SUBMIT_PARALLEL_LINES", PARALLEL_LINES)
    tally = _Tally()
    with open_job_file(path) as (stream, display), _collector_paused():

        def handled(chunk: LineChunk, outcome: ChunkOutcome) -> None:
            for problem in outcome.problems:
                report(problem.format(display))
            tally.add(chunk, outcome)

        loader = ChunkLoader(store, name, store.batch_id(name), bare)
        chunks = _unknown_chunks(read_line_chunks(stream, display, CHUNK), loader, handled)
        if strict:
            try:
                with store.loading_transaction() as conn:
                    for chunk, digest in chunks:
                        handled(chunk, loader.commit(loader.prepare(chunk, digest), conn))
                    if tally.rejected or tally.conflicts:
                        raise _StrictRollback
            except _StrictRollback:
                return SubmitReport(name, 0, 0, tally.conflicts, tally.rejected, strict_rejected=True)
        else:
            head = list(_take_lines(chunks, parallel_lines + 1))
            workers = _workers(workers) if sum(chunk.line_count for chunk, _ in head) > parallel_lines else 1
            if workers > 1:
                source = stream.fileno() if path != "-" and stat.S_ISREG(os.fstat(stream.fileno()).st_mode) else None
                _load_in_workers(loader, itertools.chain(head, chunks), workers, handled, tally, source)
            else:
                for chunk, digest in itertools.chain(head, chunks):
                    handled(chunk, loader.load(loader.prepare(chunk, digest)))
    return SubmitReport(name, tally.loaded, tally.duplicates, tally.conflicts, tally.rejected)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while loading: nothing here makes reference cycles, and
    tracing the chunk's jobs again and again cost ≈ 10 % of the parsing."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _workers(workers: int | None) -> int:
    if workers is not None:
        return workers
    from batchrun.parallel_load import worker_count  # multiprocessing: ≈ 25 ms of imports, for big files only

    return worker_count()


def _load_in_workers(loader: ChunkLoader, chunks: Iterable[tuple[LineChunk, str | None]], workers: int,
                     handled: Callable[[LineChunk, ChunkOutcome], None], tally: _Tally, source: int | None) -> None:
    from batchrun.parallel_load import load_in_workers

    loader.store.close()  # no connection may be open when the workers fork (this process reconnects)
    loader.in_turn = True  # in the workers' copies
    try:
        load_in_workers(loader, chunks, workers, handled, source)
    except BatchrunError as exc:
        done = f"every line up to {tally.done} is loaded" if tally.done else "nothing is loaded"
        raise type(exc)(f"{exc}; {done}: submit the file again to load the rest") from exc


def _unknown_chunks(chunks: Iterable[LineChunk], loader: ChunkLoader,
                    handled: Callable[[LineChunk, ChunkOutcome], None]) -> Iterator[tuple[LineChunk, str | None]]:
    """The chunks to load, each with its digest if it was computed; those a clean earlier submit loaded
    are counted as duplicates (`handled`) and left out."""
    known_batch = loader.batch_id
    for chunk in chunks:
        if known_batch is None:
            yield chunk, None
            continue
        digest = loader.digest(chunk)
        seen = loader.store.known_chunk(known_batch, chunk.first_line, chunk.line_count, digest)
        if seen is None:
            yield chunk, digest
        else:
            handled(chunk, ChunkOutcome(0, seen, 0, 0, ()))


def _take_lines(chunks: Iterator[tuple[LineChunk, str | None]],
                lines: int) -> Iterator[tuple[LineChunk, str | None]]:
    """The first chunks of `chunks`, up to the one that reaches `lines` lines."""
    total = 0
    while total < lines:
        item = next(chunks, None)
        if item is None:
            return
        total += item[0].line_count
        yield item


def _setting(variable: str, default: int) -> int:
    value = os.environ.get(variable)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{variable}={value!r}: expected a whole number") from None
