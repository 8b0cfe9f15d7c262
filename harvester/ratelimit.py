"""Token buckets per tier, around every request attempt (retries included).

Free tier: requests are shaped evenly at per_second with no burst (a bucket
that allows a burst draws 429s from a server enforcing the same rate), inside
an hourly bucket, with a daily budget that pauses the job when spent.
Commercial tier: no API limit; only the optional max_per_second.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from aiolimiter import AsyncLimiter

from harvester.config import LimitsConfig
from harvester.errors import QuotaExhausted

logger = logging.getLogger(__name__)


def next_utc_midnight(now: datetime | None = None) -> datetime:
    now = now or datetime.now(UTC).replace(tzinfo=None)
    return datetime(now.year, now.month, now.day) + timedelta(days=1)


class RateLimiter:
    """Create inside the running loop (aiolimiter binds to it)."""

    def __init__(self, limits: LimitsConfig, tier: str) -> None:
        self._buckets: list[AsyncLimiter] = []
        self._per_day: int | None = None
        if tier == "free":
            self._buckets.append(AsyncLimiter(1, 1 / limits.per_second))
            self._buckets.append(AsyncLimiter(limits.per_hour, 3600))
            self._per_day = limits.per_day
        elif limits.max_per_second:
            self._buckets.append(AsyncLimiter(1, 1 / limits.max_per_second))
        self._day = datetime.now(UTC).date()
        self._used_today = 0
        self._paused_until = 0.0  # loop time

    async def acquire(self) -> None:
        """Wait for a slot; raise QuotaExhausted when the daily budget is spent."""
        loop = asyncio.get_running_loop()
        while (wait := self._paused_until - loop.time()) > 0:
            await asyncio.sleep(wait)
        if self._per_day is not None:
            today = datetime.now(UTC).date()
            if today != self._day:
                self._day, self._used_today = today, 0
            if self._used_today >= self._per_day:
                raise QuotaExhausted(next_utc_midnight())
            self._used_today += 1
        for bucket in self._buckets:
            await bucket.acquire()

    def pause(self, seconds: float) -> None:
        """Hold every worker back for a while (after a 429): one wait, not one per worker."""
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        if until > self._paused_until:
            logger.info("rate limited by the API: pausing all requests for %.1fs", seconds)
            self._paused_until = until
