"""Loading a job file into the queue: stream, validate, insert in chunks, report every problem.

Good lines load even when others are bad; with `strict`, one bad or conflicting line rejects the
whole file and nothing is loaded (everything happens in one transaction that is rolled back).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from batchrun.jobfile import (
    BadLine,
    JobSpec,
    LineChunk,
    batch_name_for,
    open_job_file,
    read_line_chunks,
)
from batchrun.records import AddResult
from batchrun.store import Store

CHUNK = 5000


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


class _StrictRollback(Exception):
    """Raised inside the strict transaction to roll it back."""


def submit_file(store: Store, path: str, batch: str | None, strict: bool,
                report: Callable[[str], None]) -> SubmitReport:
    """Load `path` ("-" for stdin) into batch `batch` (default: the file's stem).

    The file is read in chunks of raw lines. A chunk that loaded cleanly before (same bytes, same
    place, same batch) is counted as duplicates without being parsed again: resubmitting a file, or a
    file that grew at its end, costs little more than reading it.

    (Parsing in a worker process while this one writes was tried and measured slower on 2 cores:
    sending 5,000 parsed jobs back costs about half of parsing them. See docs/benchmarks.md.)
    """
    name = batch or batch_name_for(path)
    tally = {"loaded": 0, "duplicates": 0, "conflicts": 0, "rejected": 0}
    with open_job_file(path) as (stream, display):
        known_batch = store.batch_id(name)
        batch_id = known_batch or 0

        def load(chunk: LineChunk, digest: str, parsed: list[JobSpec | BadLine], conn: Any) -> None:
            nonlocal batch_id
            specs: list[JobSpec] = []
            clean = True
            for item in parsed:
                if isinstance(item, BadLine):
                    clean = False
                    tally["rejected"] += 1
                    report(item.format(display))
                else:
                    specs.append(item)
            if not specs:
                return
            batch_id = batch_id or store.ensure_batch(name, conn)
            result: AddResult = store.add_jobs(batch_id, specs, conn)
            tally["loaded"] += result.loaded
            tally["duplicates"] += result.duplicates
            for job in result.conflicts:
                clean = False
                tally["conflicts"] += 1
                report(f"{display}:{job.line}: custom_id: {job.custom_id!r} is already queued with a "
                       "different body (conflict; not loaded)")
            if clean:
                store.record_chunk(batch_id, chunk.first_line, len(chunk.lines), digest, len(specs), conn)

        def load_all(conn_for: Callable[[], Any]) -> None:
            for chunk in read_line_chunks(stream, display, CHUNK):
                digest = chunk.digest
                if known_batch is not None:
                    seen = store.known_chunk(known_batch, chunk.first_line, len(chunk.lines), digest)
                    if seen is not None:
                        tally["duplicates"] += seen
                        continue
                with conn_for() as conn:
                    load(chunk, digest, chunk.parse(), conn)

        if not strict:
            load_all(store.transaction)
        else:
            try:
                with store.transaction() as conn:
                    load_all(lambda: contextlib.nullcontext(conn))
                    if tally["rejected"] or tally["conflicts"]:
                        raise _StrictRollback
            except _StrictRollback:
                return SubmitReport(name, 0, 0, tally["conflicts"], tally["rejected"], strict_rejected=True)
    return SubmitReport(name, tally["loaded"], tally["duplicates"], tally["conflicts"], tally["rejected"])
