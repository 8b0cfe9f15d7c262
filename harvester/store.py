"""The single writer: a batch of results and their item statuses in one transaction.

Upserts are built from the dialect's insert() (INSERT ... ON CONFLICT DO
UPDATE), so the same code runs on SQLite and PostgreSQL, and re-harvesting an
output updates its rows instead of duplicating them.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import logging
import multiprocessing
import operator
import queue
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Dialect, Engine, Table, bindparam, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from harvester import schema
from harvester.errors import DatabaseError, HarvesterError
from harvester.parse import ParseError, Records, decode, parse_counts, parse_fetch

logger = logging.getLogger(__name__)

# Columns an upsert never overwrites: when a mention was first seen stays put.
_KEEP_ON_UPDATE = {"mentions": {"first_seen_at"}}
# The tables one parsed body fills, in the order they are written.
DATA_TABLES = (
    "outputs",
    "identifiers",
    "source_counts",
    "readers",
    "score_history",
    "score_context",
    "output_relations",
    "mentions",
    "mention_citations",
    "demographics",
)


@dataclass(slots=True)
class ItemResult:
    """The final outcome of one job item, as the writer commits it.

    A done item carries the raw body (already checked to be a JSON object with
    an altmetric_id): the writer parses it, off the event loop's core.
    """

    id_type: str
    identifier: str
    status: str  # done, not_found, failed
    attempts: int
    http_status: int | None = None
    error: str | None = None
    body: bytes | None = None
    note: str | None = None


@dataclass(frozen=True)
class _CompiledUpsert:
    sql: str
    names: tuple[str, ...]  # parameter order
    positional: bool
    processors: tuple[tuple[int, Callable[[Any], Any]], ...]  # (position, bind processor), where one is needed


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
    return _CompiledUpsert(str(compiled), names, bool(compiled.positional), processors)


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
        params: list[Any] = [tuple(row[n] for n in up.names) for row in group]
        for i, process in up.processors:
            for n, v in enumerate(params):
                params[n] = (*v[:i], process(v[i]), *v[i + 1 :])
        if not up.positional:
            params = [dict(zip(up.names, v)) for v in params]
        conn.exec_driver_sql(up.sql, params)


def save_records(conn: Connection, batch: Iterable[Records]) -> None:
    """Upsert every table's rows of a batch of parsed bodies."""
    tables: dict[str, list[dict[str, Any]]] = {name: [] for name in DATA_TABLES}
    for records in batch:
        tables["outputs"].append(records.outputs)
        for name in DATA_TABLES[1:]:
            tables[name].extend(getattr(records, name))
    for name, rows in tables.items():
        upsert(conn, schema.metadata.tables[name], rows)


_mark_item = (
    update(schema.job_items)
    .where(
        schema.job_items.c.job_id == bindparam("b_job_id"),
        schema.job_items.c.id_type == bindparam("b_id_type"),
        schema.job_items.c.identifier == bindparam("b_identifier"),
    )
    .values(
        status=bindparam("status"),
        attempts=schema.job_items.c.attempts + bindparam("b_attempts"),
        http_status=bindparam("http_status"),
        last_error=bindparam("last_error"),
        altmetric_id=bindparam("altmetric_id"),
        note=bindparam("note"),
        claimed_by=None,
        lease_until=None,
        updated_at=bindparam("updated_at"),
    )
)


def write_batch(
    engine: Engine,
    job_id: int,
    endpoint: str,
    results: Sequence[ItemResult],
    now: datetime,
    runner: str,
    all_posts: bool = False,
) -> dict[str, int]:
    """Parse the bodies, then commit the data of a batch and its items' final statuses together.

    A crash before the commit leaves the items pending (they are asked again on
    resume); after it, both are there. Nothing in between can be observed.
    Returns how many items of the batch ended in each status. `all_posts`: a
    Fetch harvest without source or section filters, whose bodies list every
    post (so that a post missing from one has disappeared upstream).
    """
    parse = parse_fetch if endpoint == "fetch" else parse_counts
    parsed: dict[int, Records] = {}
    for i, r in enumerate(results):
        if r.body is None:
            continue
        try:
            parsed[i] = parse(decode(r.body), now)
            if all_posts:
                parsed[i].outputs["posts_seen_at"] = now
        except ParseError as e:  # checked JSON with an altmetric_id, yet unusable: not transient
            r.status, r.error = "failed", f"unusable body: {e}"
        r.body = None
    records = list(parsed.values())
    items = [
        {
            "b_job_id": job_id,
            "b_id_type": r.id_type,
            "b_identifier": r.identifier,
            "status": r.status,
            "b_attempts": r.attempts,
            "http_status": r.http_status,
            "last_error": r.error,
            "altmetric_id": parsed[i].altmetric_id if i in parsed else None,
            "note": r.note,
            "updated_at": now,
        }
        for i, r in enumerate(results)
    ]
    # The asked id is an identifier of the output too (an ISBN body may not
    # list the ISBN it was found by), unless the API answered with another output.
    asked = [
        {"scheme": results[i].id_type, "value": results[i].identifier, "altmetric_id": rec.altmetric_id}
        for i, rec in parsed.items()
        if results[i].note is None and results[i].id_type != "id"
    ]
    _retrying(lambda conn: _write(conn, job_id, records, items, asked, now, runner), engine)
    return dict(collections.Counter(r.status for r in results))


