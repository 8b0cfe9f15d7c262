"""The single writer: a batch of results and their item statuses in one transaction.

Upserts are built from the dialect's insert() (INSERT ... ON CONFLICT DO
UPDATE), so the same code runs on SQLite and PostgreSQL, and re-harvesting an
output updates its rows instead of duplicating them.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import math
import operator
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Connection, Dialect, Engine, Integer, Table, bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DataError, IntegrityError, OperationalError, SQLAlchemyError

from harvester import aliases, archive, jobs, leases, schema
from harvester.config import ArchiveConfig, filters_text
from harvester.errors import DatabaseError, db_message
from harvester.log import redact
from harvester.params import CitationsParams, FetchOptions, HarvestParams, JobParams
from harvester.parse import FETCH_SOURCES, ParseError, Records, decode, parse_citations, parse_counts, parse_fetch

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
        # In the INSERT's column order, which is the table's.
        ordered = [c for c in table.columns if c.name in columns]
        arrays = ", ".join(f"%({c.name})s::{c.type.compile(dialect=dialect)}[]" for c in ordered)
        arrays_sql = f"{head} SELECT * FROM unnest({arrays}) ON CONFLICT{tail}"
    return _CompiledUpsert(sql, names, bool(compiled.positional), processors, values, arrays_sql)


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


@dataclass(frozen=True)
class Coverage:
    """What a job's Fetch options cut from its bodies, so that replacing a section stays within what was asked.

    `sources`: None when every source is in the bodies, else ("in" or "not in",
    our source names). `posts`: whether a source's posts list is complete
    (False with `post_types`, which leaves retweets out).
    """

    sources: tuple[str, tuple[str, ...]] | None = None
    posts: bool = True


COMPLETE = Coverage()


def coverage(fetch_options: FetchOptions | None) -> Coverage:
    """A Fetch job's options (Job.fetch) -> the part of each section its bodies carry."""
    options = fetch_options or FetchOptions()
    sources: tuple[str, tuple[str, ...]] | None = None
    if options.include_sources:
        sources = ("in", tuple(FETCH_SOURCES.get(s, s) for s in options.include_sources))
    elif options.exclude_sources:
        sources = ("not in", tuple(FETCH_SOURCES.get(s, s) for s in options.exclude_sources))
    return Coverage(sources, posts=not options.post_types)


def lists_every_post(fetch_options: FetchOptions | None) -> bool:
    """Whether a Fetch job's bodies list every post of their output (no source filter, no post_types, posts not cut out by include_sections)."""
    options = fetch_options or FetchOptions()
    if options.include_sources or options.exclude_sources or options.post_types:
        return False
    sections = options.include_sections
    return not sections or "posts" in sections


# The key of each replaced table besides altmetric_id; a body carrying the section owns all
# of the output's rows in it (identifiers and mentions are scoped more narrowly, see save_records).
_REPLACED = {
    "source_counts": ("source",),
    "readers": ("platform",),
    "score_history": ("timeframe",),
    "score_context": ("scope",),
    "output_relations": ("related_altmetric_id", "relation"),
    "demographics": ("platform", "dimension", "key"),
}


def _value_set(dialect: Dialect, table: Table, columns: Sequence[str], values: Sequence[tuple[Any, ...]]) -> tuple[str, list[Any]]:
    """A subquery of these value tuples, in one or two parameters however many there are.

    A VALUES list would take a parameter per value (SQLite allows 32766 in a
    statement) and SQLite parses each of its rows as a SELECT of its own.
    """
    if dialect.name == "postgresql":
        types = ["bigint" if isinstance(table.c[c].type, BigInteger) else "integer" if isinstance(table.c[c].type, Integer) else "text" for c in columns]
        unnest = ", ".join(f"%s::{t}[]" for t in types)
        return f"(SELECT * FROM unnest({unnest}))", [list(column) for column in zip(*values)]
    if len(columns) == 1:
        return "(SELECT value FROM json_each(?))", [json.dumps([v[0] for v in values])]
    picks = ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(columns)))
    return f"(SELECT {picks} FROM json_each(?))", [json.dumps(values)]


