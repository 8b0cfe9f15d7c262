"""Dry runs: what a harvest, a Citations listing or a nightly would do, from arithmetic alone.

No job is created and no request is sent. A harvest's ids are streamed into a
temporary table (a million ids never sit in a Python set) and compared with
what the database holds by SQL; the time and the days of quota come from the
configured tier and limits, and from what the shared budget row says is
already used today.

A harvest asks the API for every distinct valid id of its list, stored or not
(a stored output is refreshed, that is what a second harvest is for): the
"already stored" and "fresh" figures say what the list adds, not requests saved.
"""

from __future__ import annotations

import collections
import json
import math
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, BinaryIO

from sqlalchemy import Connection, Engine, func, select, text

from harvester import clock, db, endpoints, nightly, schema
from harvester.budget import free_tier_rate, key_hash
from harvester.config import Config, filters_text, parse_duration
from harvester.ids import describe_rejects, read_ids
from harvester.params import ApiUsed, for_endpoint
from harvester.vocabulary import ItemStatus, JobKind, JobStatus

_CHUNK = 20_000
# Without a measured rate, a commercial estimate assumes this much time per request in flight.
ASSUMED_LATENCY = 0.1


@dataclass
class Estimate:
    """How long `requests` take at the configured tier and limits, and which days of quota they span."""

    requests: int
    tier: str
    rate: float | None  # requests/s sustained (None: unknown)
    seconds: float | None
    quota_per_day: int | None  # None: commercial, unlimited
    quota_left_today: int | None
    days: int | None  # UTC days the requests span (today included); None when the time is unknown
    ends_at: datetime | None
    basis: str  # where the rate comes from

    def line(self) -> str:
        if self.requests == 0:
            return "time: nothing to request"
        when = "unknown" if self.seconds is None else _duration(self.seconds)
        if self.tier == "commercial":
            return f"time: {when} at {self.basis}; commercial tier: unlimited quota"
        days = f"{self.days} UTC day{'s' if self.days != 1 else ''}"
        return (
            f"time: {when} at {self.basis}, spanning {days} of the daily quota "
            f"({self.quota_per_day:,}/day, {self.quota_left_today:,} left today); ends about {self.ends_at:%Y-%m-%d %H:%M} UTC"
        )


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _budget_row(conn: Connection, config: Config) -> Any:
    b = schema.rate_budgets.c
    return conn.execute(select(schema.rate_budgets).where(b.key_hash == key_hash(config.api.key))).first()


def estimate(conn: Connection, config: Config, requests: int, concurrency: int | None = None, endpoint: str | None = None) -> Estimate:
    """Time and quota days of `requests` to `endpoint` from now, as the shared budget would schedule them.

    `endpoint`: the one the requests go to (None: [nightly] endpoint, what a nightly refreshes
    with). It matters on the commercial tier only, where the time is the rate measured on that
    endpoint. On the free tier every endpoint draws on the key's one budget (per_second, per_hour,
    per_day: a Fetch costs a slot as a Counts does, DESIGN.md section 5), so the schedule is the same;
    Fetch's own tweet-id quota is not in it (plan_harvest notes it).
    """
    now = clock.utcnow()
    limits = config.limits
    if config.api.tier != "free":
        rate, basis, startup = _commercial_rate(conn, config, concurrency, endpoint or config.nightly.endpoint)
        seconds = startup + requests / rate if rate else None
        return Estimate(requests, "commercial", rate, seconds, None, None, None, None, basis)
    row = _budget_row(conn, config)
    per_hour, per_day = limits.per_hour, limits.per_day
    hour_used = day_used = 0
    if row is not None:
        per_hour = min(per_hour, row.hour_limit or per_hour)
        per_day = min(per_day, row.day_limit or per_day)
        if row.day_start == now.date():
            day_used = int(row.day_used or 0)
        if row.hour_start is not None and row.hour_start == now.replace(minute=0, second=0, microsecond=0):
            hour_used = int(row.hour_used or 0)
    rate = free_tier_rate(limits.per_second)
    # Walk the schedule an hour at a time: a million requests at 3600 an hour is 278 steps.
    t, left, day = now, requests, now.date()
    while left > 0:
        hour_end = t.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        room = min(per_hour - hour_used, per_day - day_used, math.ceil((hour_end - t).total_seconds() * rate))
        sent = max(0, min(left, room))
        t += timedelta(seconds=sent / rate)
        left -= sent
        hour_used += sent
        day_used += sent
        if left == 0:
            break
        if day_used >= per_day:
            t = datetime.combine(t.date() + timedelta(days=1), datetime.min.time())
        else:
            t = max(t, hour_end)
        hour_used = 0
        if t.date() != day:
            day, day_used = t.date(), 0
    left_today = max(0, per_day - (int(row.day_used or 0) if row is not None and row.day_start == now.date() else 0))
    basis = f"{limits.per_second:g}/s, {per_hour:,}/hour, {per_day:,}/day (free tier)"
    return Estimate(requests, "free", rate, (t - now).total_seconds(), per_day, left_today, (t.date() - now.date()).days + 1, t, basis)


