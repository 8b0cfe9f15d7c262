"""Many processes, one job or one key: real `harvester` subprocesses, a real PostgreSQL server, the fake API over HTTP.

- workers on one job take different items, and together go faster;
- a worker frozen (SIGSTOP) past its lease loses its items to the others and writes nothing for them;
- a worker killed (SIGKILL) leaves its items to the survivors, with no resume by hand;
- several processes on one free key stay, together, within its rate and still use most of it,
  also when the server imposes a pause;
- on SQLite, a bulk harvest and a nightly on one key at once.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from harvester.fakeapi import FakeConfig, FakeServer, serve_in_thread
from harvester.vocabulary import ExitCode
from tests.conftest import KEY
from tests.subproc import query, start

pytestmark = pytest.mark.timing  # rates, leases and speedups: alone under -n 4 (tests/conftest.py)

FAKE = FakeConfig(keys=(KEY,), not_found_pct=10)


def ids(tmp_path: Path, n: int, prefix: str) -> Path:
    path = tmp_path / f"{prefix}.txt"
    path.write_text("".join(f"10.5555/{prefix}.{i:05d}\n" for i in range(n)))
    return path


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "harvester.toml"
    path.write_text(text)
    return path


def enqueue(db: str | Path, server: FakeServer, id_file: Path, cfg: Path | None = None) -> int:
    proc = start(db, server, "harvest", "--enqueue-only", str(id_file), config=cfg)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == ExitCode.OK, err
    return int(out.strip())


def processed(err: str) -> int:
    """Items a worker wrote, summed over its 'job N ...: (X in Ys ...)' lines."""
    return sum(int(m.replace(",", "")) for m in re.findall(r"\(([\d,]+) in [\d.]+s", err))


def finish(procs: list[subprocess.Popen[str]], timeout: float = 180) -> list[tuple[int, str]]:
    return [(p.wait(timeout=timeout), p.communicate()[1]) for p in procs]


def steady_rate(db: str, job: int) -> float:
    """Items/s between the job's 10th and 90th percentile of finished items, as the database saw them:
    the workers' throughput, without their start (Python, imports, the schema check) and end."""
    times = sorted(t for (t,) in query(db, f"select extract(epoch from updated_at) from job_items where job_id = {job}"))
    lo, hi = times[len(times) // 10], times[len(times) * 9 // 10]
    return (len(times) * 8 // 10) / float(hi - lo)


def timed_workers(db: str, server: FakeServer, job: int, n: int, cfg: Path) -> float:
    procs = [start(db, server, "worker", str(job), "--no-progress", config=cfg) for _ in range(n)]
    for code, err in finish(procs):
        assert code == ExitCode.OK, err
    return steady_rate(db, job)


def test_three_workers_share_a_postgresql_job_and_go_three_times_as_fast(tmp_path: Path, pg_url: str) -> None:
    cfg = config(tmp_path, "[limits]\nconcurrency = 8\n")
    with serve_in_thread(replace(FAKE, latency=0.1)) as server:
        one = enqueue(pg_url, server, ids(tmp_path, 320, "one"), cfg)
        three = enqueue(pg_url, server, ids(tmp_path, 960, "three"), cfg)
        alone = timed_workers(pg_url, server, one, 1, cfg)  # items/s
        together = timed_workers(pg_url, server, three, 3, cfg)
        asked = server.stats.per_path
    # Every item final exactly once: each asked once, none pending, the job finished.
    assert len(asked) == 320 + 960 and set(asked.values()) == {1}
    assert query(pg_url, "select status, count(*) from jobs group by status") == [("finished", 2)]
    assert query(pg_url, "select count(*) from job_items where status = 'pending' or claimed_by is not null") == [(0,)]
    assert query(pg_url, "select count(*) from workers") == [(0,)]
    speedup = together / alone
    print(f"\n1 worker: {alone:.0f} items/s; 3 workers: {together:.0f} items/s; {speedup:.2f}x")
    assert speedup >= 2.2, f"{speedup:.2f}x"  # benchmarks/workers.py measures it with more items


@pytest.fixture
def reaper() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts: killed at its end whatever happened, a frozen one included."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()


def test_a_frozen_worker_loses_its_items_and_writes_nothing_for_them(
    tmp_path: Path, pg_url: str, reaper: list[subprocess.Popen[str]]
) -> None:
    cfg = config(tmp_path, '[limits]\nconcurrency = 4\n[workers]\nlease = "3s"\n')
    n = 120
    with serve_in_thread(replace(FAKE, latency=0.2)) as server:
        job = enqueue(pg_url, server, ids(tmp_path, n, "frozen"), cfg)
        frozen = start(pg_url, server, "worker", str(job), "--no-progress", config=cfg)
        reaper.append(frozen)
        deadline = time.monotonic() + 60
        while query(pg_url, f"select count(*) from job_items where job_id = {job} and status != 'pending'")[0][0] < 8:
            assert time.monotonic() < deadline and frozen.poll() is None
            time.sleep(0.05)
        frozen.send_signal(signal.SIGSTOP)  # with requests in flight and most of the job leased
        stopped_at = time.monotonic()
        held = query(pg_url, f"select count(*) from job_items where job_id = {job} and claimed_by is not null")[0][0]
        assert held >= 4
        other = start(pg_url, server, "worker", str(job), "--no-progress", config=cfg)
        reaper.append(other)
        code, err = finish([other])[0]
        assert code == ExitCode.OK, err
        took_over_after = time.monotonic() - stopped_at
        before_thaw = server.stats.total
        frozen.send_signal(signal.SIGCONT)
        frozen_code, frozen_err = finish([frozen])[0]
        asked = dict(server.stats.per_path)
        after_thaw = server.stats.total - before_thaw
    assert took_over_after >= 3  # it waited for the leases to end
    assert frozen_code == ExitCode.OK, frozen_err
    assert "drops the items it held" in frozen_err
    # Woken, it asked for nothing more: what it had in flight when frozen had reached the server already.
    assert after_thaw == 0
    assert len(asked) == n
    # Each item was written by exactly one worker: nothing by the frozen one for the items it lost.
    assert processed(frozen_err) + processed(err) == n, (frozen_err, err)
    assert query(pg_url, f"select count(*) from job_items where job_id = {job} and status = 'pending'") == [(0,)]
    duplicates = [path for path, count in asked.items() if count > 1]
    # Asked twice: only what the frozen worker had fetched but not yet committed (in flight, or in its next batch).
    assert len(duplicates) <= held
    print(
        f"\nfrozen worker: {len(duplicates)} items asked twice, {after_thaw} requests after it woke, {processed(frozen_err)} written by it"
    )


def test_a_killed_workers_items_are_finished_by_the_survivors(tmp_path: Path, pg_url: str, reaper: list[subprocess.Popen[str]]) -> None:
    cfg = config(tmp_path, '[limits]\nconcurrency = 4\n[workers]\nlease = "3s"\n')
    n = 200
    with serve_in_thread(replace(FAKE, latency=0.05)) as server:
        job = enqueue(pg_url, server, ids(tmp_path, n, "killed"), cfg)
        victim = start(pg_url, server, "worker", str(job), "--no-progress", config=cfg)
        survivor = start(pg_url, server, "worker", str(job), "--no-progress", config=cfg)
        reaper.extend([victim, survivor])
        deadline = time.monotonic() + 60
        while query(pg_url, f"select count(*) from job_items where job_id = {job} and status != 'pending'")[0][0] < 30:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait() == -signal.SIGKILL
        code, err = finish([survivor])[0]
        asked = dict(server.stats.per_path)
    assert code == ExitCode.OK, err
    assert query(pg_url, f"select count(*) from job_items where job_id = {job} and status = 'pending'") == [(0,)]
    assert query(pg_url, f"select status from jobs where id = {job}") == [("finished",)]
    # Asked twice: only what the victim had fetched but not committed when it died.
    assert len(asked) == n


def free_tier(tmp_path: Path, rate: float) -> Path:
    return config(
        tmp_path,
        f'[api]\ntier = "free"\n[limits]\nper_second = {rate}\nper_hour = {int(rate * 3600)}\n'
        f"per_day = {int(rate * 86400)}\nconcurrency = 4\n",
    )


def test_processes_on_one_free_key_stay_within_its_rate_and_use_it(tmp_path: Path, pg_url: str) -> None:
    """Two harvests of their own jobs and a worker on a third, on one key: the server, enforcing
    exactly the key's rate with a bucket of one, answers no 429, and sees at least 0.85 of the rate."""
    rate, seconds = 6.0, 15  # long enough that the slots each process leaves empty after its first request weigh little
    cfg = free_tier(tmp_path, rate)
    per = int(rate * seconds / 3)
    # A bucket of two: this fake shares two cores with seven busy processes, and its own scheduling
    # shows as bursts now and then. benchmarks/workers.py --part free runs the fake in its own
    # process with a bucket of one (0 429s).
    server_limits = replace(FAKE, per_second=rate, burst=2, per_hour=int(rate * 3600), per_day=int(rate * 86400))
    with serve_in_thread(server_limits) as server:
        third = enqueue(pg_url, server, ids(tmp_path, per, "w"), cfg)
        procs = [
            start(pg_url, server, "harvest", "--no-progress", str(ids(tmp_path, per, "a")), config=cfg, HARVESTER_TIER="free"),
            start(pg_url, server, "harvest", "--no-progress", str(ids(tmp_path, per, "b")), config=cfg, HARVESTER_TIER="free"),
            start(pg_url, server, "worker", str(third), "--no-progress", config=cfg, HARVESTER_TIER="free"),
        ]
        for code, err in finish(procs):
            assert code == ExitCode.OK, err
        stats = server.stats
    achieved = stats.rate
    retried = sorted(p for p, c in stats.per_path.items() if c > 1)
    print(
        f"\n3 processes on one free key: {achieved:.2f} requests/s of {rate:g} ({achieved / rate:.1%}), {stats.rate_limited} 429s, {stats.total} requests"
    )
    assert stats.rate_limited == 0, retried
    assert stats.total == 3 * per
    assert achieved >= 0.85 * rate, f"{achieved:.2f}/s"
    budget = query(pg_url, "select day_used, hour_used from rate_budgets")
    assert len(budget) == 1 and budget[0][0] >= 3 * per  # one budget, counted across the processes


def test_a_server_imposed_pause_holds_every_process(tmp_path: Path, pg_url: str) -> None:
    rate = 4.0
    cfg = free_tier(tmp_path, rate)
    # A bucket of two, as in the share test above: with a bucket of one, this fake's own scheduling
    # on two busy cores turned an on-time request into a rate 429 once in CI,
    # which this test would count as a request sent into the pause.
    server_limits = replace(FAKE, per_second=rate, burst=2, per_hour=int(rate * 3600), per_day=int(rate * 86400))
    with serve_in_thread(replace(server_limits, pause_after=20, pause_seconds=3.0)) as server:
        procs = [
            start(pg_url, server, "harvest", "--no-progress", str(ids(tmp_path, 12, name)), config=cfg, HARVESTER_TIER="free")
            for name in ("p", "q", "r")
        ]
        for code, err in finish(procs):
            assert code == ExitCode.OK, err
        stats = server.stats
    print(f"\npause: {stats.paused} requests arrived during the 3 s pause, {stats.rate_limited} 429s in all")
    # The request that met the pause is the only one: nothing queued in any process was sent into it.
    assert stats.paused == 1
    assert stats.rate_limited == 1
    assert query(pg_url, "select count(*) from job_items where status != 'done' and status != 'not_found'") == [(0,)]


def test_a_bulk_harvest_and_a_nightly_share_one_key_on_sqlite(tmp_path: Path) -> None:
    rate = 8.0
    cfg = free_tier(tmp_path, rate)
    cfg.write_text(cfg.read_text() + "[nightly]\nnum_results = 20\npages = 1\n")
    db = tmp_path / "both.db"
    # A bucket of two, as tests/test_free_tier.py explains: a process's very first request (a new
    # connection, cold code paths) can reach the server a few milliseconds late, and its second on time.
    server_limits = replace(FAKE, per_second=rate, burst=2, per_hour=int(rate * 3600), per_day=int(rate * 86400))
    with serve_in_thread(server_limits) as server:
        bulk = start(db, server, "harvest", "--no-progress", str(ids(tmp_path, 60, "bulk")), config=cfg, HARVESTER_TIER="free")
        time.sleep(2)
        nightly = start(db, server, "nightly", "--no-progress", config=cfg, HARVESTER_TIER="free")
        (bulk_code, bulk_err), (nightly_code, nightly_err) = finish([bulk, nightly])
        stats = server.stats
    assert bulk_code == ExitCode.OK, bulk_err
    assert nightly_code == ExitCode.OK, nightly_err
    assert stats.rate_limited == 0
    assert stats.total == 60 + 1 + 20  # the bulk ids, a Citations page, the 20 listed outputs
    assert stats.rate <= rate
    assert query(db, "select count(*) from job_items where status = 'pending'") == [(0,)]


def test_slow_answers_never_send_a_stale_slot_into_another_process(tmp_path: Path) -> None:
    """Two workers at concurrency 1 whose answers take 2.5 slots: each comes back holding slots
    that have passed. Sending one of them late would land in the other's slot, and the server,
    enforcing the key's rate with a bucket of one, would answer 429 (8 in 31 before the fix)."""
    rate, n = 2.0, 14
    cfg = config(tmp_path, f'[api]\ntier = "free"\n[limits]\nper_second = {rate}\nper_hour = 7200\nper_day = 172800\nconcurrency = 1\n')
    db = tmp_path / "slow.db"
    server_limits = replace(FAKE, per_second=rate, burst=1, per_hour=7200, per_day=172800, latency=1.25)
    with serve_in_thread(server_limits) as server:
        job = enqueue(db, server, ids(tmp_path, n, "slow"), cfg)
        procs = [
            start(db, server, "worker", str(job), "--no-progress", "--concurrency", "1", config=cfg, HARVESTER_TIER="free")
            for _ in range(2)
        ]
        for code, err in finish(procs):
            assert code == ExitCode.OK, err
        stats = server.stats
    print(f"\nslow answers, 2 workers at concurrency 1: {stats.rate_limited} 429s in {stats.total} requests")
    assert stats.total == n
    assert stats.rate_limited == 0


def test_a_worker_frozen_past_its_lease_during_an_outage_recovers(tmp_path: Path, reaper: list[subprocess.Popen[str]]) -> None:
    """The API fails until the circuit breaker opens; the worker is frozen past its lease; the API
    comes back. The breaker's probe may be an item of the lost lease: it must not hold the breaker
    (before the fix, every other request waited two minutes for that probe, in turn)."""
    cfg = config(tmp_path, '[limits]\nconcurrency = 16\nbackoff_base = 0.2\n[workers]\nlease = "2s"\n')
    db = tmp_path / "outage.db"
    n = 60
    with serve_in_thread(replace(FAKE, error_rate=1.0)) as failing:
        port = failing.port
        job = enqueue(db, failing, ids(tmp_path, n, "outage"), cfg)
        worker = start(db, failing, "worker", str(job), "--no-progress", config=cfg)
        reaper.append(worker)
        deadline = time.monotonic() + 60
        while failing.stats.total < 20:  # the breaker opens at 20 failures of the last 30
            assert time.monotonic() < deadline and worker.poll() is None
            time.sleep(0.05)
        time.sleep(0.5)
        worker.send_signal(signal.SIGSTOP)
    time.sleep(3.5)  # past the lease, and past the breaker's cool-down
    with serve_in_thread(FAKE, port=port) as healthy:
        worker.send_signal(signal.SIGCONT)
        try:
            code, err = finish([worker], timeout=60)[0]
        except subprocess.TimeoutExpired:
            pytest.fail(f"the worker made no progress after it was continued: {healthy.stats.total} requests since")
    assert code == ExitCode.OK, err
    assert "the API is failing" in err
    assert query(db, f"select count(*) from job_items where job_id = {job} and status in ('pending', 'failed')") == [(0,)]
