"""Opening the database and keeping its schema at alembic's head; the statements every module shares (upsert, lookup_pairs)."""

from __future__ import annotations

import collections
import functools
import json
import logging
import operator
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Dialect,
    Engine,
    Integer,
    Row,
    String,
    Table,
    bindparam,
    create_engine,
    event,
    inspect,
    text,
    type_coerce,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError, SQLAlchemyError

from harvester import schema
from harvester.errors import DatabaseError
from harvester.ids import IdLine

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

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


def unwritable(url: str) -> str | None:
    """Why a SQLite database cannot be written, naming the path; None when it can (or is not SQLite).

    Asked after a database error, not before every run: the driver only says "attempt to write a
    readonly database" or "unable to open database file", without the path or the cause.
    """
    path = sqlite_path(url)
    if path is None:
        return None
    path = path.resolve()
    if path.exists():
        try:
            with path.open("r+b"):
                pass
        except OSError as e:
            return f"the database {path} is read-only for this user ({e.strerror}): make it writable, or choose another with --database"
    try:
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except FileNotFoundError:
        return f"the database's folder {path.parent} does not exist"
    except OSError as e:
        return (
            f"the database {path} cannot be written: its folder is read-only for this user ({e.strerror}),"
            f" and SQLite writes {path.name}-wal and {path.name}-shm beside it"
        )
    return None


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
    cursor.execute(f"PRAGMA busy_timeout={sqlite_busy_ms()}")
    cursor.close()


def has_own_clock(dialect: Dialect) -> bool:
    """Whether the database is a server with a clock of its own (PostgreSQL), not this host's (SQLite)."""
    return dialect.name == "postgresql"


def server_now(conn: Connection) -> datetime:
    """Now by the database server's clock, in naive UTC; SQLite has no server: this host's clock."""
    if has_own_clock(conn.dialect):
        server: datetime = conn.execute(text("SELECT clock_timestamp() AT TIME ZONE 'UTC'")).scalar_one()
        return server
    return datetime.now(UTC).replace(tzinfo=None)


def sqlite_busy_ms() -> int:
    """How long one SQLite statement waits for another process's write lock before it reports it:
    30 s, or HARVESTER_SQLITE_BUSY_TIMEOUT seconds (the tests shorten it). Writers then wait again
    (see `patiently`): the timeout only sets how often they look up and say so."""
    try:
        return max(1, int(float(os.environ.get("HARVESTER_SQLITE_BUSY_TIMEOUT", "30")) * 1000))
    except ValueError:
        return 30_000


# SQLSTATEs that mean "another transaction was in the way; run this one again":
# deadlock_detected, serialization_failure, lock_not_available.
_PG_TRANSIENT = frozenset({"40P01", "40001", "55P03"})
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6
# A deadlock is broken by the server at once; one that keeps coming back is a bug, not bad luck.
PG_ATTEMPTS = 10
LOCK_WARN_EVERY = 60.0  # seconds between "still waiting" warnings
# Set on Ctrl-C/SIGTERM (pipeline.with_signals): a writer waiting for a lock stops waiting.
stopping = threading.Event()


def lock_conflict(e: BaseException) -> bool:
    """True when `e` says another transaction held what this one needed (SQLite busy or locked;
    PostgreSQL deadlock, serialization failure, lock not available): by the driver's error code,
    never the message's words ("blocked by process" is part of a deadlock's text, not its kind)."""
    orig = getattr(e, "orig", e)
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate is not None:
        return sqlstate in _PG_TRANSIENT
    code = getattr(orig, "sqlite_errorcode", None)
    # Extended codes (SQLITE_BUSY_SNAPSHOT, ...) keep the primary code in the low byte.
    return isinstance(code, int) and code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)


