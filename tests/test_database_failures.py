"""A locked database makes the writer wait; a full disk stops the job with nothing lost."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harvester.fakeapi import FakeConfig, FakeServer, serve_in_thread
from harvester.vocabulary import ExitCode
from tests.conftest import FAKE, KEY
from tests.subproc import query, snapshot, start, wait_until


@pytest.fixture(scope="module")
def server() -> Iterator[FakeServer]:
    with serve_in_thread(FAKE) as s:
        yield s


def ids(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "ids.txt"
    path.write_text("".join(f"10.5555/dbf.{i:05d}\n" for i in range(n)))
    return path


def test_a_locked_database_makes_the_writer_wait(tmp_path: Path, server: FakeServer) -> None:
    db = tmp_path / "locked.db"
    proc = start(db, server, "harvest", "--no-progress", str(ids(tmp_path, 3000)))
    wait_until(db, 1, proc)
    # Another program (sqlite3, a notebook) holds the write lock for two seconds.
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        time.sleep(2.0)
        assert proc.poll() is None  # waiting for the lock, not dead
    finally:
        other.execute("ROLLBACK")
        other.close()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == ExitCode.OK, err
    assert query(db, "select count(*) from job_items where status = 'pending'") == [(0,)]


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """Mounts a tmpfs of the size asked (bytes), once the test knows how much it needs."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    mounted = False

    def make(size: int) -> Path:
        nonlocal mounted
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.decode().strip()}")
        mounted = True
        return mount

    try:
        yield make
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_stops_the_job_with_items_pending_and_resume_finishes(
    tmp_path: Path, server: FakeServer, tiny_disk: Callable[[int], Path]
) -> None:
    n = 6000
    id_file = ids(tmp_path, n)
    calm = tmp_path / "calm.db"
    proc = start(calm, server, "harvest", "--no-progress", str(id_file))
    assert proc.wait(timeout=300) == ExitCode.OK

    # Room for about half of what the harvest needs: the disk fills in the middle of the run.
    needed = sum(f.stat().st_size for f in tmp_path.glob("calm.db*"))
    disk = tiny_disk(needed // 2)
    db = disk / "full.db"
    proc = start(db, server, "harvest", "--no-progress", str(id_file))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == ExitCode.ERROR, err
    assert "disk is full" in err
    assert "Resume with:" in err and "Traceback" not in err
    done = query(db, "select count(*) from job_items where status != 'pending'")[0][0]
    assert 0 < done < n
    # Every item marked done has its output: nothing was half-written.
    assert query(
        db,
        "select count(*) from job_items i left join outputs o on o.altmetric_id = i.altmetric_id "
        "where i.status = 'done' and o.altmetric_id is null",
    ) == [(0,)]

    subprocess.run(["mount", "-o", "remount,size=200m", str(disk)], check=True)
    proc = start(db, server, "resume", "--no-progress")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == ExitCode.OK, err
    assert snapshot(db) == snapshot(calm)


def test_a_process_frozen_with_the_sqlite_write_lock_holds_a_worker_but_never_fails_it(tmp_path: Path) -> None:
    """Another process takes SQLite's write lock and is frozen (SIGSTOP) for far longer than the
    busy timeout: the worker waits, says so, and finishes once the lock is free (before the fix it
    retried a batch 5 times and exited 1)."""
    db = tmp_path / "locked.db"
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"10.5555/lock.{i:03d}\n" for i in range(60)))
    with serve_in_thread(FakeConfig(keys=(KEY,), latency=0.05)) as server:
        cfg = tmp_path / "harvester.toml"
        cfg.write_text("[limits]\nconcurrency = 2\n")
        # One second of SQLite's busy wait a statement, not 30: the lock outlasts it many times over.
        worker = start(db, server, "harvest", "--no-progress", str(ids), config=cfg, HARVESTER_SQLITE_BUSY_TIMEOUT="1")
        try:
            wait_until(db, 5, worker)
            holder = subprocess.Popen([sys.executable, "-c", LOCK_AND_FREEZE, str(db)], stdout=subprocess.PIPE, text=True)
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
            time.sleep(12)  # frozen with the lock, far past the old retries (5 x 1 s and their waits)
            assert worker.poll() is None, worker.communicate()
            holder.send_signal(signal.SIGCONT)
            assert holder.wait(timeout=30) == ExitCode.OK
            code = worker.wait(timeout=120)
            _, err = worker.communicate()
        finally:
            worker.kill()
    assert code == ExitCode.OK, err
    assert "locked by another process" in err
    assert query(db, "select count(*) from job_items where status = 'pending'") == [(0,)]


# Takes SQLite's write lock, says so, and freezes itself; continued, it lets go and exits.
LOCK_AND_FREEZE = """
import os, signal, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)
conn.execute("ROLLBACK")
"""
