"""An output whose altmetric id changes upstream (records merged): followed, not duplicated.

The fake, with --evolve, gives a DOI containing `merged` a new altmetric id every day.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, update

from harvester import jobs, schema
from harvester.db import open_database
from harvester.endpoints import named
from harvester.params import FetchOptions, HarvestParams
from harvester.store import write_batch
from harvester.vocabulary import ExitCode, ItemResult, ItemStatus
from tests.conftest import rows
from tests.subproc import query
from tests.test_nightly import NIGHT, SEED_KEY, World, make_world
from tests.test_replace import T1, T2, harvest

DOI = "10.5555/merged.0001"


def test_a_doi_whose_altmetric_id_changes_keeps_one_current_row_and_continuous_snapshots(tmp_path: Path) -> None:
    for world in make_world(tmp_path):
        _two_nights(world)


def _two_nights(world: World) -> None:
    db = world.db()
    ids = world.tmp / "mine.txt"
    ids.write_text(f"{DOI}\n10.5555/plain.0001\n")
    code, _, err = world.run(NIGHT - timedelta(hours=24), "harvest", "--no-progress", str(ids), ALTMETRIC_API_KEY=SEED_KEY)
    assert code == ExitCode.OK, err
    [(first_id,)] = query(db, f"select altmetric_id from outputs where doi = '{DOI}'")
    for night in (NIGHT, NIGHT + timedelta(days=1)):
        code, _, err = world.run(night, "nightly", "--no-progress")
        assert code == ExitCode.OK, err
    [(current,)] = query(db, f"select altmetric_id from outputs where doi = '{DOI}' and superseded_by is null")
    assert current != first_id
    # One current row; the replaced ones point to it, and the aliases are one hop long.
    assert query(db, f"select count(*) from outputs where doi = '{DOI}' and superseded_by is null") == [(1,)]
    old = query(db, f"select altmetric_id, superseded_by from outputs where doi = '{DOI}' and superseded_by is not null order by 1")
    assert len(old) == 2 and {s for _, s in old} == {current}
    aliases = query(db, "select old_altmetric_id, new_altmetric_id, via from output_aliases order by 1")
    assert aliases == sorted((o, current, f"doi:{DOI}") for o, _ in old)
    # The DOI names the current output, and so do the identifiers the old ones had.
    assert query(db, f"select altmetric_id from identifiers where scheme = 'doi' and value = '{DOI}'") == [(current,)]
    assert query(db, f"select count(*) from identifiers where altmetric_id in ({first_id})") == [(0,)]
    # Snapshots are continuous through the aliases: one a day, three days.
    days = query(
        db,
        f"""select s.harvested_on from counts_snapshots s
            left join output_aliases a on a.old_altmetric_id = s.altmetric_id
            where coalesce(a.new_altmetric_id, s.altmetric_id) = {current} order by 1""",
    )
    assert len(days) == 3
    # Not new to the database: the nightly did not report it as a new output.
    assert (
        query(db, "select sum(new_outputs) from nightly_runs")[0][0]
        == query(db, "select count(distinct altmetric_id) from citation_activity")[0][0]
    )
    # A superseded output is never due again: the third night asks for the DOI once, and never for an old id.
    before = dict(world.server.stats.per_path)
    code, _, err = world.run(NIGHT + timedelta(days=2), "nightly", "--no-progress")
    assert code == ExitCode.OK, err
    asked = {p: n - before.get(p, 0) for p, n in world.server.stats.per_path.items() if n > before.get(p, 0)}
    assert asked[f"/v1/doi/{DOI}"] == 1
    assert not any(p.startswith("/v1/id/") and p.endswith(tuple(str(o) for o, _ in old)) for p in asked)


def test_two_live_outputs_sharing_a_pmid_are_no_merge(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Only a DOI (or an Altmetric id) that names another output shows a merge (issue 17, item 11).

    Two live outputs whose Fetch citations give the same PMID (an erratum and its paper,
    a book and a chapter): the second must not supersede the first nor take its DOI.
    Written by the writer into real SQLite and PostgreSQL databases.
    """
    for url in (f"sqlite:///{tmp_path / 'shared.db'}", request.getfixturevalue("pg_url")):
        engine = open_database(url)
        try:
            first = {"altmetric_id": 1001, "citation": {"doi": "10.5555/paper", "pmid": "123456", "title": "paper"}}
            second = {"altmetric_id": 1002, "citation": {"doi": "10.5555/erratum", "pmid": "123456", "title": "erratum"}}
            _harvest_by(engine, "pmid", {"123456": first}, T1)
            # Asked by the shared PMID, the API answers with the other output.
            _harvest_by(engine, "pmid", {"123456": second}, T2)
            assert rows(engine, "select altmetric_id, superseded_by from outputs order by 1") == [
                {"altmetric_id": 1001, "superseded_by": None},
                {"altmetric_id": 1002, "superseded_by": None},
            ]
            assert rows(engine, "select * from output_aliases") == []
            # Each keeps its own DOI; the shared PMID names the output that listed it last.
            assert rows(engine, "select value, altmetric_id from identifiers where scheme = 'doi' order by 1") == [
                {"value": "10.5555/erratum", "altmetric_id": 1002},
                {"value": "10.5555/paper", "altmetric_id": 1001},
            ]
            # A DOI that moves is still a merge.
            merged = {"altmetric_id": 1003, "citation": {"doi": "10.5555/paper", "title": "paper"}}
            harvest(engine, "fetch", {"10.5555/paper": merged}, T2)
            assert rows(engine, "select old_altmetric_id, new_altmetric_id, via from output_aliases") == [
                {"old_altmetric_id": 1001, "new_altmetric_id": 1003, "via": "doi:10.5555/paper"}
            ]
        finally:
            engine.dispose()


def _harvest_by(engine: Engine, id_type: str, bodies: dict[str, dict[str, Any]], now: datetime) -> None:
    """A Fetch job of these ids of one type, written by the writer as a harvest writes it."""
    params = HarvestParams(fetch=FetchOptions.from_dict({}))
    with engine.begin() as conn:
        job_id = jobs.new_job(conn, "fetch", id_type, None, params)
        jobs.add_items(conn, job_id, [(id_type, i, n) for n, i in enumerate(bodies, 1)], now)
        conn.execute(
            update(schema.job_items).where(schema.job_items.c.job_id == job_id).values(claimed_by="test", lease_until=datetime(2100, 1, 1))
        )
    results = [ItemResult(id_type, i, ItemStatus.DONE, 1, 200, None, json.dumps(b).encode()) for i, b in bodies.items()]
    assert write_batch(engine, job_id, named("fetch", params), results, now, "test") == {"done": len(bodies)}
