"""The single writer: a batch of results and their item statuses in one transaction.

The same for every endpoint: the job's endpoint object (endpoints.py) parses the bodies
and says what else a commit writes. Rows go in through db.upsert (INSERT ... ON CONFLICT
DO UPDATE), so the same code runs on SQLite and PostgreSQL, and re-harvesting an output
updates its rows instead of duplicating them.
"""

from __future__ import annotations

import collections
import logging
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Dialect, Engine, Table, update
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError

from harvester import aliases, archive, clock, db, leases, schema
from harvester.config import ArchiveConfig
from harvester.db import patiently
from harvester.db import upsert as upsert  # re-exported: the writer's statement, shared with nightly and reparse
from harvester.endpoints import COMPLETE, Coverage, Endpoint, StoreRecords
from harvester.errors import DatabaseError, db_message
from harvester.log import redact
from harvester.parse import Records
from harvester.vocabulary import ItemResult, ItemStatus

logger = logging.getLogger(__name__)

# What a daily snapshot keeps of an output row.
SNAPSHOT_COLUMNS = ("score", "posts_count", "accounts_count", "readers_count")
# The outputs columns that are totals over every source: a body filtered to some sources
# (Coverage.totals False) totals only those, so it leaves them, and the snapshot's, as they were.
TOTAL_COLUMNS = ("posts_count", "accounts_count")
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
    "downloads",
    "downloads_timeline",
)


# The key of each replaced table besides altmetric_id; a body carrying the section owns all
# of the output's rows in it (identifiers and mentions are scoped more narrowly, see save_records).
_REPLACED = {
    "source_counts": ("source",),
    "readers": ("platform",),
    "score_history": ("timeframe",),
    "score_context": ("scope",),
    "output_relations": ("related_altmetric_id", "relation"),
    "demographics": ("platform", "dimension", "key"),
    "downloads": ("platform", "metric"),
    "downloads_timeline": ("platform", "month", "metric"),
}


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
    owned, owned_params = db.value_set(conn.dialect, table, owner, owners)
    sql = f"DELETE FROM {table.name} WHERE {db.row_of(owner)} IN {owned}{where}"
    args = [*owned_params, *params]
    if keep:
        kept, kept_params = db.value_set(conn.dialect, table, key, keep)
        sql += f" AND {db.row_of(key)} NOT IN {kept}"
        args += kept_params
    conn.exec_driver_sql(sql, tuple(args))


def _in_list(dialect: Dialect, column: str, scope: tuple[str, tuple[str, ...]] | None) -> tuple[str, list[Any]]:
    """` AND column IN (...)` for a source filter; nothing without one."""
    if scope is None:
        return "", []
    mark = db.placeholder(dialect)
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
    known_sql, known_params = db.value_set(conn.dialect, schema.outputs, ("altmetric_id",), ids)
    known = {
        row[0] for row in conn.exec_driver_sql(f"SELECT altmetric_id FROM outputs WHERE altmetric_id IN {known_sql}", tuple(known_params))
    }
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
        owned, owned_params = db.value_set(conn.dialect, schema.mentions, ("altmetric_id",), [(r.altmetric_id,) for r in carrying])
        # A post's citations first, while its mentions row still says whose post it is.
        sql = f"DELETE FROM mention_citations WHERE mention_id IN (SELECT mention_id FROM mentions WHERE altmetric_id IN {owned}{where})"
        args: list[Any] = [*owned_params, *params]
        get = operator.itemgetter("mention_id", "altmetric_id")
        keep_cited = [get(c) for r in carrying for c in r.mention_citations]
        if keep_cited:
            kept, kept_params = db.value_set(conn.dialect, schema.mention_citations, ("mention_id", "altmetric_id"), keep_cited)
            sql += f" AND (mention_id, altmetric_id) NOT IN {kept}"
            args += kept_params
        conn.exec_driver_sql(sql, tuple(args))
        keep_posts = [(m["mention_id"],) for r in carrying for m in r.mentions]
        _delete_missing(
            conn, schema.mentions, ("altmetric_id",), [(r.altmetric_id,) for r in carrying], ("mention_id",), keep_posts, where, params
        )


