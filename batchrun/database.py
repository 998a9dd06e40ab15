"""Opening the queue database with SQLAlchemy: an engine for SQLite or PostgreSQL, tuned, and migrated
to the schema this code expects. `store.Store` opens its engine here (only when it needs one: a SQLite
file at the current schema it opens with the bare driver, `driver.SqliteFile`) and does everything else
itself.

SQLite: WAL, `synchronous=NORMAL`, a 60 s busy timeout, foreign keys on, and batchrun's own BEGIN
(IMMEDIATE for writers: a deferred transaction that upgrades to a write can fail with "database is
locked" instead of waiting its turn). PostgreSQL goes through psycopg 3 (`postgresql://` means
`postgresql+psycopg://`); two runners migrating a fresh database take an advisory lock in turn.
"""

from __future__ import annotations

import importlib.util
import os
from importlib import resources
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from batchrun.driver import SQLITE_PRAGMAS, Tx, failure_reason
from batchrun.errors import StoreError
from batchrun.revision import SCHEMA_REVISION

__all__ = ["alembic_config", "create_store_engine", "current_revision", "driver_tx",
           "migrate_to_head"]

#: pg_advisory_xact_lock key of migrations (0003's tally writers use 7166022)
MIGRATION_LOCK = 7166021


def create_store_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StoreError(f"not a database URL: {url!r} (expected e.g. sqlite:///batchrun.db or "
                         "postgresql://user@host:5432/db)") from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:":
            folder = os.path.dirname(os.path.abspath(database))
            if not os.path.isdir(folder):
                raise StoreError(f"cannot open database {url}: folder {folder} does not exist")
        engine = create_engine(parsed, connect_args={"timeout": 60})
        _tune_sqlite(engine)
        return engine
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        if parsed.get_driver_name() == "psycopg" and importlib.util.find_spec("psycopg") is None:
            raise StoreError(f"{parsed.render_as_string(hide_password=True)} needs the PostgreSQL driver, "
                             "which is not installed: pip install 'batchrun[postgresql]'")
        return create_engine(parsed, pool_pre_ping=True)
    raise StoreError(f"unsupported database {url!r}: use sqlite:///PATH or postgresql://...")


def migrate_to_head(engine: Engine, url: str) -> None:
    """Run pending Alembic migrations; cheap when the database is already at head."""
    # Checked without loading Alembic (a third of a second): most commands find the schema current.
    if current_revision(engine) == SCHEMA_REVISION:
        return
    from alembic import command

    config = alembic_config(engine)
    try:
        with engine.execution_options(batchrun_write=True).begin() as conn:
            if conn.dialect.name == "postgresql":
                # Two runners starting on a fresh database must not both create the tables.
                conn.execute(text(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot migrate {url}: {failure_reason(exc)}") from exc


def current_revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except SQLAlchemyError:
        return None


def alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(resources.files("batchrun.migrations")))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False)
                           .replace("%", "%%"))
    return config


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # We issue BEGIN ourselves (below); the driver's implicit transactions would get in the way.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # A writer takes the write lock up front: a deferred transaction that upgrades from read
        # to write can fail with "database is locked" instead of waiting its turn.
        immediate = conn.get_execution_options().get("batchrun_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def driver_tx(conn: Connection) -> Tx:
    """A `driver.Tx` on the driver connection (sqlite3, psycopg) under `conn`, in `conn`'s transaction: the
    store's plain SQL runs through it. Its errors are the driver's: the store translates them."""
    return Tx(conn.connection.driver_connection, "?" if conn.dialect.paramstyle == "qmark" else "%s")
