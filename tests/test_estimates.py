"""Estimates that hold: a dry run's time from the rate of the same endpoint and tier, `status`'s rate
from the job's (re)start in its first minute (issue 20, item 5).

Real harvests against the fake API over HTTP into a real SQLite file; where a test needs a known
rate, it restamps the real job's rows (jobs.started_at, job_items.updated_at) as a run at that
rate would have left them.
"""

from __future__ import annotations

import json
import os
import re
import socket
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import bindparam, update

from harvester import clock, leases, schema
from harvester.vocabulary import ExitCode, ItemStatus, JobStatus
from tests.conftest import Harness, dois, rows, scalar

# Whole harvests, a few seconds in all: with the CLI's end-to-end modules (conftest.SLOW_MODULES), out of the fast tier.
pytestmark = pytest.mark.slow


def _harvest(h: Harness, ids: list[str], name: str, *args: str, **env: str) -> int:
    result = h.run("harvest", "--no-progress", *args, h.ids(ids, name), **env)
    assert result.exit_code == ExitCode.OK, result.output
    return int(scalar(h.engine, "select max(id) from jobs"))


def _restamp(h: Harness, job_id: int, started: datetime, per_second: float, batch: int = 10, pause_after: int | None = None) -> None:
    """Make the finished job look as if it had run at `per_second`: a batch of `batch` items
    committed every batch/per_second seconds from `started` (one batch's wait to start), with an
    hour's pause after `pause_after` items if given."""
    items = rows(h.engine, "select id_type, identifier from job_items where job_id = :j order by line_no", j=job_id)
    step = timedelta(seconds=batch / per_second)
    stamps = []
    for k, item in enumerate(items):
        at = started + step * (k // batch + 1)
        if pause_after is not None and k >= pause_after:
            at += timedelta(hours=1)
        stamps.append({"b_type": item["id_type"], "b_id": item["identifier"], "at": at})
    ji = schema.job_items.c
    with h.engine.begin() as conn:
        conn.execute(
            update(schema.job_items)
            .where(ji.job_id == job_id, ji.id_type == bindparam("b_type"), ji.identifier == bindparam("b_id"))
            .values(updated_at=bindparam("at")),
            stamps,
        )
        finished = max(s["at"] for s in stamps)
        conn.execute(update(schema.jobs).where(schema.jobs.c.id == job_id).values(started_at=started, finished_at=finished))


def _plan(h: Harness, *args: str, **env: str) -> dict[str, Any]:
    result = h.run(*args, "--dry-run", "--json", **env)
    assert result.exit_code == ExitCode.OK, result.output
    plan: dict[str, Any] = json.loads(result.stdout)
    return plan


def test_a_fetch_dry_run_is_timed_at_the_fetch_rate_not_the_last_harvest_of_any_kind(h: Harness) -> None:
    ago = clock.utcnow() - timedelta(days=1)
    fetch_job = _harvest(h, dois(200, "10.5555/f"), "fetch.txt", "--endpoint", "fetch")
    _restamp(h, fetch_job, ago, per_second=10)
    # The last harvest is a Counts one, ten times as fast: the estimate before issue 20 took its rate for a Fetch too.
    counts_job = _harvest(h, dois(200, "10.5555/c"), "counts.txt")
    _restamp(h, counts_job, ago + timedelta(hours=1), per_second=100)

    listing = h.ids(dois(500, "10.5555/new"), "new.txt")
    fetch = _plan(h, "harvest", "--endpoint", "fetch", listing)["estimate"]
    # 10 ids a second between commits, and the 1 s the first batch took to start (once, not per id).
    assert abs(fetch["rate"] - 10) < 0.01 and abs(fetch["seconds"] - (1 + 500 / 10)) < 0.1
    assert f"measured on fetch job {fetch_job}" in fetch["basis"]
    counts = _plan(h, "harvest", listing)["estimate"]
    assert abs(counts["rate"] - 100) < 0.1 and f"measured on counts job {counts_job}" in counts["basis"]
    text = h.run("harvest", "--dry-run", "--endpoint", "fetch", listing).stdout
    assert f"time: 51s at 10/s (measured on fetch job {fetch_job}" in text

    # A Citations listing followed by Fetch is timed at the Fetch rate: 1 page + 99 follow-ups.
    then = h.run("citations", "1d", "--pages", "1", "--then", "fetch", "--dry-run")
    assert then.exit_code == ExitCode.OK, then.output
    assert f"time: 11s at 10/s (measured on fetch job {fetch_job}" in then.stdout


def test_a_pause_in_the_measured_job_is_not_counted_as_work(h: Harness) -> None:
    job = _harvest(h, dois(300), "ids.txt", "--endpoint", "fetch")
    # 20/s, but paused an hour after 100 items (a spent quota, an outage, a Ctrl-C resumed later):
    # total_items / (finished_at - started_at) says 0.08/s, and 300 ids a hour.
    _restamp(h, job, clock.utcnow() - timedelta(hours=3), per_second=20, pause_after=100)
    est = _plan(h, "harvest", "--endpoint", "fetch", h.ids(dois(1000, "10.5555/x"), "more.txt"))["estimate"]
    assert abs(est["rate"] - 20) < 0.01 and est["seconds"] < 60


def test_a_job_of_another_tier_or_api_is_not_measured_and_the_configured_limits_are(h: Harness) -> None:
    h.tmp.joinpath("harvester.toml").write_text("[limits]\nper_second = 500\nconcurrency = 8\nbackoff_base = 0.01\n")
    free_job = _harvest(h, dois(150), "ids.txt", HARVESTER_TIER="free")
    _restamp(h, free_job, clock.utcnow() - timedelta(hours=1), per_second=2)
    listing = h.ids(dois(400, "10.5555/y"), "more.txt")
    est = _plan(h, "harvest", listing)["estimate"]
    # A free key's 2/s says nothing of a commercial one: the configured concurrency is the basis.
    assert est["tier"] == "commercial" and "no counts job measured yet" in est["basis"] and est["rate"] == 8 / 0.1
    h.tmp.joinpath("harvester.toml").write_text("[limits]\nmax_per_second = 25\n")
    est = _plan(h, "harvest", listing)["estimate"]
    assert est["rate"] == 25 and est["seconds"] == 16 and "max_per_second" in est["basis"]
    # The same job, run against another API (the fake on another port is another API).
    with h.engine.begin() as conn:
        params = json.loads(scalar(h.engine, "select params from jobs where id = :j", j=free_job))
        params["api"] = [{"tier": "commercial", "url": "http://127.0.0.1:1/v1"}]
        conn.execute(update(schema.jobs).where(schema.jobs.c.id == free_job).values(params=json.dumps(params)))
    assert "no counts job measured yet" in _plan(h, "harvest", listing)["estimate"]["basis"]


def test_a_free_tier_estimate_is_the_same_for_fetch_and_counts(h: Harness) -> None:
    """Every endpoint draws on the key's one budget: a Fetch costs a slot as a Counts does."""
    h.tmp.joinpath("harvester.toml").write_text("[limits]\nper_second = 2.0\nper_hour = 100\nper_day = 150\n")
    listing = h.ids(dois(500))
    fetch = _plan(h, "harvest", "--endpoint", "fetch", listing, HARVESTER_TIER="free")["estimate"]
    counts = _plan(h, "harvest", listing, HARVESTER_TIER="free")["estimate"]
    same = ("requests", "rate", "quota_per_day", "quota_left_today", "days", "basis")
    assert {k: fetch[k] for k in same} == {k: counts[k] for k in same} and fetch["days"] == 4
    assert abs(fetch["seconds"] - counts["seconds"]) < 5  # the two plans' "now" differ by the time between them


def _running(h: Harness, job_id: int, started: datetime, done_at: dict[datetime, int]) -> None:
    """Make a job look running since `started`, with `done_at[t]` items made final at t, the rest pending."""
    ji = schema.job_items.c
    items = rows(h.engine, "select id_type, identifier from job_items where job_id = :j order by line_no", j=job_id)
    marks, k = [], 0
    for at, n in done_at.items():
        marks += [{"b_type": i["id_type"], "b_id": i["identifier"], "at": at, "st": ItemStatus.DONE.value} for i in items[k : k + n]]
        k += n
    marks += [{"b_type": i["id_type"], "b_id": i["identifier"], "at": started, "st": ItemStatus.PENDING.value} for i in items[k:]]
    with h.engine.begin() as conn:
        conn.execute(
            update(schema.job_items)
            .where(ji.job_id == job_id, ji.id_type == bindparam("b_type"), ji.identifier == bindparam("b_id"))
            .values(updated_at=bindparam("at"), status=bindparam("st")),
            marks,
        )
        conn.execute(
            update(schema.jobs)
            .where(schema.jobs.c.id == job_id)
            .values(status=JobStatus.RUNNING, started_at=started, finished_at=None, heartbeat_at=clock.utcnow())
        )


def _status(h: Harness, job_id: int) -> tuple[str, dict[str, Any]]:
    text = h.run("status", str(job_id))
    data = h.run("status", str(job_id), "--json")
    assert text.exit_code == data.exit_code == ExitCode.OK, text.output + data.output
    return text.stdout, json.loads(data.stdout)


def test_status_in_a_jobs_first_minute_measures_from_its_start(h: Harness) -> None:
    job = _harvest(h, dois(1000), "ids.txt")
    now = clock.utcnow()
    # 20 s old, 200 done: 10 ids/s (a minute's window, reaching back before the start, said 3.3).
    _running(h, job, now - timedelta(seconds=20), {now - timedelta(seconds=5): 200})
    text, info = _status(h, job)
    # The window runs from the start to when `status` ran: 20 s, and the seconds the test took to get there.
    # Both figures are rounded to 0.1 (9.9/s beside 20.1 s is 200 over 20.14 s), so they agree within that.
    window = info["rate_window_seconds"]
    assert 19.5 < window < 30 and abs(info["rate_per_second"] - 200 / window) <= 0.1, info
    assert abs(info["eta_seconds"] - 800 / (200 / window)) <= 1  # 800 pending
    shown = re.search(r"rate: ([\d.]+) ids/s over the (\d+)s since it \(re\)started · ETA", text)
    assert shown and 19 < int(shown[2]) < 31 and 200 / 31 <= float(shown[1]) <= 200 / 19, text


def test_status_of_a_resumed_job_measures_from_the_resume(h: Harness) -> None:
    job = _harvest(h, dois(1000), "ids.txt")
    now = clock.utcnow()
    # Started two hours ago, 500 done then, paused; resumed 20 s ago by a worker that has done 200 since.
    _running(h, job, now - timedelta(hours=2), {now - timedelta(hours=2) + timedelta(minutes=1): 500, now - timedelta(seconds=3): 200})
    runner = f"{socket.gethostname()}:{os.getpid()}:resumed0"
    with h.engine.begin() as conn:
        conn.execute(
            schema.workers.insert().values(
                runner=runner,
                host=socket.gethostname(),
                pid=os.getpid(),
                command="resume",
                job_id=job,
                started_at=now - timedelta(seconds=20),
                heartbeat_at=now,
                items_done=0,
                requests=0,
                leases=0,
            )
        )
    text, info = _status(h, job)
    window = info["rate_window_seconds"]
    assert 19.5 < window < 30 and abs(info["rate_per_second"] - 200 / window) <= 0.1, info  # not 700 over 2 hours
    assert abs(info["eta_seconds"] - 300 / (200 / window)) <= 1
    shown = re.search(r"over the (\d+)s since it \(re\)started", text)
    assert shown and 19 < int(shown[1]) < 31, text
    # A minute on, the window is the last minute again.
    with h.engine.begin() as conn:
        conn.execute(update(schema.workers).values(started_at=now - timedelta(minutes=5)))
        conn.execute(update(schema.jobs).values(started_at=now - timedelta(hours=2)))
    text, info = _status(h, job)
    assert info["rate_window_seconds"] == 60 and "over the last minute" in text
    leases.unregister(h.engine, runner)


def test_a_workers_line_counts_items_as_they_are_written_not_at_its_heartbeat(tmp_path: Any) -> None:
    """The worker row's items_done grows in the batch's own transaction: at any moment it equals
    the job's final items (one worker), long before the first 15 s heartbeat would have said so."""
    import sqlite3
    import time
    from dataclasses import replace

    from harvester.fakeapi import serve_in_thread
    from tests.conftest import FAKE
    from tests.subproc import start

    ids = tmp_path / "ids.txt"
    ids.write_text("".join(d + "\n" for d in dois(400)))
    db = tmp_path / "w.db"
    with serve_in_thread(replace(FAKE, latency=0.02)) as server:
        proc = start(db, server, "harvest", "--no-progress", "--concurrency", "2", str(ids), HARVESTER_TIER="commercial")
        seen: list[tuple[int, int]] = []
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and proc.poll() is None and len(seen) < 3:
                time.sleep(0.3)
                if not db.exists():
                    continue
                # Plain sqlite3, read-only: open_database would migrate a database the harvest is creating.
                conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
                try:
                    with conn:  # one read transaction: both counts from the same moment
                        conn.execute("BEGIN")
                        final = conn.execute("select count(*) from job_items where status <> 'pending'").fetchone()[0]
                        done = conn.execute("select coalesce(sum(items_done), 0) from workers").fetchone()[0]
                except sqlite3.OperationalError:
                    continue  # the schema is not there yet
                finally:
                    conn.close()
                if final:
                    seen.append((int(final), int(done or 0)))
        finally:
            proc.communicate(timeout=120)
    assert proc.returncode == ExitCode.OK
    assert len(seen) >= 2 and seen[0][0] < 400, seen
    assert all(final == done for final, done in seen), seen
