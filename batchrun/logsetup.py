"""Where log records go: set up by the CLI only (the library just calls `logging.getLogger(__name__)`).

Two destinations, one format choice:

    stderr          text: `batchrun: LEVEL: message` (as always)       json: one object per line
    --log-file      text: `<ISO 8601 time> batchrun: LEVEL: message`   json: one object per line
                    (appended, flushed after every record, closed when the command ends)

A JSON line has at least `time` (ISO 8601 with the UTC offset), `level`, `logger` and `message`, plus
`exception` when there is one and any structured field the library passed with `extra=`.

What a command prints as its result on stdout (the closing summary of `run`) is written to the log
file too, through the `batchrun.outcome` logger, so the last lines of a cron log tell what happened.
Nothing here adds a field the library did not log: no key, and so no secret, is ever written.
"""

from __future__ import annotations

import datetime
import logging
import sys
from collections.abc import Iterable

import orjson

from batchrun.errors import ConfigError

FORMATS = ("text", "json")
ROOT = "batchrun"
#: the result a command printed on stdout, repeated in the log file only (stderr already has the rest)
OUTCOME = "batchrun.outcome"

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}

_json_mode = False
_file_handler: logging.FileHandler | None = None


def _timestamp(record: logging.LogRecord) -> str:
    """Local time with its UTC offset, e.g. 2025-03-01T01:00:04.123+01:00."""
    moment = datetime.datetime.fromtimestamp(record.created).astimezone()
    return moment.isoformat(timespec="milliseconds")


class TextFormatter(logging.Formatter):
    """`batchrun: LEVEL: message`, and with `timestamps` the time before every line (a traceback too)."""

    def __init__(self, timestamps: bool = False) -> None:
        super().__init__("batchrun: %(levelname)s: %(message)s")
        self._timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if not self._timestamps:
            return text
        stamp = _timestamp(record)
        return "\n".join(f"{stamp} {line}" for line in text.splitlines())


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": _timestamp(record), "level": record.levelname, "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD and name not in entry and not name.startswith("_"):
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure(verbose: int = 0, log_format: str = "text", log_file: str | None = None) -> None:
    """(Re)configure batchrun's loggers; a later call replaces what an earlier one set up.

    Raises ConfigError if the log file cannot be opened for appending.
    """
    global _json_mode, _file_handler
    if log_format not in FORMATS:
        raise ConfigError(f"unknown log format {log_format!r}: expected one of {', '.join(FORMATS)}")
    close()
    _json_mode = log_format == "json"
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(JsonFormatter() if _json_mode else TextFormatter())
    root = logging.getLogger(ROOT)
    root.handlers[:] = [stderr]
    root.setLevel(logging.DEBUG if verbose > 1 else logging.INFO if verbose == 1 else logging.WARNING)
    root.propagate = False
    # Progress lines and the opening summary of a run are shown at every verbosity.
    logging.getLogger("batchrun.progress").setLevel(logging.INFO)
    outcome = logging.getLogger(OUTCOME)
    outcome.handlers[:] = [logging.NullHandler()]
    outcome.setLevel(logging.INFO)
    outcome.propagate = False
    if log_file:
        # Opened now, not on the first record: a bad path is a usage error before any work is done.
        try:
            _file_handler = logging.FileHandler(log_file, mode="a", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot open log file {log_file}: {exc.strerror or exc}") from None
        _file_handler.setFormatter(JsonFormatter() if _json_mode else TextFormatter(timestamps=True))
        root.addHandler(_file_handler)
        outcome.handlers[:] = [_file_handler]


def record_outcome(lines: Iterable[str], exit_code: int) -> None:
    """Repeat the lines a command printed on stdout in the log file (if any); the last carries the exit code."""
    listed = list(lines)
    outcome = logging.getLogger(OUTCOME)
    for index, line in enumerate(listed):
        extra = {"exit_code": exit_code} if index == len(listed) - 1 else None
        outcome.info("%s", line, extra=extra)


def report_error(message: str, exit_code: int) -> None:
    """The error a command ends with: on stderr (`batchrun: error: ...`, or JSON) and in the log file."""
    if _json_mode:
        logging.getLogger("batchrun.cli").error("%s", message, extra={"exit_code": exit_code})
        return
    print(f"batchrun: error: {message}", file=sys.stderr, flush=True)
    logging.getLogger(OUTCOME).error("%s (exit %d)", message, exit_code, extra={"exit_code": exit_code})


def close() -> None:
    """Flush and close the log file, if one is open; stderr logging stays."""
    global _file_handler
    if _file_handler is None:
        return
    handler, _file_handler = _file_handler, None
    for name in (ROOT, OUTCOME):
        logger = logging.getLogger(name)
        if handler in logger.handlers:
            logger.removeHandler(handler)
    if not logging.getLogger(OUTCOME).handlers:
        logging.getLogger(OUTCOME).addHandler(logging.NullHandler())
    handler.close()
