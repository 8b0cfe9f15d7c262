"""Opening the database and keeping its schema at alembic's head."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError

from harvester.errors import DatabaseError

logger = logging.getLogger(__name__)

IDLE_IN_TRANSACTION_MS = 30_000
_MIGRATION_LOCK = 0x616C746D  # pg_advisory_xact_lock key of schema upgrades ('altm')


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (None for other databases and in-memory SQLite)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).expanduser()


def make_engine(url: str, immediate: bool = False) -> Engine:
    """Create the engine; for SQLite set the pragmas that make one writer + readers safe.

    `immediate`: SQLite transactions take the write lock when they begin (BEGIN
    IMMEDIATE), for a writer whose transactions read before they write.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseError(f"not a database URL: {url!r} (e.g. sqlite:///harvest.db)") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        parent = Path(parsed.database).expanduser().resolve().parent
        if not parent.is_dir():
            raise DatabaseError(f"cannot create database {parsed.database}: folder {parent} does not exist")
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql":
        # A worker frozen (SIGSTOP, a suspended laptop) in the middle of a transaction would hold its
        # row locks (the key's budget row) and wedge every other worker: the server ends such a
        # session instead. No transaction of ours idles between statements for nearly that long.
        connect_args["options"] = f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}"
    try:
        # pre_ping: a connection the server closed meanwhile (that timeout, a restart) is replaced, not used.
        engine = create_engine(parsed, future=True, connect_args=connect_args, pool_pre_ping=bool(connect_args))
    except (ArgumentError, ImportError) as e:
        raise DatabaseError(f"cannot open database {parsed.render_as_string(hide_password=True)}: {e}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        if immediate:
            # SQLAlchemy's recipe: let pysqlite not begin transactions itself, and begin them here.
            event.listen(engine, "connect", _driver_autocommit)
            event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    return engine


def _driver_autocommit(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets `status` read while a harvest writes; NORMAL is durable across
    # process crashes (kill -9), which is what resumability needs.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def migrations_dir() -> Path:
    """The migrations folder: migrations/ in a checkout, harvester/migrations when installed."""
    return Path(str(resources.files("harvester.migrations")))


def alembic_config(engine: Engine | None = None) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if engine is not None:
        cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine) -> None:
    """Bring the schema to head; a no-op (one query) when it is there already.

    Processes started together on a new database (workers under systemd) may
    all find it behind: on PostgreSQL one migrates under an advisory lock and
    the others find it done; SQLite has no such lock, so a failed migration
    whose database is at head anyway was another process's success.
    """
    try:
        if current_revision(engine) == head_revision():
            return
        logger.info("upgrading the database schema to %s", head_revision())
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
                if MigrationContext.configure(conn).get_current_revision() == head_revision():
                    return
            cfg = alembic_config(engine)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except SQLAlchemyError as e:
        if _revision_or_none(engine) == head_revision():
            return
        if isinstance(e, OperationalError):
            raise DatabaseError(f"cannot open or migrate the database: {e.orig}") from None
        raise DatabaseError(f"cannot migrate the database: {e}") from None


def _revision_or_none(engine: Engine) -> str | None:
    try:
        return current_revision(engine)
    except SQLAlchemyError:
        return None


def open_database(url: str) -> Engine:
    """Open the database and upgrade it to head: what every command does first."""
    engine = make_engine(url)
    upgrade(engine)
    return engine


def lookup_pairs(
    conn: Connection,
    pairs: Sequence[tuple[str, str]],
    table: str,
    key: tuple[str, str],
    columns: str,
    where: str = "",
    within: str = "",
    lock: bool = False,
) -> tuple[str, dict[str, Any]]:
    """A query that looks each (x, y) pair up in `table` by its index on `key` (after the columns
    `within` fixes, such as a job's id), one index lookup a pair, and its parameters: one or two,
    whatever the number of pairs. `columns` and `where` name the table `t`; `lock`: FOR UPDATE of
    the rows found (PostgreSQL; SQLite locks the whole file).

    An expanding `(x, y) IN (...)` of 500 pairs was compiled, and planned, anew for every batch
    the writer wrote. Each lookup is forced: left to itself, PostgreSQL's planner scanned every
    pending item of the job once for each pair when its statistics took a fresh job for a few
    rows (3 s a batch of 500 in a job of 20,000); `where` is applied after the lookup for that reason.
    """
    x, y = key
    found = f"t.{x} = k.a AND t.{y} = k.b" + (f" AND {within}" if within else "")
    if conn.dialect.name == "postgresql":
        a, b = (list(column) for column in zip(*pairs, strict=True)) if pairs else ([], [])
        # OFFSET 0 keeps the planner from pushing `where` into the lookup, where it chose another index.
        inner = f"SELECT * FROM {table} AS t WHERE {found} OFFSET 0" + (" FOR UPDATE" if lock else "")
        query = f"SELECT {columns} FROM unnest(CAST(:pair_a AS TEXT[]), CAST(:pair_b AS TEXT[])) AS k(a, b) CROSS JOIN LATERAL ({inner}) AS t"
        return query + (f" WHERE {where}" if where else ""), {"pair_a": a, "pair_b": b}
    # CROSS JOIN: SQLite keeps that order, the pairs first, each then found by the index.
    pairs_sql = "(SELECT json_extract(value, '$[0]') AS a, json_extract(value, '$[1]') AS b FROM json_each(:pairs)) AS k"
    query = f"SELECT {columns} FROM {pairs_sql} CROSS JOIN {table} AS t WHERE {found}" + (f" AND {where}" if where else "")
    return query, {"pairs": json.dumps(pairs)}
