"""Fetch harvests end to end: the fake API over HTTP, a real SQLite file."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

from harvester.fakeapi import fetch_body, serve_in_thread
from harvester.vocabulary import ExitCode
from tests.conftest import FAKE, Harness, dois, rows, scalar

DATA = (
    "outputs",
    "identifiers",
    "source_counts",
    "readers",
    "score_history",
    "score_context",
    "output_relations",
    "mentions",
    "mention_citations",
    "demographics",
)


def served_posts(ids: list[str]) -> Counter[str]:
    """Posts per source in the fake's fetch bodies for these DOIs (404s have none)."""
    counts: Counter[str] = Counter()
    for doi in ids:
        body = fetch_body("doi", doi)
        if body and isinstance(body.get("posts"), dict):
            for source, posts in body["posts"].items():
                counts[{"q&a": "qna"}.get(source, source)] += len(posts)
    return counts


def test_fetch_harvest_stores_exactly_the_posts_served_and_a_rerun_changes_no_count(h: Harness) -> None:
    ids = dois(800, "10.5555/fetch")
    result = h.run("harvest", "--endpoint", "fetch", "--no-progress", h.ids(ids))
    assert result.exit_code == ExitCode.OK, result.output
    stored = Counter({r["source"]: r["n"] for r in rows(h.engine, "select source, count(*) as n from mentions group by source")})
    assert stored == served_posts(ids)
    assert sum(stored.values()) > 1000
    before = {t: scalar(h.engine, f"select count(*) from {t}") for t in DATA}
    first_seen = rows(h.engine, "select mention_id, first_seen_at, last_seen_at from mentions order by mention_id limit 50")
    result = h.run("harvest", "--endpoint", "fetch", "--no-progress", h.ids(ids))
    assert result.exit_code == ExitCode.OK, result.output
    assert {t: scalar(h.engine, f"select count(*) from {t}") for t in DATA} == before
    again = rows(h.engine, "select mention_id, first_seen_at, last_seen_at from mentions order by mention_id limit 50")
    assert [r["first_seen_at"] for r in again] == [r["first_seen_at"] for r in first_seen]
    assert all(a["last_seen_at"] > b["last_seen_at"] for a, b in zip(again, first_seen))


def test_fetch_fills_counts_tables_with_fetch_values(h: Harness) -> None:
    doi = next(d for d in dois(50, "10.5555/fv") if (b := fetch_body("doi", d)) and b["posts"])
    assert h.run("harvest", "--endpoint", "fetch", "--no-progress", h.ids([doi])).exit_code == ExitCode.OK
    body = fetch_body("doi", doi)
    assert body is not None
    aid = body["altmetric_id"]
    [o] = rows(h.engine, "select * from outputs where altmetric_id = :a", a=aid)
    assert (o["doi"], o["title"], o["score"]) == (doi, body["citation"]["title"], body["altmetric_score"]["score"])
    sc = {
        r["source"]: (r["posts_count"], r["unique_users_count"])
        for r in rows(h.engine, "select * from source_counts where altmetric_id = :a", a=aid)
    }
    expected = {
        {"q&a": "qna"}.get(k, k): (v["posts_count"], v["unique_users_count"])
        for k, v in body["counts"].items()
        if k not in ("readers", "total")
    }
    assert sc == expected
    # A counts harvest afterwards keeps fetch's posts_count (counts does not know it).
    assert h.run("harvest", "--no-progress", h.ids([doi], "again.txt")).exit_code == ExitCode.OK
    after = {r["source"]: r["posts_count"] for r in rows(h.engine, "select * from source_counts where altmetric_id = :a", a=aid)}
    assert all(after[s] == expected[s][0] for s in expected)


def test_source_filters_reach_the_api(h: Harness) -> None:
    ids = dois(60, "10.5555/filter")
    result = h.run("harvest", "--endpoint", "fetch", "--include-sources", "news,policy", "--no-progress", h.ids(ids))
    assert result.exit_code == ExitCode.OK, result.output
    sources = {r["source"] for r in rows(h.engine, "select distinct source from mentions")}
    assert sources and sources <= {"news", "policy"}
    assert rows(h.engine, "select params from jobs")[0]["params"].count("news") == 1


