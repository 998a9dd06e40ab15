"""Parsing of the small value types that flags and config files share: durations and rates."""

from __future__ import annotations

import datetime
import re
import time
from dataclasses import dataclass

from batchrun.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_SECONDS_PER_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str | float | int, *, field: str = "duration") -> float:
    """Seconds from `500ms`, `1s`, `1.5m`, `6h`, `1d`, or a bare number of seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        match = _DURATION.match(str(text))
        if not match:
            raise ConfigError(f"{field}: {text!r} is not a duration (examples: 500ms, 1s, 1m, 6h)")
        seconds = float(match.group(1)) * _SECONDS_PER_UNIT[match.group(2) or "s"]
    if seconds < 0:
        raise ConfigError(f"{field}: {text!r} must not be negative")
    return seconds


_CLOCK = re.compile(r"^\s*([01]?\d|2[0-3]):([0-5]\d)\s*$")


def next_occurrence(text: str, now: float, *, field: str = "until") -> float:
    """Epoch seconds of the next local wall-clock time `HH:MM` after `now` (today or tomorrow)."""
    match = _CLOCK.match(str(text))
    if not match:
        raise ConfigError(f"{field}: {text!r} is not a time of day (expected HH:MM, e.g. 07:00)")
    local = datetime.datetime.fromtimestamp(now)
    target = local.replace(hour=int(match.group(1)), minute=int(match.group(2)), second=0, microsecond=0)
    if target.timestamp() <= now:
        target = (target.replace(tzinfo=None) + datetime.timedelta(days=1))
    return target.timestamp()


def format_clock(epoch: float) -> str:
    """Local wall-clock time of an epoch, as logs and `status` show it: `2026-11-22 07:00:00`."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


@dataclass(frozen=True, slots=True)
class Rate:
    """At most `count` units in any window of `period` seconds."""

    count: int
    period: float

    def __str__(self) -> str:
        return f"{self.count}/{format_period(self.period)}"


def parse_rate(text: str, *, field: str = "rate") -> Rate:
    """A rate like `20/1s`, `600/1m` or `600/m`; the count must be a positive integer."""
    count_text, sep, period_text = str(text).partition("/")
    if not sep:
        raise ConfigError(f"{field}: {text!r} is not a rate (expected N/DURATION, e.g. 20/1s or 600/1m)")
    try:
        count = int(count_text.strip())
    except ValueError:
        raise ConfigError(f"{field}: {text!r}: {count_text.strip()!r} is not a whole number") from None
    period_text = period_text.strip()
    if period_text and period_text[0].isalpha():
        period_text = "1" + period_text
    period = parse_duration(period_text, field=field)
    if count <= 0 or period <= 0:
        raise ConfigError(f"{field}: {text!r} must have a positive count and duration")
    return Rate(count, period)


def format_period(seconds: float) -> str:
    """`1s`, `1m`, `500ms`: how a rate's period is written."""
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    if seconds >= 1 and float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{int(round(seconds * 1000))}ms"
