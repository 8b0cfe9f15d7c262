"""`harvester reparse`: rebuild the data tables from the raw archive, with zero API requests.

The bodies are replayed in the order they were fetched through the writer's own
parse-and-save path (the endpoint's parser, store.save_records), each as of its fetched_at:
outputs.harvested_at and the day's counts_snapshots row come out as the
harvest left them, and a parser fix or a new column reaches every stored output.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError

from harvester import archive, endpoints, store
from harvester.errors import DatabaseError, db_message
from harvester.parse import ParseError, Records, decode
from harvester.vocabulary import JobKind

logger = logging.getLogger(__name__)

BATCH = 500  # bodies read, parsed and written per transaction, as a harvest's writer does


@dataclass
class Outcome:
    """What a reparse did."""

    bodies: int = 0
    outputs: int = 0  # output rows written (a Citations page gives many)
    unusable: int = 0  # bodies the parser cannot use (as when they were harvested)
    refused: int = 0  # bodies whose data the database refused
    elapsed: float = 0.0

    @property
    def rate(self) -> float:
        return self.bodies / self.elapsed if self.elapsed > 0 else 0.0

    def summary(self) -> str:
        line = f"reparse: {self.bodies:,} bodies, {self.outputs:,} outputs in {self.elapsed:.1f}s ({self.rate:,.0f} ids/s), 0 requests"
        if self.unusable or self.refused:
            line += f"; {self.unusable:,} unusable, {self.refused:,} refused by the database"
        return line


@dataclass
class _Chunk:
    """Bodies written together: one endpoint and one set of Fetch options (one Coverage), each output once."""

    cover: endpoints.Coverage
    records: list[Records] = field(default_factory=list)
    asked: list[list[dict[str, Any]]] = field(default_factory=list)  # beside each record: its body's asked-id rows
    ids: set[int] = field(default_factory=set)


def reparse(engine: Engine, endpoint: str | None = None, job_id: int | None = None, batch: int = BATCH) -> Outcome:
    """Rebuild the data tables from raw_bodies (all of it, one endpoint's, or the bodies one job fetched)."""
    outcome = Outcome()
    started = time.monotonic()
    for bodies in archive.read(engine, endpoint, job_id, batch):
        outcome.bodies += len(bodies)
        chunks: list[_Chunk] = []
        key: tuple[str, str | None] | None = None
        for body in bodies:
            body_key = (body.endpoint, json.dumps(body.params, sort_keys=True))
            parser = _endpoint(*body_key)
            try:
                records, asked = parser.rebuild(body.id_type, body.identifier, decode(body.body), body.fetched_at)
            except ParseError as e:
                outcome.unusable += 1
                logger.debug("%s %s %s: unusable body: %s", body.endpoint, body.id_type, body.identifier, e)
                continue
            # A new chunk for other Fetch options, and for an output seen twice (two days' bodies with
            # keep = "all"): replacing its sections with both bodies' rows at once would keep the older's.
            if key != body_key or any(r.altmetric_id in chunks[-1].ids for r in records):
                chunks.append(_Chunk(parser.coverage))
                key = body_key
            chunk = chunks[-1]
            chunk.records += records
            # Beside the body's last record, as the writer passes them (store._write): an identifier's
            # owner is the latest body naming it, listed or asked, however the bodies are chunked.
            if records:
                chunk.asked += [[] for _ in records[1:]] + [asked]
            chunk.ids.update(r.altmetric_id for r in records)
        for chunk in chunks:
            _save(engine, chunk, outcome)
    outcome.elapsed = time.monotonic() - started
    return outcome


@functools.lru_cache(maxsize=64)
def _endpoint(kind: str, params: str) -> endpoints.Endpoint:
    """The endpoint that parses a body as its harvest did (with its archived parameters: a Fetch job's options)."""
    return endpoints.REGISTRY[JobKind(kind)].from_archive(json.loads(params))


def _save(engine: Engine, chunk: _Chunk, outcome: Outcome) -> None:
    """One transaction; a value the database refuses costs only its own body (the chunk is split until it is alone)."""
    try:
        with engine.begin() as conn:
            store.save_records(conn, chunk.records, chunk.cover, chunk.asked)
        outcome.outputs += len(chunk.records)
    except (DataError, IntegrityError, OverflowError, UnicodeEncodeError) as e:
        if len(chunk.records) <= 1:
            outcome.refused += len(chunk.records)
            logger.warning("the database refused output %s: %s", chunk.records[0].altmetric_id if chunk.records else "?", e)
            return
        half = len(chunk.records) // 2
        for part in (slice(None, half), slice(half, None)):
            records = chunk.records[part]
            _save(engine, _Chunk(chunk.cover, records, chunk.asked[part], {r.altmetric_id for r in records}), outcome)
    except SQLAlchemyError as e:
        raise DatabaseError(f"cannot write to the database: {db_message(e)}") from None
