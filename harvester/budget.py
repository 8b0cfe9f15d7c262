"""One key, one budget: the rate limits of an API key, shared through the database.

Every process that uses a key (any job, any machine on the same database)
draws its requests from one row of `rate_budgets`, keyed by a salted hash of
the key. The row holds:

- the free tier's schedule of request slots (`next_slot_at`): a process leases
  a small slice of consecutive slots, evenly spaced at the configured rate, and
  sends one request in each. Slices of different processes never overlap, so
  together they keep the even spacing a server with a bucket of one needs;
- the requests granted in the current clock hour and UTC day, as the API
  counts them, so that restarts and other processes count too;
- a pause the server asked for (Retry-After, a spent hourly limit) and a spent
  daily (or tweet-id) quota, which hold every process;
- a rate factor, halved while 429s persist and grown back after.

A slice is one short write transaction (row locked, read, updated); the
process leases about a quarter of a second of slots at a time, at least one
slot, so at 1 request/s that is one transaction a request, at 20/s four a
second: far below what either engine sustains. Before a request goes out the
process reads the row again (a primary-key SELECT) unless it read it within
the last 100 ms or half an interval, so no request is sent into a pause
another process recorded. All times are the database's clock (see db_clock).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import date, datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, RowMapping, select, update

from harvester import clock, db, schema
from harvester.clock import day_of, hour_of, next_midnight, to_datetime, to_epoch
from harvester.config import LimitsConfig
from harvester.db import patient
from harvester.errors import OWN_DAILY, QuotaExhausted

logger = logging.getLogger(__name__)

# Shape the free tier this much under the configured rate: a 3% margin absorbs
# a few milliseconds of jitter at 20/s and still sustains more than 95%.
FREE_TIER_MARGIN = 0.97
MIN_SLACK = 0.010  # seconds; see free_tier_rate
SLICE_SECONDS = 0.25  # a process leases this much of the schedule at a time (at least one slot)
_SALT = b"altmetric-harvester rate budget v1\x00"


def free_tier_rate(per_second: float) -> float:
    """The rate the free tier's slots are spaced at: a margin under the key's.

    3% absorbs the jitter of one process at 20/s. At low rates 3% is only a few
    milliseconds, and several processes on a busy machine (or the server's own
    scheduling) delay one request more than that behind the next: there the
    margin is at least 10 ms, up to 5%.
    """
    interval = 1.0 / per_second
    slack = interval * (1 / FREE_TIER_MARGIN - 1)
    if per_second < 10:
        slack = max(slack, min(MIN_SLACK, interval * 0.05))
    return 1.0 / (interval + slack)


def key_hash(key: str | None) -> str:
    """The key's identity in rate_budgets: a salted SHA-256, never the key itself."""
    return hashlib.sha256(_SALT + (key or "").encode()).hexdigest()[:40]


@dataclass(frozen=True)
class State:
    """What a process needs to know before it sends: a pause, a spent quota, the rate factor."""

    paused_until: float  # database epoch seconds; 0 when none
    quota_until: float | None
    quota_kind: str | None
    factor: float

    def quota_error(self, now: float) -> QuotaExhausted | None:
        if self.quota_until is not None and now < self.quota_until:
            return QuotaExhausted(to_datetime(self.quota_until), self.quota_kind or "daily")
        return None


def _epoch(when: datetime | None) -> float:
    """A stored time in epoch seconds; 0 for none (before every time the budget compares it with)."""
    return to_epoch(when) if when is not None else 0.0


@dataclass
class Row:
    """A key's rate_budgets row (docs/schema.md), typed."""

    next_slot_at: datetime | None
    hour_start: datetime | None
    hour_used: int
    day_start: date | None
    day_used: int
    hour_limit: int | None
    day_limit: int | None
    paused_until: datetime | None
    pause_reason: str | None
    quota_until: datetime | None
    quota_kind: str | None
    rate_factor: float
    rate_changed_at: datetime | None

    @classmethod
    def of(cls, mapping: RowMapping) -> Row:
        return cls(**{f.name: mapping[f.name] for f in fields(cls)})

    def state(self) -> State:
        return State(
            _epoch(self.paused_until),
            to_epoch(self.quota_until) if self.quota_until is not None else None,
            self.quota_kind,
            float(self.rate_factor or 1.0),
        )


