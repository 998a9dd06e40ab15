"""llmock (a third-party OpenAI-compatible chaos server, on PyPI) as a pinned subprocess for the benchmarks.

    with LLMock("--rpm", "600", "--error-rate", "429=0.05") as server:
        server.base_url        # http://127.0.0.1:PORT/v1
        server.requests()      # its journal: every request served, oldest first

It runs on the simulator's core (`taskset -c 1`), like `batchrun simulate`; it is ready once its control
API answers.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from typing import Any

from bench.common import BIN, SIM_CPU, PinnedServer, shown

LLMOCK = str(BIN / "llmock")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LLMock(PinnedServer):
    """`llmock serve` on its own core, on a free port, with its journal one HTTP call away."""

    def __init__(self, *flags: str, startup: float = 30.0) -> None:
        self.port = free_port()
        super().__init__([LLMOCK, "serve", "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning",
                          *flags], "bench-llmock-")
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        deadline = time.monotonic() + startup
        while True:
            try:
                self._call("GET", "/v1/models")
                break
            except (OSError, http.client.HTTPException, ValueError):
                if self.popen.poll() is not None or time.monotonic() > deadline:
                    log = self.log()
                    self.close()
                    raise RuntimeError(f"llmock did not start: {log[-2000:]}") from None
                time.sleep(0.1)

    def _call(self, method: str, path: str) -> Any:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path)
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    @property
    def command(self) -> str:
        text = shown(self.cmd).replace(LLMOCK, "llmock").replace(f"--port {self.port}", "--port $PORT")
        return f"taskset -c {SIM_CPU} {text}"

    def requests(self) -> list[dict[str, Any]]:
        """The journal: every request llmock served (not its control API), oldest first."""
        answer: dict[str, Any] = self._call("GET", "/_llmock/requests")
        return list(answer["requests"])
