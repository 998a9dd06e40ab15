"""By hand: the CPU a token-limited key's window costs per send — `TokenWindow.delay` + `take` when a
request goes, `settle` when its answer comes — at a high rate, in one tree or several (checkouts with
their own `batchrun` package), for an A/B of a change to the window (issue 16).

    .venv/bin/python bench/token_window.py [TREE ...]      # default: this checkout

A key sending RATE requests a second under a per-minute token limit it never reaches (so nothing waits
and every operation is measured, not the waiting): the window holds RATE × 60 s of sends, and each answer
comes LATENCY seconds after its request, so `settle` finds its entry deep inside the window. Time is a
fake clock moved 1 / RATE a send. CPU time (process_time) per send in the steady state, the best of three
rounds of SENDS.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

#: (sends a second, seconds of latency): 10,000 and 120,000 entries in a minute's window
CASES = ((167, 2.0), (2_000, 2.0))
#: sends timed per round (a list search at 120,000 entries costs ms a send: few are enough)
SENDS = 2_000

_MEASURE = r"""
import sys, time
from collections import deque
from batchrun.keys import TokenWindow
from batchrun.units import Rate
rate, latency, sends = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
window = TokenWindow(Rate(10**12, 60.0), clock=lambda: 0.0)
lag = int(rate * latency)
step = 1.0 / rate
warm = int(rate * 61)  # fill the window first (no settles: they change no entry's place)
for i in range(warm):
    window.delay(500, i * step)
    entry = window.take(500, i * step)
in_flight = deque([window.take(500, warm * step) for _ in range(lag)], maxlen=lag + 1)
best = None
sent = warm
for _ in range(3):  # the steady state, three rounds: the best
    start = time.process_time()
    for i in range(sent, sent + sends):
        now = i * step
        window.delay(500, now)
        in_flight.append(window.take(500, now))
        window.settle(in_flight.popleft(), 420)
    sent += sends
    took = (time.process_time() - start) / sends * 1e6
    best = took if best is None else min(best, took)
print(f"{best:.2f}")
"""


def measure(tree: Path, rate: float, latency: float) -> str:
    sends = SENDS
    done = subprocess.run([str(tree / ".venv" / "bin" / "python"), "-c", _MEASURE, str(rate), str(latency), str(sends)],
                          cwd=tree, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def main() -> None:
    trees = [Path(arg).resolve() for arg in sys.argv[1:]] or [Path(__file__).resolve().parent.parent]
    print("| tree | sends/s | entries in the window | µs of CPU a send (delay + take + settle) |")
    print("|---|---|---|---|")
    for tree in trees:
        for rate, latency in CASES:
            print(f"| {tree.name} | {rate:,} | {int(rate * 60):,} | {measure(tree, rate, latency)} |", flush=True)


if __name__ == "__main__":
    main()
