"""Which output an identifier names, when two bodies name it (issue 17, item 10).

The latest answer wins: in the order the bodies were received (raw_bodies.fetched_at),
and among one batch's bodies (one fetched_at) in the archive's tie-break order
(archive.tie_break). `reparse` must leave the owners the harvests left, however it
batches the bodies. Bodies go through store.write_batch (the harvest's writer) into
a real SQLite file and a real PostgreSQL database.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, update

from harvester import archive, jobs, reparse, schema
from harvester.db import open_database
from harvester.endpoints import named
from harvester.params import HarvestParams
from harvester.store import write_batch
from harvester.vocabulary import ItemResult, ItemStatus
from tests.conftest import rows
from tests.subproc import url_of
from tests.test_archive import whole, wipe

T1 = datetime(2026, 11, 24, 12, 0, 0)
T2 = datetime(2026, 11, 24, 12, 5, 0)
T3 = datetime(2026, 11, 24, 12, 10, 0)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Engine, Path | str]]:
    where: Path | str = tmp_path / "order.db" if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))
    engine = open_database(url_of(where))
    yield engine, where
    engine.dispose()


def body(altmetric_id: int, doi: str, pmid: str) -> dict[str, Any]:
    return {
        "altmetric_id": altmetric_id,
        "citation": {"doi": doi, "pmid": pmid, "title": f"output {altmetric_id}"},
        "counts": {"total": {"posts_count": 1}},
    }


def harvest(engine: Engine, answers: list[tuple[str, str, dict[str, Any]]], now: datetime) -> None:
    """One Fetch job, its answers written by the writer in one batch, in the order given (as they came in)."""
    with engine.begin() as conn:
        job_id = jobs.new_job(conn, "fetch", "doi", None, HarvestParams())
        jobs.add_items(conn, job_id, [(t, i, n) for n, (t, i, _) in enumerate(answers, 1)], now)
        conn.execute(
            update(schema.job_items).where(schema.job_items.c.job_id == job_id).values(claimed_by="test", lease_until=datetime(2100, 1, 1))
        )
    results = [ItemResult(t, i, ItemStatus.DONE, 1, 200, None, json.dumps(b).encode()) for t, i, b in answers]
    assert write_batch(engine, job_id, named("fetch", HarvestParams()), results, now, "test") == {"done": len(answers)}


def owners(engine: Engine) -> list[dict[str, Any]]:
    return rows(engine, "select scheme, value, altmetric_id, asked from identifiers order by scheme, value")


def test_reparse_leaves_the_owners_the_harvests_left(db: tuple[Engine, Path | str]) -> None:
    engine, where = db
    # Duplicated records: output 1001 asked by PMID 777, then output 1002, asked by its DOI, lists PMID 777 too.
    harvest(engine, [("pmid", "777", body(1001, "10.5555/a", "777"))], T1)
    harvest(engine, [("doi", "10.5555/b", body(1002, "10.5555/b", "777"))], T2)
    # One batch (one fetched_at) whose two bodies list PMID 888, received in the reverse of the archive's order.
    later, earlier = ("doi", "10.5555/d"), ("doi", "10.5555/c")
    assert archive.tie_break(*earlier) < archive.tie_break(*later)
    harvest(engine, [(*later, body(1004, "10.5555/d", "888")), (*earlier, body(1003, "10.5555/c", "888"))], T3)
    harvested = owners(engine)
    by_value = {r["value"]: r for r in harvested}
    # The latest answer wins; the id a job asked by stays asked.
    assert (by_value["777"]["altmetric_id"], by_value["777"]["asked"]) == (1002, True)
    assert by_value["888"]["altmetric_id"] == 1004
    before = whole(where)
    for batch in (500, 1, 2):  # the same owners however reparse batches the bodies
        wipe(where)
        outcome = reparse.reparse(engine, batch=batch)
        assert (outcome.bodies, outcome.unusable, outcome.refused) == (4, 0, 0)
        assert owners(engine) == harvested, batch
        assert whole(where) == before, batch
