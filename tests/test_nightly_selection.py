"""The nightly's selection of what is due, its heartbeat during long SQL, and bulk loading of id lists,
on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select, update

from harvester import clock, jobs, leases, nightly, schema
from harvester.db import open_database
from harvester.params import HarvestParams, NightlyParams
from tests.conftest import rows


@pytest.fixture(params=["sqlite", "postgresql"])
def any_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A fresh database migrated to head, on each engine."""
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else f"sqlite:///{tmp_path / 'harvest.db'}"
    engine = open_database(url)
    yield engine
    engine.dispose()


def _item(job_id: int, id_type: str, identifier: str, status: str, at: datetime, line_no: int) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "id_type": id_type,
        "identifier": identifier,
        "input": identifier,
        "line_no": line_no,
        "status": status,
        "attempts": 1,
        "updated_at": at,
    }


def test_a_recent_404_hides_only_the_output_asked_by_that_very_id(any_engine: Engine) -> None:
    now = clock.utcnow()
    harvested, recently, long_ago = now - timedelta(days=3), now - timedelta(days=1), now - timedelta(days=40)
    with any_engine.begin() as conn:
        by_doi = jobs.new_job(conn, "counts", "doi", "earlier harvest", HarvestParams())
        by_pmid = jobs.new_job(conn, "counts", "pmid", "earlier harvest of PMIDs", HarvestParams())
        later = jobs.new_job(conn, "counts", "doi", "a later harvest", HarvestParams())
        refresh = jobs.new_job(conn, "counts", "doi", "refresh", HarvestParams())
        conn.execute(
            insert(schema.outputs),
            [
                # Asked by its Altmetric id (no DOI): PMID 12345's 404 is another id's.
                {"altmetric_id": 12345, "doi": None, "harvested_at": harvested - timedelta(hours=1)},
                # Its own DOI answered 404 last night: it vanished upstream, not asked again yet.
                {"altmetric_id": 777, "doi": "10.1000/gone", "harvested_at": harvested},
                # Asked by its DOI: a 404 of Altmetric id 999 is not its own.
                {"altmetric_id": 999, "doi": "10.1000/kept", "harvested_at": harvested},
                # No DOI, and its Altmetric id answered 404 last night.
                {"altmetric_id": 4242, "doi": None, "harvested_at": harvested},
                # Harvested within refresh_after: not due.
                {"altmetric_id": 5, "doi": "10.1000/fresh", "harvested_at": now - timedelta(hours=2)},
            ],
        )
        conn.execute(
            insert(schema.job_items),
            [
                _item(by_pmid, "pmid", "12345", "not_found", recently, 1),
                _item(by_pmid, "pmid", "555", "not_found", long_ago, 2),  # due again
                _item(by_doi, "doi", "10.1000/gone", "not_found", recently, 1),
                _item(by_doi, "id", "999", "not_found", recently, 2),
                _item(by_doi, "id", "4242", "not_found", recently, 3),
                _item(by_doi, "doi", "10.1000/found-since", "not_found", long_ago, 4),
                _item(later, "doi", "10.1000/found-since", "done", recently, 1),  # its latest answer is not a 404
            ],
        )
    p = NightlyParams(now.date(), refresh_after="20h", not_found_refresh_after="30d", max_items=None)
    with any_engine.begin() as conn:
        added = nightly.add_due(conn, refresh, p)
    due = rows(any_engine, "select id_type, identifier, line_no from job_items where job_id = :j order by line_no", j=refresh)
    assert [(r["id_type"], r["identifier"]) for r in due] == [("id", "12345"), ("doi", "10.1000/kept"), ("pmid", "555")]
    assert added == {"lists": 2, "discovered": 0, "not_found": 1}
    # Outputs first (oldest harvest first), then the 404s due again, after every discovered output.
    assert [r["line_no"] for r in due] == [1_000_000_001, 1_000_000_002, 3_000_000_001]


