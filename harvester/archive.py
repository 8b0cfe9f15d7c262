"""The raw archive: every 200 body, compressed, stored with its data and read back by `harvester reparse`.

A body goes into raw_bodies in the very transaction that stores the rows parsed
from it (store._write), so the archive and the tables never disagree. With it,
a parser fix or a schema migration is a `reparse`, not a second harvest's quota.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from urllib.parse import urlencode

import zstandard
from sqlalchemy import ColumnElement, Connection, Engine, and_, delete, or_, select, tuple_

from harvester import db, schema
from harvester.config import ArchiveConfig
from harvester.params import CitationsParams

logger = logging.getLogger(__name__)

# zstd's default level: on API JSON, levels above 3 shrank bodies by a few per cent for
# twice the writer's time or more (benchmarks/archive.py).
LEVEL = 3


@functools.lru_cache(maxsize=1)
def _compressor() -> zstandard.ZstdCompressor:
    # One per process: the writer is single-threaded, and building one per body costs more than a small body's compression.
    return zstandard.ZstdCompressor(level=LEVEL)


@functools.lru_cache(maxsize=1)
def _decompressor() -> zstandard.ZstdDecompressor:
    return zstandard.ZstdDecompressor()


def compress(raw: bytes) -> bytes:
    """A body -> one zstd frame (which records its own size, so reading needs no length)."""
    return _compressor().compress(raw)


def decompress(stored: bytes) -> bytes:
    return _decompressor().decompress(stored)


@dataclass(frozen=True, slots=True)
class Entry:
    """One body on its way into raw_bodies: the row, and whether it replaces the older days' bodies of its id."""

    row: dict[str, Any]
    latest: bool


def page_query(job_params: CitationsParams, page: str) -> str:
    """A Citations page's archive identifier: the query that asks for it again, e.g. '1w?doi_prefix=10.1038&num_results=99&page=3'."""
    query = job_params.filters | {"num_results": job_params.num_results, "page": page}
    return f"{job_params.timeframe}?{urlencode(query)}"


def entry(
    settings: ArchiveConfig | None,
    endpoint: str,
    id_type: str,
    identifier: str,
    raw: bytes,
    fetched_at: datetime,
    job_id: int,
    params: str | None,
) -> Entry | None:
    """The archive row of a 200 body (compressed here, once: a batch the database refuses is written again in halves), or None when archiving is off."""
    settings = settings or ArchiveConfig()
    if not settings.enabled:
        return None
    row = {
        "endpoint": endpoint,
        "id_type": id_type,
        "identifier": identifier,
        "harvested_on": fetched_at.date(),
        "fetched_at": fetched_at,
        "job_id": job_id,
        "params": params,
        "raw_size": len(raw),
        "body": compress(raw),
    }
    return Entry(row, settings.keep == "latest")


def replace(conn: Connection, entries: Sequence[Entry]) -> list[dict[str, Any]]:
    """Delete the bodies these entries replace (keep = "latest": the same id's other days); return the rows to upsert."""
    table = schema.raw_bodies
    groups: dict[tuple[str, str, date], list[str]] = {}
    for e in entries:
        if e.latest:
            groups.setdefault((e.row["endpoint"], e.row["id_type"], e.row["harvested_on"]), []).append(e.row["identifier"])
    for (endpoint, id_type, day), identifiers in groups.items():
        # A first harvest deletes nothing, but the statement is one index probe an id: cheaper than asking first.
        conn.execute(
            delete(table).where(
                table.c.endpoint == endpoint, table.c.id_type == id_type, table.c.identifier.in_(identifiers), table.c.harvested_on != day
            )
        )
    return [e.row for e in entries]


@dataclass(frozen=True, slots=True)
class Archived:
    """A body read back from the archive, decompressed, with what it was fetched as."""

    endpoint: str
    id_type: str
    identifier: str
    harvested_on: date
    fetched_at: datetime
    job_id: int | None
    params: dict[str, Any] | None
    body: bytes


_ORDER = ("fetched_at", "endpoint", "id_type", "identifier", "harvested_on")
_TEXT = ("endpoint", "id_type", "identifier")


def tie_break(id_type: str, identifier: str) -> tuple[str, str]:
    """The order among bodies fetched at one instant (one writer batch: one endpoint, one day), as `read` returns them.

    The writer stores a batch in this order, so that where two of its bodies name one
    identifier, the later one here owns it, in the harvest and in `reparse` alike.
    Python compares strings by code point: SQLite's BINARY collation, PostgreSQL's "C".
    """
    return (id_type, identifier)


def read(engine: Engine, endpoint: str | None = None, job_id: int | None = None, batch: int = 500) -> Iterator[list[Archived]]:
    """The archived bodies in the order they were fetched, `batch` at a time: memory stays flat however large the archive.

    Each batch is a query of its own that starts after the last row of the one
    before (keyset paging on the fetched_at index): no transaction stays open
    while the caller writes.
    """
    t = schema.raw_bodies
    # By code point (tie_break), whatever the database's collation: a locale's order (en_US
    # skips punctuation) would replay one batch's bodies in another order than the writer's.
    dialect = engine.dialect
    order: list[ColumnElement[Any]] = [db.code_point_order(dialect, t.c[name]) if name in _TEXT else t.c[name] for name in _ORDER]
    order[0] = db.as_stored(dialect, t.c.fetched_at)
    last: tuple[Any, ...] | None = None
    while True:
        keys = (column.label(name) for column, name in zip(order, _ORDER, strict=True))
        query = select(*keys, t.c.fetched_at.label("at"), t.c.job_id, t.c.params, t.c.body).order_by(*order).limit(batch)
        if endpoint is not None:
            query = query.where(t.c.endpoint == endpoint)
        if job_id is not None:
            query = query.where(t.c.job_id == job_id)
        if last is not None:
            # fetched_at >= x first, so that the index seeks; the rest breaks ties inside one batch's timestamp.
            after = or_(order[0] > last[0], and_(order[0] == last[0], tuple_(*order[1:]) > tuple_(*last[1:])))
            query = query.where(order[0] >= last[0], after)
        with engine.connect() as conn:
            rows = conn.execute(query).all()
        if not rows:
            return
        yield [
            Archived(
                r.endpoint,
                r.id_type,
                r.identifier,
                r.harvested_on,
                r.at,
                r.job_id,
                json.loads(r.params) if r.params else None,
                decompress(r.body),
            )
            for r in rows
        ]
        last = tuple(rows[-1])[: len(_ORDER)]
        if len(rows) < batch:
            return