def patiently(work: Callable[[], T], what: str) -> T:
    """Run `work` (one transaction) again while another transaction is in its way.

    SQLite: for as long as it takes, with a warning every minute. SQLite cannot take a lock
    back from a process that holds it, and one that is frozen (Ctrl-Z, SIGSTOP, a laptop lid)
    holds it until it is continued or killed: the others wait, they never fail the run for it
    (docs/scale-out.md). PostgreSQL: a deadlock or serialization failure, up to PG_ATTEMPTS times.
    """
    attempt, since, warned_at = 0, time.monotonic(), 0.0
    while True:
        try:
            return work()
        except DBAPIError as e:
            if not lock_conflict(e) or stopping.is_set():
                raise
            attempt += 1
            sqlstate = getattr(e.orig, "sqlstate", None)
            if sqlstate is not None and attempt >= PG_ATTEMPTS:
                raise
            waited = time.monotonic() - since
            if sqlstate is not None:
                logger.info("%s: %s; running it again (%d/%d)", what, type(e.orig).__name__, attempt, PG_ATTEMPTS)
            elif waited - warned_at >= LOCK_WARN_EVERY or attempt == 1:
                warned_at = waited
                logger.warning(
                    "%s: the database is locked by another process (for %.0fs so far); waiting for it. "
                    "A stopped or frozen harvester holds SQLite's lock until it is continued or killed",
                    what,
                    waited,
                )
            time.sleep(min(2.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.0))


def patient(fn: Callable[P, T]) -> Callable[P, T]:
    """`patiently` for a function that is one transaction."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        return patiently(lambda: fn(*args, **kwargs), fn.__qualname__)

    return wrapper


def migrations_dir() -> Path:
    """The migrations folder: migrations/ in a checkout, harvester/migrations when installed."""
    return Path(str(resources.files("harvester.migrations")))


def alembic_config(engine: Engine | None = None) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if engine is not None:
        cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str | None:
    """Alembic's head, read from the migrations (alembic loaded: for `db` commands and upgrades)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return _revision_in(conn)


def _revision_in(conn: Connection) -> str | None:
    """The database's revision, as alembic records it (None: an empty database); without alembic."""
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(engine: Engine) -> None:
    """Bring the schema to head; a no-op (one query) when it is there already.

    Processes started together on a new database (workers under systemd) may
    all find it behind: on PostgreSQL one migrates under an advisory lock and
    the others find it done; SQLite has no such lock, so a failed migration
    whose database is at head anyway was another process's success.
    """
    try:
        if current_revision(engine) == schema.HEAD_REVISION:
            return
        from alembic import command

        logger.info("upgrading the database schema to %s", head_revision())
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
                if _revision_in(conn) == schema.HEAD_REVISION:
                    return
            cfg = alembic_config(engine)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except SQLAlchemyError as e:
        if _revision_or_none(engine) == schema.HEAD_REVISION:
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
        query = (
            f"SELECT {columns} FROM unnest(CAST(:pair_a AS TEXT[]), CAST(:pair_b AS TEXT[])) AS k(a, b) CROSS JOIN LATERAL ({inner}) AS t"
        )
        return query + (f" WHERE {where}" if where else ""), {"pair_a": a, "pair_b": b}
    # CROSS JOIN: SQLite keeps that order, the pairs first, each then found by the index.
    pairs_sql = "(SELECT json_extract(value, '$[0]') AS a, json_extract(value, '$[1]') AS b FROM json_each(:pairs)) AS k"
    query = f"SELECT {columns} FROM {pairs_sql} CROSS JOIN {table} AS t WHERE {found}" + (f" AND {where}" if where else "")
    return query, {"pairs": json.dumps(pairs)}


# Columns an upsert never overwrites: when a mention or an output was first seen stays put.
_KEEP_ON_UPDATE = {"mentions": {"first_seen_at"}, "outputs": {"first_harvested_at"}}


@dataclass(frozen=True)
class _CompiledUpsert:
    sql: str
    names: tuple[str, ...]  # parameter order
    positional: bool
    processors: tuple[tuple[int, Callable[[Any], Any]], ...]  # (position, bind processor), where one is needed

    values: Callable[[dict[str, Any]], tuple[Any, ...]]  # a row's values in parameter order (an itemgetter: C speed)
    # PostgreSQL: the same upsert over arrays, one per column (SELECT * FROM unnest(...)), run once a batch.
    arrays_sql: str | None = None

    def process(self, values: tuple[Any, ...]) -> tuple[Any, ...]:
        """The values as the driver takes them (a Float column's value as a float, a Boolean's as the dialect's)."""
        out = list(values)
        for i, process in self.processors:
            out[i] = process(out[i])
        return tuple(out)


