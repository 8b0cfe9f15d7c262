"""The single writer: a batch of results and their item statuses in one transaction.

Upserts are built from the dialect's insert() (INSERT ... ON CONFLICT DO
UPDATE), so the same code runs on SQLite and PostgreSQL, and re-harvesting an
output updates its rows instead of duplicating them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Table, bindparam, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from harvester import schema
from harvester.errors import DatabaseError
from harvester.parse import Records

logger = logging.getLogger(__name__)

# Which columns an upsert may overwrite, per table: counts knows only the
# unique users of a source, so it must not blank the posts_count fetch stored.
_UPDATE_COLUMNS = {
    "source_counts": ["unique_users_count"],
}


@dataclass(slots=True)
class ItemResult:
    """The final outcome of one job item, as the writer commits it."""

    id_type: str
    identifier: str
    status: str  # done, not_found, failed
    attempts: int
    http_status: int | None = None
    error: str | None = None
    records: Records | None = None
    note: str | None = None


def upsert(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """INSERT ... ON CONFLICT (primary key) DO UPDATE, as one executemany."""
    if not rows:
        return
    key = [c.name for c in table.primary_key.columns]
    # Two rows with one key in a batch (two ids of one output): the last wins,
    # as it would have with two separate upserts.
    unique = list({tuple(r[k] for k in key): r for r in rows}.values())
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = insert(table)
    columns = _UPDATE_COLUMNS.get(table.name) or [c for c in unique[0] if c not in key]
    if columns:
        stmt = stmt.on_conflict_do_update(index_elements=key, set_={c: stmt.excluded[c] for c in columns})
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=key)
    conn.execute(stmt, unique)


def save_records(conn: Connection, batch: Iterable[Records]) -> None:
    """Upsert every table's rows of a batch of parsed bodies."""
    tables: dict[str, list[dict[str, Any]]] = {
        "outputs": [],
        "identifiers": [],
        "source_counts": [],
        "readers": [],
        "score_history": [],
        "score_context": [],
    }
    for records in batch:
        tables["outputs"].append(records.outputs)
        for name in ("identifiers", "source_counts", "readers", "score_history", "score_context"):
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


def write_batch(engine: Engine, job_id: int, results: Sequence[ItemResult], now: datetime, runner: str) -> None:
    """Commit the data of a batch and its items' final statuses together.

    A crash before the commit leaves the items pending (they are asked again on
    resume); after it, both are there. Nothing in between can be observed.
    """
    records = [r.records for r in results if r.records is not None]
    items = [
        {
            "b_job_id": job_id,
            "b_id_type": r.id_type,
            "b_identifier": r.identifier,
            "status": r.status,
            "b_attempts": r.attempts,
            "http_status": r.http_status,
            "last_error": r.error,
            "altmetric_id": r.records.altmetric_id if r.records else None,
            "note": r.note,
            "updated_at": now,
        }
        for r in results
    ]
    # The asked id is an identifier of the output too (an ISBN body may not
    # list the ISBN it was found by), unless the API answered with another output.
    asked = [
        {"scheme": r.id_type, "value": r.identifier, "altmetric_id": r.records.altmetric_id}
        for r in results
        if r.records is not None and r.note is None and r.id_type != "id"
    ]
    _retrying(lambda conn: _write(conn, job_id, records, items, asked, now, runner), engine)


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
