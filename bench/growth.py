"""What grows in `batchrun run` with the work done: memory figures at chosen numbers of answered requests.

    python bench/growth.py DB BASE_URL --at 50000 250000 [--trace] [--keys K ...] [--out DIR]

Runs `batchrun run` in this process (the CLI's own `main`) over the batch database DB against the
provider at BASE_URL, and in a thread beside it watches the provider's `/_sim/stats` request count;
each time it passes a mark of `--at`, it records RSS (VmRSS), glibc's heap (`mallinfo2`: bytes in use
vs. held free), SQLite's own allocator (`sqlite3_memory_used`), Python's object count and, with
`--trace` (tracemalloc, 1 frame; the run gets ≈ 2× slower), a snapshot. At the end it prints the figures
per mark and the allocation sites that grew most from the first traced mark to the last. Not a
benchmark of its own (tracing distorts the timing); it is how bench 12's run figure was explained.

The figures of bench/findings.md (issue 13) came from a 300,000-job embeddings batch (`dimensions: 8`):

    batchrun submit bench/.cache/embeddings-300000-d8-v1.jsonl   # BATCHRUN_DB=sqlite:///$TMP/batchrun.db
    taskset -c 1 batchrun simulate --port 0 &
    taskset -c 0 python bench/growth.py $TMP/batchrun.db $SIM --at 50000 150000 250000 --trace
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import re
import sys
import threading
import time
import tracemalloc
import urllib.request
from pathlib import Path
from typing import Any


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _libc() -> Any:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _Mallinfo2
    return libc


def _libsqlite() -> Any:
    """The SQLite library the `sqlite3` module is linked against (from this process's mappings)."""
    import sqlite3  # noqa: F401  (loads _sqlite3 and its libsqlite3)

    maps = Path("/proc/self/maps").read_text()
    found = re.search(r"(/\S*libsqlite3\S*\.so\S*)", maps) or re.search(r"(/\S*_sqlite3\S*\.so)", maps)
    if not found:
        return None
    lib = ctypes.CDLL(found.group(1))
    lib.sqlite3_memory_used.restype = ctypes.c_int64
    lib.sqlite3_memory_highwater.restype = ctypes.c_int64
    return lib


def _rss_mb() -> dict[str, float]:
    """VmRSS and its parts: anonymous memory (the heaps), file pages, shared memory (SQLite's -shm map)."""
    status = Path("/proc/self/status").read_text()
    out = {}
    for field in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
        found = re.search(rf"{field}:\s+(\d+) kB", status)
        out[field.lower() + "_mb"] = int(found.group(1)) / 1024 if found else 0.0
    return out


def figures(libc: Any, sqlite: Any) -> dict[str, float]:
    heap = libc.mallinfo2()
    mb = 1024 * 1024
    out = {**_rss_mb(), "heap_in_use_mb": (heap.uordblks + heap.hblkhd) / mb,
           "heap_free_held_mb": heap.fordblks / mb, "heap_mmapped_mb": heap.hblkhd / mb,
           "python_objects": float(len(gc.get_objects()))}
    if tracemalloc.is_tracing():
        out["traced_mb"] = tracemalloc.get_traced_memory()[0] / mb
    if sqlite is not None:
        out["sqlite_used_mb"] = sqlite.sqlite3_memory_used() / mb
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db")
    parser.add_argument("base_url")
    parser.add_argument("--at", type=int, nargs="+", required=True, help="answered requests at which to record")
    parser.add_argument("--trace", action="store_true", help="tracemalloc snapshots too (slower)")
    parser.add_argument("--keys", nargs="+", default=[f"bench{i}:secret{i}" for i in range(1, 5)])
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, help="write the figures (JSON) and the top sites here")
    args = parser.parse_args()

    os.environ["BATCHRUN_DB"] = f"sqlite:///{args.db}"
    os.environ["BATCHRUN_BASE_URL"] = args.base_url
    os.environ["BATCHRUN_API_KEYS"] = ",".join(args.keys)
    if args.trace:
        tracemalloc.start(1)
    libc, sqlite = _libc(), _libsqlite()
    stats_url = args.base_url.rsplit("/v1", 1)[0] + "/_sim/stats"
    marks = sorted(args.at)
    recorded: list[dict[str, Any]] = []
    snapshots: list[tuple[int, tracemalloc.Snapshot]] = []
    done = threading.Event()
    began = time.perf_counter()

    def watch() -> None:
        pending = list(marks)
        while pending and not done.is_set():
            with urllib.request.urlopen(stats_url, timeout=10) as answer:
                served = int(json.loads(answer.read())["requests_total"])
            if served >= pending[0]:
                mark = pending.pop(0)
                row: dict[str, Any] = {"mark": mark, "served": served,
                                       "seconds": round(time.perf_counter() - began, 1), **figures(libc, sqlite)}
                if args.trace:
                    snapshots.append((mark, tracemalloc.take_snapshot()))
                recorded.append(row)
                print("growth:", json.dumps(row), file=sys.stderr, flush=True)
            done.wait(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    from batchrun.cli import cli

    try:
        cli(["run", "--no-progress", "--concurrency", "64", "--rate-limit", "100000/1s"], prog_name="batchrun")
    except SystemExit:
        pass
    finally:
        done.set()
        watcher.join()
    end = {"mark": "end", "seconds": round(time.perf_counter() - began, 1), **figures(libc, sqlite)}
    recorded.append(end)
    print("growth:", json.dumps(end), file=sys.stderr, flush=True)
    lines = []
    if len(snapshots) >= 2:
        (first, old), (last, new) = snapshots[0], snapshots[-1]
        filters = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen *>")]
        diff = new.filter_traces(filters).compare_to(old.filter_traces(filters), "lineno")
        lines.append(f"top {args.top} allocation sites by growth, {first:,} → {last:,} answered requests:")
        lines += [str(stat) for stat in diff[:args.top]]
        print("\n".join(lines), file=sys.stderr, flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "growth.json").write_text(json.dumps(recorded, indent=2) + "\n")
        (args.out / "growth-top.txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
