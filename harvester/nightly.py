"""The nightly: discovery through Citations, a refresh of what is due, daily snapshots, a report.

    nightly (a row in jobs, endpoint 'nightly', holding the lock 'nightly')
      1. discovery: a citations job (citation_activity records what it lists)
      2. refresh:   a counts (or fetch) job of what is due, in order: the outputs of the
                    user's own lists, then discovered ones (newest first, for
                    follow_discovered), then old 404s; on the free tier within the
                    day's quota, which also caps discovery's pages after the lists
      3. report:    nightly_runs and nightly_movers, from counts_snapshots

Both steps run under the nightly's runner id, so while it lives it holds all
three rows, and its heartbeat keeps them all fresh. Which steps exist and
what is done is committed state (job rows, items, params), so a nightly that
was killed, rebooted or paused by a spent quota is finished by the next run
before that run starts new work. The snapshots themselves are written by the
writer with every harvested output (store.save_records).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Date,
    DateTime,
    Engine,
    Select,
    Text,
    bindparam,
    case,
    cast,
    delete,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    text,
    true,
    tuple_,
    union,
    update,
)
from sqlalchemy.exc import IntegrityError

from harvester import clock, db, endpoints, jobs, leases, pipeline, schema
from harvester.budget import key_hash
from harvester.config import Config, citation_filters, filters_text, parse_duration
from harvester.errors import JobBusyError, JobError
from harvester.params import HarvestParams, NightlyParams
from harvester.pipeline import ProgressCallback, RunOutcome
from harvester.store import upsert
from harvester.vocabulary import ID_ENDPOINTS, ExitCode, ItemStatus, JobKind, JobStatus

logger = logging.getLogger(__name__)

LOCK = "nightly"
MOVERS = 10  # the report names this many outputs whose score changed most
_DUE_BASE = 1_000_000_000  # line numbers of due outputs: after every discovered rank

ProgressFactory = Callable[[int], ProgressCallback | None]


@dataclass
class Report:
    """What one nightly did; `status` and `exit_code` as a job's (finished, paused ...)."""

    job_id: int
    night: date
    status: str
    exit_code: int
    discovered: int = 0
    new_outputs: int = 0
    refreshed: int = 0
    not_found: int = 0
    failed: int = 0
    movers: list[dict[str, Any]] = field(default_factory=list)
    message: str | None = None
    stopped_step: int | None = None  # the job to resume when it did not finish
    # The mode the night ran in, and (changes mode, changefeed.py) what its listing found; None: not recorded.
    mode: str | None = None
    mode_note: str | None = None  # why it fell back to refresh, or why its listing is incomplete
    complete: bool | None = None
    timeframe: str | None = None
    requests: int | None = None
    listed: int | None = None
    listed_tracked: int | None = None
    carried: int | None = None
    full_refreshed: int | None = None

    def as_dict(self) -> dict[str, Any]:
        # The change feed's keys only where a night recorded them: a refresh night's JSON keeps its keys.
        out = {k: v for k, v in self.__dict__.items() if v is not None or k not in _CHANGES_KEYS}
        out["night"] = self.night.isoformat()
        out["movers"] = [{k: v.isoformat() if isinstance(v, date) else v for k, v in m.items()} for m in self.movers]
        return out


# A change-feed night (changefeed.run_night): its report, or None when it is to run as a refresh night.
# Passed in by the caller, since changefeed.py builds on this module's steps.
ChangesNight = Callable[[Engine, Config, jobs.Job, str, ProgressFactory | None], Report | None]


def run(
    engine: Engine,
    config: Config,
    progress: ProgressFactory | None = None,
    resume_only: bool = False,
    changes: ChangesNight | None = None,
) -> list[Report]:
    """Finish the unfinished nightly if there is one, then run tonight's; one report each.

    A second nightly while one is alive raises JobBusyError (exit 75); one
    whose runner died (kill -9, reboot: its heartbeat is stale, or its pid is
    gone on this host) is taken over. `resume_only`: finish the unfinished
    one and start nothing new (`harvester resume`). `changes` runs a night
    of mode = "changes" (changefeed.run_night); without it such a night is an error.
    """
    runner = leases.new_runner_id()
    reports: list[Report] = []
    # The nightly is one more worker (leases.py): its row shows it in `status`, its heartbeat keeps the lock.
    leases.register(engine, runner, "nightly")
    try:
        while True:
            job, created = acquire(engine, config, runner, create=not resume_only)
            report = _run_one(engine, config, job, runner, progress, changes)
            reports.append(report)
            # A leftover from an earlier night, now finished: tonight's work comes next. (Not after
            # a nightly this run started, even if it ran past midnight.)
            if created or resume_only or report.status != JobStatus.FINISHED or report.night >= clock.utcnow().date():
                return reports
    finally:
        # Its steps ran as a worker under the nightly's runner: it leaves the workers table with it.
        leases.unregister(engine, runner)