# A run that finished no item for this long (and for ten times its usual gap) was paused: a spent
# quota, an outage behind the circuit breaker, or stopped and resumed later. Its rate leaves that time out.
PAUSE_GAP = 60.0
# Recent finished jobs of the endpoint looked at for one run on the same API and tier.
_MEASURED_JOBS = 20


def _commercial_rate(conn: Connection, config: Config, concurrency: int | None, endpoint: str) -> tuple[float | None, str, float]:
    """The rate a commercial run of `endpoint` reaches, its basis, and the seconds it takes to start.

    Measured on the last finished job of the same endpoint that ran against the same API and tier
    (jobs.params "api", which every run records): a Counts job says nothing of Fetch (bodies ten
    times the size, mentions to store), a free-tier or a fake-API job nothing of a commercial key
    on the real one. Capped by max_per_second. Without one: the configured limits.
    """
    limits = config.limits
    c = concurrency or limits.concurrency
    cap = limits.max_per_second
    measured = _measured_rate(conn, config, endpoint)
    if measured is not None:
        rate, startup, job_id = measured
        capped = bool(cap and rate > cap)
        if cap:
            rate = min(rate, cap)
        note = ", capped by max_per_second" if capped else ""
        start = f", {startup:.0f}s to start" if startup >= 0.5 else ""
        return rate, f"{rate:,.0f}/s (measured on {endpoint} job {job_id}{start}{note})", 0.0 if capped else startup
    guess = c / ASSUMED_LATENCY
    rate = min(guess, cap) if cap else guess
    if cap and guess >= cap:
        return rate, f"{rate:,.0f}/s (max_per_second; no {endpoint} job measured yet)", 0.0
    return (
        rate,
        f"~{rate:,.0f}/s (concurrency {c}, assuming {ASSUMED_LATENCY * 1000:.0f} ms a request; no {endpoint} job measured yet)",
        0.0,
    )


def _measured_rate(conn: Connection, config: Config, endpoint: str) -> tuple[float, float, int] | None:
    """(items/s while it worked, seconds before its first batch was written, job id) of the last
    finished job of `endpoint` on this API and tier; None when there is none.

    Not total_items / (finished_at - started_at): started_at is the first start, so a job paused
    for a quota or an outage, or stopped and resumed the next day, would count the pause as work
    (and jobs whose runs paused cannot be told apart by their row). Its items can: the writer stamps
    every item of a batch with the batch's commit time, so the job's commits, one row a batch,
    show when it worked. A gap between commits longer than PAUSE_GAP (and ten times the median
    gap) is a pause and left out; the rest is the time it took. The first batch's wait (the writer
    process starting, the first requests) is a cost of every run, not of every item: it is
    returned apart, and the estimate adds it once.
    """
    j, ji = schema.jobs.c, schema.job_items.c
    here = ApiUsed.of(config.api.url, config.api.tier)
    candidates = conn.execute(
        select(j.id, j.params, j.started_at)
        .where(j.endpoint == endpoint, j.status == JobStatus.FINISHED, j.total_items >= 100, j.started_at.is_not(None))
        .order_by(j.finished_at.desc())
        .limit(_MEASURED_JOBS)
    ).all()
    for job in candidates:
        used = for_endpoint(endpoint, json.loads(job.params or "{}"))
        api = getattr(used, "api", ())
        if not api or any(a != here for a in api):
            continue  # run elsewhere, on another tier, or before runs recorded where they ran
        commits = conn.execute(
            select(ji.updated_at, func.count())
            .where(ji.job_id == job.id, ji.status != ItemStatus.PENDING)
            .group_by(ji.updated_at)
            .order_by(ji.updated_at)
        ).all()
        measured = _busy_rate(job.started_at, [(t, int(n)) for t, n in commits])
        if measured is not None:
            return (*measured, int(job.id))
    return None


