"""`harvester citations`: paging to query.total, filters, ranks, resuming, --then."""

from __future__ import annotations

import json
import math
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

from harvester import clock, jobs
from harvester.endpoints import endpoint_for
from harvester.fakeapi import FakeConfig, FakeServer, serve_in_thread
from harvester.store import write_batch
from harvester.vocabulary import ExitCode, ItemResult, ItemStatus
from tests.conftest import KEY, SAMPLES, Harness, lease_all, rows, scalar
from tests.subproc import query, start


def listing(server: FakeServer, timeframe: str, **filters: str) -> dict[str, Any]:
    """Page 1 of the fake's listing, asked over HTTP as any client would."""
    params = "&".join(f"{k}={v}" for k, v in {"key": KEY, "num_results": "1", **filters}.items())
    with urllib.request.urlopen(f"{server.url}/citations/{timeframe}?{params}") as r:
        return dict(json.load(r))


def test_the_progress_line_counts_the_pages_the_listing_adds(h: Harness, fake: FakeServer) -> None:
    # Page 1 is the job's only item at the start; the pages its total implies are added as it is written.
    total = listing(fake, "1w", doi_prefix="10.1038")["query"]["total"]
    pages = math.ceil(total / 7)
    assert pages > 2
    result = h.run("citations", "1w", "--doi-prefix", "10.1038", "--num-results", "7", "--all-pages")
    assert result.exit_code == ExitCode.OK, result.output
    last = [line for line in result.stderr.splitlines() if line.startswith("job 1: ")][-1]
    assert last.startswith(f"job 1: {pages}/{pages} (100.0%) done {pages} ·"), last


def test_all_pages_store_exactly_query_total_rows(h: Harness, fake: FakeServer) -> None:
    total = listing(fake, "1w", doi_prefix="10.1038")["query"]["total"]
    assert total % 7, "a partial last page is part of the test"
    result = h.run("citations", "1w", "--doi-prefix", "10.1038", "--num-results", "7", "--all-pages", "--no-progress")
    assert result.exit_code == ExitCode.OK, result.output
    engine = h.engine
    assert scalar(engine, "select count(*) from citation_activity") == total
    assert [r["rank"] for r in rows(engine, "select rank from citation_activity order by rank")] == list(range(1, total + 1))
    assert scalar(engine, "select count(*) from job_items where status = 'done'") == math.ceil(total / 7)
    assert scalar(engine, "select count(*) from job_items where status != 'done'") == 0
    # Each listed output is stored like a Counts result, with its snapshot of the day.
    assert scalar(engine, "select count(*) from outputs") == total
    assert scalar(engine, "select count(*) from counts_snapshots") == total
    assert scalar(engine, "select count(*) from outputs where doi not like '10.1038/%'") == 0
    activity = rows(engine, "select filters, timeframe, total, page, score from citation_activity where rank = 8")
    assert activity[0]["filters"] == "doi_prefix=10.1038" and activity[0]["timeframe"] == "1w"
    assert (activity[0]["total"], activity[0]["page"]) == (total, 2)
    # Ranks follow the API's order (best score first).
    scores = [r["score"] for r in rows(engine, "select score from citation_activity order by rank")]
    assert scores == sorted(scores, reverse=True)


def test_pages_limits_the_listing_and_the_default_is_one_page(h: Harness, fake: FakeServer) -> None:
    assert h.run("citations", "3m", "--num-results", "10", "--pages", "3", "--no-progress").exit_code == ExitCode.OK
    assert scalar(h.engine, "select count(*) from citation_activity where timeframe = '3m'") == 30
    assert h.run("citations", "1m", "--num-results", "10", "--no-progress").exit_code == ExitCode.OK
    assert scalar(h.engine, "select count(*) from citation_activity where timeframe = '1m'") == 10


def test_every_filter_reaches_the_api_and_is_recorded(h: Harness, fake: FakeServer) -> None:
    args = [
        "--cited-in",
        "news",
        "--doi-prefix",
        "10.7554",
        "--issns",
        "2050-084X",
        "--order-by",
        "score",
        "--nlmid",
        "101579614",
        "--subjects",
        "biology",
    ]
    assert h.run("citations", "1y", *args, "--num-results", "5", "--no-progress").exit_code == ExitCode.OK
    expected = "cited_in=news&doi_prefix=10.7554&issns=2050-084X&nlmid=101579614&order_by=score&subjects=biology"
    assert {r["filters"] for r in rows(h.engine, "select filters from citation_activity")} == {expected}
    fake_listing = listing(
        fake, "1y", cited_in="news", doi_prefix="10.7554", issns="2050-084X", order_by="score", nlmid="101579614", subjects="biology"
    )
    stored = rows(h.engine, "select c.total, o.doi from citation_activity c join outputs o using (altmetric_id) where rank = 1")
    assert stored == [{"total": fake_listing["query"]["total"], "doi": fake_listing["results"][0]["doi"]}]


