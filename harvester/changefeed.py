"""The change-feed nightly ([nightly] mode = "changes"): ask what changed, not every output.

    1. new:      a Counts (or Fetch) job of the user's ids never answered yet, before anything else
    2. listing:  a Citations job over the smallest timeframe covering the time since the last
                 complete change-feed night plus MARGIN, ordered by first_seen, every page;
                 only the outputs the database tracks are stored from their entries
                 (endpoints._Pages.save_tracked), and every page's query.total is kept
    3. check:    the listing is complete only if every page was read, none failed or came back
                 past the end, query.total never moved, and the pages were read on one UTC day
    4. full:     a job of the tracked outputs last harvested before full_refresh_after, oldest
                 first, in the quota left (readers drift without attention)
    5. report:   nightly_runs (mode, window, completeness, requests, listed, carried ...)

Unlisted tracked outputs are carried forward by the view daily_series (migration 0011), which
carries a day only inside the window of a complete night: an incomplete night leaves a gap.
A key without Citations (403 on the listing) runs the night in refresh mode (nightly.py).
Every step's state is in the nightly's params ("changes"), so a killed night is finished by the
next run, as a refresh night is.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import replace
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Select, and_, exists, func, select, update

from harvester import clock, jobs, leases, nightly, schema
from harvester.config import Config, filters_text
from harvester.db import upsert
from harvester.errors import ApiAuthError, JobError
from harvester.params import HarvestParams, NightlyParams
from harvester.vocabulary import ExitCode, ItemStatus, JobStatus

logger = logging.getLogger(__name__)

# The shortest length each timeframe can have, in days: a calendar month is at least 28 days, so a
# "1m" is trusted to cover 28 (the window a night claims must never be longer than what it read).
TIMEFRAME_DAYS = (
    ("1d", 1),
    ("2d", 2),
    ("3d", 3),
    ("4d", 4),
    ("5d", 5),
    ("6d", 6),
    ("1w", 7),
    ("1m", 28),
    ("3m", 89),
    ("6m", 181),
    ("1y", 365),
)
# Added to the time since the last complete listing: a night that starts a few minutes later than
# the one before (RandomizedDelaySec, a slow new-outputs step), and an index that lags, stay covered.
MARGIN = timedelta(hours=1)
# first_seen, newest first: an output's key never changes, and the outputs that join the listing
# most (first seen today) join at its head, which page 1 already read, so they shift the later pages
# down (a result read twice, harmless) rather than up (a result skipped). Removals and other
# insertions change query.total, which the night checks on every page.
ORDER_BY = "first_seen"


def choose_timeframe(elapsed: timedelta) -> tuple[str, int]:
    """The smallest timeframe at least `elapsed + MARGIN` long, and the days it is trusted to cover.

    Longer than a year: "1y", which covers only its year (the view shows the rest as a gap).
    """
    needed = elapsed + MARGIN
    for tf, days in TIMEFRAME_DAYS:
        if timedelta(days=days) >= needed:
            return tf, days
    return TIMEFRAME_DAYS[-1]


def check_listing(conn: Connection, listing: int, num_results: int) -> tuple[bool, str | None]:
    """Whether the listing was read whole: (complete, why not)."""
    counts = jobs.item_counts_in(conn, listing)
    if counts[ItemStatus.FAILED]:
        return False, f"{counts[ItemStatus.FAILED]} listing pages failed"
    if counts[ItemStatus.NOT_FOUND]:
        return False, "a listing page came back past the end: the listing shrank while it was read"
    if counts[ItemStatus.PENDING]:
        return False, f"{counts[ItemStatus.PENDING]} listing pages were not read (the day's quota ran out)"
    lp = schema.listing_pages.c
    pages = conn.execute(select(lp.page, lp.total, lp.harvested_at).where(lp.job_id == listing).order_by(lp.page)).all()
    totals = {p.total for p in pages}
    if len(totals) != 1 or None in totals:
        return False, f"query.total changed while the listing was read ({', '.join(sorted(str(t) for t in totals))})"
    [total] = totals
    expected = max(1, -(-int(total) // num_results))
    if [p.page for p in pages] != list(range(1, expected + 1)):
        return False, f"{len(pages)} pages read where query.total {total} makes {expected}"
    if len({p.harvested_at.date() for p in pages}) != 1:
        return False, "the listing's pages were read on two UTC days"
    return True, None


def new_outputs_query(conn: Connection) -> Select[Any]:
    """The ids of the user's lists that were never answered (pending in every job), in list order."""
    ji = schema.job_items.c
    other = schema.job_items.alias("answered")
    answered = exists().where(
        other.c.id_type == ji.id_type,
        other.c.identifier == ji.identifier,
        other.c.status.in_((ItemStatus.DONE.value, ItemStatus.NOT_FOUND.value)),
    )
    return (
        select(ji.id_type, ji.identifier, func.min(ji.line_no))
        .where(ji.job_id.in_(nightly.user_jobs(conn)), ji.status == ItemStatus.PENDING.value, ~answered)
        .group_by(ji.id_type, ji.identifier)
        .order_by(func.min(ji.line_no), ji.id_type, ji.identifier)
    )