def _write(
    conn: Connection,
    job_id: int,
    records: list[Records],
    items: list[dict[str, Any]],
    asked: list[dict[str, Any]],
    now: datetime,
    runner: str,
) -> None:
    save_records(conn, records)
    upsert(conn, schema.identifiers, asked)
    if items:
        conn.execute(_mark_item, items)
    # The heartbeat rides on every batch: a live run is one that writes.
    conn.execute(
        update(schema.jobs).where(schema.jobs.c.id == job_id, schema.jobs.c.runner == runner).values(heartbeat_at=now)
    )


def _retrying(work: Any, engine: Engine, attempts: int = 5) -> None:
    """Run one transaction; retry while the database is locked, stop on anything else."""
    for attempt in range(1, attempts + 1):
        try:
            with engine.begin() as conn:
                work(conn)
            return
        except OperationalError as e:
            message = str(e.orig)
            if "locked" in message or "busy" in message:
                if attempt < attempts:
                    logger.warning("database is locked; retrying the batch (%d/%d)", attempt, attempts)
                    time.sleep(0.5 * attempt)
                    continue
            raise DatabaseError(f"cannot write to the database: {message}") from None
        except SQLAlchemyError as e:
            raise DatabaseError(f"cannot write to the database: {e}") from None


class WriterProcess:
    """The single writer, in a process of its own.

    Parsing and SQL then run on the other core: in one process, the writer
    thread held the GIL for most of every batch and the event loop (HTTP) waited.
    One batch is in flight at a time; write() returns when it is committed.
    """

    def __init__(self, url: str, job_id: int, endpoint: str, runner: str, all_posts: bool = False) -> None:
        ctx = multiprocessing.get_context("spawn")  # no fork of a running event loop and its threads
        self._inbox: Any = ctx.Queue(maxsize=1)
        self._outbox: Any = ctx.Queue()
        self._process = ctx.Process(
            target=_writer_main,
            args=(url, job_id, endpoint, runner, all_posts, self._inbox, self._outbox),
            name="harvester-writer",
            daemon=True,
        )

    def start(self) -> None:
        # From the main thread: the child's parent-death signal is tied to the creating thread.
        self._process.start()

    def write(self, batch: list[ItemResult]) -> dict[str, int]:
        """Commit a batch through the writer process (blocking: call it from a thread)."""
        self._inbox.put(batch)
        while True:
            try:
                kind, value = self._outbox.get(timeout=1.0)
            except queue.Empty:
                if not self._process.is_alive():
                    raise DatabaseError(f"the writer process died (exit code {self._process.exitcode})") from None
                continue
            if kind == "error":
                raise DatabaseError(value)
            return dict(value)

    def close(self) -> None:
        if self._process.is_alive():
            self._inbox.put(None)
            self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._inbox.close()
        self._outbox.close()


def _writer_main(url: str, job_id: int, endpoint: str, runner: str, all_posts: bool, inbox: Any, outbox: Any) -> None:
    # Signals are the parent's to handle: on Ctrl-C it flushes what it has through us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    _die_with_parent()
    from harvester.db import make_engine
    from harvester.jobs import utcnow

    engine = make_engine(url)
    try:
        while True:
            try:
                batch = inbox.get(timeout=1.0)
            except queue.Empty:
                if parent is not None and not parent.is_alive():
                    return  # kill -9 of the parent: whatever it had not sent stays pending
                continue
            if batch is None:
                return
            try:
                outbox.put(("ok", write_batch(engine, job_id, endpoint, batch, utcnow(), runner, all_posts)))
            except HarvesterError as e:
                outbox.put(("error", str(e)))
            except Exception as e:  # a bug: report it rather than hang the parent
                outbox.put(("error", f"internal error in the writer: {type(e).__name__}: {e}"))
    finally:
        engine.dispose()


def _die_with_parent() -> None:
    """Linux: have the kernel kill us when the parent dies, mid-transaction or not (it rolls back)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # elsewhere the inbox timeout notices the parent's death
