"""Job state in the database: jobs, their items and rejects, claims and leases.

A job's todo list is a WHERE clause (status = 'pending'), so resuming is a
query, and only committed work ever advances the state.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, BinaryIO

from sqlalchemy import Connection, Engine, func, insert, select, update

from harvester import db, schema
from harvester.clock import db_now, utcnow
from harvester.errors import JobError
from harvester.ids import read_ids
from harvester.params import ApiUsed, HarvestParams, JobParams, for_endpoint

# CitationsParams and FetchOptions are re-exported (`as`): modules that handle a Job name its params' types as jobs.*.
from harvester.params import CitationsParams as CitationsParams
from harvester.params import FetchOptions as FetchOptions
from harvester.vocabulary import ItemStatus, JobKind, JobStatus

logger = logging.getLogger(__name__)

STATUSES = ("pending", "done", "not_found", "failed")
FINAL = ("done", "not_found", "failed")
# How long a run may go without a heartbeat before another process may take its job over.
STALE_AFTER = timedelta(seconds=60)
_CHUNK = 2000


@dataclass(frozen=True)
class Job:
    id: int
    name: str | None
    endpoint: JobKind
    id_type: str
    status: JobStatus
    sources: list[str]
    params: JobParams  # typed by endpoint (harvester.params); as_dict() is the stored JSON
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
    values["params"] = for_endpoint(values["endpoint"], json.loads(values["params"] or "{}"))
    values["endpoint"] = JobKind(values["endpoint"])
    values["status"] = JobStatus(values["status"])
    return Job(**values)


def create_job(
    engine: Engine,
    sources: list[str],
    id_type: str,
    endpoint: str,
    name: str | None = None,
    params: HarvestParams | None = None,
    stdin: BinaryIO | None = None,
    column: str | None = None,
) -> Job:
    """Create a job and load its ids, all in one transaction.

    A crash while loading leaves no half-loaded job behind. Duplicates collapse
    on the primary key (DOIs compare lower-cased); invalid lines go to job_rejects.
    `column`: the sources are CSV/TSV exports, their ids in this column. With id_type
    "auto" each item has its own id type (job_items.id_type); the job's is "auto".
    """
    now = utcnow()
    lines = read_ids(sources, id_type, stdin, column=column)
    with engine.begin() as conn:
        job_id = new_job(conn, endpoint, id_type, name, params or HarvestParams(), sources, now)
        valid, rejected = db.load_lines(conn, job_id, id_type, lines, now)
        total = conn.execute(select(func.count()).select_from(schema.job_items).where(schema.job_items.c.job_id == job_id)).scalar_one()
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
    params: JobParams,
    sources: list[str] | None = None,
    now: datetime | None = None,
) -> int:
    """Insert a job row (no items yet) in the caller's transaction; returns its id."""
    job_id: int = conn.execute(
        insert(schema.jobs).values(
            name=name,
            endpoint=endpoint,
            id_type=id_type,
            status=JobStatus.PENDING,
            sources=json.dumps(sources or []),
            params=json.dumps(params.as_dict(), sort_keys=True),
            total_items=0,
            rejected_lines=0,
            duplicate_lines=0,
            created_at=now or utcnow(),
        )
    ).inserted_primary_key[0]  # type: ignore[index]
    return job_id


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
        conn.execute(job.where(schema.jobs.c.status == JobStatus.FINISHED).values(status=JobStatus.PENDING, finished_at=None))
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
        conn.execute(db.insert(conn, schema.job_items).on_conflict_do_nothing(), rows[start : start + _CHUNK])
    return items_added(conn, job_id, before)


def set_params(conn: Connection, job_id: int, **changes: Any) -> JobParams:
    """Change fields of a job's params (a nightly's steps, a listing's follow-up) in the caller's transaction; returns them.

    The changes apply to the params the row holds in this transaction, not to a copy read before it.
    """
    row = conn.execute(select(schema.jobs.c.endpoint, schema.jobs.c.params).where(schema.jobs.c.id == job_id)).one()
    params = dataclasses.replace(for_endpoint(row.endpoint, json.loads(row.params or "{}")), **changes)
    conn.execute(update(schema.jobs).where(schema.jobs.c.id == job_id).values(params=json.dumps(params.as_dict(), sort_keys=True)))
    return params