def _tuple(columns: Sequence[str]) -> str:
    return columns[0] if len(columns) == 1 else "(" + ", ".join(columns) + ")"


def _delete_missing(
    conn: Connection,
    table: Table,
    owner: Sequence[str],
    owners: Sequence[tuple[Any, ...]],
    key: Sequence[str],
    keep: Sequence[tuple[Any, ...]],
    where: str = "",
    params: Sequence[Any] = (),
) -> None:
    """DELETE the rows of these owners (and `where`) whose key is not among `keep`: one statement, any batch size."""
    if not owners:
        return
    owned, owned_params = _value_set(conn.dialect, table, owner, owners)
    sql = f"DELETE FROM {table.name} WHERE {_tuple(owner)} IN {owned}{where}"
    args = [*owned_params, *params]
    if keep:
        kept, kept_params = _value_set(conn.dialect, table, key, keep)
        sql += f" AND {_tuple(key)} NOT IN {kept}"
        args += kept_params
    conn.exec_driver_sql(sql, tuple(args))


def _in_list(dialect: Dialect, column: str, scope: tuple[str, tuple[str, ...]] | None) -> tuple[str, list[Any]]:
    """` AND column IN (...)` for a source filter; nothing without one."""
    if scope is None:
        return "", []
    mark = "%s" if dialect.name == "postgresql" else "?"
    return f" AND {column} {scope[0].upper()} ({', '.join([mark] * len(scope[1]))})", list(scope[1])


def replace_sections(conn: Connection, batch: Sequence[Records], cover: Coverage = COMPLETE) -> None:
    """Delete the rows the latest body of each output no longer has, in every section that body carries.

    The upserts that follow write the rest. A section a body does not carry
    (Counts has no posts, `include_sections`, a source filter) is left alone, and
    so are the sources a filter left out.
    """
    # Child rows are only ever written with their output's row: an output not stored yet
    # has none to delete, which spares a first harvest every DELETE.
    ids = [(r.altmetric_id,) for r in batch]
    if not ids:
        return
    known_sql, known_params = _value_set(conn.dialect, schema.outputs, ("altmetric_id",), ids)
    known = {row[0] for row in conn.exec_driver_sql(f"SELECT altmetric_id FROM outputs WHERE altmetric_id IN {known_sql}", tuple(known_params))}
    batch = [r for r in batch if r.altmetric_id in known]
    for name, key in _REPLACED.items():
        table = schema.metadata.tables[name]
        carrying = [r for r in batch if name in r.sections]
        if not carrying:
            continue
        where, params = _in_list(conn.dialect, "source", cover.sources if name == "source_counts" else None)
        get = operator.itemgetter("altmetric_id", *key)
        keep = [get(row) for r in carrying for row in getattr(r, name)]
        _delete_missing(conn, table, ("altmetric_id",), [(r.altmetric_id,) for r in carrying], ("altmetric_id", *key), keep, where, params)
    # Identifiers: per scheme the body lists (a Counts body names a DOI and seldom a PMID
    # that Fetch's citation gives), and never one a job asked by (it stays findable by it).
    owners = [(r.altmetric_id, scheme) for r in batch for scheme in r.id_schemes]
    get = operator.itemgetter("scheme", "value")
    keep = [get(row) for r in batch if r.id_schemes for row in r.identifiers]
    _delete_missing(conn, schema.identifiers, ("altmetric_id", "scheme"), owners, ("scheme", "value"), keep, " AND NOT asked")
    # Posts: only where the body lists all of them (no post_types), within the sources asked.
    carrying = [r for r in batch if "mentions" in r.sections] if cover.posts else []
    if carrying:
        where, params = _in_list(conn.dialect, "source", cover.sources)
        owned, owned_params = _value_set(conn.dialect, schema.mentions, ("altmetric_id",), [(r.altmetric_id,) for r in carrying])
        # A post's citations first, while its mentions row still says whose post it is.
        sql = f"DELETE FROM mention_citations WHERE mention_id IN (SELECT mention_id FROM mentions WHERE altmetric_id IN {owned}{where})"
        args: list[Any] = [*owned_params, *params]
        get = operator.itemgetter("mention_id", "altmetric_id")
        keep_cited = [get(c) for r in carrying for c in r.mention_citations]
        if keep_cited:
            kept, kept_params = _value_set(conn.dialect, schema.mention_citations, ("mention_id", "altmetric_id"), keep_cited)
            sql += f" AND (mention_id, altmetric_id) NOT IN {kept}"
            args += kept_params
        conn.exec_driver_sql(sql, tuple(args))
        keep_posts = [(m["mention_id"],) for r in carrying for m in r.mentions]
        _delete_missing(conn, schema.mentions, ("altmetric_id",), [(r.altmetric_id,) for r in carrying], ("mention_id",), keep_posts, where, params)


