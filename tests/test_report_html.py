"""The run report's HTML, from hand-built ReportData: what a reader would see, and that it stands alone."""

from __future__ import annotations

import dataclasses
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

from report_sample import STARTED, sample_report

from batchrun.report_html import render
from batchrun.reportdata import (
    Bucket, FailureCode, HourUsage, KeyBucket, LatencyBucket, ModelUsage, ReportData, RunInfo,
)
from batchrun.svgchart import TimeScale, nice_top


def charts(page: str) -> dict[str, ET.Element]:
    """Each `svg.chart` by its data-chart name, parsed as XML (so a stray `<` or `&` would fail here)."""
    found = {}
    for svg in re.findall(r'<svg class="chart".*?</svg>', page, re.S):
        element = ET.fromstring(svg)
        found[element.attrib["data-chart"]] = element
    return found


def marker_titles(chart: ET.Element) -> list[str]:
    return [title.text or "" for title in chart.findall("./g[@class='marker']/title")]


class Attributes(HTMLParser):
    """Every tag and attribute of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes += [(name, value or "") for name, value in attrs]


def empty_report(**changes: object) -> ReportData:
    run = RunInfo(id=7, owner="box:1:x", started_at=STARTED, ended_at=STARTED + 3.2, exit_code=0,
                  outcome="all jobs succeeded")
    data = ReportData(run=run, batch=None, bucket_seconds=1, attempts=0, succeeded=0, errors=0, buckets=(), keys=(),
                      latency=(), p50=None, p90=None, p99=None, events=(), models=(), hours=(), fallbacks=(),
                      prechecks={}, failures=())
    return dataclasses.replace(data, **changes)  # type: ignore[arg-type]


def test_a_realistic_run_has_every_chart_scalable() -> None:
    found = charts(render(sample_report()))
    assert list(found) == ["throughput", "keys-k1", "keys-k2", "keys-k3", "latency", "models", "hours"]
    for svg in found.values():
        assert svg.attrib["width"] == "100%"
        assert re.fullmatch(r"0 0 800 \d+", svg.attrib["viewBox"])


def test_the_header_shows_times_in_utc_the_exit_code_and_the_options() -> None:
    page = render(sample_report())
    assert "2026-03-14 22:10:00 UTC" in page and "2026-03-15 00:09:43 UTC" in page
    assert "1 h 59 min" in page
    assert "1 — finished; some jobs failed permanently" in page
    assert "finished; 131 jobs failed permanently" in page
    assert "<td>--rate-limit</td><td>600/1m</td>" in page
    assert "nightly-2026-03-14" in page


def test_each_keys_events_are_marked_on_its_own_timeline() -> None:
    found = charts(render(sample_report()))
    k2 = marker_titles(found["keys-k2"])
    assert len(k2) == 4
    assert any("rate lowered 600/1m -> 420/1m" in t for t in k2)
    assert any("cooling" in t for t in k2)
    assert [t for t in marker_titles(found["keys-k3"]) if "unusable: 401" in t]
    assert len(marker_titles(found["keys-k1"])) == 1
    # the run-wide events (the breaker) are on the throughput chart, not on any key's
    run_wide = marker_titles(found["throughput"])
    assert len(run_wide) == 2 and all("breaker" in t for t in run_wide)
    # numbered in time order, as in the events table
    assert run_wide[0].startswith("#5 23:10:05 breaker: most requests failed")
    assert "<td class=n>5</td><td>23:10:05</td><td>breaker</td>" in render(sample_report())


def test_every_key_chart_uses_the_same_scale() -> None:
    found = charts(render(sample_report()))
    labels = [[t.text for t in svg.findall("./text[@text-anchor='end']")] for name, svg in found.items()
              if name.startswith("keys-")]
    assert labels[0] == labels[1] == labels[2]


def test_text_from_the_data_is_escaped() -> None:
    evil = '<script>alert(1)</script> & <evil x="1">'
    data = dataclasses.replace(
        sample_report(),
        failures=(FailureCode("invalid_request", 400, 3, f"bad input: {evil}"),),
        models=(ModelUsage(evil, 3, 10, 5, 0.01),),
        hours=(HourUsage(STARTED, evil, 10, 5, 0.01), HourUsage(STARTED + 3600, evil, 10, 5, 0.01)),
        run=dataclasses.replace(sample_report().run, options={"--note": evil}),
    )
    page = render(data)
    assert "<script" not in page and "<evil" not in page
    assert "bad input: &lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;evil x=&quot;1&quot;&gt;" in page
    found = charts(page)  # still well-formed with the model name in labels, titles and legends
    assert any(evil in (t.text or "") for t in found["models"].iter("title"))


def test_an_empty_run_says_so_in_every_section() -> None:
    page = render(empty_report())
    assert charts(page) == {}
    for words in ("no attempts were recorded", "no request was sent with any key", "no latency to show",
                  "no tokens were used", "no fallbacks", "no job was refused before sending", "no failures",
                  "no events", "no options were recorded", "all batches of the run", "0 — all jobs finished"):
        assert words in page, words


def test_a_run_that_has_not_ended() -> None:
    page = render(empty_report(run=RunInfo(id=8, owner="box:2:y", started_at=STARTED, ended_at=None,
                                           exit_code=None, outcome=None)))
    assert "not ended" in page and "the run has not ended, or its runner died" in page


def test_the_page_loads_nothing() -> None:
    page = render(sample_report())
    parser = Attributes()
    parser.feed(page)
    assert "script" not in parser.tags and "link" not in parser.tags and "img" not in parser.tags
    assert not [a for a in parser.attributes if "://" in a[1] or a[0] in ("src", "href")]
    assert "url(" not in page and "@import" not in page
    # the base URL option is there, as text
    assert "<td>https://api.privatemind.com/v1</td>" in page


def test_counts_are_shown_per_minute_or_per_second_for_short_buckets() -> None:
    data = empty_report(bucket_seconds=120, attempts=7, succeeded=5, errors=2,
                        buckets=(Bucket(STARTED, 5, 2, 1),), keys=(KeyBucket("k1", STARTED, 7, 1),))
    page = render(data)
    throughput = charts(page)["throughput"]
    titles = [t.text for t in throughput.findall("./rect/title")]
    assert titles == ["22:10:00 succeeded: 2.5", "22:10:00 errors (not 429): 0.5", "22:10:00 429 rate limited: 0.5"]
    assert "attempts per minute" in ET.tostring(throughput, encoding="unicode")
    assert "120-second bucket, its count scaled to a rate per minute" in page

    short = render(empty_report(bucket_seconds=10, attempts=7, succeeded=5, errors=2,
                                buckets=(Bucket(STARTED, 50, 20, 10),), keys=(KeyBucket("k1", STARTED, 70, 10),)))
    throughput = charts(short)["throughput"]
    assert [t.text for t in throughput.findall("./rect/title")] == [
        "22:10:00 succeeded: 5", "22:10:00 errors (not 429): 1", "22:10:00 429 rate limited: 1"]
    assert "attempts per second" in ET.tostring(throughput, encoding="unicode")
    assert "10-second bucket, its count scaled to a rate per second" in short


def test_latency_lines_break_where_nothing_was_answered() -> None:
    latency = charts(render(sample_report()))["latency"]
    assert len(latency.findall("./polyline")) == 6  # p50, p90, p99: each before and after the gap
    assert "740 ms" in render(sample_report())


def test_one_hour_has_a_table_and_no_chart() -> None:
    data = empty_report(models=(ModelUsage("m", 1, 10, 5, None),), hours=(HourUsage(STARTED - 600, "m", 10, 5, None),),
                        latency=(LatencyBucket(STARTED, 1, 0.2, 0.3, 0.4),))
    page = render(data)
    assert list(charts(page)) == ["latency", "models"]
    assert "<td>22:00</td><td>m</td>" in page and "a single hour" in page


def test_time_labels_follow_the_runs_length() -> None:
    assert TimeScale(STARTED, STARTED + 45).label(STARTED + 10) == "22:10:10"
    assert TimeScale(STARTED, STARTED + 7200).label(STARTED + 3000) == "23:00"
    assert TimeScale(STARTED, STARTED + 3 * 86400).label(STARTED) == "14 Mar 22:10"
    ticks = TimeScale(STARTED + 3, STARTED + 7200).ticks()
    assert ticks[0] == STARTED + 300 and all(b - a == 900 for a, b in zip(ticks, ticks[1:]))


def test_value_axes_end_on_a_round_number() -> None:
    assert nice_top(730) == (800, 200)
    assert nice_top(3) == (3, 1)
    assert nice_top(0) == (1, 0.25)
    assert nice_top(0.37) == (0.4, 0.1)