def record_api(engine: Engine, job_id: int, url: str, tier: str | None) -> None:
    """Add the API base URL (and tier) a run of the job uses to its params, once: the provenance
    that the report and the exports name (a job resumed against another URL lists both)."""
    used = ApiUsed.of(url, tier)
    t = schema.jobs.c
    with engine.connect() as conn:
        stored = conn.execute(select(t.endpoint, t.params).where(t.id == job_id)).one()
    known = for_endpoint(stored.endpoint, json.loads(stored.params or "{}"))
    if not isinstance(known, (HarvestParams, CitationsParams)) or used in known.api:
        return
    with engine.begin() as conn:
        row = conn.execute(select(t.endpoint, t.params).where(t.id == job_id).with_for_update()).one()
        params = for_endpoint(row.endpoint, json.loads(row.params or "{}"))
        if isinstance(params, (HarvestParams, CitationsParams)) and used not in params.api:
            params = dataclasses.replace(params, api=(*params.api, used))
            conn.execute(update(schema.jobs).where(t.id == job_id).values(params=json.dumps(params.as_dict(), sort_keys=True)))


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
    then_params: HarvestParams | None = None,
) -> tuple[int, int | None]:
    """A Citations job (a page is an item) and, with `then`, its follow-up harvest, in the caller's transaction.

    Only page 1 is known at first: each page written adds the pages its
    query.total implies (up to `pages`), and its outputs to the follow-up job
    (whose options, such as a Fetch job's, are `then_params`). Returns both job ids.
    """
    now = utcnow()
    params = CitationsParams(timeframe, num_results, filters, pages, nightly=nightly)
    job_id = new_job(conn, JobKind.CITATIONS, "page", name, params, now=now)
    follow_id = None
    if then is not None:
        follow_name = then_name or (f"{name}: {then}" if name else f"{then} of the outputs job {job_id} lists")
        follow = dataclasses.replace(then_params or HarvestParams(), after_job=job_id, nightly=nightly)
        follow_id = new_job(conn, then, "doi", follow_name, follow, now=now)
        set_params(conn, job_id, then_job=follow_id, then=then)
    add_items(conn, job_id, [("page", "1", 1)], now)
    return job_id, follow_id


def chain(engine: Engine, job: Job) -> list[Job]:
    """The jobs that complete `job`, in order: a follow-up harvest runs after the citations job that feeds it."""
    p = job.params
    if isinstance(p, HarvestParams) and p.after_job:
        return [get_job(engine, p.after_job), job]
    if isinstance(p, CitationsParams) and p.then_job:
        return [job, get_job(engine, p.then_job)]
    return [job]


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
            select(schema.jobs).where(schema.jobs.c.status != JobStatus.FINISHED).order_by(schema.jobs.c.id.desc()).limit(1)
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
        select(schema.job_items.c.status, func.count()).where(schema.job_items.c.job_id == job_id).group_by(schema.job_items.c.status)
    )
    counts.update({status: n for status, n in rows})
    return counts


def reject_reasons(engine: Engine, job_id: int) -> list[tuple[str, int]]:
    """A job's rejected lines per reason, most lines first."""
    r = schema.job_rejects.c
    n = func.count().label("n")
    with engine.connect() as conn:
        rows = conn.execute(select(r.reason, n).where(r.job_id == job_id).group_by(r.reason).order_by(n.desc(), r.reason))
        return [(str(reason), int(count)) for reason, count in rows]


def retry_failed(engine: Engine, job_id: int) -> int:
    """Put a job's failed items back to pending; returns how many."""
    get_job(engine, job_id)
    with engine.begin() as conn:
        n = conn.execute(
            update(schema.job_items)
            .where(schema.job_items.c.job_id == job_id, schema.job_items.c.status == ItemStatus.FAILED)
            .values(status=ItemStatus.PENDING, attempts=0, updated_at=utcnow())
        ).rowcount
        if n:
            conn.execute(
                update(schema.jobs)
                .where(schema.jobs.c.id == job_id, schema.jobs.c.runner.is_(None))
                .values(status=JobStatus.PENDING, finished_at=None)
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
    """Items finished per second over the last window, or since the job's (re)start if that is later (0 when idle)."""
    return rate_window(engine, job_id, window)[0]


def rate_window(engine: Engine, job_id: int, window: timedelta = timedelta(minutes=1)) -> tuple[float, float]:
    """(items finished per second, the seconds that rate is measured over).

    The window is the last `window`, but never reaches back before the job's current run
    (`running_since`): a job 20 s old that has finished 200 items goes at 10/s, not 200 over a
    minute; a job resumed 20 s ago after a pause is measured over those 20 s, not over the pause.
    """
    ji = schema.job_items.c
    with engine.connect() as conn:
        now = utcnow()  # the writer stamps items with this clock (writer.py)
        since = now - window
        began = running_since(conn, job_id)
        if began is not None and began > since:
            since = began
        n = conn.execute(
            select(func.count())
            .select_from(schema.job_items)
            .where(ji.job_id == job_id, ji.status != ItemStatus.PENDING, ji.updated_at >= since)
        ).scalar_one()
    # At least a second: a job a few milliseconds old has no rate worth dividing by.
    seconds = max(1.0, (now - since).total_seconds())
    return n / seconds, seconds


def running_since(conn: Connection, job_id: int) -> datetime | None:
    """When the job's current run began: its start, or its live workers' if they all came later.

    jobs.started_at keeps the first start (a resumed job keeps it), so a job paused and resumed
    is dated by the processes working it now: each registers its row in `workers` as it starts.
    Left alone: a long-lived `worker` already running when the job was resumed dates from its own
    start (the table keeps no time a worker joined a job), so its window may still hold the pause.
    """
    j, w = schema.jobs.c, schema.workers.c
    started = conn.execute(select(j.started_at).where(j.id == job_id)).scalar()
    live = conn.execute(select(func.min(w.started_at)).where(w.job_id == job_id, w.heartbeat_at >= db_now(conn) - STALE_AFTER)).scalar()
    times = [t for t in (started, live) if t is not None]
    return max(times) if times else None
