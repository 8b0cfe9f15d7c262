"""Workers and leases: any number of processes, on any number of machines, work one job.

A worker is a row in `workers` (host, pid, heartbeat). It claims pending items
with a lease (`[workers] lease`, 5 minutes by default), renews the leases of
the items it still works on at every heartbeat, and writes an item's result
only while it holds the item's lease (`held`, in the writer's transaction).
An item whose lease ran out (its worker was killed, frozen, partitioned) is
claimable by any worker. Every time here is the database server's clock
(jobs.db_now), so a host with a skewed clock cannot take what another holds.

A worker that dies on this host (its pid is gone) has its leases released at
once by the next worker that looks; one on another host, once its leases end.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, delete, func, select, text, tuple_, update

from harvester import db, jobs, schema
from harvester.clock import db_now
from harvester.db import lookup_pairs, patient
from harvester.errors import JobBusyError
from harvester.jobs import Item, Job
from harvester.log import redact
from harvester.vocabulary import ItemStatus, JobStatus

logger = logging.getLogger(__name__)

STALE_AFTER = jobs.STALE_AFTER  # a worker whose heartbeat is older is not counted as live


@patient
def register(engine: Engine, runner: str, command: str) -> None:
    """Add this process to `workers` (or refresh its row)."""
    host, pid = runner.split(":")[0], os.getpid()
    with engine.begin() as conn:
        now = db_now(conn)
        values = {
            "host": host,
            "pid": pid,
            "command": command,
            "job_id": None,
            "heartbeat_at": now,
            "items_done": 0,
            "requests": 0,
            "leases": 0,
        }
        stmt = db.insert(conn, schema.workers).values(runner=runner, started_at=now, **values)
        conn.execute(stmt.on_conflict_do_update(index_elements=["runner"], set_={"heartbeat_at": now, "command": command}))


@patient
def unregister(engine: Engine, runner: str) -> None:
    """This process stops: its leases are released and its row deleted."""
    with engine.begin() as conn:
        _release(conn, runner)
        conn.execute(delete(schema.workers).where(schema.workers.c.runner == runner))


def _release(conn: Connection, runner: str, job_id: int | None = None) -> int:
    ji = schema.job_items.c
    where = [ji.claimed_by == runner]
    if job_id is not None:
        where.append(ji.job_id == job_id)
    n: int = conn.execute(update(schema.job_items).where(*where).values(claimed_by=None, lease_until=None)).rowcount
    return n


@patient
def release_all(engine: Engine, runner: str) -> int:
    """Give up every lease of this worker (after it lost track of them: frozen past their end)."""
    with engine.begin() as conn:
        return _release(conn, runner)


def new_runner_id() -> str:
    """This process's name in `workers.runner` and `jobs.runner`: host:pid:nonce."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _pid_is_gone(host: str, pid: int) -> bool:
    """A process of this host that no longer exists (another host's cannot be asked: False)."""
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def runner_gone(runner: str, heartbeat_at: datetime | None, now: datetime) -> bool:
    """The one rule of who is alive, for workers and for a job's runner alike: gone when its
    heartbeat is stale, or when it was a process on this host that no longer exists."""
    if heartbeat_at is None or now - heartbeat_at > STALE_AFTER:
        return True
    host, _, rest = runner.partition(":")
    pid = rest.partition(":")[0]
    return pid.isdigit() and _pid_is_gone(host, int(pid))


@patient
def reap(engine: Engine) -> int:
    """Forget workers that are gone: a dead process on this host (its leases are released now),
    or a worker silent for ten times STALE_AFTER (its leases have ended by then). Returns how many."""
    w = schema.workers.c
    with engine.begin() as conn:
        now = db_now(conn)
        rows = conn.execute(select(w.runner, w.host, w.pid, w.heartbeat_at)).all()
        # Forgotten later than they count as gone: a silent worker on another host may only be slow.
        gone = [r.runner for r in rows if _pid_is_gone(r.host, r.pid) or now - r.heartbeat_at > 10 * STALE_AFTER]
        for runner in gone:
            released = _release(conn, runner)
            conn.execute(delete(schema.workers).where(w.runner == runner))
            logger.info("worker %s is gone; %d items it held are free again", runner, released)
    return len(gone)


@patient
def join(engine: Engine, job_id: int, runner: str) -> Job:
    """Start working on a job, alongside whatever other workers it has."""
    with engine.begin() as conn:
        now = db_now(conn)
        conn.execute(update(schema.jobs).where(schema.jobs.c.id == job_id).values(started(runner, now)))
        conn.execute(update(schema.workers).where(schema.workers.c.runner == runner).values(job_id=job_id, heartbeat_at=now))
    return jobs.get_job(engine, job_id)