def acquire(engine: Engine, config: Config, runner: str, create: bool = True) -> tuple[jobs.Job, bool]:
    """Hold the nightly lock: take over the unfinished nightly, or (with `create`) start tonight's.

    Returns the nightly's job and whether it was created just now.
    """
    for _ in range(3):
        with engine.connect() as conn:
            held = conn.execute(select(schema.jobs.c.id).where(schema.jobs.c.lock_name == LOCK)).scalar()
        if held is not None:
            try:
                return leases.take_over(engine, held, runner), False
            except JobBusyError as e:
                raise JobBusyError(f"another nightly is running: {e}") from None
        if not create:
            raise JobError("there is no unfinished nightly to resume")
        now = clock.utcnow()
        try:
            with engine.begin() as conn:
                job_id = jobs.new_job(conn, JobKind.NIGHTLY, "-", f"nightly {now:%Y-%m-%d}", params_for(config, now), now=now)
                # The unique lock_name is what refuses a second nightly started at the same moment.
                conn.execute(
                    update(schema.jobs)
                    .where(schema.jobs.c.id == job_id)
                    .values(lock_name=LOCK, runner=runner, heartbeat_at=now, started_at=now, status=JobStatus.RUNNING)
                )
            return jobs.get_job(engine, job_id), True
        except IntegrityError:
            continue  # another nightly started just now: look at it
    raise JobBusyError("another nightly is starting right now; try again later")


def params_for(config: Config, now: datetime) -> NightlyParams:
    """The nightly's settings, kept with it: a nightly resumed tomorrow finishes as it began."""
    n = config.nightly
    if JobKind.CITATIONS not in config.api.endpoints and n.mode == "refresh":  # changefeed.py says it its own way
        logger.warning("nightly: no discovery, [api] endpoints excludes citations; refreshing what is due")
    return NightlyParams(
        night=now.date(),
        discover=JobKind.CITATIONS in config.api.endpoints,
        timeframe=n.timeframe,
        filters=citation_filters(n.filters),
        num_results=n.num_results,
        pages=n.pages,
        refresh_after=n.refresh_after,
        not_found_refresh_after=n.not_found_refresh_after,
        max_items=n.max_items,
        follow_discovered=n.follow_discovered,
        endpoint=n.endpoint,
        fetch=endpoints.by_kind(n.endpoint).harvest_params(config.fetch).fetch,
        mode=n.mode,
        full_refresh_after=n.full_refresh_after,
    )


