"""Loading a big job file in worker processes that parse *and* insert, committing in file order.

One process cannot load 100,000 lines a second: on the 2-core reference machine, splitting, parsing and
validating a line and building its row cost ≈ 8–9 µs of CPU, inserting the row into SQLite ≈ 4.5 µs, and
copying it from the WAL into the database file ≈ 1 µs more. Parsed rows cannot cheaply move between
processes (pickling 5,000 of them costs half of parsing them) and a writer thread gains nothing (the
GIL). So each worker process gets chunks of raw lines, parses one and builds its rows, then waits for the
*token*, inserts and commits through its own database connection, and hands the token on. Chunk i goes to
worker i mod N and the token goes round in the same order, so commits happen in file order — job ids
follow the lines of the file (claims and exports go by id) — and while one worker holds the write lock
the others parse. The token is a semaphore per worker, released the moment a commit returns: waiting on
SQLite's busy timeout instead would leave the lock idle for its coarse sleeps. After handing the token
on, a worker checkpoints SQLite's WAL in a thread (its commits leave that out: copying the pages into the
database file, and its fsyncs, would hold up the next commit), beside its next chunk's parsing.

The main process only reads the chunks (cut at line boundaries; the workers read the bytes of a regular
file themselves, at the chunk's offset), hands them out and passes each chunk's outcome on, in file
order. A worker gets its next chunk once it has reported the last one: with one task in flight per
worker, the main process only ever writes to a worker that is reading, so no pipe can fill up in both
directions at once (standard input's chunks go through the pipes).

A worker that fails or dies stops the load (`LoadStopped`): the other workers are stopped too, and
whatever committed stays. Each chunk commits in one transaction and only after every chunk before it,
so the database holds a prefix of the file; submitting the file again skips that prefix (duplicates)
and loads the rest.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Semaphore
from typing import Any, Generic, Protocol, TypeVar

from batchrun.errors import BatchrunError
from batchrun.jobfile import LineChunk

__all__ = ["ChunkWork", "LoadStopped", "load_in_workers", "worker_count"]

log = logging.getLogger(__name__)

#: with more workers than this, the inserts (one chunk at a time, ≈ 5 µs a row) would be the bottleneck
MAX_WORKERS = 4
#: seconds between checks, while a worker waits for the token, that the main process is still there
_PARENT_CHECK = 1.0
#: chunks between a worker's garbage collections (its collector is off otherwise)
_COLLECT_EVERY = 50

Prepared = TypeVar("Prepared")
Outcome = TypeVar("Outcome")
Outcome_co = TypeVar("Outcome_co", covariant=True)


class ChunkWork(Protocol[Prepared, Outcome_co]):
    """What a worker does with a chunk: `prepare` it (any time), then `load` it (holding the token), then
    `after_commit` (in a thread, once the token has moved on; skipped while the last one still runs)."""

    def prepare(self, chunk: LineChunk, digest: str | None) -> Prepared: ...

    def load(self, prepared: Prepared) -> Outcome_co: ...

    def after_commit(self) -> None: ...

    def close(self) -> None: ...


class LoadStopped(BatchrunError):
    """A loading process failed; the lines before the failure are loaded."""


def worker_count() -> int:
    """Worker processes worth starting here: one per core this process may run on, at most `MAX_WORKERS`;
    0 where processes cannot be forked."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return 0
    return min(len(os.sched_getaffinity(0)), MAX_WORKERS)


def load_in_workers(work: ChunkWork[Any, Outcome], chunks: Iterable[tuple[LineChunk, str | None]],
                    workers: int, on_outcome: Callable[[LineChunk, Outcome], None], source: int | None) -> None:
    """Load `chunks` (each with its digest, when known) in `workers` forked processes.

    `source` is the file descriptor of a regular file the chunks come from: the workers then read their
    chunks from it themselves (`os.pread` at the chunk's offset), which costs less than a pipe. Without
    it (standard input), the chunks' bytes go through the pipe.

    `on_outcome` gets each chunk's outcome in file order, as its commit lands. Raises `LoadStopped`,
    or the `BatchrunError` a worker raised, when a worker fails or dies; on any exception,
    KeyboardInterrupt included, the workers are stopped before it propagates.

    Fork, not spawn: the workers start in milliseconds with everything already imported. The caller
    must hold no open database connection (the children would share it).
    """
    pool: _Pool[Outcome] = _Pool(source)
    try:
        pool.start(work, workers)
        pool.run(chunks, on_outcome)
    finally:
        pool.stop()


