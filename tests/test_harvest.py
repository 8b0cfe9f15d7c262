"""End-to-end harvests: the real CLI against the fake API over HTTP on 127.0.0.1, real SQLite files."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from harvester.fakeapi import FakeServer, counts_body, serve_in_thread
from harvester.vocabulary import ExitCode
from tests.conftest import FAKE, KEY, Harness, dois, rows, scalar


def expected_status(doi: str) -> str:
    return "not_found" if counts_body("doi", doi) is None else "done"


def test_harvest_stores_every_output_with_the_fake_apis_values(h: Harness) -> None:
    ids = dois(300) + ["10.1038/news.2011.490"]
    result = h.run("harvest", "--no-progress", h.ids(ids))
    assert result.exit_code == ExitCode.OK, result.output
    assert "job 1 finished" in result.stderr
    items = h.items()
    assert {doi: items[doi]["status"] for doi in ids} == {doi: expected_status(doi) for doi in ids}
    assert 0.08 < h.statuses()["not_found"] / len(ids) < 0.25
    assert all(i["attempts"] == 1 and i["claimed_by"] is None for i in items.values())
    done = [d for d in ids if expected_status(d) == "done"]
    assert scalar(h.engine, "select count(*) from outputs") == len(done)
    for doi in done[:20]:
        body = counts_body("doi", doi)
        assert body is not None
        [o] = rows(h.engine, "select * from outputs where doi = :d", d=doi)
        assert (o["altmetric_id"], o["score"], o["posts_count"], o["title"]) == (
            body["altmetric_id"],
            body["score"],
            body["cited_by_posts_count"],
            body["title"],
        )
        assert items[doi]["altmetric_id"] == body["altmetric_id"]
    # The real sample the fake serves for this DOI has string readers.
    assert rows(h.engine, "select count from readers where altmetric_id = 241939 and platform = 'mendeley'") == [{"count": 9}]
    status = json.loads(h.run("status", "1", "--json").stdout)
    assert status["status"] == "finished" and status["items"]["pending"] == 0


def test_a_second_harvest_of_the_same_ids_changes_no_row_count(h: Harness) -> None:
    path = h.ids(dois(100))
    assert h.run("harvest", "--no-progress", path).exit_code == ExitCode.OK
    tables = ("outputs", "identifiers", "source_counts", "readers", "score_history", "score_context")
    before = {t: scalar(h.engine, f"select count(*) from {t}") for t in tables}
    assert h.run("harvest", "--no-progress", path).exit_code == ExitCode.OK
    assert {t: scalar(h.engine, f"select count(*) from {t}") for t in tables} == before


def test_escaped_dois_are_requested_correctly_and_stored_exactly(h: Harness, fake: FakeServer) -> None:
    weird = "10.1000/a#b?c%d;e[f]<g>"  # one the fake answers (counts_body is not None)
    result = h.run("harvest", "--no-progress", h.ids([weird, "doi:10.1000/PLAIN"]))
    assert result.exit_code == ExitCode.OK, result.output
    item = h.items()[weird]
    assert (item["status"], item["input"]) == ("done", weird)
    body = counts_body("doi", weird)
    assert body is not None and item["altmetric_id"] == body["altmetric_id"]
    assert rows(h.engine, "select value from identifiers where scheme = 'doi' and altmetric_id = :a", a=body["altmetric_id"]) == [
        {"value": weird}
    ]
    # The fake decoded the path to exactly this DOI, once.
    assert fake.stats.per_path["/v1/doi/" + weird] == 1


def test_bad_input_lines_are_rejected_and_the_run_goes_on(h: Harness) -> None:
    path = h.tmp / "messy.txt"
    # A BOM, CRLF, a blank line, a duplicate in other case, a line that is no id. (Bytes that are not
    # UTF-8 refuse the whole file, naming the line: tests/test_input_files.py.)
    path.write_bytes(b"\xef\xbb\xbf10.5555/t.00001\r\nnot-a-doi\r\n\r\n10.5555/T.00001\r\n\r\nhttps://doi.org/10.5555/t.00002\r\n")
    result = h.run("harvest", "--no-progress", str(path))
    assert result.exit_code == ExitCode.OK, result.output
    assert "2 ids (1 duplicates, 1 rejected lines)" in result.stderr
    assert [(r["line_no"], r["reason"]) for r in rows(h.engine, "select line_no, reason from job_rejects order by line_no")] == [
        (2, "not a DOI (10.NNNN/suffix)"),
    ]


def test_missing_key_401_stops_with_items_pending(h: Harness) -> None:
    result = h.run("harvest", "--no-progress", h.ids(dois(20)), ALTMETRIC_API_KEY=None)
    assert result.exit_code == ExitCode.ERROR
    assert "answered 401" in result.stderr and "ALTMETRIC_API_KEY" in result.stderr
    assert "Resume with: harvester resume 1" in result.stderr
    assert h.statuses() == {"pending": 20}


def test_bad_key_403_shows_the_servers_text(h: Harness) -> None:
    result = h.run("harvest", "--no-progress", h.ids(dois(20)), ALTMETRIC_API_KEY="wrong-key-0000")
    assert result.exit_code == ExitCode.ERROR
    assert "answered 403" in result.stderr
    assert h.statuses() == {"pending": 20}
    assert rows(h.engine, "select status from jobs") == [{"status": "stopped"}]
    # And the right key then finishes the same job.
    result = h.run("resume", "--no-progress")
    assert result.exit_code == ExitCode.OK, result.output
    assert h.statuses().get("pending", 0) == 0


def test_bogus_doi_answered_with_another_output_is_stored_and_noted(h: Harness) -> None:
    result = h.run("harvest", "--no-progress", h.ids(["10.5555/bogus.1"]))
    assert result.exit_code == ExitCode.OK, result.output
    item = h.items()["10.5555/bogus.1"]
    assert item["status"] == "done"
    assert item["note"] and item["note"].startswith("the API returned DOI")
    # The asked DOI is not recorded as an identifier of the other output.
    assert rows(h.engine, "select * from identifiers where value = '10.5555/bogus.1'") == []


# Each transient fault, at 30% of the answers.
FAULTS = {
    "error_rate": replace(FAKE, error_rate=0.3, seed=7),
    "reset_rate": replace(FAKE, reset_rate=0.3, seed=7),
    "truncate_rate": replace(FAKE, truncate_rate=0.3, seed=7),
    "html_rate": replace(FAKE, html_rate=0.3, seed=7),
}


@pytest.mark.parametrize("kind", list(FAULTS))
def test_transient_faults_are_retried_until_done(tmp_path: Path, clean_env: None, kind: str) -> None:
    with serve_in_thread(FAULTS[kind]) as server:
        h = Harness(tmp_path, server)
        ids = dois(120)
        (tmp_path / "harvester.toml").write_text("[limits]\nbackoff_base = 0.01\nbackoff_max = 0.05\nmax_attempts = 10\n")
        result = h.run("harvest", "--no-progress", h.ids(ids))
        assert result.exit_code == ExitCode.OK, result.output
        items = h.items()
        assert {d: items[d]["status"] for d in ids} == {d: expected_status(d) for d in ids}
        assert max(i["attempts"] for i in items.values()) > 1
        assert server.stats.faults[kind.removesuffix("_rate")] > 0


def test_an_id_the_server_always_fails_on_is_failed_after_max_attempts(h: Harness, fake: FakeServer) -> None:
    ids = ["10.5555/servererror.1", "10.5555/servererror.2", *dois(30)]
    result = h.run("harvest", "--no-progress", h.ids(ids))
    assert result.exit_code == ExitCode.SOME_FAILED
    assert "2 items failed" in result.stderr and "retry-failed 1" in result.stderr
    items = h.items()
    for doi in ids[:2]:
        assert (items[doi]["status"], items[doi]["attempts"], items[doi]["http_status"]) == ("failed", 3, 500)
        assert items[doi]["last_error"] == "HTTP 500"
        assert fake.stats.per_path[f"/v1/doi/{doi}"] == 3
    assert {items[d]["status"] for d in ids[2:]} <= {"done", "not_found"}
    # retry-failed puts them back to pending; resume asks for them (and only them) again.
    assert "2 failed items" in h.run("retry-failed", "1").stderr
    assert h.statuses()["pending"] == 2
    assert h.run("resume", "1", "--no-progress").exit_code == ExitCode.SOME_FAILED
    assert fake.stats.per_path["/v1/doi/10.5555/servererror.1"] == 6
    assert fake.stats.per_path["/v1/doi/10.5555/t.00001"] == 1


@pytest.mark.timing
def test_an_outage_trips_the_breaker_instead_of_failing_every_item(tmp_path: Path, clean_env: None) -> None:
    with serve_in_thread(replace(FAKE, error_rate=1.0)) as server:
        h = Harness(tmp_path, server)
        (tmp_path / "harvester.toml").write_text(
            "[limits]\nbackoff_base = 0.1\nbackoff_max = 1.0\nmax_attempts = 5\nconcurrency = 8\nmax_outage = 2.0\n"
        )
        result = h.run("harvest", "--no-progress", h.ids(dois(40)))
        assert result.exit_code == ExitCode.PAUSED
        assert "the API has been failing for" in result.stderr
        assert "Resume with: harvester resume 1" in result.stderr
        # Far fewer requests than 40 items x 3 attempts, and no item failed.
        assert server.stats.total < 40
        assert h.statuses() == {"pending": 40}
    with serve_in_thread(FAKE) as server:
        h.env["HARVESTER_API_URL"] = server.url
        assert h.run("resume", "--no-progress").exit_code == ExitCode.OK


@pytest.mark.timing
def test_429_is_waited_out_and_never_counted_as_an_attempt(tmp_path: Path, clean_env: None) -> None:
    with serve_in_thread(replace(FAKE, per_second=50.0, burst=4)) as server:
        h = Harness(tmp_path, server)
        result = h.run("harvest", "--no-progress", h.ids(dois(30)))
        assert result.exit_code == ExitCode.OK, result.output
        assert server.stats.rate_limited > 0
        assert {i["attempts"] for i in h.items().values()} == {1}


@pytest.mark.timing
def test_free_tier_limiter_gets_no_429_from_a_server_enforcing_the_same_rate(tmp_path: Path, clean_env: None) -> None:
    with serve_in_thread(replace(FAKE, per_second=20.0, burst=2)) as server:
        h = Harness(tmp_path, server)
        (tmp_path / "harvester.toml").write_text("[limits]\nper_second = 20.0\nconcurrency = 8\n")
        result = h.run("harvest", "--no-progress", h.ids(dois(40)), HARVESTER_TIER="free")
        assert result.exit_code == ExitCode.OK, result.output
        assert server.stats.rate_limited == 0
        assert server.stats.total == 40


def test_spent_daily_quota_pauses_with_exit_75_and_resume_finishes(tmp_path: Path, clean_env: None) -> None:
    ids = dois(60)
    with serve_in_thread(replace(FAKE, per_day=25)) as server:
        h = Harness(tmp_path, server)
        result = h.run("harvest", "--no-progress", h.ids(ids))
        assert result.exit_code == ExitCode.PAUSED
        assert "daily quota is spent; it resets at" in result.stderr
        assert "Resume with: harvester resume 1" in result.stderr
        statuses = h.statuses()
        assert "failed" not in statuses and sum(statuses.values()) == 60
        assert rows(h.engine, "select status from jobs") == [{"status": "paused"}]
        answered = {"/v1/doi/" + i for i, item in h.items().items() if item["status"] != "pending"}
        # The harvester stops on the server's Remaining header, give or take the requests
        # in flight (8): it never goes past the quota.
        assert 25 - 8 <= len(answered) <= 25
    with serve_in_thread(FAKE) as server:  # a fresh quota
        h.env["HARVESTER_API_URL"] = server.url
        # Before the quota resets, a resume says when it may resume and sends nothing.
        early = h.run("resume", "--no-progress")
        assert early.exit_code == ExitCode.PAUSED, early.output
        assert "daily quota is spent; it resets at" in early.stderr
        assert server.stats.total == 0
        # The reset time passes (moved, rather than waited for): the job and the key's shared budget agree.
        with h.engine.begin() as conn:
            past = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=1)
            conn.execute(text("update jobs set resume_after = :t"), {"t": past})
            conn.execute(text("update rate_budgets set quota_until = :t"), {"t": past})
        assert h.run("resume", "--no-progress").exit_code == ExitCode.OK
        # No id already answered was asked again; every other one was asked once.
        assert set(server.stats.per_path) == {"/v1/doi/" + i for i in ids} - answered
        assert set(server.stats.per_path.values()) == {1}


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/v1", "http://no-such-host.invalid/v1"])
def test_unreachable_api_or_unknown_host_is_one_clear_error(h: Harness, url: str) -> None:
    result = h.run("harvest", "--no-progress", h.ids(dois(5)), HARVESTER_API_URL=url)
    assert result.exit_code == ExitCode.ERROR
    [error] = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert f"cannot connect to {url}" in error
    assert "Traceback" not in result.stderr
    assert h.statuses() == {"pending": 5}


def test_key_never_leaks_into_output_logs_or_database(tmp_path: Path, clean_env: None) -> None:
    with serve_in_thread(replace(FAKE, error_rate=0.2, reset_rate=0.1, truncate_rate=0.1)) as server:
        h = Harness(tmp_path, server)
        outputs = [h.run("-vv", "harvest", h.ids(dois(80)))]
        outputs.append(h.run("-vv", "status", "--json"))
        outputs.append(h.run("-vv", "jobs", "--json"))
        outputs.append(h.run("-vv", "harvest", h.ids(dois(3), "b.txt"), HARVESTER_API_URL=server.url + "/nope"))
    assert any("retry" in r.stderr for r in outputs)  # -vv really logged the attempts
    for r in outputs:
        assert KEY not in r.output
    h.engine.dispose()
    for path in tmp_path.iterdir():
        if path.name.startswith("harvest.db"):
            assert KEY.encode() not in path.read_bytes()


def test_progress_lines_when_not_a_terminal(h: Harness) -> None:
    result = h.run("harvest", h.ids(dois(50)))
    assert result.exit_code == ExitCode.OK
    assert "job 1: 50/50 (100.0%)" in result.stderr
    quiet = h.run("harvest", "--no-progress", h.ids(dois(50)))
    assert "job 2: 50/50" not in quiet.stderr


def test_jobs_and_status_commands(h: Harness) -> None:
    h.run("harvest", "--no-progress", "--name", "first", h.ids(dois(10)))
    listing = json.loads(h.run("jobs", "--json").stdout)
    assert [(j["id"], j["name"], j["status"]) for j in listing] == [(1, "first", "finished")]
    text = h.run("status").stdout
    assert "job 1 (first): finished" in text
    assert h.run("status", "9").exit_code == ExitCode.ERROR
    assert h.run("resume").exit_code == ExitCode.ERROR  # nothing unfinished


def test_400_fails_the_item_at_once_without_retry(h: Harness, fake: FakeServer) -> None:
    result = h.run("harvest", "--no-progress", h.ids(["10.5555/badrequest.1", "10.5555/t.00001"]))
    assert result.exit_code == ExitCode.SOME_FAILED
    item = h.items()["10.5555/badrequest.1"]
    assert (item["status"], item["attempts"], item["http_status"]) == ("failed", 1, 400)
    assert item["last_error"].startswith("HTTP 400: Bad Request")
    assert fake.stats.per_path["/v1/doi/10.5555/badrequest.1"] == 1


def test_read_only_commands_do_not_create_a_database(h: Harness) -> None:
    for args in (["status"], ["jobs"], ["resume"], ["retry-failed", "1"]):
        result = h.run(*args)
        assert result.exit_code == ExitCode.ERROR
        assert f"there is no database at {h.db}" in result.stderr
    assert not h.db.exists()


@pytest.mark.timing
def test_timeouts_are_retried(tmp_path: Path, clean_env: None) -> None:
    with serve_in_thread(replace(FAKE, slow_rate=0.3, slow_seconds=1.0, seed=3)) as server:
        h = Harness(tmp_path, server)
        (tmp_path / "harvester.toml").write_text(
            "[api]\nread_timeout = 0.2\ntotal_timeout = 5.0\n"
            "[limits]\nbackoff_base = 0.01\nbackoff_max = 0.05\nmax_attempts = 10\nconcurrency = 16\n"
        )
        ids = dois(40)
        result = h.run("harvest", "--no-progress", h.ids(ids))
        assert result.exit_code == ExitCode.OK, result.output
        assert {d: i["status"] for d, i in h.items().items()} == {d: expected_status(d) for d in ids}
        assert server.stats.faults["slow"] > 0
        assert max(i["attempts"] for i in h.items().values()) > 1