@functools.lru_cache(maxsize=64)
def _compiled_upsert(dialect: Dialect, table: Table, columns: tuple[str, ...]) -> _CompiledUpsert:
    """Build and compile one upsert per (dialect, table, columns), once per process."""
    key = [c.name for c in table.primary_key.columns]
    insert = postgresql.insert if dialect.name == "postgresql" else sqlite.insert
    stmt = insert(table).values({c: bindparam(c) for c in columns})
    # Only the columns the rows carry are updated: counts knows the unique users
    # of a source but not its posts, so it must not blank what fetch stored.
    keep = _KEEP_ON_UPDATE.get(table.name, set())
    update = [c for c in columns if c not in key and c not in keep]
    if update:
        stmt = stmt.on_conflict_do_update(index_elements=key, set_={c: stmt.excluded[c] for c in update})
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=key)
    compiled = stmt.compile(dialect=dialect)
    names = tuple(compiled.positiontup or columns)
    processors = tuple((i, p) for i, n in enumerate(names) if (p := table.c[n].type.bind_processor(dialect)) is not None)
    values = operator.itemgetter(*names) if len(names) > 1 else lambda row: (row[names[0]],)
    sql = str(compiled)
    arrays_sql = None
    if dialect.name == "postgresql":
        # psycopg's executemany sends one statement per row: 50 µs of Python each, most of the
        # writer's time on PostgreSQL. One statement of column arrays sends them all at once.
        head, rest = sql.split(" VALUES (", 1)
        _, tail = rest.split(") ON CONFLICT", 1)
        # In the INSERT's column order, which is the table's. %(...)b: psycopg sends the arrays in
        # its binary format, which it dumps several times faster than text (Counts into
        # PostgreSQL: 0.24 -> 0.28-0.31 of the raw client, benchmarks/README.md).
        ordered = [c for c in table.columns if c.name in columns]
        arrays = ", ".join(f"%({c.name})b::{c.type.compile(dialect=dialect)}[]" for c in ordered)
        arrays_sql = f"{head} SELECT * FROM unnest({arrays}) ON CONFLICT{tail}"
    return _CompiledUpsert(sql, names, bool(compiled.positional), processors, values, arrays_sql)


def insert(conn: Connection, table: Table) -> Any:
    """The dialect's INSERT, which has ON CONFLICT (on_conflict_do_nothing, on_conflict_do_update)."""
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


def code_point_order(dialect: Dialect, column: ColumnElement[Any]) -> ColumnElement[Any]:
    """`column` ordered by code point whatever the database's collation (a locale's order, such as
    en_US's, skips punctuation). SQLite's default collation is by code point already."""
    return column.collate("C") if dialect.name == "postgresql" else column


def as_stored(dialect: Dialect, column: ColumnElement[Any]) -> ColumnElement[Any]:
    """A timestamp column compared as it is stored. SQLite keeps a timestamp as the text it was
    written as: the writer's driver writes a whole second without a fraction ('12:00:00'), which a
    bound datetime ('12:00:00.000000') never equals, so keyset paging on it skipped rows."""
    return type_coerce(column, String) if dialect.name == "sqlite" else column


# Claim the next pending items of a job that nobody holds (or whose lease ended), in input order.
_CLAIM_SQL = {
    # SKIP LOCKED: workers claiming at the same moment take different items instead of waiting on each other.
    "postgresql": """
UPDATE job_items SET claimed_by = :runner, lease_until = :until
WHERE (job_id, id_type, identifier) IN (
    SELECT job_id, id_type, identifier FROM job_items
    WHERE job_id = :job_id AND status = 'pending' AND (lease_until IS NULL OR lease_until < :now)
    ORDER BY line_no LIMIT :limit
    FOR UPDATE SKIP LOCKED)
RETURNING id_type, identifier, line_no""",
    # One statement: it takes SQLite's write lock before it reads, so two claims cannot interleave.
    "sqlite": """
UPDATE job_items SET claimed_by = :runner, lease_until = :until
WHERE rowid IN (
    SELECT rowid FROM job_items
    WHERE job_id = :job_id AND status = 'pending' AND (lease_until IS NULL OR lease_until < :now)
    ORDER BY line_no LIMIT :limit)
RETURNING id_type, identifier, line_no""",
}


