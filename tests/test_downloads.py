"""Fetch's counts.downloads and citation.pmcid are stored; source_counts holds only sources (issue 17, item 9).

The section's shape is Altmetric's documented Fetch response (per-platform totals
`unique_ips`, `full_text`, `pdf`, `abstract`, and a `timeline` of unique IPs per month
sent as strings); none of the captured samples in harvester/data carries it, so the
body here is a real sample with that section added. Written by the writer
(store.write_batch) into real SQLite and PostgreSQL databases migrated by alembic; the
documented example query runs on a real harvest of the fake API over HTTP.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from harvester.db import open_database
from harvester.fakeapi import serve_in_thread
from harvester.parse import parse_fetch
from harvester.vocabulary import ExitCode
from tests.conftest import FAKE, ROOT, Harness, dois, rows, sample
from tests.test_replace import T1, T2, harvest

JAMA = "fetch_camlib_10.1001-jama.2013.950.json"
DOWNLOADS = {
    "pmc": {
        "unique_ips": 237,
        "full_text": 253,
        "pdf": 179,
        "abstract": 4,
        "timeline": {"2012-05": "42", "2012-04": "65", "2012-03": "93", "2012-02": "37"},
    }
}


def body_with_downloads(downloads: Any = DOWNLOADS, pmcid: str | None = "PMC2244806") -> dict[str, Any]:
    body = copy.deepcopy(sample(JAMA))
    body["counts"]["downloads"] = copy.deepcopy(downloads)
    if pmcid is not None:
        body["citation"]["pmcid"] = pmcid
    return body


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'downloads.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    engine = open_database(url)
    yield engine
    engine.dispose()


def test_downloads_are_their_own_rows_never_a_source() -> None:
    rec = parse_fetch(body_with_downloads(), T1)
    assert "downloads" not in {r["source"] for r in rec.source_counts}
    assert {(r["platform"], r["metric"], r["count"]) for r in rec.downloads} == {
        ("pmc", "unique_ips", 237),
        ("pmc", "full_text", 253),
        ("pmc", "pdf", 179),
        ("pmc", "abstract", 4),
    }
    assert {(r["month"], r["metric"], r["count"]) for r in rec.downloads_timeline} == {
        ("2012-05", "unique_ips", 42),
        ("2012-04", "unique_ips", 65),
        ("2012-03", "unique_ips", 93),
        ("2012-02", "unique_ips", 37),
    }
    assert {"downloads", "downloads_timeline"} <= rec.sections
    # citation.pmcid is the `pmc` scheme, next to the PMID the sample carries.
    assert ("pmc", "PMC2244806") in {(r["scheme"], r["value"]) for r in rec.identifiers}
    assert "pmc" in rec.id_schemes


def test_a_counts_key_that_is_no_source_never_becomes_a_source_row() -> None:
    """Decided by shape: a source entry has posts_count / unique_users_count; an unknown source is kept by name."""
    body = body_with_downloads()
    body["counts"]["bluesky"] = {"posts_count": 3, "unique_users_count": 2, "unique_users": ["a", "b"]}
    body["counts"]["citations"] = {"crossref": 12, "dimensions": 30}  # a new section, not a source
    body["counts"]["views"] = [1, 2, 3]
    body["counts"]["altmetric_only"] = 7
    rec = parse_fetch(body, T1)
    sources = {r["source"] for r in rec.source_counts}
    assert sources == {"twitter", "wikipedia", "bluesky"}
    assert all(r["posts_count"] is not None or r["unique_users_count"] is not None for r in rec.source_counts)


def test_the_database_equals_the_latest_answer_for_downloads(db: Engine) -> None:
    aid = sample(JAMA)["altmetric_id"]
    doi = sample(JAMA)["citation"]["doi"]
    harvest(db, "fetch", {doi: body_with_downloads()}, T1)
    assert rows(db, "select count(*) as n from source_counts where source = 'downloads'")[0]["n"] == 0
    assert {(r["metric"], r["count"]) for r in rows(db, "select metric, count from downloads where altmetric_id = :a", a=aid)} == {
        ("unique_ips", 237),
        ("full_text", 253),
        ("pdf", 179),
        ("abstract", 4),
    }
    assert len(rows(db, "select * from downloads_timeline where altmetric_id = :a", a=aid)) == 4
    assert rows(db, "select altmetric_id from identifiers where scheme = 'pmc' and value = 'PMC2244806'") == [{"altmetric_id": aid}]
    # A later body with the section replaces it: a month and a metric gone, one month new.
    newer = copy.deepcopy(DOWNLOADS)
    del newer["pmc"]["abstract"]
    newer["pmc"]["pdf"] = 200
    newer["pmc"]["timeline"] = {"2012-06": "11", "2012-05": "42"}
    harvest(db, "fetch", {doi: body_with_downloads(newer)}, T2)
    assert {(r["metric"], r["count"]) for r in rows(db, "select metric, count from downloads where altmetric_id = :a", a=aid)} == {
        ("unique_ips", 237),
        ("full_text", 253),
        ("pdf", 200),
    }
    assert {r["month"] for r in rows(db, "select month from downloads_timeline where altmetric_id = :a", a=aid)} == {"2012-06", "2012-05"}
    # A body without the section leaves the rows alone.
    harvest(db, "fetch", {doi: sample(JAMA)}, T2)
    assert len(rows(db, "select * from downloads where altmetric_id = :a", a=aid)) == 3
    assert len(rows(db, "select * from downloads_timeline where altmetric_id = :a", a=aid)) == 2
    # An empty section says "none now".
    harvest(db, "fetch", {doi: body_with_downloads({})}, T2)
    assert rows(db, "select count(*) as n from downloads where altmetric_id = :a", a=aid)[0]["n"] == 0
    assert rows(db, "select count(*) as n from downloads_timeline where altmetric_id = :a", a=aid)[0]["n"] == 0


def _documented_query(title: str) -> str:
    text = (ROOT / "docs" / "schema.md").read_text(encoding="utf-8")
    match = re.search(rf"^### {re.escape(title)}\n+```sql\n(.*?)^```", text, re.S | re.M)
    assert match, f"docs/schema.md has no query titled {title!r}"
    return match.group(1)


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_the_documented_downloads_query_runs_on_a_real_harvest(
    tmp_path: Path, clean_env: None, request: pytest.FixtureRequest, database: str
) -> None:
    url = f"sqlite:///{tmp_path / 'harvest.db'}" if database == "sqlite" else request.getfixturevalue("pg_url")
    with serve_in_thread(FAKE) as server:
        h = Harness(tmp_path, server)
        result = h.run("--database", url, "harvest", "--endpoint", "fetch", "--no-progress", h.ids(dois(40, "10.5555/dl")))
        assert result.exit_code == ExitCode.OK, result.output
    engine = open_database(url)
    try:
        found = rows(engine, _documented_query("PubMed Central downloads per output, and the last month counted"))
        assert found, "the fake serves PMC downloads for some articles"
        stored = rows(engine, "select altmetric_id, count from downloads where platform = 'pmc' and metric = 'pdf'")
        assert len(found) == len(stored)
        assert all(r["unique_ips"] is not None and re.fullmatch(r"\d{4}-\d{2}", r["last_month"]) for r in found)
        assert rows(engine, "select count(*) as n from source_counts where source = 'downloads'")[0]["n"] == 0
        pmc = rows(engine, "select count(*) as n from identifiers where scheme = 'pmc'")[0]["n"]
        assert pmc == len(stored)
    finally:
        engine.dispose()


def test_downloads_without_the_platform_level_are_pmcs() -> None:
    flat = {"unique_ips": "12", "full_text": 7, "pdf": 3, "timeline": {"2012-05": "5", "2012-06": 7}}
    rec = parse_fetch(body_with_downloads(flat), T1)
    assert {(r["platform"], r["metric"], r["count"]) for r in rec.downloads} == {
        ("pmc", "unique_ips", 12),
        ("pmc", "full_text", 7),
        ("pmc", "pdf", 3),
    }
    assert {(r["platform"], r["month"], r["count"]) for r in rec.downloads_timeline} == {("pmc", "2012-05", 5), ("pmc", "2012-06", 7)}
    assert "downloads" not in {r["source"] for r in rec.source_counts}
