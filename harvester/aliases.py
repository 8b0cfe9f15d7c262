"""Following altmetric id changes: when upstream merges records, one DOI names a new altmetric id.

A merge is shown only by a DOI that named another output, or by an Altmetric id that
answers with another one: other identifiers may be shared by two live outputs.

The writer looks, before it stores a batch, at what the identifiers it is
about to store (the id each item was asked by, and each body's DOI) pointed
to until now. An identifier that named another output means that output was
replaced: `output_aliases` gets (old, new), the old `outputs` row is marked
`superseded_by` (the nightly never refreshes it again) and its identifiers
move to the new output, which also keeps the old one's first_harvested_at (it
is not new to the database). Old snapshots stay under the old id; the alias
joins them to the new one (docs/schema.md has the query).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import Connection, func, select, text, update

from harvester import schema
from harvester.db import lookup_pairs
from harvester.parse import Records

logger = logging.getLogger(__name__)

Move = tuple[int, int, str]  # (old altmetric id, new altmetric id, the identifier that showed it)


def detect(
    conn: Connection, asked: Iterable[dict[str, object]], records: Iterable[Records], asked_ids: Iterable[tuple[int, int]]
) -> list[Move]:
    """The outputs these results replace.

    `asked`: identifier rows of the ids the items were asked by (only those the API
    answered as asked). `records`: the parsed bodies (their DOIs). `asked_ids`:
    (asked altmetric id, returned altmetric id) of items asked by Altmetric id.
    """
    named: dict[tuple[str, str], int] = {}
    for row in asked:
        # Only a DOI names one output. A PMID, ISBN, handle or PMC id can be shared by two live
        # outputs (a book and its chapter, a preprint and its paper): the second one seen is not a
        # merge of the first, and treating it as one moved all the first's identifiers away.
        if row["scheme"] == "doi":
            named[("doi", str(row["value"]))] = int(row["altmetric_id"])  # type: ignore[call-overload]
    for rec in records:
        if rec.doi:
            named.setdefault(("doi", rec.doi), rec.altmetric_id)
    moves: dict[int, Move] = {}
    for old, new in asked_ids:
        if old != new:
            moves[old] = (old, new, f"id:{old}")
    query, params = lookup_pairs(conn, list(named), "identifiers", ("scheme", "value"), "t.scheme, t.value, t.altmetric_id")
    rows = conn.execute(text(query), params)
    for scheme, value, old in rows:
        new = named[(scheme, value)]
        if old != new:
            moves.setdefault(old, (old, new, f"{scheme}:{value}"))
    return [m for m in moves.values() if m[1] not in moves]  # an output named twice in one batch: its last name wins later


def follow(conn: Connection, moves: list[Move], now: datetime) -> None:
    """Record the moves (after the new outputs' rows are stored, in the same transaction)."""
    o, a, i = schema.outputs.c, schema.output_aliases.c, schema.identifiers.c
    for old, new, via in moves:
        logger.info("altmetric id %d is now %d (%s): following it", old, new, via)
        existing = conn.execute(select(a.old_altmetric_id).where(a.old_altmetric_id == old)).first()
        if existing is None:
            conn.execute(schema.output_aliases.insert().values(old_altmetric_id=old, new_altmetric_id=new, via=via, detected_at=now))
        else:
            conn.execute(
                update(schema.output_aliases).where(a.old_altmetric_id == old).values(new_altmetric_id=new, via=via, detected_at=now)
            )
        # Chains stay one hop long: whatever pointed to the old id points to the new one.
        conn.execute(update(schema.output_aliases).where(a.new_altmetric_id == old).values(new_altmetric_id=new))
        conn.execute(update(schema.outputs).where(o.superseded_by == old).values(superseded_by=new))
        conn.execute(update(schema.outputs).where(o.altmetric_id == old).values(superseded_by=new, superseded_at=now))
        conn.execute(update(schema.identifiers).where(i.altmetric_id == old).values(altmetric_id=new))
        # Not new to the database: the output it replaces was first stored then.
        first = select(func.min(o.first_harvested_at)).where(o.altmetric_id.in_((old, new))).scalar_subquery()
        conn.execute(
            update(schema.outputs).where(o.altmetric_id == new).values(first_harvested_at=first, superseded_by=None, superseded_at=None)
        )