def _run_one(
    engine: Engine, config: Config, job: jobs.Job, runner: str, progress: ProgressFactory | None, changes: ChangesNight | None
) -> Report:
    p = job.params
    assert isinstance(p, NightlyParams)  # jobs._job types a nightly row's params by its endpoint
    if p.mode == "changes" and not (p.changes or {}).get("fallback"):
        if changes is None:
            raise JobError(f'nightly job {job.id} is a mode = "changes" night: run it with `harvester nightly`')
        changed = changes(engine, config, job, runner, progress)
        if changed is not None:
            return changed
        job = jobs.get_job(engine, job.id)  # the key lacks Citations: tonight runs as a refresh night
        p = job.params
        assert isinstance(p, NightlyParams)
    night = p.night
    if p.refresh_job is None:
        name = f"nightly {night}"
        # A Fetch refresh keeps the [fetch] options the nightly started with, as a Fetch harvest does.
        refresh_params = HarvestParams(fetch=p.fetch, nightly=job.id)
        with engine.begin() as conn:
            pages = discovery_pages(conn, config, p) if p.discover else 0
            discovery_job = None
            if pages != 0:
                # No follow-up job: the refresh takes what the listing found after the user's lists (add_due).
                discovery_job, _ = jobs.create_citations_job(
                    conn,
                    p.timeframe,
                    p.filters,
                    p.num_results,
                    pages,
                    None,
                    f"{name} discovery",
                    job.id,
                )
            refresh_job = jobs.new_job(conn, p.endpoint, "doi", f"{name} refresh", refresh_params)
            jobs.set_params(conn, job.id, discovery_job=discovery_job, refresh_job=refresh_job, discovery_pages=pages)
            p = replace(p, discovery_job=discovery_job, refresh_job=refresh_job, discovery_pages=pages)
    discovery, refresh = p.discovery_job, p.refresh_job
    assert refresh is not None

    if discovery is not None:
        outcome = _step(engine, config, discovery, runner, progress)
        if outcome is not None and outcome.status != JobStatus.FINISHED:
            return _stopped(engine, job, night, runner, outcome)
        _warn_unfiltered(engine, config, discovery, p)
    if not p.refresh_selected:
        # Minutes of SQL on a big database: without beats another process would take the nightly over.
        with leases.beating(engine, runner), engine.begin() as conn:
            quota = quota_left(conn, config)
            due = add_due(conn, refresh, p, quota, discovery)
            logger.info(
                "nightly: refreshing %d outputs of your lists, %d discovered, %d old 404s%s",
                due["lists"],
                due["discovered"],
                due["not_found"],
                "" if quota is None else f" (quota left today: {quota})",
            )
            if quota is not None and p.mode == "refresh" and sum(due.values()) >= quota and (p.max_items is None or quota < p.max_items):
                logger.warning(
                    "nightly: the day's quota (%d left) caps tonight's refresh; the rest waits for later nights."
                    ' [nightly] mode = "changes" asks only what changed (docs/nightly.md)',
                    quota,
                )
            # The report of a nightly that runs straight through reads these too, as a resumed one does.
            selected = jobs.set_params(conn, job.id, refresh_selected=True, refresh_due=due, refresh_quota=quota)
            assert isinstance(selected, NightlyParams)
            p = selected
    outcome = _step(engine, config, refresh, runner, progress)
    if outcome is not None and outcome.status != JobStatus.FINISHED:
        return _stopped(engine, job, night, runner, outcome)
    with leases.beating(engine, runner):
        report = _finish(engine, job, night, runner, discovery, refresh, p)
    keep = config.nightly.keep_done_items
    if keep != "never":
        with leases.beating(engine, runner):
            pruned = prune(engine, clock.utcnow() - parse_duration(keep))
        if pruned:
            logger.info("nightly: deleted %d done items of nightlies finished before keep_done_items (%s)", pruned, keep)
    return report


_CHANGES_KEYS = ("mode", "mode_note", "complete", "timeframe", "requests", "listed", "listed_tracked", "carried", "full_refreshed")


def refresh_fields(p: NightlyParams) -> dict[str, Any]:
    """What a night that ran in refresh mode adds to its nightly_runs row and report: its mode, and why (a fallback)."""
    note = (p.changes or {}).get("fallback")
    out: dict[str, Any] = {"mode": "refresh"}
    if note:
        out |= {"mode_note": note, "requests": (p.changes or {}).get("requests")}
    return out


def discovery_pages(conn: Connection, config: Config, p: NightlyParams) -> int | None:
    """The pages tonight's discovery may list: [nightly] pages, and on the free tier no more than
    the quota left once the user's lists are refreshed (0: no discovery tonight). None: every page."""
    pages = p.pages
    quota = quota_left(conn, config)
    if quota is None:
        return pages
    lists = conn.execute(select(func.count()).select_from(due_queries(conn, p)[0].subquery())).scalar_one()
    spare = quota - lists
    if spare <= 0:
        logger.warning("nightly: no discovery tonight: your lists' %d due outputs take the %d requests left of today's quota", lists, quota)
        return 0
    return spare if pages is None else min(pages, spare)