class _Worker:
    """The main process's end of one worker: its process, pipes, and the chunk it was given."""

    def __init__(self, index: int) -> None:
        self.index = index
        context = multiprocessing.get_context("fork")
        self.own_tasks, self.tasks = context.Pipe(duplex=False)  # (receiving, sending) end
        self.results, self.own_results = context.Pipe(duplex=False)
        self.process: BaseProcess | None = None
        self.given: LineChunk | None = None  # handed out, not reported yet

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid


class _Pool(Generic[Outcome]):
    def __init__(self, source: int | None) -> None:
        self.source = source
        self.workers: list[_Worker] = []
        self.tokens: list[Semaphore] = []

    def start(self, work: ChunkWork[Any, Outcome], size: int) -> None:
        context = multiprocessing.get_context("fork")
        # kept till the end: freed now, their weakref callbacks would be a place where Ctrl-C gets lost
        self.tokens = tokens = [context.Semaphore(0) for _ in range(size)]
        self.workers = [_Worker(index) for index in range(size)]
        # Ctrl-C is for the main process alone (it stops the workers): blocked while forking, so that no
        # child gets it before it ignores it; one that came meanwhile is raised here afterwards (taken
        # off explicitly: delivered on unblocking, it could land in a weakref callback and be lost).
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        interrupted = False
        try:
            for worker in self.workers:
                # The child closes every pipe end that is not its own: a copy of the main process's end
                # would hide the main process's death (no end of file) from the child.
                mine = (worker.own_tasks, worker.own_results)
                not_mine = [end for other in self.workers
                            for end in (other.tasks, other.results, other.own_tasks, other.own_results)
                            if end not in mine]
                worker.process = context.Process(
                    target=_work, name=f"batchrun-load-{worker.index + 1}", daemon=True,
                    args=(work, *mine, tokens[worker.index], tokens[(worker.index + 1) % size], os.getpid(),
                          not_mine, self.source))
                worker.process.start()
        finally:
            if signal.SIGINT in signal.sigpending():
                signal.sigwait({signal.SIGINT})
                interrupted = True
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            for worker in self.workers:
                worker.own_tasks.close()
                worker.own_results.close()
        if interrupted:
            raise KeyboardInterrupt
        tokens[0].release()  # the first chunk's worker may commit at once

    def run(self, chunks: Iterable[tuple[LineChunk, str | None]],
            on_outcome: Callable[[LineChunk, Outcome], None]) -> None:
        sent = 0
        for chunk, digest in chunks:
            worker = self.workers[sent % len(self.workers)]
            while worker.given is not None:
                self._collect(on_outcome)
            if self.source is None:
                self._send(worker, (chunk.first_line, chunk.line_count, chunk.offset, digest), chunk.data)
            else:
                # the worker reads the bytes itself, and hashes them itself: what it records is what it loaded
                self._send(worker, (chunk.first_line, chunk.line_count, chunk.offset, len(chunk.data)))
            worker.given = chunk
            sent += 1
        while any(worker.given is not None for worker in self.workers):
            self._collect(on_outcome)
        for worker in self.workers:
            self._send(worker, None)
        for worker in self.workers:
            assert worker.process is not None
            worker.process.join()

    def _send(self, worker: _Worker, header: tuple[int, int, int, str | int | None] | None,
              data: bytes | None = None) -> None:
        try:
            worker.tasks.send(header)
            if data is not None:
                worker.tasks.send_bytes(data)
        except OSError:  # the worker is gone
            self._failed(worker)

    def _collect(self, on_outcome: Callable[[LineChunk, Outcome], None]) -> None:
        """Wait for the next outcomes and pass them on, in file order."""
        busy = {worker.results: worker for worker in self.workers if worker.given is not None}
        exits = {worker.process.sentinel: worker for worker in self.workers if worker.process is not None}
        ready = wait([*busy, *exits])
        # Chunks commit in file order, each reported before the next one's commit can start: of the
        # reports at hand, the earliest chunk's comes first.
        reporting = sorted((busy[end] for end in ready if end in busy),
                           key=lambda worker: worker.given.first_line if worker.given else 0)
        for worker in reporting:
            self._receive(worker, on_outcome)
        for end in ready:
            if end in exits:  # a worker ended before it was told to: after what it reported, a failure
                worker = exits[end]
                while worker.given is not None:
                    self._receive(worker, on_outcome)
                self._failed(worker)

    def _receive(self, worker: _Worker, on_outcome: Callable[[LineChunk, Outcome], None]) -> None:
        try:
            kind, value = worker.results.recv()
        except (EOFError, OSError):
            self._failed(worker)
        chunk = worker.given
        assert chunk is not None
        if kind == "failed":
            raise type(value)(f"{value} ({_lines(chunk)})")
        worker.given = None
        on_outcome(chunk, value)

    def _failed(self, worker: _Worker) -> None:
        assert worker.process is not None
        worker.process.join(5)
        code = worker.process.exitcode
        how = (f"was killed by signal {-code}" if code is not None and code < 0
               else f"exited with status {code}" if code is not None else "stopped answering")
        where = "" if worker.given is None else f" ({_lines(worker.given)})"
        raise LoadStopped(f"a loading process (pid {worker.pid}) {how}{where}")

    def stop(self) -> None:
        """Stop every worker still running (after a failure: what they had not committed is rolled back)."""
        for worker in self.workers:
            if worker.process is not None and worker.process.is_alive():
                worker.process.terminate()
        for worker in self.workers:
            if worker.process is not None:
                worker.process.join()
            worker.tasks.close()
            worker.results.close()


