"""The run report in a real headless Chromium: every chart renders with a size, nothing is logged as an error,
nothing is fetched, and a full-page screenshot comes out. Needs Debian's `chromium` (`.ci/run` installs it);
without it these tests fail, they do not skip."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import INSTALL_HINT, Browser, find_chromium, launch, png_size
from conftest import FAST_RETRY, Cli, make_keys, provider_env, write_jobs
from report_sample import sample_report

from batchrun.report_html import render
from batchrun.simulator import RunningSimulator

CHARTS = ["throughput", "keys-k1", "keys-k2", "keys-k3", "latency", "models", "hours"]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    if find_chromium() is None:
        pytest.fail(INSTALL_HINT)
    with launch(tmp_path / "chromium-profile") as running:
        yield running


def test_the_report_renders_offline_with_every_chart(browser: Browser, tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    report.write_text(render(sample_report()), encoding="utf-8")

    page = browser.open_page(report)

    assert page.console_errors == []
    assert page.network_requests == []
    assert [name for name, _, _ in page.charts] == CHARTS
    for name, width, height in page.charts:
        assert width > 600 and height > 80, (name, width, height)
    shot = page.screenshot(tmp_path / "report.png")
    width, height = png_size(shot.read_bytes())
    assert width == 1280 and height > 2500  # the whole page, not the first screen
    assert shot.stat().st_size > 50_000


def test_the_helper_sees_errors_and_requests(browser: Browser, tmp_path: Path) -> None:
    """The checks above are not vacuous: a page that logs an error, throws, and fetches an image is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><img src="https://example.invalid/logo.png">'
                   '<svg class="chart" data-chart="x" viewBox="0 0 10 10" width="100"></svg>'
                   '<script>console.error("boom"); throw new Error("bad thing")</script></body></html>')

    page = browser.open_page(bad)

    assert page.network_requests == ["https://example.invalid/logo.png"]
    assert any("boom" in e for e in page.console_errors)
    assert any("bad thing" in e for e in page.console_errors)
    assert page.charts == [("x", 100, 100)]


def test_the_report_of_a_real_run_against_the_simulator(browser: Browser, cli: Cli, sim: RunningSimulator,
                                                         tmp_path: Path) -> None:
    sim.config.latency, sim.config.latency_jitter, sim.config.fail_rate = 0.01, 0.03, 0.1
    sim.config.random_429_rate, sim.config.random_429_retry_after = 0.1, 0.1
    sim.config.revoked = {"key3"}
    write_jobs(tmp_path / "jobs.jsonl", 100)
    assert cli("submit", str(tmp_path / "jobs.jsonl")).returncode == 0
    run = cli("run", "--no-progress", "--max-attempts", "10", *FAST_RETRY, env=provider_env(sim, make_keys(3)))
    assert run.returncode == 0, run.stderr
    made = cli("report", "--output", str(tmp_path / "report.html"))
    assert made.returncode == 0, made.stderr

    page = browser.open_page(tmp_path / "report.html")

    assert page.console_errors == [] and page.network_requests == []
    assert [name for name, _, _ in page.charts] == ["throughput", "keys-key1", "keys-key2", "keys-key3", "latency",
                                                    "models"]
    assert all(width > 600 and height > 50 for _, width, height in page.charts), page.charts
    assert png_size(page.screenshot(tmp_path / "report.png").read_bytes())[0] == 1280
