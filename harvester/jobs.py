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

from sqlalchemy import Connection, Engine, Table, and_, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from harvester import schema
from harvester.errors import ConfigError, JobBusyError, JobError
from harvester.ids import IdLine, read_ids

logger = logging.getLogger(__name__)

STATUSES = ("pending", "done", "not_found", "failed")
FINAL = ("done", "not_found", "failed")
# How long a run may go without a heartbeat before another process may take its job over.
STALE_AFTER = timedelta(seconds=60)
LEASE = timedelta(minutes=30)
_CHUNK = 2000


_CLOCK_OFFSET = "_HARVESTER_CLOCK_OFFSET"  # how the injected clock reaches the writer process
_offset: timedelta | None = None


def utcnow() -> datetime:
    """Now, in naive UTC: the time every stored timestamp and every nightly decision uses.

    HARVESTER_NOW=2026-11-24T03:00:00 runs the harvester as if it were that
    moment (the clock then runs on from there): how schedules such as two
    nights in a row are tested. Never set it in production.
    """
    global _offset
    if _offset is None:
        _offset = _clock_offset()
    return datetime.now(UTC).replace(tzinfo=None) + _offset


def _clock_offset() -> timedelta:
    inherited = os.environ.get(_CLOCK_OFFSET)
    if inherited:
        return timedelta(seconds=float(inherited))
    wanted = os.environ.get("HARVESTER_NOW")
    if not wanted:
        return timedelta(0)
    try:
        when = datetime.fromisoformat(wanted)
    except ValueError:
        raise ConfigError(f"HARVESTER_NOW must be an ISO date-time like 2026-11-24T03:00:00, not {wanted!r}") from None
    if when.tzinfo is not None:
        when = when.astimezone(UTC).replace(tzinfo=None)
    offset = when - datetime.now(UTC).replace(tzinfo=None)
    # Child processes (the writer) inherit one offset, so that both clocks agree.
    os.environ[_CLOCK_OFFSET] = str(offset.total_seconds())
    return offset


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
    lock_name: str | None = None


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
        job_id = new_job(conn, endpoint, id_type, name, params or {}, sources, now)
        valid = rejected = 0
        insert_items = insert_for(conn, schema.job_items).on_conflict_do_nothing()
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
                conn.execute(insert_items, items)
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


def new_job(
    conn: Connection,
    endpoint: str,
    id_type: str,
    name: str | None,
    params: dict[str, Any],
    sources: list[str] | None = None,
    now: datetime | None = None,
) -> int:
    """Insert a job row (no items yet) in the caller's transaction; returns its id."""
    job_id: int = conn.execute(
        insert(schema.jobs).values(
            name=name,
            endpoint=endpoint,
            id_type=id_type,
            status="pending",
            sources=json.dumps(sources or []),
            params=json.dumps(params, sort_keys=True),
            total_items=0,
            rejected_lines=0,
            duplicate_lines=0,
            created_at=now or utcnow(),
        )
    ).inserted_primary_key[0]  # type: ignore[index]
    return job_id


def insert_for(conn: Connection, table: Table) -> Any:
    """The dialect's INSERT (it has ON CONFLICT)."""
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


def count_items(conn: Connection, job_id: int) -> int:
    n: int = conn.execute(select(func.count()).select_from(schema.job_items).where(schema.job_items.c.job_id == job_id)).scalar_one()
    return n


def items_added(conn: Connection, job_id: int, before: int) -> int:
    """After items were added to a job that had `before`: record its total, and reopen it if it had
    finished, so that nothing added is forgotten. Returns how many were added."""
    total = count_items(conn, job_id)
    job = update(schema.jobs).where(schema.jobs.c.id == job_id)
    conn.execute(job.values(total_items=total))
    if total > before:
        conn.execute(job.where(schema.jobs.c.status == "finished").values(status="pending", finished_at=None))
    return total - before


def add_items(conn: Connection, job_id: int, items: Iterable[tuple[str, str, int]], now: datetime) -> int:
    """Add (id_type, identifier, line_no) items to a job that may already be running; returns how many were new.

    Items it already has are left as they are (done stays done).
    """
    rows = [
        {"job_id": job_id, "id_type": t, "identifier": i, "input": i, "line_no": n, "status": "pending", "attempts": 0, "updated_at": now}
        for t, i, n in items
    ]
    if not rows:
        return 0
    before = count_items(conn, job_id)
    for start in range(0, len(rows), _CHUNK):
        conn.execute(insert_for(conn, schema.job_items).on_conflict_do_nothing(), rows[start : start + _CHUNK])
    return items_added(conn, job_id, before)


def set_params(conn: Connection, job_id: int, **changes: Any) -> None:
    """Merge changes into a job's params, in the caller's transaction."""
    current = conn.execute(select(schema.jobs.c.params).where(schema.jobs.c.id == job_id)).scalar_one()
    params = json.loads(current or "{}") | changes
    conn.execute(update(schema.jobs).where(schema.jobs.c.id == job_id).values(params=json.dumps(params, sort_keys=True)))


def create_citations_job(
    conn: Connection,
    timeframe: str,
    filters: dict[str, str],
    num_results: int,
    pages: int | None,
    then: str | None = None,
    name: str | None = None,
    nightly: int | None = None,
    then_name: str | None = None,
    then_params: dict[str, Any] | None = None,
) -> tuple[int, int | None]:
    """A Citations job (a page is an item) and, with `then`, its follow-up harvest, in the caller's transaction.

    Only page 1 is known at first: each page written adds the pages its
    query.total implies (up to `pages`), and its outputs to the follow-up job
    (whose options, such as a Fetch job's, are `then_params`). Returns both job ids.
    """
    now = utcnow()
    params: dict[str, Any] = {"timeframe": timeframe, "filters": filters, "num_results": num_results, "pages": pages}
    link = {"nightly": nightly} if nightly is not None else {}
    job_id = new_job(conn, "citations", "page", name, params | link, now=now)
    follow_id = None
    if then is not None:
        follow_name = then_name or (f"{name}: {then}" if name else f"{then} of the outputs job {job_id} lists")
        follow_id = new_job(conn, then, "doi", follow_name, (then_params or {}) | {"after_job": job_id} | link, now=now)
        set_params(conn, job_id, then_job=follow_id, then=then)
    add_items(conn, job_id, [("page", "1", 1)], now)
    return job_id, follow_id


def chain(engine: Engine, job: Job) -> list[Job]:
    """The jobs that complete `job`, in order: a follow-up harvest runs after the citations job that feeds it."""
    if job.params.get("after_job"):
        return [get_job(engine, job.params["after_job"]), job]
    if job.params.get("then_job"):
        return [job, get_job(engine, job.params["then_job"])]
    return [job]


def beat(engine: Engine, runner: str) -> None:
    """Refresh the heartbeat of every job this runner holds (a nightly and its current step)."""
    with engine.begin() as conn:
        conn.execute(update(schema.jobs).where(schema.jobs.c.runner == runner).values(heartbeat_at=utcnow()))


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
    with engine.connect() as conn:
        return item_counts_in(conn, job_id)


def item_counts_in(conn: Connection, job_id: int) -> dict[str, int]:
    counts = dict.fromkeys(STATUSES, 0)
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