def test_a_page_past_the_end_is_not_found_and_the_job_finishes(h: Harness, fake: FakeServer) -> None:
    assert h.run("citations", "6m", "--num-results", "50", "--all-pages", "--no-progress").exit_code == ExitCode.OK
    engine = h.engine
    pages = scalar(engine, "select count(*) from job_items")
    # The listing shrank while we paged: a page that the last total promised no longer exists.
    with engine.begin() as conn:
        jobs.add_items(conn, 1, [("page", str(pages + 1), pages + 1)], clock.utcnow())
    result = h.run("resume", "1", "--no-progress")
    assert result.exit_code == ExitCode.OK, result.output
    assert rows(engine, f"select status, http_status from job_items where identifier = '{pages + 1}'") == [
        {"status": "not_found", "http_status": 404}
    ]
    assert scalar(engine, "select status from jobs where id = 1") == "finished"


def test_then_queues_every_listed_output_and_resume_runs_the_listing_first(h: Harness, fake: FakeServer) -> None:
    engine = h.engine
    with engine.begin() as conn:
        citations, follow = jobs.create_citations_job(conn, "2d", {}, 20, None, "fetch")
    # Resuming the follow-up runs the listing that feeds it first.
    result = h.run("resume", str(follow), "--no-progress")
    assert result.exit_code == ExitCode.OK, result.output
    listed = scalar(engine, "select count(*) from citation_activity")
    assert listed == listing(fake, "2d")["query"]["total"]
    assert scalar(engine, f"select count(*) from job_items where job_id = {follow} and status = 'done'") == listed
    # Fetch ran on them: mentions exist for listed outputs.
    assert scalar(engine, "select count(distinct altmetric_id) from mentions") > listed // 2
    assert {r["status"] for r in rows(engine, "select status from jobs")} == {"finished"}


def test_usage_errors_exit_2(h: Harness) -> None:
    assert h.run("citations", "2w").exit_code == ExitCode.USAGE
    assert h.run("citations", "1d", "--num-results", "100").exit_code == ExitCode.USAGE
    assert h.run("citations", "1d", "--pages", "2", "--all-pages").exit_code == ExitCode.USAGE


def test_a_counts_only_key_stops_with_the_servers_text(h: Harness) -> None:
    result = h.run("citations", "1d", "--no-progress", ALTMETRIC_API_KEY="counts-only-key")
    assert result.exit_code == ExitCode.ERROR
    assert "citations endpoint" in result.output and "counts-only-key" not in result.output
    assert h.statuses() == {"pending": 1}


def test_the_docs_sample_page_is_stored_with_its_rank_and_total(engine: Any) -> None:
    """The real page shape (query holds only total; readers of -1) through the writer."""
    raw = (SAMPLES / "citations_docs-example_1m.json").read_bytes()
    with engine.begin() as conn:
        job_id, _ = jobs.create_citations_job(conn, "1m", {}, 99, None)
    lease_all(engine, job_id, "test")
    write_batch(
        engine,
        job_id,
        endpoint_for(jobs.get_job(engine, job_id)),
        [ItemResult("page", "1", ItemStatus.DONE, 1, 200, None, raw)],
        clock.utcnow(),
        "test",
    )
    assert rows(engine, "select altmetric_id, rank, score, total, page from citation_activity") == [
        {"altmetric_id": 243700, "rank": 1, "score": 114.5, "total": 2418, "page": 1}
    ]
    assert rows(engine, "select platform, count from readers order by platform") == [
        {"platform": "downloads", "count": None},
        {"platform": "mendeley", "count": None},
    ]
    # query.total = 2418 at 99 a page: pages 2 .. 25 are now pending.
    assert scalar(engine, "select count(*) from job_items where status = 'pending'") == math.ceil(2418 / 99) - 1


def test_kill_9_mid_listing_then_resume_equals_an_undisturbed_run(tmp_path: Path) -> None:
    def activity(db: Path) -> list[tuple[Any, ...]]:
        return query(db, "select timeframe, filters, altmetric_id, rank, score, page, total from citation_activity order by rank")

    args = ("citations", "1m", "--num-results", "3", "--all-pages", "--no-progress")
    config = tmp_path / "harvester.toml"
    config.write_text("[limits]\nconcurrency = 2\n")  # about 200 pages, 40 a second: long enough to be killed
    with serve_in_thread(FakeConfig(keys=(KEY,), latency=0.05)) as server:
        clean = tmp_path / "clean.db"
        assert start(clean, server, *args, config=config).wait(timeout=120) == ExitCode.OK
        db = tmp_path / "killed.db"
        proc = start(db, server, *args, config=config)
        deadline = time.monotonic() + 60
        while _done_pages(db) < 20:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert 0 < _done_pages(db) < len(activity(clean)) / 3 - 20
        resumed = start(db, server, "resume", "--no-progress", config=config)
        assert resumed.wait(timeout=120) == ExitCode.OK, resumed.communicate()
    assert activity(db) == activity(clean)
    assert query(db, "select count(*) from outputs") == query(clean, "select count(*) from outputs")
    assert query(db, "select count(*), count(distinct identifier) from job_items") == query(
        clean, "select count(*), count(distinct identifier) from job_items"
    )


def _done_pages(db: Path) -> int:
    try:
        return int(query(db, "select count(*) from job_items where status = 'done'")[0][0])
    except Exception:
        return 0