def _new_outputs(conn: Connection, new_job: int, room: int | None, now: datetime) -> int:
    """Add the ids of the user's lists that were never answered to `new_job`, up to `room`."""
    query = new_outputs_query(conn)
    if room is not None:
        query = query.limit(room)
    rows = [(str(t), str(i), n) for n, (t, i, _) in enumerate(conn.execute(query), start=1)]
    return jobs.add_items(conn, new_job, rows, now)


def _last_listing(conn: Connection) -> datetime | None:
    """When the newest complete change-feed night began its listing (else the newest finished nightly began)."""
    r = schema.nightly_runs.c
    last = conn.execute(select(func.max(r.started_at)).where(r.mode == "changes", r.complete.is_(True))).scalar()
    if last is None:
        last = conn.execute(select(func.max(r.started_at))).scalar()
    return last


def window(conn: Connection, now: datetime) -> tuple[str, int, datetime | None]:
    """Tonight's listing: its timeframe, the days it is trusted to cover, and when the listing it follows began."""
    last = _last_listing(conn)
    timeframe, days = choose_timeframe(now - last if last is not None else timedelta(0))
    return timeframe, days, last


def listed_before(conn: Connection, timeframe: str, days: int, filters: Mapping[str, str]) -> tuple[int | None, str | None]:
    """How many outputs tonight's listing should hold, from the newest change-feed night with the same
    filters: (outputs, what the guess rests on), or (None, None) before the first such night.

    The same timeframe is taken as it was; another is scaled by its days (an upper bound: an output
    with attention on two days is listed once).
    """
    r = schema.nightly_runs.c
    rows = conn.execute(
        select(r.timeframe, r.listed, r.night)
        .where(r.mode == "changes", r.listed.is_not(None), r.filters == filters_text(filters))
        .order_by(r.started_at.desc())
        .limit(20)
    ).all()
    for row in rows:
        if row.timeframe == timeframe:
            return int(row.listed), f"the {timeframe} listing of {row.night} held {int(row.listed):,}"
    if not rows:
        return None, None
    row = rows[0]
    their = dict(TIMEFRAME_DAYS).get(str(row.timeframe))
    if not their:
        return None, None
    return math.ceil(int(row.listed) * days / their), f"scaled from the {row.timeframe} listing of {row.night}: {int(row.listed):,}"


def _abandon(engine: Engine, job_id: int, why: str) -> None:
    """A listing the night gave up: never resumed later (a later day's listing is another listing)."""
    with engine.begin() as conn:
        conn.execute(
            update(schema.jobs)
            .where(schema.jobs.c.id == job_id)
            .values(status=JobStatus.STOPPED, runner=None, resume_after=None, last_error=f"abandoned by the change-feed night: {why}")
        )


def prefix_of(p: NightlyParams) -> str | None:
    prefix = p.filters.get("doi_prefix")
    return prefix.strip().lower().rstrip("/") if prefix else None