def _warn_unfiltered(engine: Engine, config: Config, discovery: int, p: NightlyParams) -> None:
    """Discovery without filters on a free key: say how many pages the whole listing takes."""
    if config.api.tier != "free" or p.filters:
        return
    ca = schema.citation_activity.c
    with engine.connect() as conn:
        total = conn.execute(select(func.max(ca.total)).where(ca.job_id == discovery)).scalar()
    if total:
        pages = -(-int(total) // p.num_results)
        logger.warning(
            "nightly: discovery without [nightly] filters lists %d outputs: %d pages of %d a night, on a free key whose"
            " quota is %d requests a day; set filters (doi_prefix, issns ...) or pages",
            total,
            pages,
            p.num_results,
            config.limits.per_day,
        )


def prune(engine: Engine, before: datetime) -> int:
    """Delete the `done` items of nightly steps whose nightly finished before `before`; returns how many.

    A nightly adds an item per output every night, which is most of a big
    database after a year. A done item's data is in outputs and
    counts_snapshots; 404s and failures stay, for the 404 schedule and for
    the record.
    """
    r = schema.nightly_runs.c
    steps = union(
        select(r.refresh_job_id).where(r.finished_at < before),
        select(r.discovery_job_id).where(r.finished_at < before, r.discovery_job_id.is_not(None)),
    )
    ji = schema.job_items.c
    with engine.begin() as conn:
        deleted: int = conn.execute(delete(schema.job_items).where(ji.status == ItemStatus.DONE, ji.job_id.in_(steps))).rowcount
    return deleted


def _step(engine: Engine, config: Config, job_id: int, runner: str, progress: ProgressFactory | None) -> RunOutcome | None:
    """Run one step's job under the nightly's runner, unless it is already finished."""
    step = jobs.get_job(engine, job_id)
    if step.status == JobStatus.FINISHED:
        return None
    logger.info("nightly: %s job %d", step.endpoint, job_id)
    callback = progress(job_id) if progress else None
    try:
        return pipeline.run(engine, job_id, config, callback, runner, command="nightly")
    finally:
        close = getattr(callback, "close", None)
        if close is not None:
            close()


def quota_today(conn: Connection, config: Config) -> tuple[int | None, int]:
    """The free tier's daily quota (the configured or announced limit, the tighter) and what is used of it today.

    Read from the shared budget row every process of the key draws from; (None, 0) on the commercial tier.
    """
    if config.api.tier != "free":
        return None, 0
    b = schema.rate_budgets.c
    row = conn.execute(select(b.day_start, b.day_used, b.day_limit).where(b.key_hash == key_hash(config.api.key))).first()
    limit = config.limits.per_day
    if row is None:
        return limit, 0
    if row.day_limit is not None:
        limit = min(limit, int(row.day_limit))
    used = int(row.day_used or 0) if row.day_start == clock.utcnow().date() else 0
    return limit, used


def quota_left(conn: Connection, config: Config) -> int | None:
    """Requests left in today's quota on the free tier; None when there is no quota (commercial)."""
    limit, used = quota_today(conn, config)
    return None if limit is None else max(0, limit - used)


def user_jobs(conn: Connection) -> list[int]:
    """The harvest jobs of the user's own id lists: Counts and Fetch jobs that are neither a nightly's step
    nor the follow-up of a Citations listing."""
    j = schema.jobs.c
    found = []
    for job_id, params in conn.execute(select(j.id, j.params).where(j.endpoint.in_(ID_ENDPOINTS))):
        if HarvestParams.from_dict(json.loads(params or "{}")).own_list:
            found.append(int(job_id))
    return found


PARTS = ("lists", "discovered", "not_found")


def due_queries(conn: Connection, p: NightlyParams, discovery: int | None = None) -> list[Select[Any]]:
    """What is due tonight, in the order it is refreshed: one query per part of PARTS.

    1. lists: outputs of the user's own id lists (harvest jobs), and any output
       Citations never listed, last harvested before refresh_after, oldest first;
    2. discovered: other outputs the Citations endpoint listed within
       follow_discovered (citation_activity), due by refresh_after or listed by
       tonight's `discovery`, the most recently listed first;
    3. not_found: ids whose latest answer was a 404 older than not_found_refresh_after.

    Each row is (id_type, identifier, n), n its 1-based place in its part. An
    output is asked for by DOI, else by its Altmetric id; one that vanished
    upstream (its own id answered 404 lately) waits like any other 404.
    """
    now = clock.utcnow()
    ji = schema.job_items.c
    o = schema.outputs.c
    ca = schema.citation_activity.c
    not_found_before = now - parse_duration(p.not_found_refresh_after)
    due_before = now - parse_duration(p.refresh_after)
    id_type = case((o.doi.is_not(None), "doi"), else_="id")
    identifier = func.coalesce(o.doi, cast(o.altmetric_id, Text))
    # A literal, not a bound parameter: SQLite uses a partial index only for a query whose WHERE
    # has the index's own term.
    not_found = ji.status == literal_column("'not_found'")
    # NOT EXISTS on the key the output is asked by (a 404 of PMID 12345 is not one of Altmetric id
    # 12345): PostgreSQL anti-joins it (NOT IN, which must honour NULLs, it cannot), and both
    # engines answer it from ix_job_items_not_found.
    vanished = (
        select(literal(1))
        .select_from(schema.job_items)
        .where(not_found, ji.id_type == id_type, ji.identifier == identifier, ji.updated_at >= not_found_before)
    )
    mine = user_jobs(conn)
    listed = select(ji.altmetric_id).where(ji.job_id.in_(mine), ji.altmetric_id.is_not(None))
    # Outputs Citations never listed are the user's too (asked by Altmetric id, or the new record of a merged one).
    ever_listed = select(ca.altmetric_id)
    current = (o.superseded_by.is_(None), ~vanished.exists())
    lists = (
        select(
            id_type.label("id_type"),
            identifier.label("identifier"),
            func.row_number().over(order_by=(o.harvested_at, o.altmetric_id)).label("n"),
        )
        .where(o.harvested_at < due_before, or_(o.altmetric_id.in_(listed), o.altmetric_id.not_in(ever_listed)), *current)
        .order_by(o.harvested_at, o.altmetric_id)
    )
    follow_from = (now - parse_duration(p.follow_discovered)).date()
    last_listed = func.max(ca.harvested_on)
    tonight = func.max(case((ca.job_id == discovery, 1), else_=0)) if discovery is not None else literal(0)
    seen = (
        select(ca.altmetric_id, last_listed.label("last_listed"), tonight.label("tonight"))
        .where(ca.harvested_on >= follow_from)
        .group_by(ca.altmetric_id)
        .subquery()
    )
    order = (seen.c.last_listed.desc(), o.harvested_at, o.altmetric_id)
    discovered = (
        select(id_type.label("id_type"), identifier.label("identifier"), func.row_number().over(order_by=order).label("n"))
        .join(seen, seen.c.altmetric_id == o.altmetric_id)
        .where(or_(o.harvested_at < due_before, seen.c.tonight == 1), o.altmetric_id.not_in(listed), *current)
        .order_by(*order)
    )
    old_404 = select(ji.id_type, ji.identifier).where(not_found, ji.updated_at < not_found_before)
    last = func.max(ji.updated_at)
    # Ids whose latest outcome, in any harvest, was a 404 older than not_found_refresh_after:
    # only ids with such a 404 can be, so the GROUP BY covers their items, not every item of
    # every harvest (the old 404s come from ix_job_items_not_found).
    gone = (
        select(
            ji.id_type,
            ji.identifier,
            func.row_number().over(order_by=(last, ji.id_type, ji.identifier)).label("n"),
        )
        .join(schema.jobs, schema.jobs.c.id == ji.job_id)
        .where(schema.jobs.c.endpoint.in_(ID_ENDPOINTS), tuple_(ji.id_type, ji.identifier).in_(old_404))
        .group_by(ji.id_type, ji.identifier)
        .having(last < not_found_before)
        .having(func.max(ji.updated_at).filter(ji.status == ItemStatus.NOT_FOUND) == last)
        .order_by(last, ji.id_type, ji.identifier)
    )
    return [lists, discovered, gone]


def room_for(p: NightlyParams, quota: int | None) -> int | None:
    """How many items tonight's refresh may take: max_items and (free tier) the quota left today, the smaller."""
    caps = [c for c in (p.max_items, quota) if c is not None]
    return min(caps) if caps else None


def add_due(conn: Connection, refresh_job: int, p: NightlyParams, quota: int | None = None, discovery: int | None = None) -> dict[str, int]:
    """Add to the refresh job what is due (due_queries), part after part, up to room_for(p, quota) in all.

    Returns how many items each part added. INSERT ... SELECT: the database
    does the work, so a nightly over 10M outputs holds none of them in memory.
    The line numbers give the order the items are claimed in: lists, then
    discovered, then 404s.
    """
    now = clock.utcnow()
    before = jobs.count_items(conn, refresh_job)
    limit = room_for(p, quota)
    room = None if limit is None else max(0, limit - before)
    added: dict[str, int] = dict.fromkeys(PARTS, 0)
    for part, query in zip(PARTS, due_queries(conn, p, discovery), strict=True):
        if room is not None and room <= 0:
            break
        due = (query.limit(room) if room is not None else query).subquery()
        rows = select(
            literal(refresh_job),
            due.c.id_type,
            due.c.identifier,
            due.c.identifier,
            literal(_DUE_BASE * (PARTS.index(part) + 1)) + due.c.n,
            literal(ItemStatus.PENDING.value),
            literal(0),
            literal(now, DateTime),
        ).where(true())
        insert = db.insert(conn, schema.job_items)
        columns = ["job_id", "id_type", "identifier", "input", "line_no", "status", "attempts", "updated_at"]
        count = jobs.count_items(conn, refresh_job)
        conn.execute(insert.from_select(columns, rows).on_conflict_do_nothing())
        after = jobs.count_items(conn, refresh_job)
        added[part] = after - count
        if room is not None:
            room = limit - after  # type: ignore[operator]
    jobs.items_added(conn, refresh_job, before)
    return added


def _stopped(engine: Engine, job: jobs.Job, night: date, runner: str, outcome: RunOutcome) -> Report:
    """A step did not finish: the nightly keeps its lock (the next run resumes it) and says why."""
    error = outcome.message or f"job {outcome.job_id} {outcome.status}"
    resume_after = jobs.get_job(engine, outcome.job_id).resume_after
    leases.release(engine, job.id, runner, outcome.status, error, resume_after)
    return Report(job.id, night, outcome.status, outcome.exit_code, message=outcome.message, stopped_step=outcome.job_id)


def finished_row(now: datetime, params: NightlyParams) -> dict[str, Any]:
    """The nightly's job row once its night is done (either mode): finished, its lock let go, its report in its params."""
    return {
        "status": JobStatus.FINISHED,
        "finished_at": now,
        "runner": None,
        "lock_name": None,
        "heartbeat_at": now,
        "last_error": None,
        "resume_after": None,
        "params": json.dumps(params.as_dict(), sort_keys=True),
    }


def _finish(engine: Engine, job: jobs.Job, night: date, runner: str, discovery: int | None, refresh: int, p: NightlyParams) -> Report:
    """Count, find the movers, store the report and give the lock up: one transaction."""
    started = job.started_at or clock.utcnow()
    now = clock.utcnow()
    with engine.begin() as conn:
        counts = jobs.item_counts_in(conn, refresh)
        pages_failed = jobs.item_counts_in(conn, discovery)[ItemStatus.FAILED] if discovery is not None else 0
        discovered = conn.execute(
            select(func.count(schema.citation_activity.c.altmetric_id.distinct())).where(schema.citation_activity.c.job_id == discovery)
        ).scalar_one()
        o, ji = schema.outputs.c, schema.job_items.c
        harvested = (
            select(o.altmetric_id, o.first_harvested_at)
            .join(schema.job_items, ji.altmetric_id == o.altmetric_id)
            .where(ji.job_id == refresh, ji.status == ItemStatus.DONE)
            .distinct()
            .subquery()
        )
        # New: first stored since the nightly started, by its discovery or its refresh (not by
        # another harvest that ran meanwhile).
        # IN (a union): materialized once by both engines, where a correlated EXISTS would scan
        # the refresh job's items once per output.
        ours = union(
            select(ji.altmetric_id).where(ji.job_id == refresh),
            select(schema.citation_activity.c.altmetric_id).where(schema.citation_activity.c.job_id == discovery),
        )
        new = conn.execute(
            select(func.count()).select_from(schema.outputs).where(o.first_harvested_at >= started, o.altmetric_id.in_(ours))
        ).scalar_one()
        refreshed = conn.execute(select(func.count()).select_from(harvested).where(harvested.c.first_harvested_at < started)).scalar_one()
        movers = movers_of(conn, [refresh])
        report = Report(
            job.id,
            night,
            JobStatus.FINISHED,
            ExitCode.SOME_FAILED if counts[ItemStatus.FAILED] or pages_failed else ExitCode.OK,
            discovered=discovered,
            new_outputs=new,
            refreshed=refreshed,
            not_found=counts[ItemStatus.NOT_FOUND],
            failed=counts[ItemStatus.FAILED] + pages_failed,
            movers=movers,
            **refresh_fields(p),
        )
        upsert(
            conn,
            schema.nightly_runs,
            [
                {
                    "job_id": job.id,
                    "night": night,
                    "timeframe": p.timeframe,
                    "filters": filters_text(p.filters),
                    "endpoint": p.endpoint,
                    "discovery_job_id": discovery,
                    "refresh_job_id": refresh,
                    "discovered": discovered,
                    "new_outputs": new,
                    "refreshed": refreshed,
                    "not_found": report.not_found,
                    "failed": report.failed,
                    "started_at": started,
                    "finished_at": now,
                    **refresh_fields(p),
                }
            ],
        )
        store_movers(conn, job.id, movers)
        done = conn.execute(
            update(schema.jobs)
            .where(schema.jobs.c.id == job.id, schema.jobs.c.runner == runner)
            .values(finished_row(now, replace(p, report=report.as_dict())))
        ).rowcount
        if done != 1:
            raise JobError(f"nightly job {job.id} was taken over by another process; its report was not stored")
    return report


_MOVERS_SQL = (
    text(
        """
WITH refreshed AS (
    SELECT altmetric_id FROM job_items
    WHERE job_id IN :job_ids AND status = 'done' AND altmetric_id IS NOT NULL
    UNION
    SELECT altmetric_id FROM citation_activity WHERE job_id = :listing
), latest AS (
    SELECT s.altmetric_id, max(s.harvested_on) AS on_day
    FROM counts_snapshots s JOIN refreshed r ON r.altmetric_id = s.altmetric_id
    GROUP BY s.altmetric_id
), previous AS (
    SELECT l.altmetric_id, l.on_day, max(p.harvested_on) AS previous_day
    FROM latest l JOIN counts_snapshots p ON p.altmetric_id = l.altmetric_id AND p.harvested_on < l.on_day
    GROUP BY l.altmetric_id, l.on_day
)
SELECT pr.altmetric_id, o.doi, o.title,
       pr.previous_day AS previous_on, old.score AS previous_score,
       pr.on_day AS harvested_on, cur.score, cur.score - old.score AS change
FROM previous pr
JOIN counts_snapshots cur ON cur.altmetric_id = pr.altmetric_id AND cur.harvested_on = pr.on_day
JOIN counts_snapshots old ON old.altmetric_id = pr.altmetric_id AND old.harvested_on = pr.previous_day
JOIN outputs o ON o.altmetric_id = pr.altmetric_id
WHERE cur.score <> old.score
ORDER BY abs(cur.score - old.score) DESC, pr.altmetric_id
LIMIT :limit
"""
    )
    .columns(previous_on=Date, harvested_on=Date)
    .bindparams(bindparam("job_ids", expanding=True))
)


def movers_of(conn: Any, job_ids: Sequence[int], listing: int | None = None, limit: int = MOVERS) -> list[dict[str, Any]]:
    """The outputs the jobs harvested, and the tracked outputs a change-feed `listing` stored, whose score
    changed most since their previous snapshot, ranked."""
    rows = conn.execute(_MOVERS_SQL, {"job_ids": list(job_ids), "listing": -1 if listing is None else listing, "limit": limit})
    return [{"rank": n, **dict(r._mapping)} for n, r in enumerate(rows, start=1)]


def store_movers(conn: Connection, job_id: int, movers: list[dict[str, Any]]) -> None:
    """A nightly's movers in nightly_movers, in its report's transaction (a night run again replaces them)."""
    conn.execute(delete(schema.nightly_movers).where(schema.nightly_movers.c.job_id == job_id))
    if movers:
        conn.execute(insert(schema.nightly_movers), [{"job_id": job_id, **m} for m in movers])
