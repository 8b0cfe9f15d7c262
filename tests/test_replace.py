"""The database equals the latest answer, and a body the database refuses fails alone (docs/architecture.md, invariants).

The same output harvested twice with upstream changes in between: every table whose
section the second body carries equals that section afterwards, and the rest is left as
it was. Bodies go through store.write_batch (the writer a harvest runs) into a real SQLite
file and a real PostgreSQL database, both migrated by alembic; the end-to-end tests run
the CLI against the fake API over HTTP.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, update

from harvester import jobs, schema
from harvester.db import open_database
from harvester.endpoints import lists_every_post, named
from harvester.fakeapi import counts_body, fetch_body, serve_in_thread
from harvester.fakeapi.bodies import _filter_fetch
from harvester.params import FetchOptions, HarvestParams
from harvester.parse import Records, parse_counts, parse_fetch
from harvester.store import write_batch
from harvester.vocabulary import ExitCode, ItemResult, ItemStatus
from tests.conftest import FAKE, Harness, dois, rows, scalar

T1 = datetime(2026, 11, 24, 12, 0, 0)
T2 = datetime(2026, 11, 25, 12, 0, 0)
# Each replaced table -> the columns compared (its key and the values both endpoints agree on).
COMPARED = {
    "source_counts": ("source", "posts_count", "unique_users_count"),
    "readers": ("platform", "count"),
    "score_history": ("timeframe", "score"),
    "score_context": ("scope", "count", "mean", "rank", "pct", "higher_than", "sample_size", "percentile", "rank_type"),
    "demographics": ("platform", "dimension", "key", "value"),
    "output_relations": ("related_altmetric_id", "relation", "title", "ordinal_number"),
    "mentions": ("mention_id", "source", "post_key", "url", "title", "author_name", "tweet_id"),
}
FETCH_ONLY = ("mentions", "mention_citations", "demographics", "output_relations")


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'replace.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    engine = open_database(url)  # migrated by alembic to head
    yield engine
    engine.dispose()


def harvest(
    engine: Engine,
    endpoint: str,
    bodies: dict[str, dict[str, Any] | bytes],
    now: datetime,
    fetch: dict[str, Any] | None = None,
) -> tuple[int, dict[str, int]]:
    """A job of these DOIs written by the writer, as a harvest writes it: (job id, statuses)."""
    options = FetchOptions.from_dict(fetch) if endpoint == "fetch" else None
    params = HarvestParams(fetch=options)
    with engine.begin() as conn:
        job_id = jobs.new_job(conn, endpoint, "doi", None, params)
        jobs.add_items(conn, job_id, [("doi", doi, n) for n, doi in enumerate(bodies, 1)], now)
        # Leased to this writer, as a worker's claim leaves them: it writes only items it holds.
        conn.execute(
            update(schema.job_items).where(schema.job_items.c.job_id == job_id).values(claimed_by="test", lease_until=datetime(2100, 1, 1))
        )
    results = [
        ItemResult("doi", doi, ItemStatus.DONE, 1, 200, None, body if isinstance(body, bytes) else json.dumps(body).encode())
        for doi, body in bodies.items()
    ]
    return job_id, write_batch(engine, job_id, named(endpoint, params), results, now, "test")


def stored(engine: Engine, table: str, altmetric_id: int) -> set[tuple[Any, ...]]:
    columns = ", ".join(f'"{c}"' for c in COMPARED[table])
    return {tuple(r.values()) for r in rows(engine, f"select {columns} from {table} where altmetric_id = :a", a=altmetric_id)}


def parsed(records: Records, table: str) -> set[tuple[Any, ...]]:
    return {tuple(row.get(c) for c in COMPARED[table]) for row in getattr(records, table)}


def identifiers(engine: Engine, altmetric_id: int) -> set[tuple[str, str]]:
    return {
        (r["scheme"], r["value"]) for r in rows(engine, "select scheme, value from identifiers where altmetric_id = :a", a=altmetric_id)
    }


def citations(engine: Engine, altmetric_id: int) -> set[tuple[int, int]]:
    sql = "select c.mention_id, c.altmetric_id from mention_citations c join mentions m on m.mention_id = c.mention_id where m.altmetric_id = :a"
    return {(r["mention_id"], r["altmetric_id"]) for r in rows(engine, sql, a=altmetric_id)}


def a_full_body() -> tuple[str, dict[str, Any]]:
    """A DOI whose Fetch body has posts of several sources, demographics and a score context."""
    for doi in dois(400, "10.5555/replace"):
        body = fetch_body("doi", doi)
        if (
            body
            and isinstance(body["posts"], dict)
            and len(body["posts"]) >= 3
            and body["demographics"]
            and body["altmetric_score"]["context_for_score"]
        ):
            return doi, body
    raise AssertionError("no such body in the fake")


def first_answer(doi: str, body: dict[str, Any]) -> dict[str, Any]:
    body = copy.deepcopy(body)
    body["citation"]["pmid"] = "111"
    body["citation"]["chapters"] = [{"altmetric_id": 501, "title": "One"}, {"altmetric_id": 502, "title": "Two"}]
    return body


def second_answer(body: dict[str, Any]) -> dict[str, Any]:
    """Upstream changed every section: sources, readers, history keys, scopes, demographics, posts, ids, chapters."""
    body = copy.deepcopy(body)
    counts = body["counts"]
    gone = next(s for s in body["posts"] if s != "misc")
    counts.pop(gone, None)
    del body["posts"][gone]
    counts["newsource"] = {"unique_users_count": 4, "posts_count": 5}
    counts["readers"] = {"mendeley": 77, "zotero": 3}
    score = body["altmetric_score"]
    score["score_history"] = {"at": score["score"], "2y": 1.25}
    del score["context_for_score"]["this_journal"]
    score["context_for_score"]["new_scope"] = {"total_number_of_other_articles": 9, "mean": 1.0, "rank": 2}
    body["demographics"] = {"geo": {"twitter": {"ZZ": 7}}}
    source, posts = next((s, p) for s, p in body["posts"].items() if len(p) >= 1)
    body["posts"][source] = posts[1:] + [
        {"url": "https://example.org/brand-new", "title": "New", "citation_ids": [body["altmetric_id"], 999]}
    ]
    body["citation"]["pmid"] = "222"
    body["citation"]["chapters"] = [{"altmetric_id": 502, "title": "Two, renamed"}, {"altmetric_id": 503, "title": "Three"}]
    return body


def test_a_second_fetch_makes_every_table_equal_its_answer(db: Engine) -> None:
    doi, served = a_full_body()
    one, two = first_answer(doi, served), second_answer(first_answer(doi, served))
    aid = served["altmetric_id"]
    assert harvest(db, "fetch", {doi: one}, T1)[1] == {"done": 1}
    before = parse_fetch(one, T1)
    assert stored(db, "mentions", aid) == parsed(before, "mentions") and stored(db, "output_relations", aid) == parsed(
        before, "output_relations"
    )
    assert harvest(db, "fetch", {doi: two}, T2)[1] == {"done": 1}
    after = parse_fetch(two, T2)
    for table in COMPARED:
        assert stored(db, table, aid) == parsed(after, table), table
    assert citations(db, aid) == {(c["mention_id"], c["altmetric_id"]) for c in after.mention_citations}
    # The PMID upstream dropped is gone; the DOI the job asked by stays.
    assert identifiers(db, aid) == {("doi", doi), ("pmid", "222")}
    # A post still listed keeps when it was first seen; a new one is new.
    seen = {
        r["mention_id"]: r["first_seen_at"]
        for r in rows(db, "select mention_id, first_seen_at from mentions where altmetric_id = :a", a=aid)
    }
    kept = {m["mention_id"] for m in before.mentions} & seen.keys()
    assert kept and all(str(seen[m]).startswith("2026-11-24") for m in kept)
    assert any(str(t).startswith("2026-11-25") for t in seen.values())


def test_a_counts_answer_after_fetch_leaves_the_fetch_only_tables_and_columns(db: Engine) -> None:
    doi, served = a_full_body()
    aid = served["altmetric_id"]
    harvest(db, "fetch", {doi: first_answer(doi, served)}, T1)
    fetch_only = {t: rows(db, f"select * from {t} order by 1, 2") for t in FETCH_ONLY}
    posts_counts = {
        r["source"]: r["posts_count"] for r in rows(db, "select source, posts_count from source_counts where altmetric_id = :a", a=aid)
    }
    counts = counts_body("doi", doi)
    assert counts is not None and counts["altmetric_id"] == aid
    counts = copy.deepcopy(counts)
    counts["readers"] = {"mendeley": 5}
    counts["history"] = {"at": counts["score"]}
    assert harvest(db, "counts", {doi: counts}, T2)[1] == {"done": 1}
    assert {t: rows(db, f"select * from {t} order by 1, 2") for t in FETCH_ONLY} == fetch_only
    rec = parse_counts(counts, T2)
    sc = {
        r["source"]: (r["posts_count"], r["unique_users_count"])
        for r in rows(db, "select * from source_counts where altmetric_id = :a", a=aid)
    }
    # Counts lists every source with accounts: its sources, with Fetch's posts counts kept.
    assert sc == {r["source"]: (posts_counts.get(r["source"]), r["unique_users_count"]) for r in rec.source_counts}
    assert stored(db, "readers", aid) == {("mendeley", 5)}
    assert stored(db, "score_history", aid) == {("at", counts["score"])}
    # Counts has no sample_size or percentile: Fetch's stay.
    assert scalar(db, "select count(*) from score_context where altmetric_id = :a and sample_size is not null", a=aid) == len(
        rec.score_context
    )
    # Counts lists no PMID for this output: Fetch's stays (a scheme a body does not list is left alone).
    assert ("pmid", "111") in identifiers(db, aid)


def test_a_filtered_fetch_replaces_only_what_it_asked_for(db: Engine) -> None:
    doi, served = a_full_body()
    aid = served["altmetric_id"]
    one = first_answer(doi, served)
    harvest(db, "fetch", {doi: one}, T1)
    sources = {m["source"] for m in parse_fetch(one, T1).mentions}
    asked = sorted(sources)[0]
    others = rows(db, "select * from mentions where altmetric_id = :a and source <> :s order by mention_id", a=aid, s=asked)
    other_counts = rows(db, "select * from source_counts where altmetric_id = :a and source <> :s order by source", a=aid, s=asked)
    # Upstream lost every post of the asked source; the answer is filtered to that source.
    two = copy.deepcopy(one)
    two["posts"][asked] = []
    two["counts"].pop(asked, None)
    filtered = _filter_fetch(two, [asked], None, None)
    assert harvest(db, "fetch", {doi: filtered}, T2, fetch={"include_sources": [asked]})[1] == {"done": 1}
    assert scalar(db, "select count(*) from mentions where altmetric_id = :a and source = :s", a=aid, s=asked) == 0
    assert scalar(db, "select count(*) from source_counts where altmetric_id = :a and source = :s", a=aid, s=asked) == 0
    assert rows(db, "select * from mentions where altmetric_id = :a and source <> :s order by mention_id", a=aid, s=asked) == others
    assert rows(db, "select * from source_counts where altmetric_id = :a and source <> :s order by source", a=aid, s=asked) == other_counts
    # include_sections without posts: mentions, demographics and relations are left alone.
    before = {t: rows(db, f"select * from {t} order by 1, 2") for t in FETCH_ONLY}
    harvest(db, "fetch", {doi: _filter_fetch(second_answer(one), None, None, ["counts"])}, T2, fetch={"include_sections": ["counts"]})
    assert {t: rows(db, f"select * from {t} order by 1, 2") for t in FETCH_ONLY} == before


def test_post_types_leaves_posts_it_did_not_list(db: Engine) -> None:
    doi, served = a_full_body()
    aid = served["altmetric_id"]
    harvest(db, "fetch", {doi: served}, T1)
    n = scalar(db, "select count(*) from mentions where altmetric_id = :a", a=aid)
    fewer = copy.deepcopy(served)
    fewer["posts"] = {s: p[:1] for s, p in served["posts"].items()}
    harvest(db, "fetch", {doi: fewer}, T2, fetch={"post_types": "original_tweets"})
    assert scalar(db, "select count(*) from mentions where altmetric_id = :a", a=aid) == n
    assert scalar(db, "select count(*) from outputs where posts_seen_at is not null") == 1  # from the first, complete harvest


def test_lists_every_post() -> None:
    assert lists_every_post(FetchOptions()) and lists_every_post(None)
    assert lists_every_post(
        FetchOptions.from_dict({"include_sources": [], "exclude_sources": [], "include_sections": [], "post_types": None})
    )
    assert lists_every_post(FetchOptions(include_sections=("counts", "posts")))
    assert not lists_every_post(FetchOptions(post_types="original_tweets"))
    assert not lists_every_post(FetchOptions(include_sources=("news",)))
    assert not lists_every_post(FetchOptions(exclude_sources=("twitter",)))
    assert not lists_every_post(FetchOptions(include_sections=("counts",)))


def test_bad_bodies_fail_alone(db: Engine) -> None:
    """NUL characters and long keys are stored; a count past the column's range fails only its own item."""
    found = [(doi, body) for doi in dois(80, "10.5555/good") if (body := fetch_body("doi", doi))]
    good = dict(found[:40])
    (long_doi, long), (huge_doi, huge), (pg_doi, pg_huge) = found[40:43]
    doi, served = a_full_body()
    nul = copy.deepcopy(served)
    nul["citation"]["title"] = "a\x00b"
    nul["citation"]["authors"] = ["c\x00d"]
    nul["counts"]["readers"]["x\x00y"] = 1
    long["altmetric_score"]["score_history"]["h" * 300] = 1.0
    long["counts"]["readers"]["p" * 300] = 1
    long["posts"] = {"s" * 300: [{"url": "https://example.org/x", "license": "l" * 300, "wiki_lang": "w" * 300}]}
    huge["counts"]["readers"]["mendeley"] = 10**30  # past 64 bits: refused by SQLite and PostgreSQL
    bodies: dict[str, dict[str, Any] | bytes] = {**good, doi: nul, long_doi: long, huge_doi: huge}
    if db.dialect.name == "postgresql":
        pg_huge["counts"]["readers"]["mendeley"] = 10**12  # past PostgreSQL's 32-bit INTEGER
        bodies[pg_doi] = pg_huge
    job_id, statuses = harvest(db, "fetch", bodies, T1)
    refused = {huge_doi, pg_doi} & bodies.keys()
    assert statuses == {"done": len(bodies) - len(refused), "failed": len(refused)}
    items = {r["identifier"]: r for r in rows(db, "select * from job_items where job_id = :j", j=job_id)}
    assert {i for i, r in items.items() if r["status"] == "failed"} == refused
    for identifier in refused:
        error = items[identifier]["last_error"]
        assert error.startswith("the database refused the data: ") and "\n" not in error and len(error) < 400
    # Everything else is stored, the NULs dropped and the long keys whole.
    assert scalar(db, "select count(*) from outputs") == len(bodies) - len(refused)
    assert scalar(db, "select title from outputs where altmetric_id = :a", a=served["altmetric_id"]) == "ab"
    assert scalar(db, "select authors from outputs where altmetric_id = :a", a=served["altmetric_id"]) == '["cd"]'
    assert scalar(db, "select count(*) from readers where platform = 'xy'") == 1
    assert scalar(db, "select count(*) from score_history where timeframe = :t", t="h" * 300) == 1
    assert scalar(db, "select count(*) from mentions where source = :s and license = :l", s="s" * 300, l="l" * 300) == 1


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_job_with_bad_bodies_finishes_with_only_those_failed(
    tmp_path: Path, clean_env: None, request: pytest.FixtureRequest, database: str
) -> None:
    """300 ids through the CLI, with the fake's scripted NUL, long-value and huge-count bodies among them."""
    url = f"sqlite:///{tmp_path / 'harvest.db'}" if database == "sqlite" else request.getfixturevalue("pg_url")
    scripted = [d for d in (f"10.5555/{t}.{i}" for t in ("nulbyte", "longvalue", "hugecount") for i in range(40)) if fetch_body("doi", d)]
    picked = [next(d for d in scripted if t in d) for t in ("nulbyte", "longvalue", "hugecount")]
    ids = dois(297, "10.5555/pgjob") + picked
    with serve_in_thread(FAKE) as server:
        h = Harness(tmp_path, server)
        result = h.run("--database", url, "harvest", "--endpoint", "fetch", "--no-progress", h.ids(ids))
        engine = open_database(url)
        try:
            items = {r["identifier"]: r for r in rows(engine, "select identifier, status, last_error from job_items")}
            failed = {i for i, r in items.items() if r["status"] == "failed"}
            # 10**12 fits SQLite's 64-bit integers; PostgreSQL's INTEGER refuses it.
            assert failed == ({picked[2]} if database == "postgresql" else set())
            assert result.exit_code == (ExitCode.SOME_FAILED if failed else ExitCode.OK), result.output
            assert "pending" not in {r["status"] for r in items.values()}
            assert "out of range" in (items[picked[2]]["last_error"] or "") or database == "sqlite"
            assert scalar(engine, "select count(*) from outputs where title like :t", t="nulbyte %") == 1
            assert scalar(engine, "select count(*) from score_history where timeframe = :t", t="h" * 300) == 1
            # resume has nothing left: the job finished.
            assert h.run("--database", url, "resume", "--no-progress").exit_code != ExitCode.OK
            assert scalar(engine, "select status from jobs") == "finished"
        finally:
            engine.dispose()