def _busy_rate(started: datetime, commits: list[tuple[datetime, int]]) -> tuple[float, float] | None:
    """(items/s between the first and the last commit, pauses left out; seconds to the first commit)."""
    if not commits:
        return None
    lead = max(0.0, (commits[0][0] - started).total_seconds())
    gaps = [(b[0] - a[0]).total_seconds() for a, b in zip(commits, commits[1:], strict=False)]
    if gaps:
        pause = max(PAUSE_GAP, 10 * sorted(gaps)[len(gaps) // 2])
        # The batch after a pause counts with it: its items were worked on after the resume, not in the gap.
        busy = sum(g for g in gaps if g <= pause)
        items = sum(n for g, (_, n) in zip(gaps, commits[1:], strict=True) if g <= pause)
        if busy > 0 and items > 0:
            return items / busy, (lead if lead <= pause else 0.0)
    # One batch (or every commit in one instant): its items over the time to it.
    return (commits[0][1] / lead, 0.0) if lead > 0 else None


# -- harvest ------------------------------------------------------------------------------------------


@dataclass
class HarvestPlan:
    """What `harvest` would do with these ids."""

    endpoint: str
    id_type: str
    lines: int  # ids read (non-blank, non-comment lines)
    rejected: int
    duplicates: int
    distinct: int
    stored: int  # already in the database
    fresh: int  # of those, harvested within [nightly] refresh_after
    new: int
    to_request: int
    refresh_after: str
    estimate: Estimate
    tweets_known: int | None = None  # Fetch: tweets the stored outputs already have
    notes: list[str] = field(default_factory=list)
    by_type: dict[str, int] = field(default_factory=dict)  # distinct ids of each type (--id-type auto mixes them)
    reject_reasons: list[tuple[str, int]] = field(default_factory=list)  # the commonest reasons, most lines first

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["dry_run"] = True
        out["command"] = "harvest"
        if self.estimate.ends_at is not None:
            out["estimate"]["ends_at"] = self.estimate.ends_at.isoformat()
        return out

    def text(self) -> list[str]:
        lines = [
            f"dry run: harvest {self.endpoint} by {self.id_type}: no job created, no request sent",
            f"  ids read:        {self.lines:>12,}",
            f"  rejected:        {self.rejected:>12,}"
            + (f"  ({describe_rejects(self.reject_reasons, self.rejected)})" if self.rejected else ""),
            f"  duplicates:      {self.duplicates:>12,}",
            f"  distinct ids:    {self.distinct:>12,}"
            + (f"  ({', '.join(f'{t} {n:,}' for t, n in self.by_type.items())})" if self.id_type == "auto" and self.by_type else ""),
            f"  already stored:  {self.stored:>12,}  (of which fresh, harvested within {self.refresh_after}: {self.fresh:,})",
            f"  new:             {self.new:>12,}",
            f"  to request:      {self.to_request:>12,}  (every distinct id: stored ones are refreshed)",
            f"  {self.estimate.line()}",
        ]
        return lines + [f"  {n}" for n in self.notes]


def plan_harvest(
    engine: Engine,
    config: Config,
    sources: list[str],
    id_type: str,
    endpoint: str,
    stdin: BinaryIO | None = None,
    concurrency: int | None = None,
    column: str | None = None,
) -> HarvestPlan:
    """Read the ids as `harvest` would, compare them with the database, and estimate the run; writes nothing."""
    refresh_after = config.nightly.refresh_after
    fresh_since = clock.utcnow() - parse_duration(refresh_after)
    with engine.connect() as conn, db.scratch_keys(conn, "dry_ids") as add:
        valid = rejected = 0
        reasons: collections.Counter[str] = collections.Counter()
        chunk: list[tuple[str, str]] = []
        for line in read_ids(sources, id_type, stdin, column=column):
            if line.key is None or line.id_type is None:
                rejected += 1
                reasons[line.reason or "?"] += 1
                continue
            valid += 1
            chunk.append((line.id_type, line.key))
            if len(chunk) >= _CHUNK:
                add(chunk)
                chunk = []
        if chunk:
            add(chunk)
        by_type = {str(t): int(n) for t, n in conn.exec_driver_sql("SELECT t, count(*) FROM dry_ids GROUP BY t ORDER BY 2 DESC, 1")}
        distinct = sum(by_type.values())
        # The stored outputs of the ids, each id by its own type (--id-type auto mixes them): an
        # Altmetric id is the output's key, any other type is looked up in identifiers. The CASE
        # keeps PostgreSQL from casting a DOI to a number.
        matched = (
            "SELECT d.t, d.k, o.altmetric_id, o.harvested_at FROM dry_ids d"
            " JOIN identifiers i ON d.t <> 'id' AND i.scheme = d.t AND i.value = d.k JOIN outputs o ON o.altmetric_id = i.altmetric_id"
            " UNION SELECT d.t, d.k, o.altmetric_id, o.harvested_at FROM dry_ids d"
            " JOIN outputs o ON o.altmetric_id = CAST(CASE WHEN d.t = 'id' THEN d.k END AS BIGINT)"
        )
        stored, fresh = conn.execute(
            text(
                "SELECT count(*), count(CASE WHEN h >= :fresh THEN 1 END)"
                f" FROM (SELECT m.t, m.k, max(m.harvested_at) AS h FROM ({matched}) m GROUP BY m.t, m.k) s"
            ),
            {"fresh": _stamp(conn, fresh_since)},
        ).one()
        tweets = None
        if "tweet-id" in endpoints.by_kind(endpoint).quotas:  # Fetch: its bodies carry the tweet ids
            tweets = int(
                conn.execute(
                    text(
                        f"SELECT coalesce(sum(coalesce(sc.posts_count, sc.unique_users_count)), 0)"
                        f" FROM (SELECT DISTINCT m.altmetric_id FROM ({matched}) m) o"
                        " JOIN source_counts sc ON sc.altmetric_id = o.altmetric_id AND sc.source = 'twitter'"
                    )
                ).scalar_one()
            )
        est = estimate(conn, config, distinct, concurrency, endpoint=endpoint)
    notes = []
    if tweets is not None:
        notes.append(
            "fetch: the API's tweet-id quota (X-TweetIDRateLimit, a day) counts the tweets the bodies carry: "
            f"the {stored:,} stored outputs alone have {tweets:,}, the new ones more; a spent tweet-id quota pauses the job (exit 75) until it resets"
        )
    if config.api.tier == "free" and est.days and est.days > 1:
        notes.append("free tier: the run pauses (exit 75) when a day's quota is spent; `harvester resume` continues it the next UTC day")
    return HarvestPlan(
        endpoint,
        id_type,
        valid + rejected,
        rejected,
        valid - distinct,
        distinct,
        int(stored),
        int(fresh),
        distinct - int(stored),
        distinct,
        refresh_after,
        est,
        tweets,
        notes,
        by_type,
        sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])),  # as jobs.reject_reasons orders them
    )


