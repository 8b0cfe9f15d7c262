"""Token buckets per tier, around every request attempt (retries included).

Free tier: requests are shaped evenly at per_second with no burst (a bucket
that allows a burst draws 429s from a server enforcing the same rate), inside
an hourly bucket, with a daily budget that pauses the job when spent.
Commercial tier: no API limit; only the optional max_per_second.

After a 429 every tier also slows down: the rate is halved (from what was
actually sent) and then grows back by a quarter every few seconds without a
429, until it is back at the configured rate and the throttle is dropped.
"""

from __future__ import annotations

import asyncio
import collections
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
        self._ceiling = limits.per_second if tier == "free" else (limits.max_per_second or float("inf"))
        self._sent: collections.deque[float] = collections.deque(maxlen=4096)
        self._throttle: AsyncLimiter | None = None
        self.throttle_rate: float | None = None  # requests/s while slowed down after a 429
        self._throttle_changed = 0.0

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
        if self._throttle is not None:
            self._recover(loop.time())
            if self._throttle is not None:
                await self._throttle.acquire()
        self._sent.append(loop.time())

    def slow_down(self, seconds: float) -> None:
        """After a 429: pause everyone, and halve the rate (at most once a second)."""
        self.pause(seconds)
        now = asyncio.get_running_loop().time()
        if self._throttle is not None and now - self._throttle_changed < 1.0:
            return
        sent = sum(1 for t in self._sent if t > now - 2.0) / 2.0
        current = min(self.throttle_rate or sent, sent) if sent else (self.throttle_rate or 1.0)
        self._set_throttle(max(0.2, current / 2), now)
        logger.info("rate limited: slowing down to %.1f requests/s", self.throttle_rate)

    def _recover(self, now: float) -> None:
        assert self.throttle_rate is not None
        if now - self._throttle_changed < 3.0:
            return
        rate = self.throttle_rate * 1.25
        if rate >= self._ceiling or rate > 10_000:
            self._throttle, self.throttle_rate = None, None
            logger.info("no 429 for a while: back to the configured rate")
        else:
            self._set_throttle(rate, now)

    def _set_throttle(self, rate: float, now: float) -> None:
        self.throttle_rate = rate
        self._throttle = AsyncLimiter(1, 1 / rate)
        self._throttle_changed = now

    def pause(self, seconds: float) -> None:
        """Hold every worker back for a while (after a 429): one wait, not one per worker."""
        now = asyncio.get_running_loop().time()
        if self._paused_until < now:
            logger.info("rate limited by the API: pausing all requests for %.1fs", seconds)
        self._paused_until = max(self._paused_until, now + seconds)
