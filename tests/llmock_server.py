"""llmock (a third-party OpenAI-compatible chaos server, `pip install llmock`) as a real subprocess.

`llmock_serving(*args, log_dir=...)` starts `llmock serve --port 0 ARGS` on loopback, learns the
port from uvicorn's "Uvicorn running on http://HOST:PORT" line, waits until `GET /v1/models`
answers, yields an `LLMock` handle and always stops the process, also when the test fails.
Output goes to a log file rather than a pipe, so a chatty server can never block on a full pipe.

What llmock does that the tests rely on (llmock 0.2.2, `llmock/middleware.py`, `ratelimit.py`):
- `--rpm N` / `--tpm N` are token buckets per (provider, full `Authorization` header): capacity N,
  refilled at N/60 per second, full at start; beyond it a 429 `rate_limit_exceeded` whose
  `retry-after` (ceil) and `retry-after-ms` are the real wait, and `x-ratelimit-*` headers on
  every answer (`x-ratelimit-reset-*` is the time until the bucket is full again, as OpenAI's is);
- `--error-rate 429=P` / `503=P` are sampled before the quota and do not use it (Retry-After 1 s);
- `/_llmock/requests` lists what it served, oldest first, with `status`, `fault` ("chaos:429",
  "ratelimit:requests", ...), monotonic `started_at` and the JSON `body`; no API key.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["LLMock", "llmock_serving"]

_LISTENING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")
_STARTUP_TIMEOUT = 30.0


@dataclass
class LLMock:
    """A listening llmock: where to point batchrun, and what llmock received."""

    base_url: str  # "http://127.0.0.1:PORT/v1"
    root: str  # "http://127.0.0.1:PORT"
    process: subprocess.Popen[bytes]
    log_path: Path

    def requests(self) -> list[dict[str, Any]]:
        """Every request llmock served, oldest first (`GET /_llmock/requests`)."""
        return list(_get_json(f"{self.root}/_llmock/requests")["requests"])

    def completions(self) -> list[dict[str, Any]]:
        """The chat-completion requests among them."""
        return [r for r in self.requests() if r["method"] == "POST" and r["path"] == "/v1/chat/completions"]

    def verdict(self) -> dict[str, Any]:
        """llmock's own judgement of how the client coped (`GET /_llmock/verdict`)."""
        return dict(_get_json(f"{self.root}/_llmock/verdict"))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def llmock_serving(*args: str, log_dir: Path) -> Iterator[LLMock]:
    """`llmock serve ARGS` on a free loopback port for the length of the block."""
    log_path = log_dir / f"llmock-{time.monotonic_ns()}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "llmock.cli", "serve", "--host", "127.0.0.1", "--port", "0",
             "--log-level", "info", *args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    try:
        root = _wait_until_ready(process, log_path)
        yield LLMock(f"{root}/v1", root, process, log_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_ready(process: subprocess.Popen[bytes], log_path: Path) -> str:
    deadline = time.monotonic() + _STARTUP_TIMEOUT
    root: str | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"llmock exited with {process.returncode}:\n{log_path.read_text(errors='replace')}")
        if root is None:
            match = _LISTENING.search(log_path.read_text(errors="replace"))
            root = f"http://127.0.0.1:{match.group(1)}" if match else None
        if root is not None:
            try:
                _get_json(f"{root}/v1/models")
                return root
            except (OSError, ValueError):
                pass  # listening but not answering yet
        time.sleep(0.05)
    raise TimeoutError(f"llmock did not answer within {_STARTUP_TIMEOUT:g} s:\n{log_path.read_text(errors='replace')}")


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())