def test_counts_after_fetch_through_the_cli_leaves_fetch_only_tables(h: Harness) -> None:
    ids = h.ids(dois(150, "10.5555/e2e"))
    assert h.run("harvest", "--endpoint", "fetch", "--no-progress", ids).exit_code == ExitCode.OK
    fetch_only = {t: rows(h.engine, f"select * from {t} order by 1, 2") for t in FETCH_ONLY}
    assert len(fetch_only["mentions"]) > 100
    assert h.run("harvest", "--no-progress", ids).exit_code == ExitCode.OK
    assert {t: rows(h.engine, f"select * from {t} order by 1, 2") for t in FETCH_ONLY} == fetch_only
    # Again with Fetch: the same answers, the same rows (only when they were last seen moves).
    assert h.run("harvest", "--endpoint", "fetch", "--no-progress", ids).exit_code == ExitCode.OK

    def strip(rs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "last_seen_at"} for r in rs]

    assert {t: strip(rows(h.engine, f"select * from {t} order by 1, 2")) for t in FETCH_ONLY} == {
        t: strip(r) for t, r in fetch_only.items()
    }


@pytest.mark.parametrize("fetch", [{"include_sources": ["news"]}, {"exclude_sources": ["twitter"]}, {"post_types": "original_tweets"}])
def test_a_filtered_fetch_leaves_the_totals_alone(db: Engine, fetch: dict[str, Any]) -> None:
    """A filter that cuts sources or posts out totals only what it sent: outputs.posts_count and the day's snapshot keep the full body's."""
    doi, served = a_full_body()
    aid = served["altmetric_id"]
    harvest(db, "fetch", {doi: served}, T1)
    part = copy.deepcopy(served)
    part["counts"]["total"]["posts_count"] = 1
    part["altmetric_score"]["score"] = 12.5
    assert harvest(db, "fetch", {doi: part}, T1.replace(hour=13), fetch=fetch)[1] == {"done": 1}
    full = served["counts"]["total"]["posts_count"]
    assert full > 1
    assert rows(db, "select posts_count, score from outputs") == [{"posts_count": full, "score": 12.5}]
    assert rows(db, "select posts_count, score from counts_snapshots where altmetric_id = :a", a=aid) == [
        {"posts_count": full, "score": 12.5}
    ]
    # A filtered body on a day of its own leaves that day's total unknown, not a part's.
    harvest(db, "fetch", {doi: part}, T2, fetch=fetch)
    assert rows(db, "select harvested_on, posts_count from counts_snapshots order by 1")[1]["posts_count"] is None
