"""A real headless Chromium, driven over the Chrome DevTools Protocol with aiohttp's websocket client: opens
a local HTML file and reports what a reader's browser would see (console errors, requests to anywhere but
the file itself, each chart's rendered size) and a full-page screenshot.

Debian's `chromium` package is the browser (`apt-get install -y chromium`); no bundled browser, no network.

    with launch(tmp_path / "profile") as browser:
        page = browser.open_page(tmp_path / "report.html")
    assert not page.console_errors and not page.network_requests
    page.screenshot(tmp_path / "report.png")

`scripts/report_screenshot.py` uses the same driver for the README's screenshot.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

INSTALL_HINT = "headless Chromium is needed: run `apt-get install -y chromium` (CI installs it in .ci/run)"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: a laptop screen
VIEWPORT = (1280, 800)
#: how long the browser may take to start, and a page to load
START_TIMEOUT = 30.0
LOAD_TIMEOUT = 30.0

CHARTS_JS = """JSON.stringify(Array.from(document.querySelectorAll('svg.chart'), e => {
  const r = e.getBoundingClientRect(); return [e.dataset.chart || '', r.width, r.height]; }))"""


def find_chromium() -> str | None:
    """The Chromium binary on PATH (Debian calls it `chromium`, others `chromium-browser`), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Page:
    """What a page did while it loaded, and how it looked."""

    url: str
    console_errors: list[str] = field(default_factory=list)
    #: every request other than the page itself (data: URIs are not requests and are left out)
    network_requests: list[str] = field(default_factory=list)
    #: (data-chart name, rendered width, rendered height) of each `svg.chart`, in document order
    charts: list[tuple[str, float, float]] = field(default_factory=list)
    png: bytes = b""

    def screenshot(self, path: Path) -> Path:
        """Writes the full-page screenshot taken when the page had loaded."""
        path.write_bytes(self.png)
        return path


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG; ValueError if `data` is not one."""
    if not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


class Browser:
    """A running headless Chromium; `launch` starts and always stops it."""

    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.port = port

    def open_page(self, path: Path, *, viewport: tuple[int, int] = VIEWPORT) -> Page:
        """Loads a local file in the browser's tab and waits for its load event; returns what happened."""
        return asyncio.run(self._open(path.resolve().as_uri(), viewport))

    async def _open(self, url: str, viewport: tuple[int, int]) -> Page:
        async with aiohttp.ClientSession() as http:
            target = await self._page_target(http)
            async with http.ws_connect(target, max_msg_size=0) as ws:
                session = _Session(ws, Page(url))
                for domain in ("Runtime", "Log", "Network", "Page"):
                    await session.call(f"{domain}.enable")
                await session.call("Emulation.setDeviceMetricsOverride", width=viewport[0], height=viewport[1],
                                   deviceScaleFactor=1, mobile=False)
                navigated = await session.call("Page.navigate", url=url)
                if navigated.get("errorText"):
                    raise RuntimeError(f"cannot open {url}: {navigated['errorText']}")
                await session.wait_for("Page.loadEventFired")
                # two animation frames: layout is done and anything queued at load has run
                await session.call("Runtime.evaluate", awaitPromise=True, expression=(
                    "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))"))
                charts = await session.call("Runtime.evaluate", expression=CHARTS_JS, returnByValue=True)
                session.page.charts = [(name, width, height)
                                       for name, width, height in json.loads(charts["result"]["value"])]
                metrics = await session.call("Page.getLayoutMetrics")
                size = metrics.get("cssContentSize") or metrics["contentSize"]
                shot = await session.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                                          clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"],
                                                "scale": 1})
                session.page.png = base64.b64decode(shot["data"])
                return session.page

    async def _page_target(self, http: aiohttp.ClientSession) -> str:
        """The websocket of the browser's first tab (it starts with about:blank)."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            async with http.get(f"http://127.0.0.1:{self.port}/json/list") as response:
                targets: list[dict[str, Any]] = await response.json()
            pages = [t for t in targets if t.get("type") == "page" and t.get("webSocketDebuggerUrl")]
            if pages:
                return str(pages[0]["webSocketDebuggerUrl"])
            if time.monotonic() > deadline:
                raise RuntimeError("Chromium opened no tab")
            await asyncio.sleep(0.05)


class _Session:
    """One CDP connection, read in order: each call waits for its answer; events met on the way are noted."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, page: Page) -> None:
        self.ws = ws
        self.page = page
        self.last_id = 0
        self.seen: set[str] = set()

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.last_id += 1
        await self.ws.send_json({"id": self.last_id, "method": method, "params": params})
        while True:
            message = await self._receive()
            if message.get("id") == self.last_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result

    async def wait_for(self, event: str) -> None:
        while event not in self.seen:
            await self._receive()

    async def _receive(self) -> dict[str, Any]:
        message: dict[str, Any] = await self.ws.receive_json(timeout=LOAD_TIMEOUT)
        if "method" in message:
            self.seen.add(message["method"])
            self._note(message["method"], message.get("params", {}))
        return message

    def _note(self, method: str, params: dict[str, Any]) -> None:
        errors = self.page.console_errors
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append(" ".join(str(arg.get("value", arg.get("description", ""))) for arg in params["args"]))
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            errors.append(details.get("exception", {}).get("description") or details.get("text", "exception"))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            errors.append(f"{params['entry'].get('text', '')} {params['entry'].get('url', '')}".strip())
        elif method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            if url != self.page.url and not url.startswith("data:"):
                self.page.network_requests.append(url)


@contextmanager
def launch(user_data_dir: Path, binary: str | None = None) -> Iterator[Browser]:
    """Starts headless Chromium with its own profile directory and a free debugging port; kills it on exit."""
    binary = binary or find_chromium()
    if binary is None:
        raise RuntimeError(INSTALL_HINT)
    user_data_dir.mkdir(parents=True, exist_ok=True)
    log = user_data_dir / "chromium.log"  # a file, not a pipe: a pipe nobody reads would fill and block it
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
             f"--user-data-dir={user_data_dir}", "--no-first-run", "--no-default-browser-check",
             "--disable-background-networking", "--disable-component-update", "--disable-extensions",
             "--disable-sync", "--hide-scrollbars", "--mute-audio", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
        )
    try:
        yield Browser(process, _debugging_port(process, user_data_dir / "DevToolsActivePort", log))
    finally:
        process.kill()
        process.wait(timeout=30)


def _debugging_port(process: subprocess.Popen[bytes], port_file: Path, log: Path) -> int:
    """The port Chromium chose: the first line of DevToolsActivePort, written once it listens."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stderr = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"Chromium exited with {process.returncode} at start: {stderr}")
        lines = port_file.read_text().splitlines() if port_file.exists() else []
        if len(lines) >= 2 and lines[0].isdigit():
            return int(lines[0])
        time.sleep(0.05)
    raise RuntimeError(f"Chromium did not open its debugging port within {START_TIMEOUT:.0f}s")
