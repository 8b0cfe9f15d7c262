"""`harvester nightly` on an injected clock: real subprocesses, a fake API whose outputs gain attention day by day.

The harvester's clock is HARVESTER_NOW; the fake's is FakeConfig.clock. Both
are set to the same night, so "yesterday" and "tonight" mean the same to both.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from harvester.fakeapi import FakeConfig, FakeServer, citation_listing, counts_body, serve_in_thread
from harvester.vocabulary import ExitCode
from tests.conftest import KEY, Harness, rows, scalar
from tests.subproc import query, snapshot, start

NIGHT = datetime(2026, 11, 20, 2, 30)  # a night in UTC
SEED_KEY = "sk-seed-0000"  # the seed harvest's own key: its requests do not spend the nightly's quota
CONFIG = """
[limits]
backoff_base = 0.01
backoff_max = 0.05
concurrency = {concurrency}
[nightly]
timeframe = "1d"
num_results = 50
"""


class Clock:
    """The fake API's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = NIGHT.replace(tzinfo=UTC).timestamp()

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    tmp: Path
    server: FakeServer
    clock: Clock
    config: Path

    def db(self, name: str = "harvest.db") -> Path:
        return self.tmp / name

    def start(self, when: datetime, *args: str, db: str = "harvest.db", **env: str) -> subprocess.Popen[str]:
        """The harvester at `when` (HARVESTER_NOW), with the fake's clock set to the same moment."""
        self.clock.now = when.replace(tzinfo=UTC).timestamp()
        return start(self.db(db), self.server, *args, config=self.config, HARVESTER_NOW=when.isoformat(), **env)

    def run(self, when: datetime, *args: str, db: str = "harvest.db", **env: str) -> tuple[int, str, str]:
        proc = self.start(when, *args, db=db, **env)
        out, err = proc.communicate(timeout=180)
        return proc.returncode, out, err

    def seed(self, n: int = 150, db: str = "harvest.db") -> None:
        """The user's own DOIs, harvested a day before the first night (so they are due then)."""
        ids = self.tmp / "seed.txt"
        ids.write_text("".join(f"10.5555/night.{i:04d}\n" for i in range(n)))
        code, _, err = self.run(NIGHT - timedelta(hours=24), "harvest", "--no-progress", str(ids), db=db, ALTMETRIC_API_KEY=SEED_KEY)
        assert code == ExitCode.OK, err


def make_world(tmp_path: Path, concurrency: int = 8, **fake: Any) -> Iterator[World]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    clock = Clock()
    config = tmp_path / "harvester.toml"
    config.write_text(CONFIG.format(concurrency=concurrency))
    with serve_in_thread(FakeConfig(keys=(KEY, SEED_KEY), evolve=True, clock=clock, **fake)) as server:
        yield World(tmp_path, server, clock, config)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield from make_world(tmp_path)