def test_counts_only_key_gets_403_on_fetch_and_stops_with_a_hint(h: Harness) -> None:
    result = h.run("harvest", "--endpoint", "fetch", "--no-progress", h.ids(dois(30)), ALTMETRIC_API_KEY="counts-only-key")
    assert result.exit_code == ExitCode.ERROR
    assert "answered 403 on fetch" in result.stderr
    assert 'endpoints = ["counts"]' in result.stderr
    assert "Resume with:" in result.stderr
    assert h.statuses() == {"pending": 30}


def test_endpoints_config_without_fetch_refuses_a_fetch_job(h: Harness, tmp_path: Path) -> None:
    (tmp_path / "harvester.toml").write_text('[api]\nendpoints = ["counts"]\n')
    result = h.run("harvest", "--endpoint", "fetch", "--no-progress", h.ids(dois(3)))
    assert result.exit_code == ExitCode.ERROR
    assert "excludes it" in result.stderr
    assert h.statuses() == {"pending": 3}


def test_fetch_options_need_the_fetch_endpoint(h: Harness) -> None:
    result = h.run("harvest", "--include-sources", "news", h.ids(dois(3)))
    assert result.exit_code == ExitCode.USAGE
    assert "need --endpoint fetch" in result.stderr


def test_multi_megabyte_bodies(tmp_path: Path, clean_env: None) -> None:
    """The heaviest bodies the fake serves pass through whole."""
    from harvester.fakeapi.bodies import _fetch_bytes

    big = sorted(dois(3000, "10.5555/big"), key=lambda d: -len(_fetch_bytes("doi", d, 15.0) or b""))[:3]
    with serve_in_thread(replace(FAKE)) as server:
        h2 = Harness(tmp_path, server)
        result = h2.run("harvest", "--endpoint", "fetch", "--no-progress", h2.ids(big))
        assert result.exit_code == ExitCode.OK, result.output
        assert scalar(h2.engine, "select count(*) from mentions") == sum(served_posts(big).values())


def test_only_an_unfiltered_fetch_marks_when_all_posts_were_seen(h: Harness) -> None:
    ids = dois(20, "10.5555/seen")
    assert h.run("harvest", "--endpoint", "fetch", "--include-sources", "news", "--no-progress", h.ids(ids)).exit_code == ExitCode.OK
    assert scalar(h.engine, "select count(*) from outputs where posts_seen_at is not null") == 0
    assert h.run("harvest", "--endpoint", "fetch", "--no-progress", h.ids(ids)).exit_code == ExitCode.OK
    assert scalar(h.engine, "select count(*) from outputs where posts_seen_at is null") == 0
    # No post looks gone after a full harvest, and a later counts or filtered harvest changes nothing.
    gone = "select count(*) from mentions m join outputs o using (altmetric_id) where m.last_seen_at < o.posts_seen_at"
    assert scalar(h.engine, gone) == 0
    assert h.run("harvest", "--no-progress", h.ids(ids)).exit_code == ExitCode.OK
    assert h.run("harvest", "--endpoint", "fetch", "--include-sources", "news", "--no-progress", h.ids(ids)).exit_code == ExitCode.OK
    assert scalar(h.engine, gone) == 0


def test_a_spent_tweet_id_quota_pauses_fetch_work(tmp_path: Path, clean_env: None) -> None:
    ids = dois(200, "10.5555/tweets")
    with serve_in_thread(replace(FAKE, tweet_ids_per_day=300)) as server:
        h = Harness(tmp_path, server)
        result = h.run("harvest", "--endpoint", "fetch", "--no-progress", h.ids(ids))
        assert result.exit_code == ExitCode.PAUSED, result.output
        assert "tweet-id quota is spent; it resets at" in result.stderr
        assert "Resume with:" in result.stderr
        statuses = h.statuses()
        assert statuses["pending"] > 0 and "failed" not in statuses
        assert rows(h.engine, "select status from jobs") == [{"status": "paused"}]
        # Counts still works with the same key: the tweet-id quota is Fetch's alone.
        assert h.run("harvest", "--no-progress", h.ids(ids[:5], "counts.txt")).exit_code == ExitCode.OK
