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
import math
import multiprocessing
import operator
import queue
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Dialect, Engine, Table, bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from harvester import jobs, schema
from harvester.config import filters_text
from harvester.errors import DatabaseError, HarvesterError
from harvester.parse import ParseError, Records, decode, parse_citations, parse_counts, parse_fetch

logger = logging.getLogger(__name__)

# Columns an upsert never overwrites: when a mention or an output was first seen stays put.
_KEEP_ON_UPDATE = {"mentions": {"first_seen_at"}, "outputs": {"first_harvested_at"}}
# What a daily snapshot keeps of an output row.
SNAPSHOT_COLUMNS = ("score", "posts_count", "accounts_count", "readers_count")
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
    """Upsert every table's rows of a batch of parsed bodies, and each output's snapshot of the day."""
    tables: dict[str, list[dict[str, Any]]] = {name: [] for name in (*DATA_TABLES, "counts_snapshots")}
    for records in batch:
        output = records.outputs
        output["first_harvested_at"] = output["harvested_at"]
        tables["outputs"].append(output)
        for name in DATA_TABLES[1:]:
            tables[name].extend(getattr(records, name))
        # Every harvest adds to the time series: one row per output and UTC day, the day's last harvest wins.
        values = {c: output[c] for c in SNAPSHOT_COLUMNS if c in output}
        if values:
            at = output["harvested_at"]
            tables["counts_snapshots"].append({"altmetric_id": records.altmetric_id, "harvested_on": at.date(), "harvested_at": at, **values})
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
    params: dict[str, Any] | None = None,
) -> dict[str, int]:
    """Parse the bodies, then commit the data of a batch and its items' final statuses together.

    A crash before the commit leaves the items pending (they are asked again on
    resume); after it, both are there. Nothing in between can be observed.
    Returns how many items of the batch ended in each status. `all_posts`: a
    Fetch harvest without source or section filters, whose bodies list every
    post (so that a post missing from one has disappeared upstream). `params`:
    the job's, which a Citations job needs (its query, its follow-up job).
    """
    if endpoint == "citations":
        pages = _CitationPages(job_id, params or {}, now)
        records = pages.parse(results)
        asked: list[dict[str, Any]] = []
        item_ids: dict[int, int | None] = {}
        more: Callable[[Connection], None] | None = pages.save
    else:
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
        item_ids = {i: rec.altmetric_id for i, rec in parsed.items()}
        # The asked id is an identifier of the output too (an ISBN body may not
        # list the ISBN it was found by), unless the API answered with another output.
        asked = [
            {"scheme": results[i].id_type, "value": results[i].identifier, "altmetric_id": rec.altmetric_id}
            for i, rec in parsed.items()
            if results[i].note is None and results[i].id_type != "id"
        ]
        more = None
    items = [
        {
            "b_job_id": job_id,
            "b_id_type": r.id_type,
            "b_identifier": r.identifier,
            "status": r.status,
            "b_attempts": r.attempts,
            "http_status": r.http_status,
            "last_error": r.error,
            "altmetric_id": item_ids.get(i),
            "note": r.note,
            "updated_at": now,
        }
        for i, r in enumerate(results)
    ]
    _retrying(lambda conn: _write(conn, job_id, records, items, asked, now, runner, more), engine)
    return dict(collections.Counter(r.status for r in results))


class _CitationPages:
    """What a batch of Citations pages writes besides outputs: ranks, further pages, follow-up items."""

    def __init__(self, job_id: int, params: dict[str, Any], now: datetime) -> None:
        self.job_id = job_id
        self.now = now
        self.timeframe: str = params["timeframe"]
        self.filters = filters_text(params.get("filters"))
        self.num: int = params["num_results"]
        self.max_pages: int | None = params.get("pages")
        self.then_job: int | None = params.get("then_job")
        self.activity: list[dict[str, Any]] = []
        self.last_page = 0  # the highest page the batch's totals imply
        self.follow: list[tuple[str, str, int]] = []

    def parse(self, results: Sequence[ItemResult]) -> list[Records]:
        records = []
        for r in results:
            if r.body is None:
                continue
            page = int(r.identifier)
            try:
                total, parsed = parse_citations(decode(r.body), self.now)
            except ParseError as e:
                r.status, r.error = "failed", f"unusable page: {e}"
                continue
            finally:
                r.body = None
            for index, rec in enumerate(parsed):
                if rec is None:
                    continue
                rank = (page - 1) * self.num + index + 1
                records.append(rec)
                self.activity.append(
                    {
                        "timeframe": self.timeframe,
                        "harvested_on": self.now.date(),
                        "filters": self.filters,
                        "altmetric_id": rec.altmetric_id,
                        "rank": rank,
                        "score": rec.outputs.get("score"),
                        "page": page,
                        "total": total,
                        "job_id": self.job_id,
                        "harvested_at": self.now,
                    }
                )
                self.follow.append(("doi", rec.doi, rank) if rec.doi else ("id", str(rec.altmetric_id), rank))
            skipped = parsed.count(None)
            if skipped:
                r.note = f"{skipped} results without an altmetric_id were skipped"
            if total is not None:
                # Keep paging while page * num_results < query.total. Every page
                # adds the pages its total implies: a listing that grows while we
                # page is followed, and one that shrinks ends in a 404 (not_found).
                last = math.ceil(total / self.num)
                if self.max_pages is not None:
                    last = min(last, self.max_pages)
                self.last_page = max(self.last_page, last)
        return records

    def save(self, conn: Connection) -> None:
        upsert(conn, schema.citation_activity, self.activity)
        # Only pages the job lacks: every page of a 20,000-page listing reports the same total.
        known = conn.execute(
            select(func.max(schema.job_items.c.line_no)).where(schema.job_items.c.job_id == self.job_id)
        ).scalar_one() or 0
        pages = range(known + 1, self.last_page + 1)
        jobs.add_items(conn, self.job_id, [("page", str(p), p) for p in pages], self.now)
        if self.then_job is not None:
            jobs.add_items(conn, self.then_job, self.follow, self.now)


def _write(
    conn: Connection,
    job_id: int,
    records: list[Records],
    items: list[dict[str, Any]],
    asked: list[dict[str, Any]],
    now: datetime,
    runner: str,
    more: Callable[[Connection], None] | None = None,
) -> None:
    save_records(conn, records)
    upsert(conn, schema.identifiers, asked)
    if more is not None:
        more(conn)
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

    def __init__(self, url: str, job_id: int, endpoint: str, runner: str, all_posts: bool = False, params: dict[str, Any] | None = None) -> None:
        ctx = multiprocessing.get_context("spawn")  # no fork of a running event loop and its threads
        self._inbox: Any = ctx.Queue(maxsize=1)
        self._outbox: Any = ctx.Queue()
        self._process = ctx.Process(
            target=_writer_main,
            args=(url, job_id, endpoint, runner, all_posts, params or {}, self._inbox, self._outbox),
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


def _writer_main(
    url: str, job_id: int, endpoint: str, runner: str, all_posts: bool, params: dict[str, Any], inbox: Any, outbox: Any
) -> None:
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
                outbox.put(("ok", write_batch(engine, job_id, endpoint, batch, utcnow(), runner, all_posts, params)))
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