def claim_pending(conn: Connection, job_id: int, runner: str, limit: int, now: datetime, until: datetime) -> Sequence[Row[Any]]:
    """Lease up to `limit` claimable items of a job to `runner` until `until`: (id_type, identifier, line_no) rows."""
    stamp = schema.job_items.c.lease_until.type
    sql = text(_CLAIM_SQL[conn.dialect.name]).bindparams(bindparam("now", type_=stamp), bindparam("until", type_=stamp))
    return conn.execute(sql, {"runner": runner, "until": until, "job_id": job_id, "now": now, "limit": limit}).all()


def upsert(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """INSERT ... ON CONFLICT (primary key) DO UPDATE, as one executemany.

    The statement is built from the dialect's insert() and compiled once; rows
    then go to the driver as plain tuples: SQLAlchemy's per-row parameter
    processing was most of the writer's time on the batches a harvest makes.
    """
    if not rows:
        return
    key = operator.itemgetter(*[c.name for c in table.primary_key.columns])
    # Two rows with one key in a batch (two ids of one output): the last wins,
    # as it would have with two separate upserts.
    unique = {key(r): r for r in rows}.values()
    # Rows that carry different columns (a fetch body without its citation
    # section) go in separate statements: a missing column is left as it was.
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = collections.defaultdict(list)
    for row in unique:
        groups[tuple(row)].append(row)
    for columns, group in groups.items():
        up = _compiled_upsert(conn.dialect, table, columns)
        params: list[Any] = list(map(up.values, group))
        if up.processors:
            params = list(map(up.process, params))
        if up.arrays_sql is not None:
            conn.exec_driver_sql(up.arrays_sql, dict(zip(up.names, map(list, zip(*params, strict=True)), strict=True)))
            continue
        if not up.positional:
            params = [dict(zip(up.names, v)) for v in params]
        conn.exec_driver_sql(up.sql, params)


# -- the writer's statements whose SQL differs between the engines -----------------------------------


def value_set(dialect: Dialect, table: Table, columns: Sequence[str], values: Sequence[tuple[Any, ...]]) -> tuple[str, list[Any]]:
    """A subquery of these value tuples, in one or two parameters however many there are.

    A VALUES list would take a parameter per value (SQLite allows 32766 in a
    statement) and SQLite parses each of its rows as a SELECT of its own.
    """
    if dialect.name == "postgresql":
        types = [
            "bigint" if isinstance(table.c[c].type, BigInteger) else "integer" if isinstance(table.c[c].type, Integer) else "text"
            for c in columns
        ]
        unnest = ", ".join(f"%s::{t}[]" for t in types)
        return f"(SELECT * FROM unnest({unnest}))", [list(column) for column in zip(*values)]
    if len(columns) == 1:
        return "(SELECT value FROM json_each(?))", [json.dumps([v[0] for v in values])]
    picks = ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(columns)))
    return f"(SELECT {picks} FROM json_each(?))", [json.dumps(values)]


def row_of(columns: Sequence[str]) -> str:
    """`a` or `(a, b)`: the SQL of a row of these columns, to compare with a value set."""
    return columns[0] if len(columns) == 1 else "(" + ", ".join(columns) + ")"


def placeholder(dialect: Dialect) -> str:
    """The driver's parameter mark in raw SQL."""
    return "%s" if dialect.name == "postgresql" else "?"


@contextmanager
def read_only(conn: Connection) -> Iterator[Connection]:
    """This connection refusing any write (also one hidden in a CTE), in a transaction rolled back at the end."""
    sqlite = conn.dialect.name == "sqlite"
    if sqlite:
        conn.exec_driver_sql("PRAGMA query_only = ON")
    else:
        conn = conn.execution_options(postgresql_readonly=True)
    try:
        yield conn
    finally:
        conn.rollback()
        if sqlite:  # before the pool reuses the connection
            conn.exec_driver_sql("PRAGMA query_only = OFF")