def test_beating_moves_the_heartbeat_while_a_long_block_holds_a_transaction(any_engine: Engine) -> None:
    old = datetime(2026, 1, 1)
    with any_engine.begin() as conn:
        mine = jobs.new_job(conn, "nightly", "-", None, NightlyParams(date(2026, 1, 1)))
        theirs = jobs.new_job(conn, "counts", "doi", None, HarvestParams())
        for job_id, runner in ((mine, "me:1:a"), (theirs, "other:2:b")):
            conn.execute(update(schema.jobs).where(schema.jobs.c.id == job_id).values(runner=runner, heartbeat_at=old))

    def heartbeat(job_id: int) -> datetime | None:
        return jobs.get_job(any_engine, job_id).heartbeat_at

    moved: datetime | None = None
    with leases.beating(any_engine, "me:1:a", every=0.05), any_engine.begin() as conn:
        # The block's own transaction stays open (as add_due's does) while the beats commit on their own.
        conn.execute(select(schema.jobs.c.id).where(schema.jobs.c.id == mine)).all()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            beat = heartbeat(mine)
            if beat is not None and beat > old:
                moved = beat
                break
            time.sleep(0.02)
        assert moved is not None, "no heartbeat during the block"
        time.sleep(0.3)
        later = heartbeat(mine)
        assert later is not None and later > moved  # it goes on beating, not once
    assert heartbeat(theirs) == old
    assert not [t for t in threading.enumerate() if t.name.startswith("heartbeat ")]  # stopped with the block


def test_a_beat_that_fails_does_not_end_the_block(tmp_path: Path) -> None:
    engine = open_database(f"sqlite:///{tmp_path / 'harvest.db'}")
    calls: list[int] = []
    real_beat = leases.beat

    def failing(engine: Engine, runner: str) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("database is locked")
        real_beat(engine, runner)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(leases, "beat", failing)
        with leases.beating(engine, "me:1:a", every=0.02):
            deadline = time.monotonic() + 5
            while len(calls) < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
    assert len(calls) >= 3  # beats went on after the failure, and one more at the end
    engine.dispose()


ODD_LINES = [
    "10.1000/plain",
    "DOI: 10.1000/PLAIN",  # a duplicate: the first line is kept
    "10.1000/back\\slash",
    "10.1000/a\\N",  # \N is NULL in COPY's text format, unless escaped
    "10.1000/\\.",  # \. ends COPY's text data, unless escaped
    '10.1000/"quoted"',
    "10.1000/it's",
    "10.1000/ümlaut-ñ-中文",
    "https://doi.org/10.1000/%C3%BCmlaut-%C3%B1-%E4%B8%AD%E6%96%87",  # the same DOI again, percent-encoded
    "not a doi\twith a tab",
    "back\\slash \\N and \\. and 'quotes' \"too\"",
    "10.1000/tab\tinside",
    "ünïcödé garbage",
    "10.1000/PLAIN",
]


def _loaded(url: str, ids: Path) -> dict[str, Any]:
    engine = open_database(url)
    job = jobs.create_job(engine, [str(ids)], "doi", "counts", "odd")
    items = rows(engine, "select job_id, id_type, identifier, input, line_no, status, attempts from job_items order by line_no")
    rejects = rows(engine, "select * from job_rejects order by line_no")
    engine.dispose()
    return {"items": items, "rejects": rejects, "totals": (job.total_items, job.duplicate_lines, job.rejected_lines)}


def test_copy_on_postgresql_loads_the_same_rows_as_sqlite(tmp_path: Path, pg_url: str) -> None:
    ids = tmp_path / "odd.txt"
    ids.write_text("\n".join(ODD_LINES) + "\n", encoding="utf-8")
    on_sqlite = _loaded(f"sqlite:///{tmp_path / 'harvest.db'}", ids)
    on_pg = _loaded(pg_url, ids)
    assert on_pg == on_sqlite
    assert on_sqlite["totals"] == (7, 3, 4)
    assert [(r["identifier"], r["input"], r["line_no"]) for r in on_sqlite["items"]][:4] == [
        ("10.1000/plain", "10.1000/plain", 1),
        ("10.1000/back\\slash", "10.1000/back\\slash", 3),
        ("10.1000/a\\n", "10.1000/a\\N", 4),
        ("10.1000/\\", "10.1000/\\", 5),
    ]
    assert [(r["line_no"], r["line"]) for r in on_sqlite["rejects"]] == [(n + 1, ODD_LINES[n]) for n in range(9, 13)]