def _stamp(conn: Connection, when: datetime) -> Any:
    """A datetime as the DateTime column stores it (the raw SQL bypasses the column's type)."""
    process = schema.outputs.c.harvested_at.type.bind_processor(conn.dialect)
    return process(when) if process else when


# -- citations ----------------------------------------------------------------------------------------


@dataclass
class CitationsPlan:
    """What `citations` would request: its pages (known only with a page count) and the follow-up harvest."""

    timeframe: str
    filters: dict[str, str]
    num_results: int
    pages: int | None  # None: unknown until page 1 is read (--all-pages)
    then: str | None
    last_total: int | None  # query.total the last listing of this query reported, if any
    estimate: Estimate | None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["dry_run"] = True
        out["command"] = "citations"
        out["pages_known"] = self.pages is not None
        if self.estimate is not None and self.estimate.ends_at is not None:
            out["estimate"]["ends_at"] = self.estimate.ends_at.isoformat()
        return out

    def text(self) -> list[str]:
        query = f"citations {self.timeframe}" + (f" ({filters_text(self.filters)})" if self.filters else " (no filters)")
        lines = [f"dry run: {query}: no job created, no request sent"]
        if self.pages is None:
            lines.append("  pages: unknown until page 1 is read (query.total); give --pages N to know")
        else:
            lines.append(f"  pages: {self.pages:,} ({self.num_results} results a page: up to {self.pages * self.num_results:,} outputs)")
            if self.then:
                lines.append(f"  then {self.then}: up to {self.pages * self.num_results:,} requests (one per listed output)")
        if self.last_total is not None:
            lines.append(
                f"  this query last listed {self.last_total:,} outputs: every page would be {math.ceil(self.last_total / self.num_results):,} pages"
            )
        if self.estimate is not None:
            lines.append(f"  {self.estimate.line()}")
        return lines + [f"  {n}" for n in self.notes]


