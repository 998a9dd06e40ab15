"""9. llmock: 400 chat jobs, 2 keys, against a third-party chaos server with a per-key quota and random faults."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import orjson

from bench.common import (
    BATCHRUN, CACHE, Context, Exported, Proc, Row, Section, Series, batchrun_env, check_export, copy_db, log_note,
    met, prompts, run as run_process, share, shown, submit,
)
from bench.llmock_server import LLMock

NAME = "llmock"
BUDGET = 80  # seconds on the 2-core reference machine; issue 12's five: 840 s in all
TITLE = "9. llmock, a third-party server"
JOBS, QUICK_JOBS = 400, 100
KEYS = ("lm_1:secret1", "lm_2:secret2")
RPM, LIMIT = 600, "600/60s"
FLAGS = ("--rpm", str(RPM), "--error-rate", "429=0.05", "--error-rate", "503=0.05", "--response-style", "echo")
MODEL = "gpt-4o-mini"
WALL_TARGET = 40.0
ABOUT = (f"{JOBS} chat jobs (model `{MODEL}`, one short user message each), {len(KEYS)} keys, against llmock "
         f"{{version}} (PyPI; `llmock serve {' '.join(FLAGS)}`): a per-key quota of {RPM} requests a minute "
         "(a token bucket, 429 with the real wait as `Retry-After`), 5 % random 429s and 5 % random 503s; batchrun "
         f"is told `--rate-limit {LIMIT}`, so the keys allow {2 * RPM // 60} req/s together and the jobs need ≈ "
         f"{JOBS / (2 * RPM / 60) * 1.11:.0f} s with the retries. A fresh llmock per run. Wall time = `batchrun "
         "run` from spawn to exit; *every job once* = `batchrun export` has each custom_id exactly once, each with "
         "llmock's echo of its own prompt, and llmock's journal shows no prompt answered 200 twice.")

_WORDS = ("the order arrived late but support was quick to refund battery life is great screen too dim "
          "would buy again box was damaged please cancel my subscription invoice lists the wrong price").split()


def job_file(jobs: int) -> Path:
    """`jobs` chat jobs for llmock, each one user message short enough to come back whole in its echo."""
    path = CACHE / f"llmock-jobs-{jobs}.jsonl"
    if not path.exists():
        CACHE.mkdir(exist_ok=True)
        rng = random.Random(jobs)
        lines = []
        for i in range(jobs):
            text = f"Summarise: {' '.join(rng.choices(_WORDS, k=rng.randint(3, 12)))} (#{i})"
            body = {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 64}
            lines.append(orjson.dumps({"custom_id": f"lm-{i:05d}", "method": "POST", "url": "/v1/chat/completions",
                                       "body": body}))
        path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def llmock_echo(prompt: str, answer: str, finish_reason: str | None) -> bool:
    return answer == "Hello! You said: " + " ".join(prompt.split())[:120]


@dataclass
class Outcome:
    proc: Proc
    exported: Exported
    statuses: Counter[int]
    answered_twice: int  # prompts llmock answered 200 more than once
    server_cpu: float


def one_run(ctx: Context, template: Path, expected: dict[str, str]) -> tuple[Outcome, str, list[str]]:
    work = ctx.scratch(NAME)
    db = copy_db(template, work / "batchrun.db")
    cmd = [BATCHRUN, "run", "--no-progress", "--rate-limit", LIMIT]
    with LLMock(*FLAGS) as server:
        env = batchrun_env(db, server.base_url, KEYS)
        cpu = server.cpu_seconds()
        proc = run_process(cmd, env)
        cpu = server.cpu_seconds() - cpu
        journal = [r for r in server.requests() if r["path"].endswith("/chat/completions")]
        command = server.command
    exported = check_export(batchrun_env(db), expected, work, llmock_echo)
    ok = Counter(r["fingerprint"] for r in journal if r["status"] == 200)
    return (Outcome(proc, exported, Counter(r["status"] for r in journal), sum(n - 1 for n in ok.values() if n > 1),
                    cpu), command, cmd)


def run(ctx: Context) -> Section:
    reps = ctx.repetitions(3)
    jobs = QUICK_JOBS if ctx.quick else JOBS
    path = job_file(jobs)
    template = ctx.scratch(NAME) / "loaded.db"
    submit(template, path)
    expected = prompts(path)
    runs: list[Outcome] = []
    server_cmd, cmd = "", [BATCHRUN]
    for _ in range(reps):
        outcome, server_cmd, cmd = one_run(ctx, template, expected)
        runs.append(outcome)
    walls = Series([o.proc.wall for o in runs])
    exits = [o.proc.returncode for o in runs]
    once = all(o.exported.complete and o.exported.results == jobs and not o.answered_twice for o in runs)
    rows = [
        Row("exit code (every run)", ", ".join(map(str, exits)), "0", all(code == 0 for code in exits)),
        Row("every job exactly once in `batchrun export`, right answer (every run)", "yes" if once else "no",
            "every run", once),
        Row("wall time", walls.show(".1f", " s"), f"≤ {WALL_TARGET:.0f} s", met(walls.median, WALL_TARGET, False)),
        Row("wall time, worst run", f"{max(walls.values):.1f} s", f"≤ {WALL_TARGET:.0f} s",
            met(max(walls.values), WALL_TARGET, False)),
        Row("llmock CPU / wall (its own core)", Series([o.server_cpu / o.proc.wall for o in runs]).show(".1%")),
    ]
    details = [["run", "wall", "exit", "requests", "200", "429", "503", "other", "exported", "missing / repeated / "
                "wrong / failed", "answered twice", "llmock CPU", "batchrun CPU"]]
    for i, o in enumerate(runs, 1):
        other = sum(n for status, n in o.statuses.items() if status not in (200, 429, 503))
        e = o.exported
        details.append([str(i), f"{o.proc.wall:.1f} s", str(o.proc.returncode), str(sum(o.statuses.values())),
                        str(o.statuses[200]), str(o.statuses[429]), str(o.statuses[503]), str(other), str(e.results),
                        f"{e.missing} / {e.repeated} / {e.wrong} / {e.failed}", str(o.answered_twice),
                        share(o.server_cpu, o.proc.wall), share(o.proc.cpu, o.proc.wall)])
    notes = log_note([o.proc for o in runs], r"key rate (lowered|raised|back)", "batchrun changed a key's rate")
    version = _version()
    commands = [server_cmd, f"BATCHRUN_API_KEYS=lm_1:…,lm_2:… BATCHRUN_BASE_URL=http://127.0.0.1:$PORT/v1 "
                f"taskset -c 0 {shown(cmd)}"]
    return Section(NAME, TITLE, ABOUT.replace("{version}", version), rows, commands, notes=notes, details=details)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("llmock")
    except Exception:  # the figure does not depend on it; the text only names it
        return "(version unknown)"