@patient
def claim(engine: Engine, job_id: int, runner: str, limit: int, lease: timedelta) -> list[Item]:
    """Lease the next claimable items (pending, and unleased or whose lease ended), in input order."""
    with engine.begin() as conn:
        now = db_now(conn)
        rows = db.claim_pending(conn, job_id, runner, limit, now, now + lease)
    return sorted((Item(r.id_type, r.identifier, r.line_no) for r in rows), key=lambda i: i.line_no)


@patient
def renew(engine: Engine, runner: str, job_id: int | None, lease: timedelta, requests: int) -> int:
    """The heartbeat: renew the leases this worker still holds, and refresh its row and its jobs'.

    Only leases that have not ended are renewed: an item whose lease ended may
    be another worker's by now. Returns how many items the worker holds.
    """
    ji, w = schema.job_items.c, schema.workers.c
    with engine.begin() as conn:
        now = db_now(conn)
        # Locked in key order, skipping what is locked: the writer's lease check (held) locks a batch's
        # items in the batch's order, and a renewal that waited for it while holding others deadlocked
        # with it. An item the writer holds is being written in that transaction: it needs no renewal.
        mine = (
            select(ji.job_id, ji.id_type, ji.identifier)
            .where(ji.claimed_by == runner, ji.status == ItemStatus.PENDING, ji.lease_until > now)
            .order_by(ji.job_id, ji.id_type, ji.identifier)
            .with_for_update(skip_locked=True)
        )
        held: int = conn.execute(
            update(schema.job_items).where(tuple_(ji.job_id, ji.id_type, ji.identifier).in_(mine)).values(lease_until=now + lease)
        ).rowcount
        conn.execute(
            update(schema.workers)
            .where(w.runner == runner)
            .values(heartbeat_at=now, job_id=job_id, requests=requests, leases=held)  # items_done: the writer counts them
        )
        # The job rows this process runs (a nightly and its step): their heartbeat is how `status` and the nightly lock see it alive.
        conn.execute(update(schema.jobs).where(schema.jobs.c.runner == runner).values(heartbeat_at=now))
    return held