def plan_citations(
    engine: Engine, config: Config, timeframe: str, filters: dict[str, str], num_results: int, pages: int | None, then: str | None
) -> CitationsPlan:
    """`pages` None: every page (unknown until page 1 is read); the count the command would create the job with otherwise."""
    with engine.connect() as conn:
        last_total = _last_total(conn, timeframe, filters)
        est = None
        if pages is not None:
            # Mostly the follow-up's requests (a page lists up to num_results outputs): timed at its rate.
            est = estimate(conn, config, pages + (pages * num_results if then else 0), endpoint=then or JobKind.CITATIONS)
    notes = []
    if config.api.tier == "free" and not filters and pages is None:
        known = f"{math.ceil(last_total / num_results):,} pages last time" if last_total else "unknown until page 1 is read"
        notes.append(f"warning: every page without filters on a free key ({known}; {config.limits.per_day:,} requests a day)")
    return CitationsPlan(timeframe, filters, num_results, pages, then, last_total, est, notes)


def _last_total(conn: Connection, timeframe: str, filters: dict[str, str]) -> int | None:
    ca = schema.citation_activity.c
    row = conn.execute(
        select(ca.total)
        .where(ca.timeframe == timeframe, ca.filters == filters_text(filters), ca.total.is_not(None))
        .order_by(ca.harvested_at.desc())
        .limit(1)
    ).first()
    return int(row.total) if row is not None else None


# -- nightly ------------------------------------------------------------------------------------------


@dataclass
class NightlyPlan:
    """What tonight's nightly would refresh, by reason, against max_items and the quota."""

    night: str
    tier: str
    unfinished: int | None  # an unfinished nightly's job, finished first
    discover: bool
    discovery_pages: int | None  # at most (None: every page, unknown until page 1)
    last_total: int | None
    lists_due: int
    discovered_due: int  # discovered before tonight, still followed and due (tonight's listing comes on top)
    not_found_due: int
    max_items: int | None
    quota_per_day: int | None
    quota_left: int | None
    planned: dict[str, int]  # what fits, before tonight's listing is known
    follow_discovered: str
    estimate: Estimate | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["dry_run"] = True
        out["command"] = "nightly"
        if self.estimate is not None and self.estimate.ends_at is not None:
            out["estimate"]["ends_at"] = self.estimate.ends_at.isoformat()
        return out

    def text(self) -> list[str]:
        lines = [f"dry run: nightly {self.night}: no job created, no request sent"]
        if self.unfinished is not None:
            lines.append(f"  first: the unfinished nightly (job {self.unfinished}) is finished; its remaining items come before these")
        cap = [f"max_items {self.max_items:,}" if self.max_items is not None else "no max_items"]
        if self.quota_left is not None:
            cap.append(f"quota left today {self.quota_left:,} of {self.quota_per_day:,}")
        else:
            cap.append("commercial tier: unlimited quota")
        lines.append(f"  limits: {', '.join(cap)}")
        if not self.discover:
            lines.append("  discovery: none tonight")
        elif self.discovery_pages is None:
            lines.append(
                "  discovery: pages unknown until page 1 is read"
                + (f" (last listing: {self.last_total:,} outputs)" if self.last_total else "")
            )
        else:
            lines.append(
                f"  discovery: at most {self.discovery_pages:,} pages"
                + (f" (last listing: {self.last_total:,} outputs)" if self.last_total else "")
            )
        p = self.planned
        lines += [
            f"  1. your lists:  {p['lists']:>10,} of {self.lists_due:,} due",
            f"  2. discovered:  {p['discovered']:>10,} of {self.discovered_due:,} due (listed within follow_discovered {self.follow_discovered}),"
            " plus what tonight's listing adds, in the room left",
            f"  3. old 404s:    {p['not_found']:>10,} of {self.not_found_due:,} due",
        ]
        if self.estimate is not None:
            lines.append(f"  {self.estimate.line()}")
        return lines + [f"  {n}" for n in self.notes]