def save_records(conn: Connection, batch: Sequence[Records], cover: Coverage = COMPLETE) -> None:
    """Make each output's rows equal its latest body: replace the sections it carries, upsert every table's rows, add the day's snapshot."""
    replace_sections(conn, batch, cover)
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


@dataclass(slots=True)
class Unit:
    """One item as the writer commits it: its status row, its parsed bodies, the identifier it was asked by."""

    item: dict[str, Any]
    records: list[Records]
    asked: list[dict[str, Any]]
    raw: archive.Entry | None = None  # its body for raw_bodies, compressed once however often the batch is split


def _clean(text: str | None) -> str | None:
    # An error text can quote a body: PostgreSQL refuses NUL in text.
    return None if text is None else text.replace("\x00", "")


def write_batch(
    engine: Engine,
    job_id: int,
    endpoint: str,
    results: Sequence[ItemResult],
    now: datetime,
    runner: str,
    all_posts: bool = False,
    params: JobParams | None = None,
    archive_config: ArchiveConfig | None = None,
) -> dict[str, int]:
    """Parse the bodies, then commit the data of a batch and its items' final statuses together.

    A crash before the commit leaves the items pending (they are asked again on
    resume); after it, both are there. Nothing in between can be observed.
    Returns how many items of the batch ended in each status. `all_posts`: a
    Fetch harvest whose bodies list every post (lists_every_post). `params`:
    the job's: a Fetch job's options say which part of each section its bodies
    carry, and a Citations job needs its query and its follow-up job.
    `archive_config`: whether and how raw_bodies keeps the bodies (default: the newest of each id).

    A body the database refuses (a value out of range ...) fails its own item:
    the batch is split until the refused item is alone, and the rest is stored.
    """
    cover = coverage(params.fetch if isinstance(params, HarvestParams) else None) if endpoint == "fetch" else COMPLETE
    records_of: dict[int, list[Records]] = {}
    # Parsing lets go of the bodies; the archive keeps them (an unusable one too: a parser fix may read it).
    raw_params = archive.fetch_params(endpoint, params)
    raws = {
        i: archive.entry(archive_config, endpoint, r.id_type, _archived_as(endpoint, params, r.identifier), r.body, now, job_id, raw_params)
        for i, r in enumerate(results)
        if r.body is not None
    }
    if endpoint == "citations":
        assert isinstance(params, CitationsParams), "a Citations job's batch needs its query"
        pages = _CitationPages(job_id, params, now)
        records_of = pages.parse(results)
        asked_of: dict[int, list[dict[str, Any]]] = {}
        item_ids: dict[int, int | None] = {}
        more: Callable[[Connection, set[str]], None] | None = pages.save
    else:
        parse = parse_fetch if endpoint == "fetch" else parse_counts
        for i, r in enumerate(results):
            if r.body is None:
                continue
            try:
                rec = parse(decode(r.body), now)
                if all_posts:
                    rec.outputs["posts_seen_at"] = now
                records_of[i] = [rec]
            except ParseError as e:  # checked JSON with an altmetric_id, yet unusable: not transient
                r.status, r.error = "failed", f"unusable body: {e}"
            r.body = None
        item_ids = {i: recs[0].altmetric_id for i, recs in records_of.items()}
        # The asked id is an identifier of the output too (an ISBN body may not
        # list the ISBN it was found by), unless the API answered with another output.
        asked_of = {
            i: [{"scheme": results[i].id_type, "value": results[i].identifier, "altmetric_id": recs[0].altmetric_id, "asked": True}]
            for i, recs in records_of.items()
            if results[i].note is None and results[i].id_type != "id"
        }
        more = None
    units = [
        Unit(
            {
                "b_job_id": job_id,
                "b_id_type": r.id_type,
                "b_identifier": r.identifier,
                "status": r.status,
                "b_attempts": r.attempts,
                "http_status": r.http_status,
                "last_error": _clean(None if r.error is None else redact(r.error)),
                "altmetric_id": item_ids.get(i),
                "note": _clean(None if r.note is None else redact(r.note)),
                "updated_at": now,
            },
            records_of.get(i, []),
            asked_of.get(i, []),
            raws.get(i),
        )
        for i, r in enumerate(results)
    ]
    written = _commit(engine, job_id, units, now, runner, cover, more)
    return dict(collections.Counter(u.item["status"] for u in written))


