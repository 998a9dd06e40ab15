"""Plain SQL on the database's own driver (sqlite3, psycopg): what `run` says to the queue, with no
SQLAlchemy in between.

The statements a run makes — claims, results, attempts, leases, heartbeats — are written once, in SQL
with `?` placeholders that runs unchanged on SQLite and PostgreSQL, and go through a `Tx`: one
transaction on a driver connection, either one that SQLAlchemy opened (PostgreSQL; SQLite while a
submit or a migration needs SQLAlchemy anyway) or a `SqliteFile`'s own. On a SQLite file already at the
current schema, `run` and `status` never import SQLAlchemy: its import alone is ≈ 0.13 s of CPU, more
than the rest of a run's start (bench 1: 6–7 µs a job of a 20,000-job run), and parameter and result
handling around these statements cost ≈ 5 µs a job more.

Driver errors are translated into `StoreError` by whoever opened the transaction.
"""

from __future__ import annotations

import functools
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from itertools import chain
from typing import Any

from batchrun.errors import StoreError
from batchrun.revision import SCHEMA_REVISION

__all__ = ["SQLITE_PRAGMAS", "SqliteFile", "Tx", "failure_reason", "placeholders"]

#: how batchrun opens every SQLite connection (SQLAlchemy's too: `database.py`). WAL: readers (`status`,
#: `export`) never block a runner; a 60 s busy timeout: writers wait their turn instead of failing.
SQLITE_PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL", "PRAGMA busy_timeout=60000",
                  "PRAGMA foreign_keys=ON")


class Tx:
    """One transaction on a driver connection, for SQL written with `?` placeholders (translated for a
    `%s` driver once per statement text). Rows come back as the driver's plain tuples."""

    __slots__ = ("_connection", "mark")

    def __init__(self, connection: Any, mark: str) -> None:
        self._connection = connection
        self.mark = mark  # the driver's placeholder: "?" (sqlite3) or "%s" (psycopg)

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """The rows of a query (or of an INSERT/UPDATE … RETURNING)."""
        with closing(self._connection.cursor()) as cursor:
            cursor.execute(placeholders(sql, self.mark), params)
            return cursor.fetchall()  # type: ignore[no-any-return]

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """A statement without rows to return; how many rows it changed."""
        with closing(self._connection.cursor()) as cursor:
            cursor.execute(placeholders(sql, self.mark), params)
            return int(cursor.rowcount)

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        """One statement for each of `rows`; how many rows they changed in all."""
        if not rows:
            return 0
        with closing(self._connection.cursor()) as cursor:
            cursor.executemany(placeholders(sql, self.mark), rows)
            return int(cursor.rowcount)

    def insert_rows(self, sql_for: Callable[[int], str], rows: Sequence[Sequence[Any]], per: int) -> int:
        """Insert `rows`, `per` rows to a statement (`sql_for(n)`: an INSERT of n rows of VALUES): one
        statement a row costs SQLite ≈ 2 µs a row more (it runs the statement's set-up again for each).
        Returns the rows inserted."""
        whole = len(rows) - len(rows) % per
        inserted = 0
        if whole:
            inserted += self.many(sql_for(per), [tuple(chain.from_iterable(rows[start:start + per]))
                                                 for start in range(0, whole, per)])
        if whole < len(rows):
            inserted += self.run(sql_for(len(rows) - whole), tuple(chain.from_iterable(rows[whole:])))
        return inserted


@functools.lru_cache(maxsize=512)
def placeholders(sql: str, mark: str) -> str:
    """`sql`, written with `?` placeholders, for a driver whose placeholder is `mark` (psycopg: `%s`).

    Not a plain `replace`: a `?` inside a string literal, a quoted name or a `--` comment stays as it
    is, and for a `%s` driver every literal `%` is doubled (psycopg reads `%` as the start of a
    placeholder anywhere in the statement, literals included).
    """
    if mark == "?":
        return sql
    percent = "%%" if mark.startswith("%") else "%"
    out: list[str] = []
    quote: str | None = None  # inside '...' or "..."
    comment = False  # inside -- ... to the end of the line
    previous = ""
    for ch in sql:
        if ch == "%":
            out.append(percent)
        elif comment:
            comment = ch != "\n"
            out.append(ch)
        elif quote is not None:
            quote = None if ch == quote else quote  # '' inside a literal closes and reopens it
            out.append(ch)
        elif ch in "'\"":
            quote = ch
            out.append(ch)
        elif ch == "-" and previous == "-":
            comment = True
            out.append(ch)
        else:
            out.append(mark if ch == "?" else ch)
        previous = ch
    return "".join(out)


class SqliteFile:
    """A SQLite queue file opened by the bare `sqlite3` driver, tuned as SQLAlchemy's connections are:
    transactions begun by batchrun (IMMEDIATE for a writer: a deferred one that upgrades to a write can
    fail with "database is locked" instead of waiting its turn). Use from one thread at a time."""

    PREFIX = "sqlite:///"

    def __init__(self, url: str, connection: sqlite3.Connection) -> None:
        self.url = url
        self._connection: sqlite3.Connection | None = connection

    @classmethod
    def open(cls, url: str) -> SqliteFile | None:
        """The file at `url` through the bare driver, or None where SQLAlchemy must open it instead: not
        a plain `sqlite:///PATH` URL, no such file yet, or not at the current schema (it needs migrating)."""
        path = url[len(cls.PREFIX):]
        # anything but a plain path (query parameters, %-escapes) is left to SQLAlchemy's URL parsing
        if not url.startswith(cls.PREFIX) or "?" in path or "%" in path or not os.path.isfile(path):
            return None
        try:
            connection = _connect(path)
        except sqlite3.Error:
            return None
        try:
            if connection.execute("SELECT version_num FROM alembic_version").fetchall() == [(SCHEMA_REVISION,)]:
                return cls(url, _tuned(connection))
        except sqlite3.Error:
            pass
        connection.close()
        return None

    @contextmanager
    def write(self) -> Iterator[Tx]:
        """A write transaction: committed when the block ends, rolled back if it raises."""
        with self._transaction("BEGIN IMMEDIATE") as tx:
            yield tx

    @contextmanager
    def read(self) -> Iterator[Tx]:
        """A read transaction: one snapshot for the whole block."""
        with self._transaction("BEGIN") as tx:
            yield tx

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[Tx]:
        try:
            connection = self._connection or self._reconnect()
            connection.execute(begin)
            try:
                yield Tx(connection, "?")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._connection is not None and self._connection.in_transaction:
                self._connection.execute("ROLLBACK")
            raise StoreError(f"database {self.url}: {failure_reason(exc)}") from exc

    def _reconnect(self) -> sqlite3.Connection:
        self._connection = _tuned(_connect(self.url[len(self.PREFIX):]))
        return self._connection

    def close(self) -> None:
        """Close the connection; the next transaction opens another (as SQLAlchemy's engine does after
        `dispose`: a process that forks closes it first, and each process then has its own)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _connect(path: str) -> sqlite3.Connection:
    # batchrun begins its own transactions; the store is made in one thread and used in the run's
    # database thread (one at a time)
    return sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)


def _tuned(connection: sqlite3.Connection) -> sqlite3.Connection:
    for pragma in SQLITE_PRAGMAS:
        connection.execute(pragma)
    return connection


def failure_reason(exc: BaseException) -> str:
    """The driver's first line of why, for a `StoreError` message (of the driver's error that SQLAlchemy
    wrapped, if it did)."""
    original = getattr(exc, "orig", None)
    return str(original if original is not None else exc).strip().splitlines()[0]