def owned_identifiers(named: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Identifier rows in the order their bodies were received -> one row per identifier, as if each body had been stored alone.

    The owner is that of the identifier's last row (the latest answer wins), and it
    is `asked` if any row was the id a job asked by (a later body listing the id
    does not make it unasked). Written at once, a batch's asked rows used to go in
    after every body's listed ones: an older body's asked id then won over a newer
    body, and the owner depended on how bodies were batched (issue 17, item 10).
    """
    owners: dict[tuple[str, str], int] = {}
    asked: set[tuple[str, str]] = set()
    for row in named:
        key = (row["scheme"], row["value"])
        owners[key] = row["altmetric_id"]
        if row.get("asked"):
            asked.add(key)
    # Rows without `asked` leave the column as it is: an id asked by an earlier batch stays asked.
    return [
        {"scheme": scheme, "value": value, "altmetric_id": owner, "asked": True}
        if (scheme, value) in asked
        else {"scheme": scheme, "value": value, "altmetric_id": owner}
        for (scheme, value), owner in owners.items()
    ]


def save_records(
    conn: Connection, batch: Sequence[Records], cover: Coverage = COMPLETE, asked: Sequence[Sequence[dict[str, Any]]] = ()
) -> None:
    """Make each output's rows equal its latest body: replace the sections it carries, upsert every table's rows, add the day's snapshot.

    `batch` in the order the bodies were received (archive.tie_break within one
    instant); `asked`: beside each record, the identifier rows of the id its item
    was asked by (endpoints.asked_rows), which count as that body's answer.
    """
    replace_sections(conn, batch, cover)
    tables: dict[str, list[dict[str, Any]]] = {name: [] for name in (*DATA_TABLES, "counts_snapshots")}
    named: list[dict[str, Any]] = []
    for i, records in enumerate(batch):
        named += records.identifiers
        if i < len(asked):
            named += asked[i]
        output = records.outputs
        if not cover.totals:
            output = {k: v for k, v in output.items() if k not in TOTAL_COLUMNS}
        output["first_harvested_at"] = output["harvested_at"]
        tables["outputs"].append(output)
        for name in DATA_TABLES:
            if name not in ("outputs", "identifiers"):
                tables[name].extend(getattr(records, name))
        # Every harvest adds to the time series: one row per output and UTC day, the day's last harvest wins.
        values = {c: output[c] for c in SNAPSHOT_COLUMNS if c in output}
        if values:
            at = output["harvested_at"]
            tables["counts_snapshots"].append(
                {"altmetric_id": records.altmetric_id, "harvested_on": at.date(), "harvested_at": at, **values}
            )
    tables["identifiers"] = owned_identifiers(named)
    for name, rows in tables.items():
        upsert(conn, schema.metadata.tables[name], rows)


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
    endpoint: Endpoint,
    results: Sequence[ItemResult],
    now: datetime,
    runner: str,
    archive_config: ArchiveConfig | None = None,
) -> dict[str, int]:
    """Parse the bodies, then commit the data of a batch and its items' final statuses together.

    A crash before the commit leaves the items pending (they are asked again on
    resume); after it, both are there. Nothing in between can be observed.
    Returns how many items of the batch ended in each status. `endpoint`: the
    job's (endpoints.endpoint_for), which parses the bodies and knows what part of
    each section they carry and what else a commit writes (a Citations page's next pages).
    `archive_config`: whether and how raw_bodies keeps the bodies (default: the newest of each id).

    A body the database refuses (a value out of range ...) fails its own item:
    the batch is split until the refused item is alone, and the rest is stored.
    """
    # Parsing lets go of the bodies; the archive keeps them (an unusable one too: a parser fix may read it).
    raws = {
        i: archive.entry(
            archive_config, endpoint.kind.value, r.id_type, endpoint.archived_as(r.identifier), r.body, now, job_id, endpoint.archive_params
        )
        for i, r in enumerate(results)
        if r.body is not None
    }
    batch = endpoint.read(results, now, job_id)
    units = [
        Unit(
            {
                "b_job_id": job_id,
                "b_id_type": r.id_type,
                "b_identifier": r.identifier,
                "status": str(r.status),  # a plain str for the drivers (psycopg dumps an Enum by its name)
                "b_attempts": r.attempts,
                "http_status": r.http_status,
                "last_error": _clean(None if r.error is None else redact(r.error)),
                "altmetric_id": batch.altmetric_ids.get(i),
                "note": _clean(None if r.note is None else redact(r.note)),
                "updated_at": now,
            },
            batch.records.get(i, []),
            batch.asked.get(i, []),
            raws.get(i),
        )
        for i, r in enumerate(results)
    ]
    # The batch's bodies share one fetched_at: stored in the archive's order among them, so that where
    # two name one identifier, the owner the harvest leaves is the one `reparse` rebuilds.
    units.sort(key=lambda u: archive.tie_break(u.item["b_id_type"], endpoint.archived_as(u.item["b_identifier"])))
    written, added = _commit(engine, job_id, units, now, runner, endpoint.coverage, batch.after)
    outcome = dict(collections.Counter(u.item["status"] for u in written))
    if added:
        outcome["added"] = added  # items the commit added to the job: still pending, and counted as such
    return outcome


class _Refused(Exception):
    """The database refused a value (a data or integrity error): str() is its one-line message."""


def _commit(
    engine: Engine,
    job_id: int,
    units: list[Unit],
    now: datetime,
    runner: str,
    cover: Coverage,
    more: Callable[[Connection, set[str], StoreRecords], int] | None,
    failed: set[str] | None = None,
) -> tuple[list[Unit], int]:
    """Commit these units in one transaction; if the database refuses one, bisect. Returns the units as
    written, and the items `more` added to the job."""
    failed = set() if failed is None else failed
    try:
        return units, _retrying(lambda conn: _write(conn, job_id, units, now, runner, cover, more, failed), engine)
    except _Refused as e:
        if len(units) == 1:
            [unit] = units
            logger.warning("the database refused item %s: %s", unit.item["b_identifier"], e)
            failed.add(unit.item["b_identifier"])
            item = unit.item | {"status": str(ItemStatus.FAILED), "last_error": f"the database refused the data: {e}", "altmetric_id": None}
            alone = [Unit(item, [], [])]
            # Without its data the item's status row is ordinary: a refusal now is not the item's.
            added = _retrying(lambda conn: _write(conn, job_id, alone, now, runner, cover, more, failed), engine, refused_is_fatal=True)
            return alone, added
    # Each half commits on its own; `more` (a Citations batch's further pages) goes with the last,
    # once every refused page is known.
    half = len(units) // 2
    first, _ = _commit(engine, job_id, units[:half], now, runner, cover, None, failed)
    second, added = _commit(engine, job_id, units[half:], now, runner, cover, more, failed)
    return first + second, added


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


def _write(
    conn: Connection,
    job_id: int,
    units: list[Unit],
    now: datetime,
    runner: str,
    cover: Coverage = COMPLETE,
    more: Callable[[Connection, set[str], StoreRecords], int] | None = None,
    refused: set[str] | None = None,
) -> int:
    """Write the units in the caller's transaction; returns the items `more` added to the job."""
    claimed = units
    units = _held(conn, job_id, runner, units)
    # Before the identifiers are stored: what they named until now tells which outputs upstream replaced.
    moves = aliases.detect(
        conn,
        [row for u in units for row in u.asked],
        [rec for u in units for rec in u.records],
        [
            (int(u.item["b_identifier"]), u.item["altmetric_id"])
            for u in units
            if u.item["b_id_type"] == "id" and u.item["altmetric_id"] is not None
        ],
    )
    # A unit's asked rows go with its last record (a Citations page, the only unit of many records, asks by no id).
    records = [rec for u in units for rec in u.records]
    asked = [u.asked if i == len(u.records) - 1 else [] for u in units for i in range(len(u.records))]
    save_records(conn, records, cover, asked)
    # In the transaction of the data parsed from them, and only for the units written: archive and tables never disagree.
    upsert(conn, schema.raw_bodies, archive.replace(conn, [u.raw for u in units if u.raw is not None]))
    aliases.follow(conn, moves, now)
    added = 0
    if more is not None:
        # A page whose lease was lost adds no pages or follow-up items: its new holder will.
        lost = {u.item["b_identifier"] for u in claimed if u.item["status"] == "lost"}
        added = more(conn, (refused or set()) | lost, lambda c, found: _store_found(c, found, now))
    db.mark_items(conn, [u.item for u in units])
    # Every batch counts its items in its worker's row, so `status` follows the writes rather
    # than the heartbeat; before the job row, in the order leases.renew locks the two.
    finished = sum(1 for u in units if u.item["status"] != ItemStatus.PENDING)
    if finished:
        w = schema.workers.c
        conn.execute(update(schema.workers).where(w.runner == runner).values(items_done=w.items_done + finished))
    # The heartbeat rides on every batch: a live run is one that writes.
    conn.execute(
        update(schema.jobs).where(schema.jobs.c.id == job_id, schema.jobs.c.runner == runner).values(heartbeat_at=clock.db_now(conn))
    )
    return added


def _store_found(conn: Connection, records: list[Records], now: datetime) -> None:
    """Outputs a batch's `after` found to store (a change-feed listing's tracked ones), as any batch's:
    a DOI now under another Altmetric id moves its output."""
    moves = aliases.detect(conn, [], records, [])
    save_records(conn, records)
    aliases.follow(conn, moves, now)


def _retrying(work: Callable[[Connection], int], engine: Engine, refused_is_fatal: bool = False) -> int:
    """Run one transaction; wait while another holds the lock (db.patiently), raise _Refused for a value
    the database refuses, stop on anything else."""

    def once() -> int:
        with engine.begin() as conn:
            return work(conn)

    try:
        return patiently(once, "writing a batch")
    except (DataError, IntegrityError, OverflowError, UnicodeEncodeError) as e:
        # OverflowError: an int past SQLite's 64 bits; UnicodeEncodeError: a lone surrogate (\ud800) in a text.
        if refused_is_fatal:
            raise DatabaseError(f"cannot write to the database: {db_message(e)}") from None
        raise _Refused(db_message(e)) from None
    except SQLAlchemyError as e:
        raise DatabaseError(f"cannot write to the database: {db_message(e)}") from None
