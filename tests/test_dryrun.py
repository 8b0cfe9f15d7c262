"""Dry runs: no job, no request, and figures that equal what the real run then does."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert

from harvester import clock, dryrun, schema
from harvester.config import Config
from harvester.db import open_database
from harvester.fakeapi import FakeServer
from harvester.vocabulary import ExitCode
from tests.conftest import Harness, dois, rows, scalar


def _at(monkeypatch: pytest.MonkeyPatch, offset: timedelta) -> None:
    """Run the harvester as if it were now + offset: this process's clock and the writer process's."""
    monkeypatch.setattr(clock, "_offset", offset)
    monkeypatch.setenv("_HARVESTER_CLOCK_OFFSET", str(offset.total_seconds()))


def _jobs(h: Harness) -> int:
    return int(scalar(h.engine, "select count(*) from jobs") or 0)


def test_a_harvest_dry_run_predicts_the_real_run_on_a_database_holding_part_of_the_list(
    h: Harness, fake: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = dois(120)
    # Two days ago: the first 40 ids; an hour ago: the next 30. Both are stored, only the second lot is fresh.
    _at(monkeypatch, timedelta(days=-2))
    assert h.run("harvest", "--no-progress", h.ids(ids[:40], "old.txt")).exit_code == ExitCode.OK
    _at(monkeypatch, timedelta(hours=-1))
    assert h.run("harvest", "--no-progress", h.ids(ids[40:70], "recent.txt")).exit_code == ExitCode.OK
    _at(monkeypatch, timedelta(0))
    stored_before = {r["value"] for r in rows(h.engine, "select value from identifiers where scheme = 'doi'")}
    fresh_before = {
        r["value"]
        for r in rows(
            h.engine,
            "select i.value from identifiers i join outputs o using (altmetric_id) where i.scheme = 'doi' and o.harvested_at >= :t",
            t=clock.utcnow() - timedelta(hours=20),
        )
    }
    # The list: every id, some twice (one in another case), two bad lines and a comment.
    listing = h.ids([*ids, ids[3], ids[50].upper(), "not a doi", "# a comment", "https://example.org/x"], "list.txt")
    jobs_before, requests_before = _jobs(h), fake.stats.total

    result = h.run("harvest", "--dry-run", "--json", listing)
    assert result.exit_code == ExitCode.OK, result.output
    plan = json.loads(result.stdout)
    assert (_jobs(h), fake.stats.total) == (jobs_before, requests_before)  # no job, no request
    expected_stored = len(stored_before & set(ids))
    assert plan["lines"] == 124 and plan["rejected"] == 2 and plan["duplicates"] == 2 and plan["distinct"] == 120
    assert plan["stored"] == expected_stored and plan["fresh"] == len(fresh_before & set(ids))
    assert 0 < plan["fresh"] < plan["stored"] < 70
    assert plan["new"] == 120 - expected_stored
    assert plan["estimate"]["tier"] == "commercial" and plan["estimate"]["quota_per_day"] is None

    text = h.run("harvest", "--dry-run", listing)
    assert text.exit_code == ExitCode.OK
    assert "unlimited quota" in text.stdout and "to request:" in text.stdout

    # The real run: the requests it sends and the outputs it stores are the dry run's figures.
    result = h.run("harvest", "--no-progress", listing)
    assert result.exit_code == ExitCode.OK, result.output
    assert fake.stats.total - requests_before == plan["to_request"] == 120
    job = _jobs(h)
    items = rows(h.engine, "select identifier, status from job_items where job_id = :j", j=job)
    assert len(items) == plan["distinct"]
    assert sum(1 for i in items if i["identifier"] in stored_before) == plan["stored"]
    new_outputs = scalar(h.engine, "select count(*) from identifiers where scheme = 'doi'") - len(stored_before)
    new_404s = sum(1 for i in items if i["status"] == "not_found" and i["identifier"] not in stored_before)
    assert new_outputs + new_404s == plan["new"]


def test_a_free_tier_dry_run_spans_days_of_quota(h: Harness) -> None:
    listing = h.ids(dois(500))
    free = {"HARVESTER_TIER": "free"}
    h.tmp.joinpath("harvester.toml").write_text("[limits]\nper_second = 2.0\nper_hour = 100\nper_day = 150\n")
    result = h.run("harvest", "--dry-run", "--json", listing, **free)
    assert result.exit_code == ExitCode.OK, result.output
    est = json.loads(result.stdout)["estimate"]
    # 150 a day: 500 requests need today and three more days (the last one takes 50).
    assert est["quota_per_day"] == 150 and est["days"] == 4 and est["requests"] == 500


def test_a_citations_dry_run_requests_nothing_not_even_page_one(h: Harness, fake: FakeServer) -> None:
    before = fake.stats.total
    result = h.run("citations", "1d", "--all-pages", "--dry-run")
    assert result.exit_code == ExitCode.OK, result.output
    assert "unknown until page 1 is read" in result.stdout
    result = h.run("citations", "1d", "--pages", "3", "--then", "counts", "--dry-run")
    assert result.exit_code == ExitCode.OK, result.output
    assert "pages: 3" in result.stdout and "then counts: up to 297 requests" in result.stdout
    assert fake.stats.total == before and _jobs(h) == 0


def test_a_nightly_dry_run_lists_what_is_due_by_reason(h: Harness, fake: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    _at(monkeypatch, timedelta(days=-1))
    assert h.run("harvest", "--no-progress", h.ids(dois(30))).exit_code == ExitCode.OK
    _at(monkeypatch, timedelta(0))
    stored = scalar(h.engine, "select count(*) from outputs")
    before, jobs_before = fake.stats.total, _jobs(h)
    result = h.run("nightly", "--dry-run", "--json")
    assert result.exit_code == ExitCode.OK, result.output
    plan = json.loads(result.stdout)
    assert plan["lists_due"] == stored and plan["planned"]["lists"] == stored
    assert (fake.stats.total, _jobs(h)) == (before, jobs_before)
    text = h.run("nightly", "--dry-run").stdout
    assert "1. your lists:" in text and "commercial tier: unlimited quota" in text


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_plan_harvest_compares_with_the_database_on_each_engine(dialect: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    url = request.getfixturevalue("pg_url") if dialect == "postgresql" else f"sqlite:///{tmp_path / 'h.db'}"
    engine = open_database(url)
    now = clock.utcnow()
    with engine.begin() as conn:
        conn.execute(
            insert(schema.outputs),
            [
                {"altmetric_id": 1, "doi": "10.1000/a", "harvested_at": now - timedelta(days=3)},
                {"altmetric_id": 2, "doi": "10.1000/b", "harvested_at": now - timedelta(hours=1)},
            ],
        )
        conn.execute(
            insert(schema.identifiers),
            [
                {"scheme": "doi", "value": "10.1000/a", "altmetric_id": 1},
                {"scheme": "doi", "value": "10.1000/b", "altmetric_id": 2},
            ],
        )
    ids = tmp_path / "ids.txt"
    ids.write_text("10.1000/A\n10.1000/b\ndoi:10.1000/b\n10.1000/c\nnonsense\n")
    plan = dryrun.plan_harvest(engine, Config(), [str(ids)], "doi", "counts")
    assert (plan.lines, plan.rejected, plan.duplicates, plan.distinct, plan.stored, plan.fresh, plan.new, plan.to_request) == (
        5,
        1,
        1,
        3,
        2,
        1,
        1,
        3,
    )
    # Twice on one engine: the temporary table is gone after each plan.
    assert dryrun.plan_harvest(engine, Config(), [str(ids)], "doi", "counts").stored == 2
    by_id = tmp_path / "by-id.txt"
    by_id.write_text("1\n3\n")
    assert dryrun.plan_harvest(engine, Config(), [str(by_id)], "id", "counts").stored == 1
    # A CSV export's column, and a mixed list by shape: each id is compared by its own type.
    with engine.begin() as conn:
        conn.execute(insert(schema.identifiers), [{"scheme": "pmid", "value": "19057659", "altmetric_id": 1}])
    export = tmp_path / "zotero.csv"
    export.write_text('Key,Title,DOI\nK1,"A, title",10.1000/a\nK2,B,https://doi.org/10.1000/C\nK3,C,\nK4,D,10.1000/b\n')
    plan = dryrun.plan_harvest(engine, Config(), [str(export)], "doi", "counts", column="doi")
    assert (plan.lines, plan.rejected, plan.distinct, plan.stored, plan.fresh, plan.new) == (4, 1, 3, 2, 1, 1)
    mixed = tmp_path / "mixed.txt"
    mixed.write_text("10.1000/a\n19057659\n2\n10.1000/zz\narXiv:2101.00001\n")
    plan = dryrun.plan_harvest(engine, Config(), [str(mixed)], "auto", "counts")
    # 19057659 and 2 are PMIDs by shape (an Altmetric id is never guessed): the PMID is stored, "2" is not.
    assert plan.by_type == {"pmid": 2, "arxiv": 1, "doi": 2}
    assert (plan.distinct, plan.stored, plan.new) == (5, 2, 3)
    assert "distinct ids:               5  (doi 2, pmid 2, arxiv 1)" in plan.text()[4]
    engine.dispose()
