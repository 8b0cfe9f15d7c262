"""The same schema, harvests and resumes on a real PostgreSQL 15 server (tests/pg.py).

Every database is compared with SQLite row by row where both hold the same harvest.
The documented queries and two nightlies run on PostgreSQL in tests/test_docs.py.
"""

from __future__ import annotations

import signal
from datetime import datetime
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect

from harvester import schema
from harvester.db import alembic_config, current_revision, head_revision, open_database
from harvester.fakeapi import FakeConfig, serve_in_thread
from harvester.vocabulary import ExitCode
from tests.conftest import KEY, Harness, dois
from tests.subproc import final_count, query, snapshot, start, wait_until
from tests.test_migrations import assert_no_drift

SAMPLE_DOIS = ["10.1038/news.2011.490", "10.4018/978-1-4666-8271-9", "10.5555/bogus.1"]


def test_migrations_upgrade_check_and_round_trip(pg_url: str) -> None:
    engine = open_database(pg_url)
    try:
        assert current_revision(engine) == head_revision()
        assert set(inspect(engine).get_table_names()) == set(schema.metadata.tables) | {"alembic_version"}
        assert_no_drift(pg_url)  # the models and the migrations agree on PostgreSQL too
        command.downgrade(alembic_config(engine), "base")
        assert set(inspect(engine).get_table_names()) == {"alembic_version"}
        command.upgrade(alembic_config(engine), "head")
        assert current_revision(engine) == head_revision()
        assert set(inspect(engine).get_table_names()) == set(schema.metadata.tables) | {"alembic_version"}
        assert_no_drift(pg_url)
    finally:
        engine.dispose()


def test_harvests_store_the_same_rows_as_sqlite_and_twice_changes_nothing(h: Harness, pg_url: str) -> None:
    counts_ids = h.ids(dois(250) + SAMPLE_DOIS, "counts.txt")
    fetch_ids = h.ids(dois(100) + SAMPLE_DOIS, "fetch.txt")

    def harvest(database: str) -> None:
        for endpoint, ids in (("counts", counts_ids), ("fetch", fetch_ids)):
            result = h.run("--database", database, "harvest", "--endpoint", endpoint, "--no-progress", ids)
            assert result.exit_code == ExitCode.OK, result.output

    for database in (f"sqlite:///{h.db}", pg_url):
        harvest(database)
        result = h.run(
            "--database", database, "citations", "1w", "--num-results", "30", "--pages", "2", "--then", "counts", "--no-progress"
        )
        assert result.exit_code == ExitCode.OK, result.output
    on_pg = snapshot(pg_url)
    assert on_pg == snapshot(h.db)
    assert len(on_pg["outputs"]) > 200 and len(on_pg["mentions"]) > 500
    activity = "select timeframe, filters, altmetric_id, rank, score, page, total from citation_activity order by rank"
    assert query(pg_url, activity) == query(h.db, activity)
    assert len(query(pg_url, activity)) == 60
    # Again into PostgreSQL: the upserts update rows in place, they add none (and change no value).
    tables = [t for t in schema.metadata.tables if t not in ("jobs", "job_items")]
    count_rows = " union all ".join(f"select '{t}', count(*) from {t}" for t in tables)
    before = dict(query(pg_url, count_rows))
    harvest(pg_url)
    assert dict(query(pg_url, count_rows)) == before
    assert {t: r for t, r in snapshot(pg_url).items() if t != "job_items"} == {t: r for t, r in on_pg.items() if t != "job_items"}


def test_kill_9_on_postgresql_then_resume(tmp_path: Path, pg_url: str) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"10.5555/pgkill.{i:05d}\n" for i in range(1500)))
    with serve_in_thread(FakeConfig(keys=(KEY,), latency=0.004)) as server:
        clean = tmp_path / "clean.db"
        assert start(clean, server, "harvest", "--no-progress", str(ids)).wait(timeout=120) == ExitCode.OK
        proc = start(pg_url, server, "harvest", "--no-progress", "--concurrency", "8", str(ids))
        wait_until(pg_url, 300, proc, timeout=60)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert final_count(pg_url) < 1500  # killed mid-run
        assert start(pg_url, server, "resume", "--no-progress").wait(timeout=120) == ExitCode.OK
    assert snapshot(pg_url) == snapshot(clean)


def test_a_second_nightly_is_refused_by_the_unique_lock_on_postgresql(h: Harness, pg_url: str) -> None:
    from harvester import nightly
    from harvester.config import load_config

    engine = open_database(pg_url)
    try:
        held, _ = nightly.acquire(engine, load_config(env={}), "another-host:1:feedbeef")
        result = h.run("--database", pg_url, "nightly", "--no-progress")
        assert result.exit_code == ExitCode.PAUSED and f"job {held.id} is being run by another-host:1:feedbeef" in result.output
        with pytest.raises(Exception, match="unique|duplicate"):
            with engine.begin() as conn:
                conn.execute(
                    schema.jobs.insert().values(
                        endpoint="nightly", id_type="-", status="running", created_at=datetime(2026, 1, 1), lock_name="nightly"
                    )
                )
    finally:
        engine.dispose()


def test_lease_renewal_and_the_writers_lease_check_never_deadlock(tmp_path: Path, pg_url: str) -> None:
    """The heartbeat's renewal and the writer's lease check (leases.held) lock a worker's items.
    The writer locks a batch's items in the batch's order; a renewal that locked them in its own
    order waited for the writer while the writer waited for it: the server broke that with
    `deadlock detected` (twice in 41 s with two workers and a 3 s lease). Here the orders cross on purpose."""
    import threading
    from datetime import timedelta

    from sqlalchemy import text

    from harvester import jobs, leases

    engine = open_database(pg_url)
    try:
        ids = tmp_path / "ids.txt"
        ids.write_text("10.5555/dl.1\n10.5555/dl.2\n")
        job = jobs.create_job(engine, [str(ids)], "doi", "counts")
        runner = "host:1:dl"
        leases.register(engine, runner, "worker")
        [first, second] = leases.claim(engine, job.id, runner, 2, timedelta(minutes=5))

        def deadlocks() -> int:
            with engine.connect() as conn:
                conn.execute(text("SELECT pg_stat_force_next_flush()"))
                return int(conn.execute(text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")).scalar_one())

        before = deadlocks()
        renewed: list[int] = []
        with engine.connect() as writer:
            tx = writer.begin()
            # The writer's batch names the second item first: it locks that one now.
            assert leases.held(writer, job.id, runner, [(second.id_type, second.identifier)]) == {(second.id_type, second.identifier)}
            beat = threading.Thread(target=lambda: renewed.append(leases.renew(engine, runner, job.id, timedelta(minutes=5), 0)))
            beat.start()
            beat.join(timeout=1.5)  # the old renewal locked the first item, then waited for the second
            # ... and the writer goes on to the first: with both waiting on each other, the server aborts one.
            assert leases.held(writer, job.id, runner, [(first.id_type, first.identifier)]) == {(first.id_type, first.identifier)}
            tx.commit()
        beat.join(timeout=30)
        assert not beat.is_alive()
        engine.dispose()  # each backend reports its statistics as it ends
        assert deadlocks() == before
        # The renewal skipped what the writer held (written in that very transaction) and renewed the rest.
        assert renewed and renewed[0] >= 1
    finally:
        engine.dispose()
