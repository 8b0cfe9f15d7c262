"""The harvester's clock: now in naive UTC, the database server's now, and the calendar of windows.

Every stored timestamp and every schedule (leases, the shared budget's hours and days, nightly
decisions) reads the time here. HARVESTER_NOW moves it, in tests (docs/architecture.md).
"""

from __future__ import annotations

import math
import os
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import Connection

from harvester.db import server_now
from harvester.errors import ConfigError

_EPOCH = datetime(1970, 1, 1)

_CLOCK_OFFSET = "_HARVESTER_CLOCK_OFFSET"  # how the injected clock reaches the writer process
_offset: timedelta | None = None


def utcnow() -> datetime:
    """Now, in naive UTC: the time every stored timestamp and every nightly decision uses.

    HARVESTER_NOW=2026-11-24T03:00:00 runs the harvester as if it were that
    moment (the clock then runs on from there): how schedules such as two
    nights in a row are tested. Never set it in production.
    """
    return datetime.now(UTC).replace(tzinfo=None) + clock_offset()


def clock_offset() -> timedelta:
    """How far the harvester's clock is set from the real one (HARVESTER_NOW; zero in production)."""
    global _offset
    if _offset is None:
        _offset = _clock_offset()
    return _offset


def db_now(conn: Connection) -> datetime:
    """Now by the database server's clock (naive UTC), plus the harvester's clock offset.

    Leases, heartbeats and the shared rate budget are compared across processes
    and machines: one clock, the server's, keeps a host with a skewed clock from
    taking what another still holds. SQLite has no server: its clock is this host's.
    """
    return server_now(conn) + clock_offset()


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


def next_midnight(now: datetime | None = None) -> datetime:
    """The next UTC midnight (when a day's quota resets): after `now`, by default this clock's."""
    now = now or utcnow()
    return datetime(now.year, now.month, now.day) + timedelta(days=1)


# The shared budget counts in epoch seconds of the database's clock (budget.py).


def to_epoch(when: datetime) -> float:
    return (when - _EPOCH).total_seconds()


def to_datetime(epoch: float) -> datetime:
    return _EPOCH + timedelta(seconds=epoch)


def hour_of(epoch: float) -> float:
    """The start of the clock hour `epoch` falls in."""
    return math.floor(epoch / 3600.0) * 3600.0


def day_of(epoch: float) -> date:
    return to_datetime(epoch).date()
