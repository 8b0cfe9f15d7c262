"""The raw archive: every 200 body kept (compressed) with its data, and `reparse` rebuilding the tables from it.

Harvests go through the real CLI against the fake API; the rebuilt database is
compared with the harvested one table for table, timestamps included, and the
fake must see no request while `reparse` runs.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest

from harvester import archive, reparse, schema
from harvester.db import open_database
from harvester.fakeapi import FakeServer
from harvester.store import DATA_TABLES
from harvester.vocabulary import ExitCode
from tests.conftest import KEY, Harness, dois
from tests.subproc import query, snapshot, start, url_of

SAMPLE_DOIS = ["10.1038/news.2011.490", "10.4018/978-1-4666-8271-9", "10.1007/978-3-642-60907-7_15", "10.5555/bogus.1"]
# What reparse rebuilds; mention_citations before mentions, whose rows they point at.
WIPED = ("mention_citations", *(t for t in DATA_TABLES if t != "mention_citations"), "counts_snapshots")


def whole(db: Path | str) -> dict[str, list[tuple[Any, ...]]]:
    """Every rebuilt table, every column (timestamps too), ordered by key."""
    out = {}
    for name in WIPED:
        table = schema.metadata.tables[name]
        key = ", ".join(c.name for c in table.primary_key.columns)
        out[name] = query(db, f"select * from {name} order by {key}")
    return out


def wipe(db: Path | str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url_of(db))
    with engine.begin() as conn:
        for name in WIPED:
            conn.execute(text(f"delete from {name}"))
    engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_reparse_rebuilds_every_table_without_a_request(h: Harness, fake: FakeServer, backend: str, request: pytest.FixtureRequest) -> None:
    db: Path | str = h.db if backend == "sqlite" else request.getfixturevalue("pg_url")
    database = url_of(db)
    counts_ids = h.ids(dois(300) + SAMPLE_DOIS, "counts.txt")
    fetch_ids = h.ids(dois(60) + SAMPLE_DOIS, "fetch.txt")
    for endpoint, ids in (("counts", counts_ids), ("fetch", fetch_ids)):
        result = h.run("--database", database, "harvest", "--endpoint", endpoint, "--no-progress", ids)
        assert result.exit_code == ExitCode.OK, result.output
    before, compared = whole(db), snapshot(db)
    assert len(before["outputs"]) > 200 and len(before["mentions"]) > 300 and before["counts_snapshots"]
    done = query(db, "select count(*) from job_items where status = 'done'")[0][0]
    assert query(db, "select count(*) from raw_bodies")[0][0] == done

    wipe(db)
    asked = fake.stats.total
    result = h.run("--database", database, "reparse")
    assert result.exit_code == ExitCode.OK, result.output
    assert fake.stats.total == asked, "reparse must not call the API"
    assert f"reparse: {done:,} bodies" in result.stderr and "ids/s" in result.stderr
    assert snapshot(db) == compared
    assert whole(db) == before  # harvested_at, first_seen_at, posts_seen_at: as the harvest left them

    # Again in small batches: each starts after the last row of the one before (keyset paging), ties on fetched_at included.
    wipe(db)
    engine = open_database(database)
    try:
        outcome = reparse.reparse(engine, batch=7)
    finally:
        engine.dispose()
    assert (outcome.bodies, outcome.unusable, outcome.refused) == (done, 0, 0)
    assert whole(db) == before


def test_reparse_by_endpoint_and_job(h: Harness) -> None:
    h.run("harvest", "--no-progress", h.ids(dois(40), "a.txt"))
    h.run("harvest", "--endpoint", "fetch", "--no-progress", h.ids(dois(10, "10.5555/f"), "b.txt"))
    counts, fetched = (query(h.db, f"select count(*) from job_items where job_id = {job} and status = 'done'")[0][0] for job in (1, 2))
    wipe(h.db)
    result = h.run("reparse", "--endpoint", "fetch")
    assert result.exit_code == ExitCode.OK and f"reparse: {fetched} bodies" in result.stderr, result.output
    assert query(h.db, "select count(*) from outputs")[0][0] == fetched
    result = h.run("reparse", "--job", "1")
    assert f"reparse: {counts} bodies" in result.stderr
    assert query(h.db, "select count(*) from outputs")[0][0] == counts + fetched
    assert h.run("-q", "reparse").stderr == ""


def test_archive_off_stores_no_body(h: Harness) -> None:
    (h.tmp / "harvester.toml").write_text((h.tmp / "harvester.toml").read_text() + "[archive]\nenabled = false\n")
    assert h.run("harvest", "--no-progress", h.ids(dois(30))).exit_code == ExitCode.OK
    assert query(h.db, "select count(*) from outputs")[0][0] > 0
    assert query(h.db, "select count(*) from raw_bodies")[0][0] == 0


@pytest.mark.parametrize("keep", ["latest", "all"])
def test_keep_latest_or_all_days(tmp_path: Path, fake: FakeServer, clean_env: None, keep: str) -> None:
    config = tmp_path / "harvester.toml"
    config.write_text(f'[archive]\nkeep = "{keep}"\n[limits]\nconcurrency = 8\n')
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(dois(20)) + "\n")
    db = tmp_path / "harvest.db"
    for day in ("2026-11-24T03:00:00", "2026-11-25T03:00:00"):
        proc = start(db, fake, "harvest", "--no-progress", str(ids), config=config, HARVESTER_NOW=day)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == ExitCode.OK, err
    days = query(db, "select harvested_on, count(*) from raw_bodies group by harvested_on order by harvested_on")
    done = query(db, "select count(*) from job_items where job_id = 1 and status = 'done'")[0][0]
    dates = [date.fromisoformat(str(d)) for d, _ in days]
    if keep == "all":
        assert dates == [date(2026, 11, 24), date(2026, 11, 25)] and [n for _, n in days] == [done, done]
    else:
        assert dates == [date(2026, 11, 25)] and days[0][1] == done
    # Each archived day rebuilds its own snapshot.
    wipe(db)
    proc = start(db, fake, "reparse", config=config)
    assert proc.wait(timeout=120) == ExitCode.OK
    snapshot_days = query(db, "select distinct harvested_on from counts_snapshots order by harvested_on")
    assert [date.fromisoformat(str(d)) for (d,) in snapshot_days] == dates


def test_the_key_is_never_archived(h: Harness) -> None:
    assert h.run("harvest", "--no-progress", h.ids(dois(20) + SAMPLE_DOIS)).exit_code == ExitCode.OK
    fetch = ("harvest", "--endpoint", "fetch", "--include-sources", "twitter,news", "--no-progress", h.ids(dois(5), "f.txt"))
    assert h.run(*fetch).exit_code == ExitCode.OK
    assert (
        h.run("citations", "1w", "--doi-prefix", "10.1038", "--num-results", "10", "--pages", "2", "--no-progress").exit_code == ExitCode.OK
    )
    rows = query(h.db, "select endpoint, id_type, identifier, params, body from raw_bodies")
    assert {r[0] for r in rows} == {"counts", "fetch", "citations"}
    for _endpoint, _id_type, identifier, params, body in rows:
        assert KEY not in identifier and KEY not in (params or "")
        assert KEY.encode() not in archive.decompress(body)
    fetch_params = {r[3] for r in rows if r[0] == "fetch"}
    assert [json.loads(p)["include_sources"] for p in fetch_params] == [["twitter", "news"]]
    pages = sorted(r[2] for r in rows if r[0] == "citations")
    assert pages == ["1w?doi_prefix=10.1038&num_results=10&page=1", "1w?doi_prefix=10.1038&num_results=10&page=2"]
    for path in (h.db, Path(f"{h.db}-wal")):
        if path.exists():
            assert KEY.encode() not in path.read_bytes()


def test_bodies_round_trip_smaller() -> None:
    raw = json.dumps({"altmetric_id": 1, "title": "x" * 500, "history": {"1d": 0, "at": 1.5}}).encode()
    stored = archive.compress(raw)
    assert archive.decompress(stored) == raw and len(stored) < len(raw) / 4
    entry = archive.entry(None, "counts", "doi", "10.1/x", raw, datetime(2026, 11, 30, 12), 7, None)
    assert entry is not None and entry.latest and entry.row["raw_size"] == len(raw) and entry.row["harvested_on"] == date(2026, 11, 30)


def test_archive_settings_are_checked(tmp_path: Path) -> None:
    from harvester.config import ArchiveConfig, load_config
    from harvester.errors import ConfigError

    path = tmp_path / "h.toml"
    path.write_text('[archive]\nenabled = false\nkeep = "all"\n')
    assert load_config(path, env={}).archive == ArchiveConfig(enabled=False, keep="all")
    for bad, message in (('keep = "every"', "archive.keep must be one of latest, all"), ('enabled = "no"', "archive.enabled must be bool")):
        path.write_text(f"[archive]\n{bad}\n")
        with pytest.raises(ConfigError, match=message):
            load_config(path, env={})