@contextmanager
def scratch_keys(conn: Connection, name: str) -> Iterator[Callable[[list[tuple[str, str]]], None]]:
    """A temporary table `name` (t TEXT, k TEXT: an id's type and key, the primary key) for the block,
    which gets a function that adds them (duplicates collapse); nothing of it is kept: the
    transaction is rolled back at the end."""
    postgres = conn.dialect.name == "postgresql"
    table = f"CREATE TEMPORARY TABLE {name} (t TEXT NOT NULL, k TEXT NOT NULL, PRIMARY KEY (t, k))"
    conn.exec_driver_sql(table + (" ON COMMIT DROP" if postgres else ""))
    mark = placeholder(conn.dialect)
    insert = f"INSERT INTO {name} (t, k) VALUES ({mark}, {mark}) ON CONFLICT DO NOTHING"

    def add(rows: list[tuple[str, str]]) -> None:
        if rows:
            conn.exec_driver_sql(insert, rows)

    try:
        yield add
    finally:
        # The rollback ends the transaction (PostgreSQL drops the table with it); SQLite created
        # it outside any transaction, so it is dropped on its own.
        conn.rollback()
        if not postgres:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS temp.{name}")
            conn.commit()


def dates_as_text(dialect: Dialect) -> bool:
    """SQLite returns timestamps and dates as the text it stored (raw SQL bypasses the column types)."""
    return dialect.name == "sqlite"


# PostgreSQL: the batch's statuses in one statement of column arrays. Each item is found by its
# primary key first (LATERAL ... OFFSET 0, as in db.lookup_pairs), then updated by its row's
# address: joined directly, the planner scanned every item of a fresh job (130 ms a batch in a
# job of 200,000, against 10 ms). The rows are the writer's: leases.held locked them.
_MARK_ITEMS_PG = """
UPDATE job_items AS t SET status = v.status, attempts = t.attempts + v.attempts, http_status = v.http_status,
    last_error = v.last_error, altmetric_id = v.altmetric_id, note = v.note, claimed_by = NULL, lease_until = NULL,
    updated_at = %(updated_at)s
FROM (
    SELECT u.*, x.ctid AS tid
    FROM unnest(%(id_type)b::text[], %(identifier)b::text[], %(status)b::text[], %(attempts)b::int[], %(http_status)b::int[],
                %(last_error)b::text[], %(altmetric_id)b::bigint[], %(note)b::text[])
         AS u(id_type, identifier, status, attempts, http_status, last_error, altmetric_id, note)
    CROSS JOIN LATERAL (
        SELECT ctid FROM job_items WHERE job_id = %(job_id)s AND id_type = u.id_type AND identifier = u.identifier OFFSET 0
    ) AS x
) AS v
WHERE t.ctid = v.tid
"""
_MARKED = ("b_id_type", "b_identifier", "status", "b_attempts", "http_status", "last_error", "altmetric_id", "note")
# SQLite: one prepared statement, run by executemany in C over plain tuples (through SQLAlchemy's
# execute, compiling and processing the parameters took as long as the statement).
_MARK_ITEM_SQLITE = (
    "UPDATE job_items SET status = ?, attempts = attempts + ?, http_status = ?, last_error = ?, altmetric_id = ?, note = ?,"
    " claimed_by = NULL, lease_until = NULL, updated_at = ? WHERE job_id = ? AND id_type = ? AND identifier = ?"
)
_SQLITE_MARKS = operator.itemgetter(
    "status", "b_attempts", "http_status", "last_error", "altmetric_id", "note", "updated_at", "b_job_id", "b_id_type", "b_identifier"
)


def mark_items(conn: Connection, items: list[dict[str, Any]]) -> None:
    """Record each item's final status (and give its lease up): one statement on PostgreSQL, where
    an executemany sends one a row. The items of a batch share one job and one time (write_batch)."""
    if not items:
        return
    if conn.dialect.name != "postgresql":
        conn.exec_driver_sql(_MARK_ITEM_SQLITE, list(map(_SQLITE_MARKS, items)))
        return
    columns = zip(*map(operator.itemgetter(*_MARKED), items), strict=True)
    names = ("id_type", "identifier", "status", "attempts", "http_status", "last_error", "altmetric_id", "note")
    params: dict[str, Any] = dict(zip(names, map(list, columns), strict=True))
    conn.exec_driver_sql(_MARK_ITEMS_PG, params | {"updated_at": items[0]["updated_at"], "job_id": items[0]["b_job_id"]})


