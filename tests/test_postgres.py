"""The same schema, harvests, nightlies and documented queries on a real PostgreSQL 15 server.

Every database is compared with SQLite row by row where both hold the same harvest.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect

from harvester import schema
from harvester.db import alembic_config, current_revision, head_revision, make_engine, open_database
from harvester.fakeapi import FakeConfig, serve_in_thread
from tests.conftest import KEY, Harness, dois
from tests import pg
from tests.subproc import query, snapshot, start
from tests.test_docs import ID_LINES, README, SCHEMA_DOC, sql_blocks
from tests.test_migrations import assert_no_drift

pg_cluster, pg_url = pg.pg_cluster, pg.pg_url  # the fixtures this module uses


def test_migrations_upgrade_check_and_round_trip(pg_url: str) -> None:
    engine = open_database(pg_url)
    assert current_revision(engine) == head_revision()
    assert set(inspect(engine).get_table_names()) == set(schema.metadata.tables) | {"alembic_version"}
    assert_no_drift(pg_url)  # the models and the migrations agree on PostgreSQL too
    cfg = alembic_config(make_engine(pg_url))
    command.downgrade(cfg, "base")
    assert set(inspect(make_engine(pg_url)).get_table_names()) == {"alembic_version"}
    command.upgrade(cfg, "head")
    assert current_revision(make_engine(pg_url)) == head_revision()


def test_harvests_store_the_same_rows_as_sqlite_and_twice_changes_nothing(h: Harness, pg_url: str) -> None:
    ids = h.ids(dois(300) + ["10.1038/news.2011.490", "10.4018/978-1-4666-8271-9", "10.5555/bogus.1"])
    for database in (f"sqlite:///{h.db}", pg_url):
        for endpoint in ("counts", "fetch"):
            result = h.run("--database", database, "harvest", "--endpoint", endpoint, "--no-progress", ids)
            assert result.exit_code == 0, result.output
        result = h.run("--database", database, "citations", "1w", "--num-results", "30", "--pages", "2", "--then", "counts", "--no-progress")
        assert result.exit_code == 0, result.output
    on_pg = snapshot(pg_url)
    assert on_pg == snapshot(h.db)
    assert len(on_pg["mentions"]) > 1000
    activity = "select timeframe, filters, altmetric_id, rank, score, page, total from citation_activity order by rank"
    assert query(pg_url, activity) == query(h.db, activity)
    assert len(query(pg_url, activity)) == 60
    result = h.run("--database", pg_url, "harvest", "--endpoint", "fetch", "--no-progress", ids)
    assert result.exit_code == 0
    assert {t: len(r) for t, r in snapshot(pg_url).items() if t != "job_items"} == {
        t: len(r) for t, r in on_pg.items() if t != "job_items"
    }


def test_kill_9_on_postgresql_then_resume(tmp_path: Path, pg_url: str) -> None:
    import signal
    import time

    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"10.5555/pgkill.{i:05d}\n" for i in range(1500)))
    with serve_in_thread(FakeConfig(keys=(KEY,), latency=0.004)) as server:
        clean = tmp_path / "clean.db"
        assert start(clean, server, "harvest", "--no-progress", str(ids)).wait(timeout=120) == 0
        proc = start(pg_url, server, "harvest", "--no-progress", "--concurrency", "8", str(ids))
        deadline = time.monotonic() + 60
        while _final(pg_url) < 300:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert _final(pg_url) < 1500
        assert start(pg_url, server, "resume", "--no-progress").wait(timeout=120) == 0
    assert snapshot(pg_url) == snapshot(clean)


def _final(url: str) -> int:
    try:
        return int(query(url, "select count(*) from job_items where status != 'pending'")[0][0])
    except Exception:
        return 0


def test_two_nightlies_and_every_documented_query_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(ID_LINES) + "\n")  # the ids tests/test_docs.py harvests
    config = tmp_path / "h.toml"
    config.write_text('[nightly]\ntimeframe = "1d"\nnum_results = 20\n[limits]\nmax_attempts = 1\n')
    clock = [0.0]
    start_day = datetime(2026, 11, 20, 2, 30)
    with serve_in_thread(FakeConfig(keys=(KEY,), evolve=True, clock=lambda: clock[0])) as server:
        for offset, args in [
            (-1, ("harvest", "--no-progress", str(ids))),
            (-1, ("harvest", "--endpoint", "fetch", "--no-progress", str(ids))),
            (-1, ("citations", "1w", "--num-results", "20", "--no-progress")),
            (0, ("nightly", "--no-progress")),
            (1, ("nightly", "--no-progress")),
        ]:
            when = start_day + timedelta(days=offset)
            clock[0] = when.replace(tzinfo=UTC).timestamp()
            proc = start(pg_url, server, *args, config=config, HARVESTER_NOW=when.isoformat())
            out, err = proc.communicate(timeout=120)
            assert proc.returncode in (0, 3), err
    assert query(pg_url, "select count(*) from nightly_runs") == [(2,)]
    assert query(pg_url, "select count(*) from nightly_movers group by job_id") == [(10,), (10,)]
    engine = make_engine(pg_url)
    # "Posts that disappeared upstream" needs a re-harvest after upstream lost posts (tests/test_docs.py does that on SQLite).
    needs_lost_posts = "WHERE m.last_seen_at < o.posts_seen_at"
    for path in (README, SCHEMA_DOC):
        for sql in sql_blocks(path):
            # The driver's own cursor, without parameters: a LIKE '10.5555/%' goes as written, as in psql.
            conn = engine.raw_connection()
            try:
                cursor = conn.cursor()
                cursor.execute(sql.rstrip().rstrip(";"))
                rows = cursor.fetchall()
            finally:
                conn.close()
            if needs_lost_posts not in sql:
                assert rows, f"{path.name} returned no rows on PostgreSQL:\n{sql}"


def test_a_second_nightly_is_refused_by_the_unique_lock_on_postgresql(h: Harness, pg_url: str) -> None:
    from harvester import nightly
    from harvester.config import load_config

    held, _ = nightly.acquire(open_database(pg_url), load_config(env={}), "another-host:1:feedbeef")
    result = h.run("--database", pg_url, "nightly", "--no-progress")
    assert result.exit_code == 75 and f"job {held.id} is being run by another-host:1:feedbeef" in result.output
    with pytest.raises(Exception, match="unique|duplicate"):
        with make_engine(pg_url).begin() as conn:
            conn.execute(schema.jobs.insert().values(endpoint="nightly", id_type="-", status="running", created_at=datetime(2026, 1, 1), lock_name="nightly"))