@dataclass
class ChangesPlan:
    """What tonight's change-feed nightly (mode = "changes") would ask, step by step, against the quota."""

    night: str
    tier: str
    mode: str
    unfinished: int | None
    last_complete: str | None  # when the listing tonight follows began (None: no night yet)
    timeframe: str
    window_from: str  # the first day the listing vouches for
    pages_expected: int | None  # None: unknown until page 1 is read
    pages_basis: str | None
    new_outputs: int  # ids of your lists never answered, asked first
    full_due: int  # tracked outputs last asked before full_refresh_after
    full_refresh_after: str
    max_items: int | None
    quota_per_day: int | None
    quota_left: int | None
    planned: dict[str, int]  # requests per step that fit (pages: the expected count, or 1 when unknown)
    estimate: Estimate | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["dry_run"] = True
        out["command"] = "nightly"
        if self.estimate is not None and self.estimate.ends_at is not None:
            out["estimate"]["ends_at"] = self.estimate.ends_at.isoformat()
        return out

    def text(self) -> list[str]:
        lines = [f'dry run: nightly {self.night} (mode = "changes"): no job created, no request sent']
        if self.unfinished is not None:
            lines.append(f"  first: the unfinished nightly (job {self.unfinished}) is finished; its remaining steps come before these")
        if self.quota_left is not None:
            lines.append(f"  quota: {self.quota_left:,} left today of {self.quota_per_day:,}")
        else:
            lines.append("  quota: commercial tier, unlimited")
        p = self.planned
        since = f"since the last complete listing, begun {self.last_complete}" if self.last_complete else "no change-feed night yet"
        pages = (
            f"about {self.pages_expected:,} pages ({self.pages_basis})"
            if self.pages_expected is not None
            else "pages unknown until page 1 is read"
        )
        lines += [
            f"  1. new outputs:  {p['new']:>9,} of {self.new_outputs:,} never harvested in your lists, asked first",
            f"  2. listing:      timeframe {self.timeframe} ({since}; vouches from {self.window_from}), {pages}",
            f"  3. full refresh: {p['full']:>9,} of {self.full_due:,} last asked before full_refresh_after {self.full_refresh_after},"
            " oldest first, in the quota left",
        ]
        total = sum(p.values())
        share = f" ({total / self.quota_left:.1%} of the quota left)" if self.quota_left else ""
        if self.pages_expected is None:
            lines.append(f"  requests: at least {total:,}{share}, plus the listing's pages after the first")
        else:
            lines.append(f"  requests: about {total:,}{share}")
        if self.estimate is not None:
            lines.append(f"  {self.estimate.line()}")
        return lines + [f"  {n}" for n in self.notes]