def held(conn: Connection, job_id: int, runner: str, keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """Of these items, the ones this worker still holds a live lease on (in the writer's transaction,
    which PostgreSQL locks them for: nobody can claim them until it commits).

    One statement over the batch's pairs (db.lookup_pairs): an expanding IN of 500 pairs was
    compiled anew for every batch and was a third of the writer's time on Counts.
    """
    if not keys:
        return set()
    # PostgreSQL locks only the batch's rows: a lock writes to every row it takes.
    where = "t.claimed_by = :runner AND t.lease_until > :now AND t.status = 'pending'"
    query, params = lookup_pairs(
        conn, keys, "job_items", ("id_type", "identifier"), "t.id_type, t.identifier", where, within="t.job_id = :job_id", lock=True
    )
    stmt = text(query).bindparams(bindparam("now", type_=schema.job_items.c.lease_until.type))
    rows = conn.execute(stmt, params | {"job_id": job_id, "runner": runner, "now": db_now(conn)})
    return {(r[0], r[1]) for r in rows}


def live_workers(engine: Engine, job_id: int | None = None) -> list[dict[str, Any]]:
    """Workers with a fresh heartbeat (and, on this host, a live pid), optionally only those on one job."""
    w = schema.workers.c
    with engine.connect() as conn:
        now = db_now(conn)
        query = select(schema.workers).where(w.heartbeat_at >= now - STALE_AFTER).order_by(w.started_at)
        if job_id is not None:
            query = query.where(w.job_id == job_id)
        rows = [dict(r._mapping) for r in conn.execute(query)]
    out = []
    for r in rows:
        if _pid_is_gone(r["host"], r["pid"]):
            continue
        # Over its life until now: items_done grows with every batch written (store._write), not with the heartbeat.
        seconds = max(1e-9, (now - r["started_at"]).total_seconds())
        r["items_per_second"] = round(r["items_done"] / seconds, 1) if seconds >= 1 else 0.0
        out.append(r)
    return out


@patient
def leave(
    engine: Engine, job_id: int, runner: str, status: JobStatus, error: str | None = None, resume_after: datetime | None = None
) -> JobStatus:
    """This worker stops working on the job: its leases go back, and, if it was the job's last live
    worker, the job takes `status` ('finished' only if nothing is pending). Returns the job's status."""
    ji, w = schema.job_items.c, schema.workers.c
    with engine.begin() as conn:
        now = db_now(conn)
        _release(conn, runner, job_id)
        conn.execute(update(schema.workers).where(w.runner == runner).values(job_id=None, heartbeat_at=now))
        others = [
            r
            for r in conn.execute(select(w.host, w.pid).where(w.job_id == job_id, w.runner != runner, w.heartbeat_at >= now - STALE_AFTER))
            if not _pid_is_gone(r.host, r.pid)
        ]
        pending = conn.execute(
            select(func.count()).select_from(schema.job_items).where(ji.job_id == job_id, ji.status == ItemStatus.PENDING)
        ).scalar_one()
        if others and status not in (JobStatus.PAUSED, JobStatus.STOPPED) and not (status == JobStatus.FINISHED and pending == 0):
            # The others go on; the job is theirs. (A pause or a refused key holds them too.)
            conn.execute(update(schema.jobs).where(schema.jobs.c.id == job_id, schema.jobs.c.runner == runner).values(runner=None))
            return JobStatus.RUNNING
        if status == JobStatus.FINISHED and pending:
            status = JobStatus.INTERRUPTED  # added meanwhile, or held by a worker that is gone: `resume` finishes it
        conn.execute(update(schema.jobs).where(schema.jobs.c.id == job_id).values(ended(status, now, error, resume_after)))
    return status


# -- who runs a job: a worker's heartbeat, the nightly's lock ------------------------------------


def started(runner: str, now: datetime) -> dict[str, Any]:
    """A job row's columns when a process starts working on it."""
    return {
        "runner": runner,
        "heartbeat_at": now,
        "status": JobStatus.RUNNING,
        "started_at": func.coalesce(schema.jobs.c.started_at, now),
        "finished_at": None,
        "last_error": None,
        "resume_after": None,
    }


def ended(status: str, now: datetime, error: str | None, resume_after: datetime | None) -> dict[str, Any]:
    """A job row's columns when its (last) process stops working on it."""
    return {
        "status": status,
        "runner": None,
        "heartbeat_at": now,
        "last_error": redact(error) if error is not None else None,
        "resume_after": resume_after,
        "finished_at": now if status == JobStatus.FINISHED else None,
    }


def runner_alive(engine: Engine, job: Job) -> bool:
    """Is the process named in the job's runner column alive (fresh heartbeat, by the database's clock)?"""
    if job.runner is None:
        return False
    with engine.connect() as conn:
        now = db_now(conn)
    return not runner_gone(job.runner, job.heartbeat_at, now)


def take_over(engine: Engine, job_id: int, runner: str) -> Job:
    """Become the job's only runner (the nightly's lock) and release the leases a dead runner left behind.

    The swap is a conditional UPDATE, so two processes racing for one job
    cannot both win.
    """
    job = jobs.get_job(engine, job_id)
    with engine.connect() as conn:
        now = db_now(conn)
    if job.runner and job.runner != runner and not runner_gone(job.runner, job.heartbeat_at, now):
        age = (now - job.heartbeat_at).total_seconds() if job.heartbeat_at else 0
        raise JobBusyError(f"job {job_id} is being run by {job.runner} (heartbeat {age:.0f}s ago); try again later")
    with engine.begin() as conn:
        cond = schema.jobs.c.runner.is_(None) if job.runner is None else schema.jobs.c.runner == job.runner
        swapped = conn.execute(update(schema.jobs).where(schema.jobs.c.id == job_id, cond).values(started(runner, now))).rowcount
        if swapped != 1:
            raise JobBusyError(f"job {job_id} was taken by another process just now; try again later")
        conn.execute(
            update(schema.job_items)
            .where(schema.job_items.c.job_id == job_id, schema.job_items.c.claimed_by.is_not(None))
            .values(claimed_by=None, lease_until=None)
        )
    return jobs.get_job(engine, job_id)


@patient
def release(engine: Engine, job_id: int, runner: str, status: str, error: str | None = None, resume_after: datetime | None = None) -> None:
    """End a run: record the job's status and give up the runner slot and leases."""
    with engine.begin() as conn:
        now = db_now(conn)
        conn.execute(
            update(schema.jobs)
            .where(schema.jobs.c.id == job_id, schema.jobs.c.runner == runner)
            .values(ended(status, now, error, resume_after))
        )
        conn.execute(
            update(schema.job_items)
            .where(schema.job_items.c.job_id == job_id, schema.job_items.c.claimed_by == runner)
            .values(claimed_by=None, lease_until=None)
        )


@patient
def beat(engine: Engine, runner: str) -> None:
    """Refresh the heartbeat of this runner: its worker row, and every job it runs (a nightly and its current step)."""
    with engine.begin() as conn:
        now = db_now(conn)
        conn.execute(update(schema.jobs).where(schema.jobs.c.runner == runner).values(heartbeat_at=now))
        conn.execute(update(schema.workers).where(schema.workers.c.runner == runner).values(heartbeat_at=now))


@contextmanager
def beating(engine: Engine, runner: str, every: float = 15.0) -> Iterator[None]:
    """Keep `runner`'s heartbeat fresh while the block runs (SQL that can take minutes), and beat once at its end.

    The beats run in a daemon thread, each on its own connection from the
    engine's pool: the block's transaction holds another, and a beat must
    commit on its own. A beat that fails (SQLite lets one writer in at a time,
    so it waits while the block writes) is logged and tried again at the next
    tick. Open it outside the block's transaction (`with beating(...),
    engine.begin() as conn:`), so that the last beat comes after that
    transaction has ended rather than waiting for it.
    """
    stop = threading.Event()

    def beat_once() -> None:
        try:
            beat(engine, runner)
        except Exception as e:  # a missed beat must not fail the work it accompanies; the next one may pass
            logger.debug("heartbeat of %s failed: %s", runner, e)

    def run() -> None:
        while not stop.wait(every):
            beat_once()

    thread = threading.Thread(target=run, name=f"heartbeat {runner}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    beat_once()


# -- this worker's own view of its leases ----------------------------------------------------


def boottime() -> float:
    """Seconds on a clock that keeps counting while the machine sleeps (CLOCK_MONOTONIC stops):
    a laptop suspended past its leases must notice it lost them."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic()


class LeaseKeeper:
    """How long this worker may still trust its leases, by its own clock.

    The database renews leases at every heartbeat; locally, each renewal (or the
    first claim) is trusted for the lease minus a margin, counted from before
    the statement was sent. Past that (the process was frozen, suspended or cut
    off), every item it held is dropped, unrequested and unwritten: another
    worker may have it by now. A new generation of claims then starts.
    """

    def __init__(self, engine: Engine, runner: str, lease: timedelta) -> None:
        self.engine, self.runner, self.lease = engine, runner, lease
        self.seconds = lease.total_seconds()
        self.margin = min(max(0.5, 0.1 * self.seconds), self.seconds / 2)
        self.valid_until: float | None = None  # boottime(); None while nothing is held
        self.generation = 0
        self.lock = asyncio.Lock()  # claims, renewals and the release after a lapse never interleave

    def valid(self, generation: int) -> bool:
        return generation == self.generation and self.valid_until is not None and boottime() < self.valid_until

    def lapsed(self) -> bool:
        return self.valid_until is not None and boottime() >= self.valid_until

    def trusted_from(self, started: float, renewal: bool) -> None:
        if renewal or self.valid_until is None:
            self.valid_until = started + self.seconds - self.margin

    def lapse(self) -> None:
        self.generation += 1
        self.valid_until = None

    async def claim(self, job_id: int, limit: int) -> tuple[list[Item], int]:
        """Lease up to `limit` items of the job (claim); with the generation they belong to."""
        async with self.lock:
            await self._check_lapse()
            claimed_at = boottime()
            items = await asyncio.to_thread(claim, self.engine, job_id, self.runner, limit, self.lease)
            if items:
                self.trusted_from(claimed_at, renewal=False)
            return items, self.generation

    async def renew(self, job_id: int | None, requests: int) -> None:
        """The heartbeat: renew what this worker holds (renew), and trust it for a lease more."""
        async with self.lock:
            await self._check_lapse()
            renewed_at = boottime()
            await asyncio.to_thread(renew, self.engine, self.runner, job_id, self.lease, requests)
            if self.valid_until is not None:
                self.trusted_from(renewed_at, renewal=True)

    async def _check_lapse(self) -> None:
        """Under the lock: after a lapse, give every lease back before claiming or renewing again."""
        if self.lapsed():
            self.lapse()
            logger.warning(
                "this worker was held up longer than its lease (%s): it drops the items it held; other workers take them",
                _duration(self.lease),
            )
            await asyncio.to_thread(release_all, self.engine, self.runner)


def _duration(lease: timedelta) -> str:
    seconds = int(lease.total_seconds())
    return f"{seconds // 60}m" if seconds >= 60 and seconds % 60 == 0 else f"{seconds}s"