def run_night(
    engine: Engine, config: Config, job: jobs.Job, runner: str, progress: nightly.ProgressFactory | None
) -> nightly.Report | None:
    """Run (or finish) a change-feed night; returns its nightly.Report, or None when the key lacks Citations
    and the night is to run in refresh mode (its params then say so: discover off, changes.fallback)."""
    p = job.params
    assert isinstance(p, NightlyParams)
    c: dict[str, Any] = dict(p.changes or {})
    name = f"nightly {p.night}"

    def keep(**changes: Any) -> None:
        c.update(changes)
        with engine.begin() as conn:
            jobs.set_params(conn, job.id, changes=dict(c))

    def spent(outcome: Any) -> None:
        if outcome is not None:
            keep(requests=int(c.get("requests", 0)) + outcome.requests)

    if not p.discover and "new_job" not in c:
        # [api] endpoints leaves Citations out: no listing to follow, tonight is a refresh night.
        note = 'mode = "changes" reads the Citations listing, which [api] endpoints leaves out: this night ran in refresh mode'
        logger.warning("nightly: %s", note)
        with engine.begin() as conn:
            jobs.set_params(conn, job.id, changes=c | {"fallback": note, "requests": 0})
        return None

    # 1. New outputs of the user's lists, before the listing: from tonight on, they are tracked.
    if "new_job" not in c:
        with engine.begin() as conn:
            room = nightly.room_for(p, nightly.quota_left(conn, config))
            new_job = jobs.new_job(conn, p.endpoint, "doi", f"{name} new outputs", HarvestParams(fetch=p.fetch, nightly=job.id))
            added = _new_outputs(conn, new_job, room, clock.utcnow())
        logger.info("nightly: %d new outputs of your lists first", added)
        keep(new_job=new_job, requests=0)
    outcome = nightly._step(engine, config, c["new_job"], runner, progress)
    spent(outcome)
    if outcome is not None and outcome.status != JobStatus.FINISHED:
        return nightly._stopped(engine, job, p.night, runner, outcome)

    # 2. The listing, over the time since the last complete one (chosen now, after the new outputs took theirs).
    if "listing_job" not in c:
        now = clock.utcnow()
        with engine.begin() as conn:
            timeframe, days, _ = window(conn, now)
            filters = dict(p.filters) | {"order_by": ORDER_BY}
            listing, _ = jobs.create_citations_job(conn, timeframe, filters, p.num_results, None, None, f"{name} listing", job.id)
            jobs.set_params(conn, listing, tracked_only=True)
        window_from = p.night - timedelta(days=days - 1)
        logger.info("nightly: listing what had attention in %s (since %s), ordered by %s", timeframe, window_from, ORDER_BY)
        keep(listing_job=listing, timeframe=timeframe, window_from=window_from.isoformat())
    listing = int(c["listing_job"])
    if "complete" not in c:
        try:
            outcome = nightly._step(engine, config, listing, runner, progress)
            denied = outcome is not None and outcome.status == JobStatus.STOPPED and "answered 403" in (outcome.message or "")
        except ApiAuthError as e:
            if e.status != 403:
                raise
            denied = True
        if denied:
            note = 'mode = "changes" needs Citations, which this key\'s tier lacks (403 on the listing): this night ran in refresh mode'
            logger.warning("nightly: %s", note)
            _abandon(engine, listing, "403 on the listing")
            with engine.begin() as conn:
                jobs.set_params(conn, job.id, discover=False, changes=c | {"fallback": note, "requests": int(c.get("requests", 0)) + 1})
            return None
        spent(outcome)
        if outcome is not None and outcome.status == JobStatus.PAUSED:
            # Resumed tomorrow it would mix two days' listings: the night ends incomplete, the next one reads further back.
            _abandon(engine, listing, "the day's quota ran out")
            keep(complete=False, note="the day's quota ran out during the listing")
        elif outcome is not None and outcome.status != JobStatus.FINISHED:
            return nightly._stopped(engine, job, p.night, runner, outcome)
        else:
            with engine.connect() as conn:
                complete, why = check_listing(conn, listing, p.num_results)
            keep(complete=complete, note=why)
        if not c["complete"]:
            logger.warning(
                "nightly: the listing is incomplete (%s): nothing is carried forward tonight; the next night reads further back", c["note"]
            )

    # 3. The slow full refresh, oldest first, in what the quota leaves.
    if "full_job" not in c:
        with leases.beating(engine, runner), engine.begin() as conn:
            quota = nightly.quota_left(conn, config)
            full_job = jobs.new_job(conn, p.endpoint, "doi", f"{name} full refresh", HarvestParams(fetch=p.fetch, nightly=job.id))
            due = nightly.add_due(conn, full_job, replace(p, refresh_after=p.full_refresh_after), quota)
        logger.info("nightly: full refresh of %d outputs last harvested before %s", sum(due.values()), p.full_refresh_after)
        keep(full_job=full_job)
    outcome = nightly._step(engine, config, int(c["full_job"]), runner, progress)
    spent(outcome)
    if outcome is not None and outcome.status != JobStatus.FINISHED:
        return nightly._stopped(engine, job, p.night, runner, outcome)

    with leases.beating(engine, runner):
        return _finish(engine, job, p, c, runner)


