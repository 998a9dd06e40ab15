"""The run report as one self-contained HTML page: `render(ReportData) -> str`.

The page loads nothing: styles are inline, charts are inline SVG drawn by `svgchart`, there is no script,
and a Content-Security-Policy forbids any request, so it opens the same offline, from a mail attachment or
years later. Sections: the run (times, exit code, options), throughput, one chart per key, latency, tokens and
cost by model and per hour, fallbacks and prechecks, failures, events. A section with nothing to show says
so in words.

Charts (`svg.chart`, named by `data-chart`): `throughput`; `keys-<key_id>`, one per key, all on the same
value axis; `latency`; `models`; `hours` (only when the run spans more than one hour). Every time chart shares
one time axis, so their timelines line up; events are numbered marks on it, the same numbers as the events
table. Every text from the data is escaped (a model name or an error message may contain `<`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from html import escape

from batchrun.exitcodes import EXIT_MEANINGS
from batchrun.progress import format_cost
from batchrun.reportdata import ReportData, RunEvent
from batchrun.svgchart import Marker, Part, Series, TimeScale, bar_rows, compact, time_chart

OK, ERROR, RATE_LIMITED, REQUESTS = "#2e7d32", "#c62828", "#ef6c00", "#1565c0"
P50, P90, P99 = "#1565c0", "#7b1fa2", "#c62828"
PROMPT, COMPLETION = "#1565c0", "#4db6ac"
#: colours of the models in the per-hour chart, in the order of the models table
PALETTE = ("#1565c0", "#ef6c00", "#2e7d32", "#7b1fa2", "#00838f", "#c62828", "#6d4c41", "#546e7a")
#: an event kind's words and colour on the timeline
EVENT_KINDS = {
    "key_state": ("state change", "#7b1fa2"),
    "key_rate": ("rate change", "#00838f"),
    "key_cooling": ("cooling", "#6d4c41"),
    "breaker": ("breaker", "#ad1457"),
    "catalog": ("catalog", "#455a64"),
    "stop": ("stop", "#000000"),
}

STYLE = """
:root { color-scheme: light; }
body { margin: 0; background: #f4f5f7; color: #222;
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 16px 24px 48px; }
section { background: #fff; border: 1px solid #dde0e4; border-radius: 6px; padding: 4px 20px 16px; margin: 16px 0; }
h1 { font-size: 1.6em; margin: 16px 0 4px; } h2 { font-size: 1.25em; margin: 14px 0 8px; }
h3 { font-size: 1.05em; margin: 14px 0 4px; }
table { border-collapse: collapse; margin: 8px 0; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 3px 12px 3px 0; border-bottom: 1px solid #eceef0; vertical-align: top; }
th { font-weight: 600; color: #444; } td.n, th.n { text-align: right; }
tr.total td { font-weight: 600; border-top: 1px solid #999; }
figure { margin: 8px 0 16px; break-inside: avoid; page-break-inside: avoid; }
figcaption, .note { color: #555; font-size: 0.9em; }
svg.chart { display: block; width: 100%; height: auto; }
.empty { color: #555; font-style: italic; }
.message { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 0.88em;
  white-space: pre-wrap; word-break: break-word; }
.figures { display: flex; flex-wrap: wrap; gap: 6px 28px; margin: 8px 0; }
.figures div b { display: block; font-size: 1.3em; }
.exit-0 { color: #2e7d32; } .exit-bad { color: #c62828; }
@media print {
  body { background: none; font-size: 11pt; } main { max-width: none; padding: 0; }
  section { border: none; border-radius: 0; padding: 0; margin: 0 0 12pt; }
  h2, h3 { break-after: avoid; page-break-after: avoid; }
  svg.chart, figure, table { break-inside: avoid; page-break-inside: avoid; }
}
"""
#: no request of any kind: what the page needs is in it (the browser test relies on this too)
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
#: an event and its number on the timelines and in the events table
Numbered = tuple[int, RunEvent]


def render(data: ReportData) -> str:
    """The report of one run, a whole HTML document."""
    scale = time_scale(data)
    events = list(enumerate(sorted(data.events, key=lambda e: e.at), 1))
    sections = [_run(data), _throughput(data, scale, events), _keys(data, scale, events), _latency(data, scale),
                _models(data), _hours(data), _fallbacks(data), _failures(data), _events(scale, events)]
    title = f"batchrun run {data.run.id}" + (f" — batch {data.batch}" if data.batch else "")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n<body><main>\n"
            + "\n".join(sections) + "\n</main></body></html>\n")


def time_scale(data: ReportData) -> TimeScale:
    """The span every time chart shows: the run, widened to any bucket or event outside it."""
    starts = [b.start for b in data.buckets] + [b.start for b in data.keys] + [b.start for b in data.latency]
    start = min([data.run.started_at, *starts])
    end = max([data.run.ended_at or data.run.started_at, *(s + data.bucket_seconds for s in starts),
               *(e.at for e in data.events)])
    return TimeScale(start, end)


def utc(epoch: float, pattern: str = "%Y-%m-%d %H:%M:%S UTC") -> str:
    return time.strftime(pattern, time.gmtime(epoch))


def duration_text(seconds: float) -> str:
    """`42.3 s`, `12 min 05 s`, `7 h 02 min`."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def seconds_text(seconds: float | None) -> str:
    """A latency: `85 ms`, `1.24 s`; `–` when there is none."""
    if seconds is None:
        return "–"
    if seconds == 0:
        return "0"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.3g} s"


def _section(anchor: str, heading: str, *parts: str) -> str:
    return f'<section id="{anchor}"><h2>{escape(heading)}</h2>\n' + "\n".join(parts) + "\n</section>"


def _empty(text: str) -> str:
    return f'<p class="empty">{escape(text)}</p>'


def _table(head: Sequence[str], rows: Iterable[Sequence[object]], *, numeric: Iterable[int] = (),
           total: Sequence[object] | None = None) -> str:
    """A table of escaped cells; columns in `numeric` align right; `total` is a last, bold row."""
    right = set(numeric)

    def cells(tag: str, values: Sequence[object]) -> str:
        return "".join(f'<{tag}{" class=n" if i in right else ""}>{escape(str(v))}</{tag}>'
                       for i, v in enumerate(values))

    body = [f"<tr>{cells('td', row)}</tr>" for row in rows]
    if total is not None:
        body.append(f'<tr class="total">{cells("td", total)}</tr>')
    return f"<table><thead><tr>{cells('th', head)}</tr></thead><tbody>" + "".join(body) + "</tbody></table>"


def _figure(chart: str, caption: str) -> str:
    return f"<figure>{chart}<figcaption>{escape(caption)}</figcaption></figure>"


def _run(data: ReportData) -> str:
    run = data.run
    if run.exit_code is None:
        exit_text, exit_class = "none: the run has not ended, or its runner died before ending it", "exit-bad"
    else:
        meaning = EXIT_MEANINGS.get(run.exit_code, "an exit code batchrun does not document")
        exit_text, exit_class = f"{run.exit_code} — {meaning}", "exit-0" if run.exit_code == 0 else "exit-bad"
    facts = [
        ("batch", data.batch or "all batches of the run"),
        ("runner", run.owner),
        ("started", utc(run.started_at)),
        ("ended", utc(run.ended_at) if run.ended_at is not None else "not ended"),
        ("duration", duration_text(run.duration) if run.duration is not None else "unknown (not ended)"),
    ]
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in facts)
    rows += f'<tr><th>exit code</th><td class="{exit_class}">{escape(exit_text)}</td></tr>'
    if run.outcome:
        rows += f"<tr><th>outcome</th><td>{escape(run.outcome)}</td></tr>"
    tokens = sum(m.prompt_tokens + m.completion_tokens for m in data.models)
    figures = [("attempts", f"{data.attempts:,}"), ("succeeded", f"{data.succeeded:,}"),
               ("errors", f"{data.errors:,}"), ("p50 / p90 / p99",
               " / ".join(seconds_text(p) for p in (data.p50, data.p90, data.p99))),
               ("tokens", f"{tokens:,}"), ("cost", _cost(m.cost for m in data.models))]
    figure_html = "".join(f"<div>{escape(k)}<b>{escape(v)}</b></div>" for k, v in figures)
    options = (_table(("option", "value"), sorted(run.options.items())) if run.options
               else _empty("no options were recorded for this run"))
    return (f"<h1>{escape(f'Run {run.id}')}</h1>\n"
            + _section("run", "The run", f"<table>{rows}</table>", f'<div class="figures">{figure_html}</div>',
                       "<h3>Options</h3>", options))


def _cost(costs: Iterable[float | None]) -> str:
    """The total of several models' costs: `unknown` when none has a price, and says so when some have none."""
    every = list(costs)
    known = [c for c in every if c is not None]
    if every and not known:
        return format_cost(None, 0)
    return format_cost(sum(known), 0) + (" (some models have no price)" if len(known) < len(every) else "")


def _rate(seconds: int) -> tuple[float, str]:
    """What a bucket's count is multiplied by to show a rate, and the rate's unit: per second for a run
    short enough to have buckets under a minute (a 5 s demo at 6,000 a minute reads oddly), else per minute."""
    return (1 / seconds, "second") if seconds < 60 else (60 / seconds, "minute")


def _rate_caption(seconds: int) -> str:
    if seconds in (1, 60):
        return f"each bar is one {_rate(seconds)[1]}"
    factor, unit = _rate(seconds)
    return f"each bar is a {seconds}-second bucket, its count scaled to a rate per {unit} (× {factor:.3g})"


def _markers(events: Iterable[Numbered]) -> list[Marker]:
    markers = []
    for number, event in events:
        kind, color = EVENT_KINDS.get(event.kind, (event.kind, "#455a64"))
        who = f"key {event.key_id} " if event.key_id else ""
        markers.append(Marker(event.at, kind, color,
                              f"#{number} {utc(event.at, '%H:%M:%S')} {who}{kind}: {event.message}", number))
    return markers


def _throughput(data: ReportData, scale: TimeScale, events: Sequence[Numbered]) -> str:
    if not data.buckets:
        return _section("throughput", "Completions and errors", _empty("no attempts were recorded in this run"))
    per_minute, unit = _rate(data.bucket_seconds)
    series = [
        Series("succeeded", OK, [(b.start, b.succeeded * per_minute) for b in data.buckets]),
        Series("errors (not 429)", ERROR, [(b.start, (b.errors - b.rate_limited) * per_minute) for b in data.buckets]),
        Series("429 rate limited", RATE_LIMITED, [(b.start, b.rate_limited * per_minute) for b in data.buckets]),
    ]
    markers = _markers(pair for pair in events if pair[1].key_id is None)
    chart = time_chart("throughput", scale, data.bucket_seconds, series, y_title=f"attempts per {unit}",
                       markers=markers)
    caption = (f"Attempts by the time they ended; {_rate_caption(data.bucket_seconds)}. "
               "Marks are run-wide events, numbered as in the events table.")
    return _section("throughput", "Completions and errors", _figure(chart, caption))


def _keys(data: ReportData, scale: TimeScale, events: Sequence[Numbered]) -> str:
    if not data.keys:
        return _section("keys", "Keys", _empty("no request was sent with any key"))
    per_minute, unit = _rate(data.bucket_seconds)
    peak = max(b.requests for b in data.keys) * per_minute
    parts = [f'<p class="note">Requests each key sent, by the time they ended, per {unit} '
             f"({_rate_caption(data.bucket_seconds)}); every key on the same scale. Marks are the key's events: "
             "hover for the message, or see the events table by number.</p>"]
    for key_id in data.key_ids:
        buckets = [b for b in data.keys if b.key_id == key_id]
        requests, limited = sum(b.requests for b in buckets), sum(b.rate_limited for b in buckets)
        series = [Series("requests (not 429)", REQUESTS,
                         [(b.start, (b.requests - b.rate_limited) * per_minute) for b in buckets]),
                  Series("429 rate limited", RATE_LIMITED, [(b.start, b.rate_limited * per_minute) for b in buckets])]
        own = [pair for pair in events if pair[1].key_id == key_id]
        chart = time_chart(f"keys-{key_id}", scale, data.bucket_seconds, series, y_title=f"requests per {unit}",
                           markers=_markers(own), y_max=peak, height=190)
        share = f" ({limited / requests:.1%})" if requests else ""
        parts.append(f"<h3>key {escape(key_id)}</h3>")
        parts.append(_figure(chart, f"{requests:,} requests, {limited:,} answered 429{share}, "
                                    f"{len(own)} event(s)"))
    return _section("keys", "Keys", *parts)


def _latency(data: ReportData, scale: TimeScale) -> str:
    if not data.latency:
        return _section("latency", "Latency", _empty("no attempt was answered, so there is no latency to show"))
    answered = sum(b.count for b in data.latency)
    overall = (f'<div class="figures"><div>p50<b>{seconds_text(data.p50)}</b></div>'
               f"<div>p90<b>{seconds_text(data.p90)}</b></div><div>p99<b>{seconds_text(data.p99)}</b></div>"
               f"<div>answered attempts<b>{answered:,}</b></div></div>")
    series = [Series("p50", P50, [(b.start, b.p50) for b in data.latency]),
              Series("p90", P90, [(b.start, b.p90) for b in data.latency]),
              Series("p99", P99, [(b.start, b.p99) for b in data.latency])]
    chart = time_chart("latency", scale, data.bucket_seconds, series, y_title="latency", fmt=seconds_text,
                       lines=True)
    caption = (f"From sending to the answer, percentiles of the attempts answered in each "
               f"{data.bucket_seconds}-second bucket; a gap is a bucket in which nothing was answered.")
    return _section("latency", "Latency", overall, _figure(chart, caption))


def _models(data: ReportData) -> str:
    if not data.models:
        return _section("models", "Tokens and cost by model", _empty("no tokens were used: no attempt succeeded"))
    models = sorted(data.models, key=lambda m: -(m.prompt_tokens + m.completion_tokens))
    rows = [(m.model, f"{m.requests:,}", f"{m.prompt_tokens:,}", f"{m.completion_tokens:,}",
             f"{m.prompt_tokens + m.completion_tokens:,}", format_cost(m.cost, 0)) for m in models]
    total = ("all models", f"{sum(m.requests for m in models):,}", f"{sum(m.prompt_tokens for m in models):,}",
             f"{sum(m.completion_tokens for m in models):,}",
             f"{sum(m.prompt_tokens + m.completion_tokens for m in models):,}", _cost(m.cost for m in models))
    table = _table(("model (served)", "requests", "prompt tokens", "completion tokens", "tokens", "cost"), rows,
                   numeric=range(1, 6), total=total if len(models) > 1 else None)
    chart = bar_rows("models", [m.model for m in models],
                     [Part("prompt tokens", PROMPT, [m.prompt_tokens for m in models]),
                      Part("completion tokens", COMPLETION, [m.completion_tokens for m in models])],
                     x_title="tokens", notes=[format_cost(m.cost, 0) for m in models])
    return _section("models", "Tokens and cost by model", table,
                    _figure(chart, "Tokens of the succeeded attempts, by the model that served them, and their cost."))


def _hours(data: ReportData) -> str:
    if not data.hours:
        return _section("hours", "Tokens and cost per hour", _empty("no tokens were used in any hour"))
    hours = sorted({h.hour for h in data.hours})
    pattern = "%Y-%m-%d %H:00" if len({utc(h, "%F") for h in hours}) > 1 else "%H:00"
    rows = [(utc(h.hour, pattern), h.model, f"{h.prompt_tokens:,}", f"{h.completion_tokens:,}",
             f"{h.prompt_tokens + h.completion_tokens:,}", format_cost(h.cost, 0))
            for h in sorted(data.hours, key=lambda h: (h.hour, h.model))]
    table = _table(("hour (UTC)", "model", "prompt tokens", "completion tokens", "tokens", "cost"), rows,
                   numeric=range(2, 6))
    if len(hours) < 2:
        return _section("hours", "Tokens and cost per hour", table,
                        '<p class="note">The run used a single hour, so there is no chart.</p>')
    priced = {h.model for h in data.hours if h.cost is not None}
    by_cost = bool(priced)
    order = [m.model for m in sorted(data.models, key=lambda m: -(m.prompt_tokens + m.completion_tokens))]
    order += sorted({h.model for h in data.hours} - set(order))
    unpriced = [model for model in order if model not in priced]
    if by_cost:
        order = [model for model in order if model in priced]
    series = [Series(model, PALETTE[i % len(PALETTE)],
                     [(h.hour, (h.cost or 0.0) if by_cost else float(h.prompt_tokens + h.completion_tokens))
                      for h in data.hours if h.model == model]) for i, model in enumerate(order)]
    chart = time_chart("hours", TimeScale(hours[0], hours[-1] + 3600), 3600, series,
                       y_title="cost per hour (USD)" if by_cost else "tokens per hour",
                       fmt=(lambda v: f"${v:.4g}") if by_cost else compact)
    caption = ("Tokens of each hour, by model (no model has a catalogue price)." if not by_cost
               else "Cost of each hour, by model." + (
                   f" Left out, without a catalogue price: {', '.join(unpriced)}." if unpriced else ""))
    return _section("hours", "Tokens and cost per hour", table, _figure(chart, caption))


def _fallbacks(data: ReportData) -> str:
    fallbacks = (_table(("requested", "sent", "reason", "attempts"),
                        [(f.requested, f"→ {f.sent}", f.reason, f"{f.attempts:,}") for f in data.fallbacks],
                        numeric=(3,)) if data.fallbacks
                 else _empty("no fallbacks: every attempt went to the model its job asked for"))
    codes = sorted(data.prechecks.items(), key=lambda kv: (-kv[1], kv[0]))
    prechecks = (_table(("code", "jobs"), [(code, f"{jobs:,}") for code, jobs in codes], numeric=(1,))
                 if codes else _empty("no job was refused before sending"))
    return _section("fallbacks", "Fallbacks and prechecks", "<h3>Fallbacks</h3>", fallbacks,
                    "<h3>Prechecks (jobs failed before sending)</h3>", prechecks)


def _failures(data: ReportData) -> str:
    if not data.failures:
        return _section("failures", "Failures", _empty("no failures"))
    rows = "".join(f'<tr><td>{escape(f.code)}</td><td class="n">{escape(str(f.status) if f.status else "–")}</td>'
                   f'<td class="n">{f.count:,}</td><td class="message">{escape(f.example)}</td></tr>'
                   for f in data.failures)
    return _section("failures", "Failures", "<p class=\"note\">The most frequent error codes of the attempts "
                    "(retried ones included), each with one example message.</p>",
                    "<table><thead><tr><th>code</th><th class=n>HTTP</th><th class=n>attempts</th>"
                    f"<th>example message</th></tr></thead><tbody>{rows}</tbody></table>")


def _events(scale: TimeScale, events: Sequence[Numbered]) -> str:
    if not events:
        return _section("events", "Events", _empty("no events: no key changed state or rate, nothing stopped"))
    pattern = "%Y-%m-%d %H:%M:%S" if scale.span > 86400 else "%H:%M:%S"
    rows = [(number, utc(e.at, pattern), EVENT_KINDS.get(e.kind, (e.kind, ""))[0], e.key_id or "–", e.message)
            for number, e in events]
    return _section("events", "Events", _table(("#", "time (UTC)", "kind", "key", "message"), rows, numeric=(0,)))
