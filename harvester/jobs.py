"""Job state in the database: jobs, their items and rejects, claims and leases.

A job's todo list is a WHERE clause (status = 'pending'), so resuming is a
query, and only committed work ever advances the state.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO

from sqlalchemy import Engine, and_, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from harvester import schema
from harvester.errors import JobBusyError, JobError
from harvester.ids import IdLine, read_ids

logger = logging.getLogger(__name__)

STATUSES = ("pending", "done", "not_found", "failed")
FINAL = ("done", "not_found", "failed")
# How long a run may go without a heartbeat before another process may take its job over.
STALE_AFTER = timedelta(seconds=60)
LEASE = timedelta(minutes=30)
_CHUNK = 2000


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class Job:
    id: int
    name: str | None
    endpoint: str
    id_type: str
    status: str
    sources: list[str]
    params: dict[str, Any]
    total_items: int
    rejected_lines: int
    duplicate_lines: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    last_error: str | None
    resume_after: datetime | None
    runner: str | None
    heartbeat_at: datetime | None


@dataclass(frozen=True, slots=True)
class Item:
    id_type: str
    identifier: str
    line_no: int


def _job(row: Any) -> Job:
    values = dict(row._mapping)
    values["sources"] = json.loads(values["sources"] or "[]")
    values["params"] = json.loads(values["params"] or "{}")
    return Job(**values)


def create_job(
    engine: Engine,
    sources: list[str],
    id_type: str,
    endpoint: str,
    name: str | None = None,
    params: dict[str, Any] | None = None,
    stdin: BinaryIO | None = None,
) -> Job:
    """Create a job and load its ids, all in one transaction.

    A crash while loading leaves no half-loaded job behind. Duplicates collapse
    on the primary key (DOIs compare lower-cased); invalid lines go to job_rejects.
    """
    now = utcnow()
    lines = read_ids(sources, id_type, stdin)
    with engine.begin() as conn:
        job_id: int = conn.execute(
            insert(schema.jobs).values(
                name=name,
                endpoint=endpoint,
                id_type=id_type,
                status="pending",
                sources=json.dumps(sources),
                params=json.dumps(params or {}, sort_keys=True),
                total_items=0,
                rejected_lines=0,
                duplicate_lines=0,
                created_at=now,
            )
        ).inserted_primary_key[0]  # type: ignore[index]
        valid = rejected = 0
        ins = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        add_items = ins(schema.job_items).on_conflict_do_nothing()
        for chunk in _chunks(lines, _CHUNK):
            items = [
                {
                    "job_id": job_id,
                    "id_type": id_type,
                    "identifier": line.key,
                    "input": line.exact,
                    "line_no": line.line_no,
                    "status": "pending",
                    "attempts": 0,
                    "updated_at": now,
                }
                for line in chunk
                if line.key is not None
            ]
            rejects = [
                {
                    "job_id": job_id,
                    "line_no": line.line_no,
                    "source": line.source,
                    "source_line": line.source_line,
                    "line": line.text[:1000],
                    "reason": line.reason,
                }
                for line in chunk
                if line.key is None
            ]
            if items:
                conn.execute(add_items, items)
            if rejects:
                conn.execute(insert(schema.job_rejects), rejects)
            valid += len(items)
            rejected += len(rejects)
        total = conn.execute(
            select(func.count()).select_from(schema.job_items).where(schema.job_items.c.job_id == job_id)
        ).scalar_one()
        conn.execute(
            update(schema.jobs)
            .where(schema.jobs.c.id == job_id)
            .values(total_items=total, rejected_lines=rejected, duplicate_lines=valid - total)
        )
    return get_job(engine, job_id)


def _chunks(lines: Iterable[IdLine], size: int) -> Iterator[list[IdLine]]:
    chunk: list[IdLine] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def get_job(engine: Engine, job_id: int) -> Job:
    with engine.connect() as conn:
        row = conn.execute(select(schema.jobs).where(schema.jobs.c.id == job_id)).first()
    if row is None:
        raise JobError(f"there is no job {job_id} in this database")
    return _job(row)


def list_jobs(engine: Engine) -> list[Job]:
    with engine.connect() as conn:
        return [_job(r) for r in conn.execute(select(schema.jobs).order_by(schema.jobs.c.id))]


def newest_unfinished(engine: Engine) -> Job:
    with engine.connect() as conn:
        row = conn.execute(
            select(schema.jobs).where(schema.jobs.c.status != "finished").order_by(schema.jobs.c.id.desc()).limit(1)
        ).first()
    if row is None:
        raise JobError("there is no unfinished job to resume")
    return _job(row)


def item_counts(engine: Engine, job_id: int) -> dict[str, int]:
    """Items per status, every status present (0 when none)."""
    counts = dict.fromkeys(STATUSES, 0)
    with engine.connect() as conn:
        rows = conn.execute(
            select(schema.job_items.c.status, func.count())
            .where(schema.job_items.c.job_id == job_id)
            .group_by(schema.job_items.c.status)
        )
        counts.update({status: n for status, n in rows})
    return counts


def new_runner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _runner_is_dead(runner: str, heartbeat_at: datetime | None, now: datetime) -> bool:
    """A runner is gone when its heartbeat is stale, or when it was a process on this host that no longer exists."""
    if heartbeat_at is None or now - heartbeat_at > STALE_AFTER:
        return True
    host, _, rest = runner.partition(":")
    pid = rest.partition(":")[0]
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    return False


def take_over(engine: Engine, job_id: int, runner: str) -> Job:
    """Become the job's only runner and release the leases a dead runner left behind.

    The swap is a conditional UPDATE, so two processes racing for one job
    cannot both win.
    """
    job = get_job(engine, job_id)
    now = utcnow()
    if job.runner and job.runner != runner and not _runner_is_dead(job.runner, job.heartbeat_at, now):
        age = (now - job.heartbeat_at).total_seconds() if job.heartbeat_at else 0
        raise JobBusyError(f"job {job_id} is being run by {job.runner} (heartbeat {age:.0f}s ago); try again later")
    with engine.begin() as conn:
        cond = schema.jobs.c.runner.is_(None) if job.runner is None else schema.jobs.c.runner == job.runner
        swapped = conn.execute(
            update(schema.jobs)
            .where(schema.jobs.c.id == job_id, cond)
            .values(
                runner=runner,
                heartbeat_at=now,
                status="running",
                started_at=func.coalesce(schema.jobs.c.started_at, now),
                finished_at=None,
                last_error=None,
                resume_after=None,
            )
        ).rowcount
        if swapped != 1:
            raise JobBusyError(f"job {job_id} was taken by another process just now; try again later")
        conn.execute(
            update(schema.job_items)
            .where(schema.job_items.c.job_id == job_id, schema.job_items.c.claimed_by.is_not(None))
            .values(claimed_by=None, lease_until=None)
        )
    return get_job(engine, job_id)


def claim(engine: Engine, job_id: int, runner: str, after_line: int, limit: int) -> list[Item]:
    """Lease the next pending items (in input order) to this runner."""
    now = utcnow()
    ji = schema.job_items.c
    with engine.begin() as conn:
        rows = conn.execute(
            select(ji.id_type, ji.identifier, ji.line_no)
            .where(
                ji.job_id == job_id,
                ji.status == "pending",
                ji.line_no > after_line,
                or_(ji.lease_until.is_(None), ji.lease_until < now),
            )
            .order_by(ji.line_no)
            .limit(limit)
        ).all()
        if rows:
            conn.execute(
                update(schema.job_items)
                .where(
                    ji.job_id == job_id,
                    ji.status == "pending",
                    and_(ji.line_no >= rows[0].line_no, ji.line_no <= rows[-1].line_no),
                    or_(ji.lease_until.is_(None), ji.lease_until < now),
                )
                .values(claimed_by=runner, lease_until=now + LEASE)
            )
    return [Item(r.id_type, r.identifier, r.line_no) for r in rows]


def release(engine: Engine, job_id: int, runner: str, status: str, error: str | None = None, resume_after: datetime | None = None) -> None:
    """End a run: record the job's status and give up the runner slot and leases."""
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            update(schema.jobs)
            .where(schema.jobs.c.id == job_id, schema.jobs.c.runner == runner)
            .values(
                status=status,
                runner=None,
                heartbeat_at=now,
                last_error=error,
                resume_after=resume_after,
                finished_at=now if status == "finished" else None,
            )
        )
        conn.execute(
            update(schema.job_items)
            .where(schema.job_items.c.job_id == job_id, schema.job_items.c.claimed_by == runner)
            .values(claimed_by=None, lease_until=None)
        )