def _carried(conn: Connection, night: date, prefix: str | None) -> int:
    """Tracked outputs a complete night carries: observed before, not tonight, not superseded, covered by the listing."""
    o, s = schema.outputs.c, schema.counts_snapshots.c
    observed_before = exists().where(s.altmetric_id == o.altmetric_id, s.harvested_on < night)
    observed_tonight = exists().where(s.altmetric_id == o.altmetric_id, s.harvested_on == night)
    where = [o.superseded_by.is_(None), observed_before, ~observed_tonight]
    if prefix is not None:
        where.append(func.lower(o.doi).like(prefix + "/%"))
    return int(conn.execute(select(func.count()).select_from(schema.outputs).where(and_(*where))).scalar_one())


def _finish(engine: Engine, job: jobs.Job, p: NightlyParams, c: dict[str, Any], runner: str) -> nightly.Report:
    now = clock.utcnow()
    started = job.started_at or now
    listing = int(c["listing_job"])
    with engine.begin() as conn:
        new = jobs.item_counts_in(conn, int(c["new_job"]))
        full = jobs.item_counts_in(conn, int(c["full_job"]))
        pages = jobs.item_counts_in(conn, listing)
        lp, ca = schema.listing_pages.c, schema.citation_activity.c
        listed = int(conn.execute(select(func.coalesce(func.max(lp.total), 0)).where(lp.job_id == listing)).scalar_one())
        tracked = int(conn.execute(select(func.count(ca.altmetric_id.distinct())).where(ca.job_id == listing)).scalar_one())
        complete = bool(c["complete"])
        carried = _carried(conn, p.night, prefix_of(p)) if complete else 0
        failed = new[ItemStatus.FAILED] + full[ItemStatus.FAILED] + pages[ItemStatus.FAILED]
        if failed:
            code = ExitCode.SOME_FAILED
        elif not complete:
            # Not a failure of the scheduler's to act on, yet not a night to call done: the next night covers it.
            code = ExitCode.PAUSED if "quota" in (c.get("note") or "") else ExitCode.SOME_FAILED
        else:
            code = ExitCode.OK
        report = nightly.Report(
            job.id,
            p.night,
            JobStatus.FINISHED,
            code,
            discovered=tracked,
            new_outputs=new[ItemStatus.DONE],
            refreshed=full[ItemStatus.DONE],
            not_found=new[ItemStatus.NOT_FOUND] + full[ItemStatus.NOT_FOUND],
            failed=failed,
            mode="changes",
            complete=complete,
            mode_note=c.get("note"),
            timeframe=str(c["timeframe"]),
            requests=int(c.get("requests", 0)),
            listed=listed,
            listed_tracked=tracked,
            carried=carried,
            full_refreshed=full[ItemStatus.DONE],
            movers=nightly.movers_of(conn, [int(c["new_job"]), int(c["full_job"])], listing),
        )
        nightly.store_movers(conn, job.id, report.movers)
        upsert(
            conn,
            schema.nightly_runs,
            [
                {
                    "job_id": job.id,
                    "night": p.night,
                    "timeframe": str(c["timeframe"]),
                    "filters": filters_text(p.filters),
                    "endpoint": p.endpoint,
                    "discovery_job_id": listing,
                    "refresh_job_id": int(c["full_job"]),
                    "discovered": tracked,
                    "new_outputs": report.new_outputs,
                    "refreshed": report.refreshed,
                    "not_found": report.not_found,
                    "failed": failed,
                    "started_at": started,
                    "finished_at": now,
                    "mode": "changes",
                    "mode_note": c.get("note"),
                    "complete": complete,
                    "window_from": date.fromisoformat(str(c["window_from"])),
                    "listing_job_id": listing,
                    "covers_doi_prefix": prefix_of(p),
                    "requests": report.requests,
                    "listed": listed,
                    "listed_tracked": tracked,
                    "carried": carried,
                    "full_refreshed": report.full_refreshed,
                }
            ],
        )
        done = conn.execute(
            update(schema.jobs)
            .where(schema.jobs.c.id == job.id, schema.jobs.c.runner == runner)
            .values(nightly.finished_row(now, replace(p, changes=c, report=report.as_dict())))
        ).rowcount
        if done != 1:
            raise JobError(f"nightly job {job.id} was taken over by another process; its report was not stored")
    return report