class SharedBudget:
    """The rate_budgets row of one key, and the arithmetic of its slots and windows.

    Methods are synchronous (each one short transaction): call them from a thread.
    """

    def __init__(self, engine: Engine, key: str | None, limits: LimitsConfig, tier: str) -> None:
        self.engine = engine
        self.key_hash = key_hash(key)
        free = tier == "free"
        # Requests/s of the shared schedule; None: no schedule (commercial without max_per_second).
        self.rate: float | None = free_tier_rate(limits.per_second) if free else limits.max_per_second
        # The server's own interval: a free-tier slot sent later than this margin allows is dropped.
        self.server_interval: float | None = 1.0 / limits.per_second if free else None
        self.per_hour: int | None = limits.per_hour if free else None
        self.per_day: int | None = limits.per_day if free else None
        self.slice = max(1, round((self.rate or 0.0) * SLICE_SECONDS))
        self.offset = self._clock_offset()
        with engine.begin() as conn:
            values = {"key_hash": self.key_hash, "hour_used": 0, "day_used": 0, "rate_factor": 1.0, "updated_at": clock.utcnow()}
            conn.execute(db.insert(conn, schema.rate_budgets).values(values).on_conflict_do_nothing())

    # -- the clock --------------------------------------------------------------------------

    def _clock_offset(self) -> float:
        """Seconds to add to this host's clock to get the database's (best of three round trips)."""
        best: tuple[float, float] | None = None
        for _ in range(3 if db.has_own_clock(self.engine.dialect) else 1):
            with self.engine.connect() as conn:
                before = time.time()
                server = to_epoch(clock.db_now(conn))
                after = time.time()
            sample = (after - before, server - (before + after) / 2)
            best = sample if best is None or sample[0] < best[0] else best
        assert best is not None
        return best[1]

    def now(self) -> float:
        """The database's clock, in epoch seconds, estimated without a round trip."""
        return time.time() + self.offset

    def interval(self, factor: float) -> float:
        assert self.rate is not None
        return 1.0 / (self.rate * factor)

    # -- reading and locking the row -------------------------------------------------------

    def _where(self) -> ColumnElement[bool]:
        return schema.rate_budgets.c.key_hash == self.key_hash

    def _locked(self, conn: Connection) -> Row:
        """The row, locked for this transaction. Writing first takes SQLite's write lock before
        the read (a read that later writes can fail with SQLITE_BUSY), and PostgreSQL's row lock."""
        conn.execute(update(schema.rate_budgets).where(self._where()).values(updated_at=clock.utcnow()))
        return Row.of(conn.execute(select(schema.rate_budgets).where(self._where())).one()._mapping)

    def _save(self, conn: Connection, changes: Mapping[str, Any]) -> None:
        if changes:
            conn.execute(update(schema.rate_budgets).where(self._where()).values(**changes))

    @patient
    def read(self) -> State:
        """The row as it is now (a primary-key read, no lock)."""
        with self.engine.connect() as conn:
            return Row.of(conn.execute(select(schema.rate_budgets).where(self._where())).one()._mapping).state()

    # -- leasing slots ------------------------------------------------------------------------

    @patient
    def lease(self, want: int | None = None) -> tuple[list[float], State]:
        """Lease up to `want` consecutive request slots (database epoch seconds, evenly spaced).

        Slots start at the schedule's next free slot, not before now or the end of
        a pause, and never cross a clock hour (each hour is counted apart). A spent
        hourly limit moves them to the next hour; a spent daily quota raises
        QuotaExhausted (and holds every process until midnight UTC).
        """
        assert self.rate is not None, "no schedule without a rate"
        want = want or self.slice
        with self.engine.begin() as conn:
            row = self._locked(conn)
            now = to_epoch(clock.db_now(conn))
            state = row.state()
            quota = state.quota_error(now)
            if quota is not None:
                raise quota
            changes: dict[str, Any] = {}
            factor = state.factor
            if factor < 1.0 and now - _epoch(row.rate_changed_at) >= 3.0:
                # No 429 for a while: grow back by a quarter (the same steps as a single process took).
                factor = min(1.0, factor * 1.25)
                changes.update(rate_factor=factor, rate_changed_at=to_datetime(now))
                if factor == 1.0:
                    logger.info("no 429 for a while: back to the configured rate")
            interval = self.interval(factor)
            start = max(_epoch(row.next_slot_at), now, state.paused_until)
            hour_start = _epoch(row.hour_start)
            hour_used, day_used, day_start = row.hour_used, row.day_used, row.day_start
            hour_limit = _tightest(self.per_hour, row.hour_limit)
            day_limit = _tightest(self.per_day, row.day_limit)
            spent: float | None = None
            kind = "daily"
            while True:
                if hour_of(start) != hour_start:
                    hour_start, hour_used = hour_of(start), 0
                if day_of(start) != day_start:
                    day_start, day_used = day_of(start), 0
                if day_limit is not None and day_used >= day_limit:
                    spent = to_epoch(next_midnight(to_datetime(start)))
                    # The configured per_day, below what the server announces (or alone): the user's own cap.
                    kind = OWN_DAILY if day_limit == self.per_day and day_limit != row.day_limit else "daily"
                    break
                if hour_limit is not None and hour_used >= hour_limit:
                    start = hour_start + 3600.0
                    if start - now > 5:
                        until = f"{to_datetime(start):%H:%M}"
                        logger.warning("the hourly limit (%d requests) is spent: the next request waits until %s UTC", hour_limit, until)
                    continue
                break
            if spent is not None:
                # Committed, not raised inside the transaction: every process must see it.
                self._save(conn, changes | {"quota_until": to_datetime(spent), "quota_kind": kind})
                slots = []
            else:
                slots = self._slots(want, start, interval, hour_start, hour_used, hour_limit, day_used, day_limit)
                n = len(slots)
                changes.update(
                    next_slot_at=to_datetime(start + n * interval),
                    hour_start=to_datetime(hour_start),
                    hour_used=hour_used + n,
                    day_start=day_start,
                    day_used=day_used + n,
                )
                self._save(conn, changes)
        if spent is not None:
            raise QuotaExhausted(to_datetime(spent), kind)
        return slots, State(state.paused_until, None, None, factor)

    @staticmethod
    def _slots(
        want: int,
        start: float,
        interval: float,
        hour_start: float,
        hour_used: int,
        hour_limit: int | None,
        day_used: int,
        day_limit: int | None,
    ) -> list[float]:
        left = [lim - used for lim, used in ((hour_limit, hour_used), (day_limit, day_used)) if lim is not None]
        n = max(1, min([want, *left]))
        # A slice stays within its clock hour.
        n = min(n, max(1, math.ceil((hour_start + 3600.0 - start) / interval)))
        return [start + i * interval for i in range(n)]

    @patient
    def give_back(self, slots: Sequence[float], interval: float, rewind: bool = True) -> None:
        """Return leased slots that were never used: they do not count, and the schedule takes them back
        when they were its last ones (a process that stops leaves no hole in it)."""
        if not slots:
            return
        with self.engine.begin() as conn:
            row = self._locked(conn)
            changes: dict[str, Any] = {}
            if row.hour_start is not None:
                hour_start = to_epoch(row.hour_start)
                n = sum(1 for s in slots if hour_of(s) == hour_start)
                changes["hour_used"] = max(0, row.hour_used - n)
            n = sum(1 for s in slots if day_of(s) == row.day_start)
            changes["day_used"] = max(0, row.day_used - n)
            if rewind and row.next_slot_at is not None and abs(to_epoch(row.next_slot_at) - (max(slots) + interval)) < 1e-3:
                changes["next_slot_at"] = to_datetime(max(min(slots), to_epoch(clock.db_now(conn))))
            self._save(conn, changes)

    # -- what the server says ------------------------------------------------------------------

    @patient
    def pause(self, until: float, reason: str) -> State:
        """Hold every process until `until` (database epoch seconds; the longest pause asked for wins)."""
        with self.engine.begin() as conn:
            row = self._locked(conn)
            if row.paused_until is None or to_epoch(row.paused_until) < until:
                row = replace(row, paused_until=to_datetime(until), pause_reason=reason)
                self._save(conn, {"paused_until": row.paused_until, "pause_reason": reason})
            return row.state()

    @patient
    def spend_quota(self, until: datetime, kind: str) -> None:
        """The daily (or tweet-id) quota is spent until `until`: every process pauses its job."""
        with self.engine.begin() as conn:
            self._locked(conn)
            self._save(conn, {"quota_until": until, "quota_kind": kind})

    @patient
    def observe(self, hour_limit: int | None, hour_left: int | None, day_limit: int | None, day_left: int | None) -> None:
        """What the rate-limit headers say.

        The latest announced limit is kept (the tighter of it and the configured one applies); what is left in the
        current hour or day raises the row's count (never lowers it: requests this
        row granted may still be on their way to the server).
        """
        with self.engine.begin() as conn:
            row = self._locked(conn)
            now = to_epoch(clock.db_now(conn))
            changes: dict[str, Any] = {}
            # The latest announcement replaces the one before, higher or lower: a key's limits can be
            # raised (a new contract) as well as lowered. The configured limits still bound it (_tightest).
            for column, announced, stored, configured, per in (
                ("hour_limit", hour_limit, row.hour_limit, self.per_hour, "an hour"),
                ("day_limit", day_limit, row.day_limit, self.per_day, "a day"),
            ):
                if announced is not None and announced > 0 and announced != stored:
                    if announced < (configured or math.inf):
                        logger.info("the API allows %d requests %s: keeping to that", announced, per)
                    changes[column] = announced
            hour_limit = _tightest(self.per_hour, changes.get("hour_limit", row.hour_limit))
            day_limit = _tightest(self.per_day, changes.get("day_limit", row.day_limit))
            if hour_left is not None and hour_limit is not None:
                used = hour_limit - hour_left
                if row.hour_start is None or to_epoch(row.hour_start) < hour_of(now):
                    changes.update(hour_start=to_datetime(hour_of(now)), hour_used=max(0, used))
                elif to_epoch(row.hour_start) == hour_of(now) and used > row.hour_used:
                    changes["hour_used"] = used
            if day_left is not None and day_limit is not None:
                used = day_limit - day_left
                if row.day_start is None or row.day_start < day_of(now):
                    changes.update(day_start=day_of(now), day_used=max(0, used))
                elif row.day_start == day_of(now) and used > row.day_used:
                    changes["day_used"] = used
            self._save(conn, changes)

    @patient
    def slow_down(self, floor: float) -> float | None:
        """429s persist: halve the shared rate (at most once a second, not below `floor` of it).
        Returns the new factor, or None when it was changed less than a second ago."""
        with self.engine.begin() as conn:
            row = self._locked(conn)
            now = to_epoch(clock.db_now(conn))
            factor = float(row.rate_factor)
            if now - _epoch(row.rate_changed_at) < 1.0 and factor < 1.0:
                return None
            factor = max(floor, factor / 2)
            self._save(conn, {"rate_factor": factor, "rate_changed_at": to_datetime(now)})
            return factor


def _tightest(configured: int | None, announced: int | None) -> int | None:
    values = [v for v in (configured, announced) if v is not None]
    return min(values) if values else None
