"""Loading a job file into the queue: stream, validate, insert in chunks, report every problem.

Good lines load even when others are bad; with `strict`, one bad or conflicting line rejects the
whole file and nothing is loaded (everything happens in one transaction that is rolled back).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from batchrun.jobfile import BadLine, JobSpec, batch_name_for, open_job_file, read_jobs
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
    """Load `path` ("-" for stdin) into batch `batch` (default: the file's stem)."""
    name = batch or batch_name_for(path)
    tally = {"loaded": 0, "duplicates": 0, "conflicts": 0, "rejected": 0}
    with open_job_file(path) as (stream, display):
        batch_id = 0

        def add(chunk: list[JobSpec], conn: Any) -> None:
            nonlocal batch_id
            batch_id = batch_id or store.ensure_batch(name, conn)
            result: AddResult = store.add_jobs(batch_id, chunk, conn)
            tally["loaded"] += result.loaded
            tally["duplicates"] += result.duplicates
            for job in result.conflicts:
                tally["conflicts"] += 1
                report(f"{display}:{job.line}: custom_id: {job.custom_id!r} is already queued with a "
                       "different body (conflict; not loaded)")

        def chunks() -> Iterator[list[JobSpec]]:
            chunk: list[JobSpec] = []
            for item in read_jobs(stream, display):
                if isinstance(item, BadLine):
                    tally["rejected"] += 1
                    report(item.format(display))
                    continue
                chunk.append(item)
                if len(chunk) >= CHUNK:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk

        if not strict:
            for chunk in chunks():
                with store.transaction() as conn:
                    add(chunk, conn)
        else:
            try:
                with store.transaction() as conn:
                    for chunk in chunks():
                        add(chunk, conn)
                    if tally["rejected"] or tally["conflicts"]:
                        raise _StrictRollback
            except _StrictRollback:
                return SubmitReport(name, 0, 0, tally["conflicts"], tally["rejected"], strict_rejected=True)
    return SubmitReport(name, tally["loaded"], tally["duplicates"], tally["conflicts"], tally["rejected"])

