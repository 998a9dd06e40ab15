"""By hand: the database thread's CPU per finished job — `Store.record` of the outcomes, and since issue 15
the attempts they came with — in one tree or several (checkouts with their own .venv), for an A/B of a
change that touches the commit path.

    .venv/bin/python bench/record_cost.py [TREE ...]      # default: this checkout

Each tree is measured in its own process (its own `batchrun` package): 20,000 claimed jobs recorded as
succeeded in group commits of 500, as the runner makes them; `build` is making the outcome (and attempt)
values, `record` the commit. CPU time (process_time), so a busy machine blurs it less than a wall rate.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

JOBS, GROUP = 20_000, 500
ANSWER = ('{"id":"x","choices":[{"message":{"role":"assistant","content":"echo: hi"},"finish_reason":"stop"}],'
          '"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}')


class _Job:
    def __init__(self, i: int) -> None:
        self.line, self.custom_id, self.model = i, f"job-{i}", "fast"
        self.body_json = '{"model":"fast","messages":[{"role":"user","content":"hi"}]}'
        self.body_hash, self.input_tokens, self.max_tokens = f"{i:064d}", 3, None
        self.endpoint = "/v1/chat/completions"


def measure() -> str:
    from batchrun.records import Succeeded
    from batchrun.store import Store

    with tempfile.TemporaryDirectory() as scratch, Store.open(f"sqlite:///{scratch}/q.db") as store:
        batch = store.ensure_batch("b")
        store.add_jobs(batch, [_Job(i) for i in range(JOBS)])
        claimed = store.claim("bench", JOBS, 600, batch)
        logged = hasattr(store, "attempts")
        if logged:
            from batchrun.attempts import sent_attempt

            runner = store.register_runner("bench")
        build = record = 0.0
        for start in range(0, JOBS, GROUP):
            group = claimed[start:start + GROUP]
            began = time.process_time()
            outcomes = [Succeeded(job.id, 1, "key1", 200, "req", ANSWER, "sim-small", "stop", 3, 4, 7, 0.0001, "fast")
                        for job in group]
            attempts = [sent_attempt(job.batch_id, job.id, 0.01, "key1", job.endpoint, job.model, "fast", "sim-small",
                                     200, "ok", 3, 4, 0.0001) for job in group] if logged else []
            built = time.process_time()
            if logged:
                store.record("bench", outcomes, runner_id=runner, attempts=attempts)
            else:
                store.record("bench", outcomes)
            build += built - began
            record += time.process_time() - built
    return (f"build {build / JOBS * 1e6:.1f} µs/job, record {record / JOBS * 1e6:.1f} µs/job"
            f"{' (with the attempts log)' if logged else ''}")


def main() -> None:
    if sys.argv[1:2] == ["--here"]:
        print(measure())
        return
    trees = [Path(tree) for tree in sys.argv[1:]] or [Path(__file__).resolve().parent.parent]
    for rep in range(3):
        for tree in trees:
            python = tree / ".venv" / "bin" / "python"
            out = subprocess.run([str(python), __file__, "--here"], cwd=tree, capture_output=True, text=True,
                                 check=True).stdout.strip()
            print(f"{tree}: {out}", flush=True)


if __name__ == "__main__":
    main()