def _archived_as(endpoint: str, params: JobParams | None, identifier: str) -> str:
    """The archive's identifier of a body: the asked id, or for a Citations page the query that asks for it."""
    return archive.page_query(params, identifier) if endpoint == "citations" and isinstance(params, CitationsParams) else identifier


class _Refused(Exception):
    """The database refused a value (a data or integrity error): str() is its one-line message."""


def _commit(
    engine: Engine,
    job_id: int,
    units: list[Unit],
    now: datetime,
    runner: str,
    cover: Coverage,
    more: Callable[[Connection, set[str]], None] | None,
    failed: set[str] | None = None,
) -> list[Unit]:
    """Commit these units in one transaction; if the database refuses one, bisect. Returns the units as written."""
    failed = set() if failed is None else failed
    try:
        _retrying(lambda conn: _write(conn, job_id, units, now, runner, cover, more, failed), engine)
        return units
    except _Refused as e:
        if len(units) == 1:
            [unit] = units
            logger.warning("the database refused item %s: %s", unit.item["b_identifier"], e)
            failed.add(unit.item["b_identifier"])
            item = unit.item | {"status": "failed", "last_error": f"the database refused the data: {e}", "altmetric_id": None}
            alone = [Unit(item, [], [])]
            # Without its data the item's status row is ordinary: a refusal now is not the item's.
            _retrying(lambda conn: _write(conn, job_id, alone, now, runner, cover, more, failed), engine, refused_is_fatal=True)
            return alone
    # Each half commits on its own; `more` (a Citations batch's further pages) goes with the last,
    # once every refused page is known.
    half = len(units) // 2
    first = _commit(engine, job_id, units[:half], now, runner, cover, None, failed)
    return first + _commit(engine, job_id, units[half:], now, runner, cover, more, failed)


def _held(conn: Connection, job_id: int, runner: str, units: list[Unit]) -> list[Unit]:
    """The units whose items this worker still holds a lease on; the others are marked 'lost' and not written.

    A worker frozen past its leases (or cut off from the database) may come back
    with results for items another worker has taken since: writing them could put
    a `failed` over the other's `done`. Checked inside the transaction that writes
    them (on PostgreSQL the rows stay locked until it commits).
    """
    keys = [(u.item["b_id_type"], u.item["b_identifier"]) for u in units]
    mine = leases.held(conn, job_id, runner, keys)
    for u, key in zip(units, keys, strict=True):
        if key not in mine:
            u.item["status"] = "lost"
    return [u for u in units if u.item["status"] != "lost"]