def _lines(chunk: LineChunk) -> str:
    return f"lines {chunk.first_line}–{chunk.first_line + chunk.line_count - 1}"


# --- in the worker process ----------------------------------------------------------------------

def _work(work: ChunkWork[Any, Any], tasks: Connection, results: Connection, token: Semaphore,
          next_token: Semaphore, parent: int, not_ours: list[Connection], source: int | None) -> None:
    for end in not_ours:
        end.close()
    # Ctrl-C reaches the whole process group: the main process handles it and stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    # The cyclic garbage collector traced each chunk's jobs again and again (≈ 10 % of the parsing) and
    # nothing here makes reference cycles: it is off, but for a collection now and then as a safety net.
    # What the fork copied is out of its way (and its pages stay shared).
    gc.disable()
    gc.freeze()
    loaded = 0
    settling: threading.Thread | None = None
    try:
        for chunk, digest in _tasks(tasks, source):
            prepared = work.prepare(chunk, digest)
            if not _take(token, parent):
                return
            outcome = work.load(prepared)
            if not _tell(results, ("loaded", outcome)):
                return  # the main process is gone
            # Only now: after a failure the token stays here, and no later chunk can commit.
            next_token.release()
            # In a thread, beside the next chunk's parsing: it mostly waits for the disk, without the GIL.
            if settling is None or not settling.is_alive():
                settling = threading.Thread(target=_after_commit, args=(work,), daemon=True)
                settling.start()
            loaded += 1
            if loaded % _COLLECT_EVERY == 0:
                gc.collect()
    except BatchrunError as exc:
        _tell(results, ("failed", exc))
    except Exception as exc:  # a bug: its traceback goes to the log, the main process says it failed
        log.exception("loading process failed")
        _tell(results, ("failed", LoadStopped(f"a loading process failed: {exc!r}")))
    finally:
        if settling is not None:
            settling.join()
        work.close()


def _tell(results: Connection, message: tuple[str, Any]) -> bool:
    """Send `message` to the main process; False if it is gone."""
    try:
        results.send(message)
    except OSError:
        return False
    return True


def _after_commit(work: ChunkWork[Any, Any]) -> None:
    try:
        work.after_commit()
    except BatchrunError as exc:  # nothing lost: what it would have done is done later
        log.warning("after a commit: %s", exc)


def _tasks(tasks: Connection, source: int | None) -> Iterator[tuple[LineChunk, str | None]]:
    while True:
        try:
            header = tasks.recv()
            if header is None:
                return
            first_line, line_count, offset, rest = header
            if source is None:
                yield LineChunk(first_line, line_count, tasks.recv_bytes(), offset), rest
            else:
                yield LineChunk(first_line, line_count, os.pread(source, rest, offset), offset), None
        except EOFError:  # the main process is gone
            return


def _take(token: Semaphore, parent: int) -> bool:
    """Wait for the token; False if the main process died meanwhile."""
    while not token.acquire(timeout=_PARENT_CHECK):
        if os.getppid() != parent:
            return False
    return True