# -- loading a job's input lines: the driver's fastest path on each engine -------------------------

_BULK_CHUNK = 20_000  # lines a round trip on SQLite


def load_lines(conn: Connection, job_id: int, id_type: str, lines: Iterable[IdLine], now: datetime) -> tuple[int, int]:
    """A new job's items and rejects from its input lines; returns (valid, rejected)."""
    load = _copy_lines if conn.dialect.name == "postgresql" else _insert_lines
    return load(conn, job_id, id_type, lines, now)


_ITEM_COLUMNS = "job_id, id_type, identifier, input, line_no, status, attempts, updated_at"
_REJECT_COLUMNS = "job_id, line_no, source, source_line, line, reason"


def _insert_lines(conn: Connection, job_id: int, id_type: str, lines: Iterable[IdLine], now: datetime) -> tuple[int, int]:
    """Load a job's lines with the driver's executemany of one prepared INSERT; returns (valid, rejected).

    Plain tuples through exec_driver_sql: SQLAlchemy's per-row dict binding and type processing
    cost more than SQLite's own work here.
    """
    # Stored as the DateTime column stores it, since this bypasses the column's type.
    at = schema.job_items.c.updated_at.type.bind_processor(conn.dialect)
    stamp = at(now) if at else now
    insert_items = f"INSERT INTO job_items ({_ITEM_COLUMNS}) VALUES (?, ?, ?, ?, ?, 'pending', 0, ?) ON CONFLICT DO NOTHING"
    insert_rejects = f"INSERT INTO job_rejects ({_REJECT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
    valid = rejected = 0
    for chunk in _chunks(lines, _BULK_CHUNK):
        items = [(job_id, line.id_type or id_type, line.key, line.exact, line.line_no, stamp) for line in chunk if line.key is not None]
        rejects = [
            (job_id, line.line_no, line.source, line.source_line, line.text[:1000], line.reason) for line in chunk if line.key is None
        ]
        if items:
            conn.exec_driver_sql(insert_items, items)
        if rejects:
            conn.exec_driver_sql(insert_rejects, rejects)
        valid += len(items)
        rejected += len(rejects)
    return valid, rejected


def _copy_lines(conn: Connection, job_id: int, id_type: str, lines: Iterable[IdLine], now: datetime) -> tuple[int, int]:
    """Load a job's lines on PostgreSQL: COPY into a temporary table, then INSERT ... SELECT; returns (valid, rejected).

    COPY streams the file in one round trip (psycopg escapes each value for COPY's
    text format). Items and rejects share the one table, since a connection runs one
    COPY at a time and the lines are read once. The INSERT takes the lines in input order,
    so of two lines with one key the first is kept, as when they are inserted one by one.
    """
    conn.exec_driver_sql(
        "CREATE TEMPORARY TABLE job_load (line_no bigint, id_type text, identifier text, input text, source text,"
        " source_line bigint, line text, reason text) ON COMMIT DROP"
    )
    valid = rejected = 0
    driver = conn.connection.driver_connection
    assert driver is not None
    with driver.cursor() as cursor, cursor.copy("COPY job_load FROM STDIN") as copy:
        for line in lines:
            if line.key is not None:
                copy.write_row((line.line_no, line.id_type or id_type, line.key, line.exact, None, None, None, None))
                valid += 1
            else:
                copy.write_row((line.line_no, None, None, None, line.source, line.source_line, line.text[:1000], line.reason))
                rejected += 1
    values = {"job_id": job_id, "now": now}
    conn.execute(
        text(
            f"INSERT INTO job_items ({_ITEM_COLUMNS}) SELECT :job_id, id_type, identifier, input, line_no, 'pending', 0, :now"
            " FROM job_load WHERE identifier IS NOT NULL ORDER BY line_no ON CONFLICT DO NOTHING"
        ),
        values,
    )
    conn.execute(
        text(
            f"INSERT INTO job_rejects ({_REJECT_COLUMNS}) SELECT :job_id, line_no, source, source_line, line, reason"
            " FROM job_load WHERE identifier IS NULL"
        ),
        values,
    )
    return valid, rejected


def _chunks(lines: Iterable[IdLine], size: int) -> Iterator[list[IdLine]]:
    chunk: list[IdLine] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