class _CitationPages:
    """What a batch of Citations pages writes besides outputs: ranks, further pages, follow-up items."""

    def __init__(self, job_id: int, params: CitationsParams, now: datetime) -> None:
        self.job_id = job_id
        self.now = now
        self.timeframe = params.timeframe
        self.filters = filters_text(params.filters)
        self.num = params.num_results
        self.max_pages = params.pages
        self.then_job = params.then_job
        self.activity: list[tuple[str, dict[str, Any]]] = []  # (page, row)
        self.last_page = 0  # the highest page the batch's totals imply
        self.follow: list[tuple[str, tuple[str, str, int]]] = []  # (page, item)

    def parse(self, results: Sequence[ItemResult]) -> dict[int, list[Records]]:
        records: dict[int, list[Records]] = {}
        for i, r in enumerate(results):
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
            mine = records[i] = []
            for index, rec in enumerate(parsed):
                if rec is None:
                    continue
                rank = (page - 1) * self.num + index + 1
                mine.append(rec)
                self.activity.append(
                    (
                        r.identifier,
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
                        },
                    )
                )
                self.follow.append((r.identifier, ("doi", rec.doi, rank) if rec.doi else ("id", str(rec.altmetric_id), rank)))
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

    def save(self, conn: Connection, refused: set[str]) -> None:
        """Ranks and follow-up items of the pages stored; `refused`: pages the database refused."""
        upsert(conn, schema.citation_activity, [row for page, row in self.activity if page not in refused])
        # Only pages the job lacks: every page of a 20,000-page listing reports the same total.
        known = conn.execute(
            select(func.max(schema.job_items.c.line_no)).where(schema.job_items.c.job_id == self.job_id)
        ).scalar_one() or 0
        pages = range(known + 1, self.last_page + 1)
        jobs.add_items(conn, self.job_id, [("page", str(p), p) for p in pages], self.now)
        if self.then_job is not None:
            jobs.add_items(conn, self.then_job, [item for page, item in self.follow if page not in refused], self.now)


def _write(
    conn: Connection,
    job_id: int,
    units: list[Unit],
    now: datetime,
    runner: str,
    cover: Coverage = COMPLETE,
    more: Callable[[Connection, set[str]], None] | None = None,
    refused: set[str] | None = None,
) -> None:
    claimed = units
    units = _held(conn, job_id, runner, units)
    # Before the identifiers are stored: what they named until now tells which outputs upstream replaced.
    moves = aliases.detect(
        conn,
        [row for u in units for row in u.asked],
        [rec for u in units for rec in u.records],
        [(int(u.item["b_identifier"]), u.item["altmetric_id"]) for u in units if u.item["b_id_type"] == "id" and u.item["altmetric_id"] is not None],
    )
    save_records(conn, [rec for u in units for rec in u.records], cover)
    # In the transaction of the data parsed from them, and only for the units written: archive and tables never disagree.
    upsert(conn, schema.raw_bodies, archive.replace(conn, [u.raw for u in units if u.raw is not None]))
    upsert(conn, schema.identifiers, [row for u in units for row in u.asked])
    aliases.follow(conn, moves, now)
    if more is not None:
        # A page whose lease was lost adds no pages or follow-up items: its new holder will.
        lost = {u.item["b_identifier"] for u in claimed if u.item["status"] == "lost"}
        more(conn, (refused or set()) | lost)
    items = [u.item for u in units]
    if items:
        conn.execute(_mark_item, items)
    # The heartbeat rides on every batch: a live run is one that writes.
    conn.execute(
        update(schema.jobs).where(schema.jobs.c.id == job_id, schema.jobs.c.runner == runner).values(heartbeat_at=jobs.db_now(conn))
    )


def _retrying(work: Any, engine: Engine, attempts: int = 5, refused_is_fatal: bool = False) -> None:
    """Run one transaction; retry while the database is locked, raise _Refused for a value it refuses, stop on anything else."""
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
        except (DataError, IntegrityError, OverflowError, UnicodeEncodeError) as e:
            # OverflowError: an int past SQLite's 64 bits; UnicodeEncodeError: a lone surrogate (\ud800) in a text.
            if refused_is_fatal:
                raise DatabaseError(f"cannot write to the database: {db_message(e)}") from None
            raise _Refused(db_message(e)) from None
        except SQLAlchemyError as e:
            raise DatabaseError(f"cannot write to the database: {db_message(e)}") from None