def retry_failed(engine: Engine, job_id: int) -> int:
    """Put a job's failed items back to pending; returns how many."""
    get_job(engine, job_id)
    with engine.begin() as conn:
        n = conn.execute(
            update(schema.job_items)
            .where(schema.job_items.c.job_id == job_id, schema.job_items.c.status == "failed")
            .values(status="pending", attempts=0, updated_at=utcnow())
        ).rowcount
        if n:
            conn.execute(
                update(schema.jobs)
                .where(schema.jobs.c.id == job_id, schema.jobs.c.runner.is_(None))
                .values(status="pending", finished_at=None)
            )
    return n


def last_errors(engine: Engine, job_id: int, limit: int = 5) -> list[dict[str, Any]]:
    ji = schema.job_items.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(ji.identifier, ji.status, ji.http_status, ji.last_error, ji.updated_at)
            .where(ji.job_id == job_id, ji.last_error.is_not(None))
            .order_by(ji.updated_at.desc())
            .limit(limit)
        )
        return [dict(r._mapping) for r in rows]


def recent_rate(engine: Engine, job_id: int, window: timedelta = timedelta(minutes=1)) -> float:
    """Items finished per second over the last window (0 when idle)."""
    ji = schema.job_items.c
    since = utcnow() - window
    with engine.connect() as conn:
        n = conn.execute(
            select(func.count()).select_from(schema.job_items).where(
                ji.job_id == job_id, ji.status != "pending", ji.updated_at >= since
            )
        ).scalar_one()
    return n / window.total_seconds()
