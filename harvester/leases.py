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

import logging
import os
import socket
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, delete, func, select, text, tuple_, update

from harvester import jobs, schema
from harvester.db import lookup_pairs, patient
from harvester.errors import JobStatus
from harvester.jobs import Item, Job, db_now

logger = logging.getLogger(__name__)

STALE_AFTER = jobs.STALE_AFTER  # a worker whose heartbeat is older is not counted as live


@patient
def register(engine: Engine, runner: str, command: str) -> None:
    """Add this process to `workers` (or refresh its row)."""
    host, pid = runner.split(":")[0], os.getpid()
    with engine.begin() as conn:
        now = db_now(conn)
        values = {"host": host, "pid": pid, "command": command, "job_id": None, "heartbeat_at": now, "items_done": 0, "requests": 0, "leases": 0}
        stmt = jobs.insert_for(conn, schema.workers).values(runner=runner, started_at=now, **values)
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


def _pid_is_gone(host: str, pid: int) -> bool:
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@patient
def reap(engine: Engine) -> int:
    """Forget workers that are gone: a dead process on this host (its leases are released now),
    or a worker silent for ten times STALE_AFTER (its leases have ended by then). Returns how many."""
    w = schema.workers.c
    with engine.begin() as conn:
        now = db_now(conn)
        rows = conn.execute(select(w.runner, w.host, w.pid, w.heartbeat_at)).all()
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
        conn.execute(update(schema.jobs).where(schema.jobs.c.id == job_id).values(jobs.started(runner, now)))
        conn.execute(update(schema.workers).where(schema.workers.c.runner == runner).values(job_id=job_id, heartbeat_at=now))
    return jobs.get_job(engine, job_id)


_CLAIM_SQL = {
    # SKIP LOCKED: workers claiming at the same moment take different items instead of waiting on each other.
    "postgresql": """
UPDATE job_items SET claimed_by = :runner, lease_until = :until
WHERE (job_id, id_type, identifier) IN (
    SELECT job_id, id_type, identifier FROM job_items
    WHERE job_id = :job_id AND status = 'pending' AND (lease_until IS NULL OR lease_until < :now)
    ORDER BY line_no LIMIT :limit
    FOR UPDATE SKIP LOCKED)
RETURNING id_type, identifier, line_no""",
    # One statement: it takes SQLite's write lock before it reads, so two claims cannot interleave.
    "sqlite": """
UPDATE job_items SET claimed_by = :runner, lease_until = :until
WHERE rowid IN (
    SELECT rowid FROM job_items
    WHERE job_id = :job_id AND status = 'pending' AND (lease_until IS NULL OR lease_until < :now)
    ORDER BY line_no LIMIT :limit)
RETURNING id_type, identifier, line_no""",
}


@patient
def claim(engine: Engine, job_id: int, runner: str, limit: int, lease: timedelta) -> list[Item]:
    """Lease the next claimable items (pending, and unleased or whose lease ended), in input order."""
    with engine.begin() as conn:
        now = db_now(conn)
        sql = text(_CLAIM_SQL[conn.dialect.name]).bindparams(
            bindparam("now", type_=schema.job_items.c.lease_until.type),
            bindparam("until", type_=schema.job_items.c.lease_until.type),
        )
        rows = conn.execute(sql, {"runner": runner, "until": now + lease, "job_id": job_id, "now": now, "limit": limit}).all()
    return sorted((Item(r.id_type, r.identifier, r.line_no) for r in rows), key=lambda i: i.line_no)


@patient
def renew(engine: Engine, runner: str, job_id: int | None, lease: timedelta, items_done: int, requests: int) -> int:
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
            .where(ji.claimed_by == runner, ji.status == "pending", ji.lease_until > now)
            .order_by(ji.job_id, ji.id_type, ji.identifier)
            .with_for_update(skip_locked=True)
        )
        held: int = conn.execute(
            update(schema.job_items)
            .where(tuple_(ji.job_id, ji.id_type, ji.identifier).in_(mine))
            .values(lease_until=now + lease)
        ).rowcount
        conn.execute(
            update(schema.workers)
            .where(w.runner == runner)
            .values(heartbeat_at=now, job_id=job_id, items_done=items_done, requests=requests, leases=held)
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
        seconds = max(1e-9, (r["heartbeat_at"] - r["started_at"]).total_seconds())
        r["items_per_second"] = round(r["items_done"] / seconds, 1) if seconds >= 1 else 0.0
        out.append(r)
    return out


@patient
def leave(
    engine: Engine, job_id: int, runner: str, status: str, error: str | None = None, resume_after: datetime | None = None
) -> str:
    """This worker stops working on the job: its leases go back, and, if it was the job's last live
    worker, the job takes `status` ('finished' only if nothing is pending). Returns the job's status."""
    ji, w = schema.job_items.c, schema.workers.c
    with engine.begin() as conn:
        now = db_now(conn)
        _release(conn, runner, job_id)
        conn.execute(update(schema.workers).where(w.runner == runner).values(job_id=None, heartbeat_at=now))
        others = [
            r
            for r in conn.execute(
                select(w.host, w.pid).where(w.job_id == job_id, w.runner != runner, w.heartbeat_at >= now - STALE_AFTER)
            )
            if not _pid_is_gone(r.host, r.pid)
        ]
        pending = conn.execute(
            select(func.count()).select_from(schema.job_items).where(ji.job_id == job_id, ji.status == "pending")
        ).scalar_one()
        if others and status not in (JobStatus.PAUSED, JobStatus.STOPPED) and not (status == JobStatus.FINISHED and pending == 0):
            # The others go on; the job is theirs. (A pause or a refused key holds them too.)
            conn.execute(update(schema.jobs).where(schema.jobs.c.id == job_id, schema.jobs.c.runner == runner).values(runner=None))
            return "running"
        if status == JobStatus.FINISHED and pending:
            status = JobStatus.INTERRUPTED  # added meanwhile, or held by a worker that is gone: `resume` finishes it
        conn.execute(update(schema.jobs).where(schema.jobs.c.id == job_id).values(jobs.ended(status, now, error, resume_after)))
    return status