def day(when: datetime) -> int:
    return int(when.replace(tzinfo=UTC).timestamp() // 86400)


def served_score(doi: str, when: datetime) -> float:
    """The score the fake's Counts body gives `doi` at `when` (listed outputs always exist)."""
    body = counts_body("doi", doi, day=day(when))
    assert body is not None
    return float(body["score"])


def test_two_nights_give_two_snapshots_per_output_and_a_report_naming_the_movers(world: World) -> None:
    world.seed()
    code, out1, err = world.run(NIGHT, "nightly", "--json", "--no-progress")
    assert code == ExitCode.OK, err
    night2 = NIGHT + timedelta(days=1)
    code, out2, err = world.run(night2, "nightly", "--no-progress")
    assert code == ExitCode.OK, err
    db = world.db()
    d1, d2 = NIGHT.date().isoformat(), night2.date().isoformat()

    # Every output stored before the second night has exactly one snapshot on each night ...
    before = query(db, f"select altmetric_id, doi from outputs where first_harvested_at < '{night2:%Y-%m-%d}'")
    assert len(before) > 150
    per_output = dict(query(db, f"select altmetric_id, count(*) from counts_snapshots where harvested_on in ('{d1}', '{d2}') group by 1"))
    assert {per_output[a] for a, _ in before} == {2}
    # ... holding the score the API gave that day.
    snapshots = {(a, d): s for a, d, s in query(db, "select altmetric_id, harvested_on, score from counts_snapshots")}
    for aid, doi in before:
        for when, d in ((NIGHT, d1), (night2, d2)):
            assert snapshots[aid, d] == served_score(doi, when)

    # The movers: the biggest score changes between the two nights, as the API's own scores say.
    changes = sorted(
        ((served_score(doi, night2) - served_score(doi, NIGHT), aid, doi) for aid, doi in before),
        key=lambda t: (-abs(t[0]), t[1]),
    )
    expected = [(aid, pytest.approx(change)) for change, aid, _ in changes if change][:10]
    assert len(expected) == 10
    movers = rows(_engine(db), "select altmetric_id, change, previous_on, harvested_on from nightly_movers where job_id = 5 order by rank")
    assert [(m["altmetric_id"], m["change"]) for m in movers] == expected
    assert {(str(m["previous_on"]), str(m["harvested_on"])) for m in movers} == {(d1, d2)}
    top_doi = changes[0][2]
    assert top_doi in out2 and "top score movers" in out2

    # The first night's report: new outputs are the discovered ones the seed did not have.
    [report] = json.loads(out1)["reports"]  # nightly --json: one object, the reports under "reports"
    assert report["status"] == "finished" and report["night"] == d1
    runs = rows(_engine(db), "select * from nightly_runs order by job_id")
    assert [str(r["night"]) for r in runs] == [d1, d2]
    listed1 = scalar(_engine(db), f"select count(*) from citation_activity where harvested_on = '{d1}'")
    assert runs[0]["discovered"] == listed1 == report["discovered"]
    assert runs[0]["new_outputs"] == listed1  # the seed DOIs are not in the listing
    assert runs[0]["refreshed"] == len(before) - listed1  # the seed's outputs
    assert runs[1]["refreshed"] == len(before) and runs[1]["new_outputs"] > 0
    assert runs[0]["not_found"] == 0  # seed 404s are asked again only after not_found_refresh_after (30d)
    # A nightly that ran straight through keeps what its refresh selected, as a resumed one does.
    first = json.loads(query(db, "select params from jobs where endpoint = 'nightly' order by id")[0][0])
    assert first["refresh_selected"] is True
    assert first["refresh_due"]["discovered"] == listed1 and first["refresh_due"]["lists"] == len(before) - listed1
    assert first["report"]["discovered"] == report["discovered"]

    # The key is nowhere: not in the database, not in what was printed.
    assert not [f for f in db.parent.glob(db.name + "*") if KEY.encode() in f.read_bytes()]  # -wal too
    assert KEY not in out1 + out2 + err

    # Running again the same day updates the day's snapshots, never duplicates them.
    count = query(db, "select count(*) from counts_snapshots")
    code, _, err = world.run(night2 + timedelta(hours=1), "nightly", "--no-progress")
    assert code == ExitCode.OK, err
    assert query(db, "select count(*) from counts_snapshots") == count
    assert query(
        db, "select count(*) from (select altmetric_id, harvested_on from counts_snapshots group by 1, 2 having count(*) > 1)"
    ) == [(0,)]


def nightly_in_its_refresh(world: World, done: int = 20) -> tuple[subprocess.Popen[str], Path]:
    """A nightly started at NIGHT, once its refresh (job 4) has `done` items final."""
    world.seed()
    proc = world.start(NIGHT, "nightly", "--no-progress")
    _wait_for(world.db(), "select count(*) from job_items where job_id = 4 and status != 'pending'", done, proc)
    return proc, world.db()


def test_a_second_nightly_is_refused_while_one_runs_but_its_refresh_takes_more_workers(tmp_path: Path) -> None:
    # Slow answers: the nightly must still be in its refresh after three more commands have started.
    for world in make_world(tmp_path, concurrency=2, latency=0.15):
        first, db = nightly_in_its_refresh(world)
        code, _, err = world.run(NIGHT, "nightly", "--no-progress")
        assert code == ExitCode.PAUSED, err
        assert "another nightly is running" in err and "Traceback" not in err
        code, _, err = world.run(NIGHT, "resume", "2", "--no-progress")  # the nightly itself: one at a time
        assert code == ExitCode.PAUSED and "another nightly is running" in err
        # Its refresh job is an ordinary job: a resume of it joins as one more worker.
        code, _, err = world.run(NIGHT, "resume", "4", "--no-progress")
        assert code == ExitCode.OK, err
        assert "job 4 finished" in err
        out, err = first.communicate(timeout=120)
        assert first.returncode == ExitCode.OK, err
        assert query(db, "select count(*) from jobs where endpoint = 'nightly'") == [(1,)]
        assert query(db, "select count(*) from job_items where status = 'pending'") == [(0,)]


def test_a_nightly_killed_with_sigkill_is_completed_by_the_next_run(tmp_path: Path) -> None:
    for world in make_world(tmp_path, concurrency=4, latency=0.03):
        world.seed(db="clean.db")
        code, _, err = world.run(NIGHT, "nightly", "--no-progress", db="clean.db")
        assert code == ExitCode.OK, err

        proc, db = nightly_in_its_refresh(world, done=60)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
        pending = query(db, "select count(*) from job_items where job_id = 4 and status = 'pending'")[0][0]
        assert pending > 0, "killed too late to prove anything"
        code, out, err = world.run(NIGHT + timedelta(minutes=10), "nightly", "--no-progress")
        assert code == ExitCode.OK, err
        assert "(job 2)" in out  # the killed nightly was finished, and no new one started the same night

        clean = world.db("clean.db")
        assert snapshot(db) == snapshot(clean)
        for sql in (
            "select altmetric_id, harvested_on, score, posts_count, accounts_count, readers_count from counts_snapshots order by 1, 2",
            "select timeframe, harvested_on, filters, altmetric_id, rank, score, page, total from citation_activity order by rank",
            "select discovered, new_outputs, refreshed, not_found, failed from nightly_runs",
            "select rank, altmetric_id, change from nightly_movers order by rank",
            "select id, endpoint, status, total_items, lock_name from jobs order by id",
        ):
            assert query(db, sql) == query(clean, sql), sql


@pytest.mark.timing  # exact quota arithmetic; failed once beside another test, never alone
def test_a_spent_quota_pauses_and_the_next_night_finishes_it_before_new_work(tmp_path: Path) -> None:
    for world in make_world(tmp_path, per_day=150):
        # No discovery: the first request is the refresh's, so the first night plans against the
        # configured quota (86400) before the server has announced its own (150).
        world.config.write_text(world.config.read_text().replace("[limits]", '[api]\nendpoints = ["counts"]\n[limits]\nper_second = 200.0'))
        # 280 DOIs, seeded over two days (the seed key has a quota of 150 a day too): more than a night's quota.
        for days, part in ((2, 0), (1, 1)):
            ids = world.tmp / f"seed{part}.txt"
            ids.write_text("".join(f"10.5555/night.{part}.{i:04d}\n" for i in range(140)))
            code, _, err = world.run(NIGHT - timedelta(days=days), "harvest", "--no-progress", str(ids), ALTMETRIC_API_KEY=SEED_KEY)
            assert code == ExitCode.OK, err
        code, out, err = world.run(NIGHT, "nightly", "--no-progress", HARVESTER_TIER="free")
        assert code == ExitCode.PAUSED, err
        assert "paused" in out and "finishes it first" in err
        db = world.db()
        assert query(db, "select status, lock_name from jobs where id = 3") == [("paused", "nightly")]
        left = query(db, "select count(*) from job_items where job_id = 4 and status = 'pending'")[0][0]
        assert 0 < left < 150

        night2 = NIGHT + timedelta(days=1)
        code, out, err = world.run(night2, "nightly", "--no-progress", HARVESTER_TIER="free")
        # The leftover is finished first, then tonight's nightly starts.
        assert out.index(f"nightly {NIGHT.date()} (job 3): finished") < out.index(f"nightly {night2.date()} (job 5)")
        assert query(db, "select count(*) from job_items where job_id = 4 and status = 'pending'") == [(0,)]
        assert query(db, "select status, lock_name from jobs where id = 3") == [("finished", None)]
        last_old = query(db, "select max(updated_at) from job_items where job_id = 4")[0][0]
        new_created = query(db, "select created_at from jobs where id = 6")[0][0]
        assert last_old <= new_created
        # Tonight's own nightly plans only what the announced quota has left after the leftover:
        # it finishes within it instead of pausing again.
        assert code == ExitCode.OK, err
        assert query(db, "select status, lock_name from jobs where id = 5") == [("finished", None)]
        assert query(db, "select count(*) from job_items where job_id = 6")[0][0] == 150 - left


def test_a_stale_lock_is_taken_over_and_a_fresh_one_refused(h: Harness) -> None:
    from sqlalchemy import update

    from harvester import clock, jobs, nightly, schema
    from harvester.config import load_config

    engine = h.engine
    job, _ = nightly.acquire(engine, load_config(env={}), "another-host:4242:abcdef01")
    result = h.run("nightly", "--no-progress")
    assert result.exit_code == ExitCode.PAUSED
    assert "another nightly is running" in result.output and "another-host:4242" in result.output
    # The other host died: after STALE_AFTER without a heartbeat, its nightly is ours to finish.
    with engine.begin() as conn:
        conn.execute(update(schema.jobs).values(heartbeat_at=clock.utcnow() - jobs.STALE_AFTER - timedelta(seconds=1)))
    result = h.run("nightly", "--no-progress")
    assert result.exit_code == ExitCode.OK, result.output
    assert f"(job {job.id}): finished" in result.output
    assert scalar(engine, "select count(*) from jobs where endpoint = 'nightly'") == 1


def test_due_outputs_then_404s_up_to_max_items(tmp_path: Path) -> None:
    for world in make_world(tmp_path):
        world.seed()
        db = world.db()
        seeds_missing = query(db, "select count(*) from job_items where status = 'not_found'")[0][0]
        assert seeds_missing > 5
        listed = len(citation_listing("1d", {}, day=day(NIGHT)))
        world.config.write_text(world.config.read_text() + f"max_items = {listed + 15}\n")
        code, _, err = world.run(NIGHT, "nightly", "--no-progress")
        assert code == ExitCode.OK, err
        # The user's list first (its outputs outnumber max_items), then discovered ones; no 404 is due yet.
        seeds_due = query(db, "select count(*) from outputs")[0][0] - listed
        assert seeds_due > listed + 15
        assert query(db, "select count(*) from job_items where job_id = 4") == [(listed + 15,)]
        assert query(db, "select count(*) from job_items where job_id = 4 and line_no < 2000000000") == [(listed + 15,)]
        assert query(db, "select count(*) from job_items where job_id = 4 and identifier like '10.5555/night.%'") == [(listed + 15,)]
        assert query(db, "select count(*) from job_items where job_id = 4 and status = 'not_found'") == [(0,)]
        # An output that vanished upstream: its refresh was answered 404 (as if), so the next
        # night does not ask for it again, and neither do the seeds' 404s.
        gone = query(
            db, "select identifier from job_items where job_id = 4 and identifier like '10.5555/night.%' and status = 'done' limit 1"
        )[0][0]
        with _engine(db).begin() as conn:
            conn.exec_driver_sql(f"update job_items set status = 'not_found', http_status = 404 where job_id = 4 and identifier = '{gone}'")
        world.config.write_text(world.config.read_text().replace(f"max_items = {listed + 15}", ""))
        code, _, err = world.run(NIGHT + timedelta(days=1), "nightly", "--no-progress")
        assert code == ExitCode.OK, err
        assert query(db, f"select count(*) from job_items where job_id = 7 and identifier = '{gone}'") == [(0,)]
        assert query(db, "select count(*) from job_items where job_id = 7 and identifier like '10.5555/night.%'")[0][0] > 100
        assert query(db, "select count(*) from job_items where job_id = 7 and status = 'not_found'") == [(0,)]
        # A month later the 404s are due again, the vanished output's too.
        code, _, err = world.run(NIGHT + timedelta(days=31), "nightly", "--no-progress")
        assert code == ExitCode.OK, err
        assert query(db, "select count(*) from job_items where job_id = 10 and status = 'not_found'") == [(seeds_missing,)]
        assert query(db, f"select status from job_items where job_id = 10 and identifier = '{gone}'") == [("done",)]
        # Housekeeping: the first night (finished over keep_done_items = 30d ago) kept only its 404.
        assert query(db, "select status, count(*) from job_items where job_id in (3, 4) group by 1") == [("not_found", 1)]
        assert query(db, "select total_items from jobs where id = 4") == [(listed + 15,)]
        assert query(db, "select count(*) from job_items where job_id = 10 and status = 'done'")[0][0] > 200


def _wait_for(db: Path, sql: str, at_least: int, proc: subprocess.Popen[str], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if query(db, sql)[0][0] >= at_least:
                return
        except Exception:
            pass  # not created yet
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.02)


def _engine(db: Path) -> Any:
    from harvester.db import make_engine

    return make_engine(f"sqlite:///{db}")


def test_a_bad_injected_clock_is_one_line(tmp_path: Path) -> None:
    for world in make_world(tmp_path):
        proc = start(world.db(), world.server, "nightly", config=world.config, HARVESTER_NOW="last tuesday")
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == ExitCode.ERROR
        assert err.strip().splitlines() == ["Error: HARVESTER_NOW must be an ISO date-time like 2026-11-24T03:00:00, not 'last tuesday'"]


def test_resume_of_a_finished_nightly_starts_nothing_new(h: Harness) -> None:
    result = h.run("nightly", "--no-progress")
    assert result.exit_code == ExitCode.OK, result.output
    jobs_before = scalar(h.engine, "select count(*) from jobs")
    for job in ("1", "2", "3"):
        result = h.run("resume", job, "--no-progress")
        assert result.exit_code == ExitCode.OK and "already finished" in result.output
    assert scalar(h.engine, "select count(*) from jobs") == jobs_before


def test_a_heartbeat_refreshes_every_job_its_runner_holds(h: Harness) -> None:
    from sqlalchemy import update

    from harvester import jobs, leases, schema
    from harvester.params import HarvestParams

    engine = h.engine
    old = datetime(2026, 1, 1)
    with engine.begin() as conn:
        ids = [jobs.new_job(conn, "counts", "doi", None, HarvestParams()) for _ in range(3)]
        for job_id, runner in zip(ids, ("me:1:a", "me:1:a", "other:2:b"), strict=True):
            conn.execute(update(schema.jobs).where(schema.jobs.c.id == job_id).values(runner=runner, heartbeat_at=old))
    leases.beat(engine, "me:1:a")
    beats = [jobs.get_job(engine, i).heartbeat_at for i in ids]
    assert beats[0] == beats[1] and beats[0] is not None and beats[0] > old
    assert beats[2] == old


def test_a_nightly_that_runs_past_midnight_does_not_start_another(tmp_path: Path) -> None:
    for world in make_world(tmp_path, concurrency=2, latency=0.02):
        world.seed()
        code, out, err = world.run(NIGHT.replace(hour=23, minute=59, second=58), "nightly", "--no-progress")
        assert code == ExitCode.OK, err
        db = world.db()
        assert query(db, "select count(*) from jobs where endpoint = 'nightly'") == [(1,)]
        # It did run past midnight: its refresh wrote snapshots on the next day.
        assert query(db, f"select count(*) from counts_snapshots where harvested_on > '{NIGHT.date()}'")[0][0] > 0


def test_a_nightly_through_faults_and_two_kills_equals_a_clean_one(tmp_path: Path) -> None:
    """Seeded 5xx, resets, truncated and HTML bodies, and two kill -9s: the same database as a clean nightly."""
    import random

    tables = (
        "select altmetric_id, harvested_on, score, posts_count, accounts_count, readers_count from counts_snapshots order by 1, 2",
        "select timeframe, harvested_on, filters, altmetric_id, rank, score, page, total from citation_activity order by rank",
        "select discovered, new_outputs, refreshed, not_found, failed from nightly_runs",
        "select rank, altmetric_id, change from nightly_movers order by rank",
    )
    results = []
    for name, faults in (("clean", {}), ("chaos", {"error_rate": 0.05, "reset_rate": 0.02, "truncate_rate": 0.01, "html_rate": 0.01})):
        for world in make_world(tmp_path / name, concurrency=4, latency=0.03, **faults):
            world.config.write_text(world.config.read_text().replace("concurrency = 4", "concurrency = 4\nmax_attempts = 8"))
            world.seed()
            db = world.db()
            proc = world.start(NIGHT, "nightly", "--no-progress")
            if faults:
                rnd = random.Random(7)
                for _ in range(2):
                    _wait_for(
                        db,
                        "select count(*) from job_items where job_id > 1 and status != 'pending'",
                        rnd.randint(20, 60) + _final(db),
                        proc,
                    )
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    proc = world.start(NIGHT + timedelta(minutes=5), "nightly", "--no-progress")
            out, err = proc.communicate(timeout=180)
            assert proc.returncode == ExitCode.OK, err
            if faults:
                assert sum(world.server.stats.faults.values()) > 20
            results.append((snapshot(db), [query(db, sql) for sql in tables]))
    assert results[0] == results[1]
    assert len(results[0][1][0]) > 250


def _final(db: Path) -> int:
    try:
        return int(query(db, "select count(*) from job_items where job_id > 1 and status != 'pending'")[0][0])
    except Exception:
        return 0


def test_a_fetch_nightly_keeps_the_fetch_options(h: Harness) -> None:
    config = Path(h.env["HARVESTER_CONFIG"])
    config.write_text(
        config.read_text() + '[nightly]\nendpoint = "fetch"\nnum_results = 10\npages = 1\n[fetch]\ninclude_sources = ["news"]\n'
    )
    result = h.run("nightly", "--no-progress")
    assert result.exit_code == ExitCode.OK, result.output
    refresh = json.loads(scalar(h.engine, "select params from jobs where id = 3"))
    assert refresh["fetch"]["include_sources"] == ["news"]
    assert {r["source"] for r in rows(h.engine, "select distinct source from mentions")} == {"news"}
    assert scalar(h.engine, "select count(*) from job_items where job_id = 3 and status = 'done'") == 10


def test_ctrl_c_stops_a_nightly_cleanly_and_the_next_run_finishes_it(tmp_path: Path) -> None:
    for world in make_world(tmp_path, concurrency=2, latency=0.03):
        proc, db = nightly_in_its_refresh(world)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == ExitCode.INTERRUPTED, err
        assert "interrupted" in out and "finishes it first" in err and "Traceback" not in err
        assert query(db, "select status, lock_name, runner from jobs where id = 2") == [("interrupted", "nightly", None)]
        done = query(db, "select count(*) from job_items where job_id = 4 and status = 'done'")[0][0]
        assert done >= 20  # what was fetched before the signal was written
        code, out, err = world.run(NIGHT + timedelta(minutes=3), "nightly", "--no-progress")
        assert code == ExitCode.OK, err
        assert "(job 2): finished" in out
        assert query(db, "select count(*) from job_items where status = 'pending'") == [(0,)]