def plan_changes(engine: Engine, config: Config) -> ChangesPlan:
    """Tonight's change-feed night without running it: its window, its expected pages and what the quota leaves."""
    from harvester import changefeed

    now = clock.utcnow()
    p = nightly.params_for(config, now)
    notes: list[str] = []
    with engine.connect() as conn:
        held = conn.execute(select(schema.jobs.c.id).where(schema.jobs.c.lock_name == nightly.LOCK)).scalar()
        limit, used = nightly.quota_today(conn, config)
        quota = None if limit is None else max(0, limit - used)
        timeframe, days, last = changefeed.window(conn, now)
        expected, basis = changefeed.listed_before(conn, timeframe, days, p.filters)
        pages = None if expected is None else max(1, math.ceil(expected / p.num_results))
        # Unknown pages still cost the first one, which tells the rest: never plan a listing as free.
        pages_planned = 1 if pages is None else pages
        new = int(conn.execute(select(func.count()).select_from(changefeed.new_outputs_query(conn).subquery())).scalar_one())
        full = replace(p, refresh_after=p.full_refresh_after)
        full_due = sum(
            int(conn.execute(select(func.count()).select_from(q.subquery())).scalar_one()) for q in nightly.due_queries(conn, full)
        )
        room = nightly.room_for(p, quota)
        take_new = new if room is None else min(new, room)
        left = None if quota is None else max(0, quota - take_new - pages_planned)
        room = nightly.room_for(p, left)
        planned = {"new": take_new, "pages": pages_planned, "full": full_due if room is None else min(full_due, room)}
        est = estimate(conn, config, sum(planned.values()))
        fell_back = conn.execute(
            select(schema.nightly_runs.c.mode_note)
            .where(schema.nightly_runs.c.mode == "refresh", schema.nightly_runs.c.mode_note.is_not(None))
            .order_by(schema.nightly_runs.c.started_at.desc())
            .limit(1)
        ).scalar()
    if not p.discover:
        notes.append(
            'warning: [api] endpoints leaves Citations out: the night would run in refresh mode (mode = "changes" reads its listing)'
        )
    elif fell_back:
        notes.append(f"warning: the last night fell back: {fell_back}")
    if last is None:
        notes.append("the first night lists only today: the series starts tonight (earlier days stay gaps)")
    window_from = p.night - timedelta(days=days - 1)
    return ChangesPlan(
        now.date().isoformat(),
        config.api.tier,
        "changes",
        held,
        None if last is None else last.strftime("%Y-%m-%d %H:%M UTC"),
        timeframe,
        window_from.isoformat(),
        pages,
        basis,
        new,
        full_due,
        p.full_refresh_after,
        p.max_items,
        limit,
        quota,
        planned,
        est,
        notes,
    )


def plan_nightly(engine: Engine, config: Config) -> NightlyPlan | ChangesPlan:
    """Tonight's nightly without running it: the same selection queries, counted instead of inserted."""
    if config.nightly.mode == "changes":
        return plan_changes(engine, config)
    now = clock.utcnow()
    p = nightly.params_for(config, now)
    with engine.connect() as conn:
        held = conn.execute(select(schema.jobs.c.id).where(schema.jobs.c.lock_name == nightly.LOCK)).scalar()
        limit, used = nightly.quota_today(conn, config)
        quota = None if limit is None else max(0, limit - used)
        pages = nightly.discovery_pages(conn, config, p) if p.discover else 0
        due = [int(conn.execute(select(func.count()).select_from(q.subquery())).scalar_one()) for q in nightly.due_queries(conn, p)]
        last_total = _last_total(conn, p.timeframe, p.filters) if p.discover else None
        # Pages: the last listing of this query tells how many it takes, within the cap.
        expected = math.ceil(last_total / p.num_results) if last_total else None
        spent_pages = min(x for x in (pages, expected) if x is not None) if pages is not None or expected is not None else 0
        room = nightly.room_for(p, None if quota is None else max(0, quota - spent_pages))
        planned: dict[str, int] = {}
        for part, n in zip(nightly.PARTS, due, strict=True):
            take = n if room is None else min(n, room)
            planned[part] = take
            if room is not None:
                room -= take
        est = estimate(conn, config, spent_pages + sum(planned.values()))
    notes = []
    if quota is not None and planned["lists"] < due[0]:
        notes.append(
            f"your lists have {due[0]:,} outputs due and today's quota leaves room for {planned['lists']:,}:"
            ' [nightly] mode = "changes" asks only what changed (docs/nightly.md)'
        )
    if config.api.tier == "free" and p.discover and not p.filters:
        known = f"{math.ceil(last_total / p.num_results):,} pages last time" if last_total else "pages unknown until page 1 is read"
        notes.append(f"warning: discovery without [nightly] filters on a free key ({known}; capped at what the lists leave of the quota)")
    return NightlyPlan(
        now.date().isoformat(),
        config.api.tier,
        held,
        p.discover and pages != 0,
        pages,
        last_total,
        due[0],
        due[1],
        due[2],
        p.max_items,
        limit,
        quota,
        planned,
        p.follow_discovered,
        est,
        notes,
    )
