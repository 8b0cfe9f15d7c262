"""Admission control around every request attempt (retries included).

RateLimiter: token buckets per tier, tightened by what the server says.
  Free tier: requests are shaped evenly at per_second with no burst, a little
  under the configured rate (a server enforcing exactly that rate with a bucket
  of one sees loopback or network jitter as bursts), inside an hourly bucket,
  with a daily budget that pauses the job when spent. Commercial tier: no API
  limit; only the optional max_per_second.
  Server headers: a lower X-*RateLimit-Limit tightens the buckets; a
  -Remaining of 0 pauses until the window resets (the hour) or pauses the job
  (the day, and Fetch's tweet-id quota).
  After a 429 everyone waits (Retry-After) once; when 429s persist the rate is
  halved, then grows back by a quarter every few seconds without one.

CircuitBreaker: when most recent attempts fail (5xx, resets, timeouts, bodies
  that are not JSON), stop sending for a cool-down, then let one probe through;
  attempts that fail while it is open do not use up the items' attempts.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

from aiolimiter import AsyncLimiter

from harvester.config import LimitsConfig
from harvester.errors import ApiUnavailableError, QuotaExhausted

logger = logging.getLogger(__name__)

# Shape the free tier this much under the configured rate: a 3% margin absorbs
# a few milliseconds of jitter at 20/s and still sustains more than 95%.
FREE_TIER_MARGIN = 0.97
# Two 429s within this many seconds mean the rate itself is too high.
PERSISTENT_429_WINDOW = 10.0


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def next_utc_midnight(now: datetime | None = None) -> datetime:
    now = now or utcnow()
    return datetime(now.year, now.month, now.day) + timedelta(days=1)


def seconds_to_next_hour(now: float) -> float:
    return 3600.0 - now % 3600.0


class Pacer:
    """Requests evenly spaced at `rate`, with no burst, on an absolute schedule.

    aiolimiter's bucket of one measures each gap from when the previous caller
    woke up, so every late wake-up (about a millisecond under load) is lost for
    good: 20/s came out as 19.07/s. Here slot k is at start + k/rate; a late
    wake-up does not move the slots after it. A caller more than half an
    interval behind (after an idle spell or a long pause) starts a new schedule
    instead of catching up with a burst.
    """

    def __init__(self, rate: float, min_gap: float | None = None) -> None:
        self.interval = 1.0 / rate
        # Never two requests closer than this, late wake-ups or not: the server's own
        # interval, so that a server bucket of one never sees two in one interval.
        self.min_gap = self.interval if min_gap is None else min_gap
        self._next = 0.0
        self._last = -1e9
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            loop = asyncio.get_running_loop()
            now = loop.time()
            if self._next < now - self.interval / 2:
                self._next = now
            slot = max(self._next, self._last + self.min_gap)
            if slot > now:
                await asyncio.sleep(slot - now)
            self._last = loop.time()
            self._next = slot + self.interval


def _header_int(headers: Mapping[str, str], name: str) -> int | None:
    try:
        return int(headers.get(name, ""))
    except ValueError:
        return None


class RateLimiter:
    """Create inside the running loop (aiolimiter binds to it)."""

    def __init__(self, limits: LimitsConfig, tier: str, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._second: Pacer | None = None
        self._hour: AsyncLimiter | None = None
        self._hour_limit: int | None = None
        self._per_day: int | None = None
        if tier == "free":
            self._second = Pacer(limits.per_second * FREE_TIER_MARGIN, min_gap=1.0 / limits.per_second)
            self._set_hourly(limits.per_hour)
            self._per_day = limits.per_day
        elif limits.max_per_second:
            self._second = Pacer(limits.max_per_second)
        self._ceiling = limits.per_second * FREE_TIER_MARGIN if tier == "free" else (limits.max_per_second or float("inf"))
        self._day = utcnow().date()
        self._used_today = 0
        self._sequence = 0  # requests sent, ever
        self._day_ends_at: int | None = None  # the request count at which the server's daily quota runs out
        self._tweet_quota_spent = False
        self._paused_until = 0.0  # loop time
        self._sent: collections.deque[float] = collections.deque(maxlen=4096)
        self._throttle: Pacer | None = None
        self.throttle_rate: float | None = None  # requests/s while slowed down after 429s
        self._throttle_changed = 0.0
        self._last_429 = -1e9

    def _set_hourly(self, limit: int) -> None:
        self._hour_limit = limit
        self._hour = AsyncLimiter(limit, 3600)

    async def acquire(self) -> None:
        """Wait for a slot; raise QuotaExhausted when the day's budget is spent."""
        loop = asyncio.get_running_loop()
        while (wait := self._paused_until - loop.time()) > 0:
            await asyncio.sleep(wait)
        today = utcnow().date()
        if today != self._day:
            self._day, self._used_today, self._day_ends_at = today, 0, None
            self._tweet_quota_spent = False
        if (self._per_day is not None and self._used_today >= self._per_day) or (
            self._day_ends_at is not None and self._sequence >= self._day_ends_at
        ):
            raise QuotaExhausted(next_utc_midnight())
        self._used_today += 1
        self._sequence += 1
        for bucket in (self._second, self._hour):
            if bucket is not None:
                await bucket.acquire()
        if self._throttle is not None:
            self._recover(loop.time())
            if self._throttle is not None:
                await self._throttle.acquire()
        self._sent.append(loop.time())

    def observe(self, headers: Mapping[str, str], endpoint: str) -> None:
        """Adapt to the rate-limit headers of a response (before its status is handled)."""
        hour_limit = _header_int(headers, "X-HourlyRateLimit-Limit")
        if hour_limit is not None and 0 < hour_limit < (self._hour_limit or float("inf")):
            logger.info("the API allows %d requests an hour: tightening to that", hour_limit)
            self._set_hourly(hour_limit)
        day_limit = _header_int(headers, "X-DailyRateLimit-Limit")
        if day_limit is not None and 0 < day_limit < (self._per_day or float("inf")):
            logger.info("the API allows %d requests a day: tightening to that", day_limit)
            self._per_day = day_limit
        day_left = _header_int(headers, "X-DailyRateLimit-Remaining")
        if day_left is not None:
            # The server counts requests as they arrive, ours in flight included: what
            # is left is left after every request sent so far. The earliest end wins.
            ends_at = self._sequence + day_left
            self._day_ends_at = ends_at if self._day_ends_at is None else min(self._day_ends_at, ends_at)
        if _header_int(headers, "X-HourlyRateLimit-Remaining") == 0:
            wait = seconds_to_next_hour(self._clock())
            if self._paused_until < asyncio.get_running_loop().time() + wait - 1:
                logger.warning("the API's hourly limit is spent: waiting %.0f minutes for the next hour", wait / 60)
            self.pause(wait)
        if endpoint == "fetch" and _header_int(headers, "X-TweetIDRateLimit-Remaining") == 0:
            self._tweet_quota_spent = True

    def quota_error(self, headers: Mapping[str, str], endpoint: str, retry_after: float | None) -> QuotaExhausted | None:
        """For a 429: the quota that is spent (daily, or Fetch's tweet ids), if any."""
        day_left = _header_int(headers, "X-DailyRateLimit-Remaining")
        tweets_left = _header_int(headers, "X-TweetIDRateLimit-Remaining") if endpoint == "fetch" else None
        if day_left != 0 and tweets_left != 0:
            return None
        now = utcnow()
        resume_at = now + timedelta(seconds=retry_after) if retry_after else next_utc_midnight(now)
        return QuotaExhausted(resume_at, "tweet-id" if day_left != 0 else "daily")

    def slow_down(self, retry_after: float | None) -> None:
        """After a 429: everyone waits; if 429s persist, halve the rate (at most once a second)."""
        loop_now = asyncio.get_running_loop().time()
        self.pause(retry_after if retry_after is not None else 1.0)
        persistent = loop_now - self._last_429 < PERSISTENT_429_WINDOW
        self._last_429 = loop_now
        if not persistent or (self._throttle is not None and loop_now - self._throttle_changed < 1.0):
            return
        sent = sum(1 for t in self._sent if t > loop_now - 2.0) / 2.0
        current = min(self.throttle_rate or sent, sent) if sent else (self.throttle_rate or 1.0)
        self._set_throttle(max(0.2, current / 2), loop_now)
        logger.info("rate limited again: slowing down to %.1f requests/s", self.throttle_rate)

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
        self._throttle = Pacer(rate)
        self._throttle_changed = now

    def pause(self, seconds: float) -> None:
        """Hold every worker back for a while: one wait, not one per worker."""
        now = asyncio.get_running_loop().time()
        if self._paused_until < now:
            logger.info("pausing all requests for %.1fs", seconds)
        self._paused_until = max(self._paused_until, now + seconds)

    @property
    def tweet_quota_spent(self) -> bool:
        return self._tweet_quota_spent


class CircuitBreaker:
    """Stop hammering an API that is failing; probe it now and then; give up after max_outage."""

    def __init__(
        self,
        window: int = 30,
        min_failures: int = 20,
        cooldown: float = 5.0,
        max_cooldown: float = 300.0,
        max_outage: float = 1800.0,
    ) -> None:
        self._recent: collections.deque[bool] = collections.deque(maxlen=window)
        self._min_failures = min_failures
        self._base_cooldown = cooldown
        self._cooldown = cooldown
        self._max_cooldown = max_cooldown
        self._max_outage = max_outage
        self._open_until: float | None = None  # loop time; None when closed
        self._outage_since: float | None = None
        self._probing = False
        self._probe_started = 0.0
        self._changed = asyncio.Event()
        self.trips = 0

    @property
    def is_open(self) -> bool:
        return self._open_until is not None

    async def admit(self) -> None:
        """Wait while the breaker is open; after the cool-down, one caller goes ahead as the probe."""
        loop = asyncio.get_running_loop()
        while self._open_until is not None:
            assert self._outage_since is not None
            if loop.time() - self._outage_since > self._max_outage:
                raise ApiUnavailableError(self._max_outage)
            wait = self._open_until - loop.time()
            # A probe that never reported (its worker was stopped) is replaced after a while.
            stale_probe = self._probing and loop.time() - self._probe_started > 120.0
            if wait <= 0 and (not self._probing or stale_probe):
                self._probing, self._probe_started = True, loop.time()
                return
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), max(wait, 0.05) if wait > 0 else 1.0)
            except asyncio.TimeoutError:
                pass

    def record(self, ok: bool) -> None:
        """The health of one attempt: False for 5xx, resets, timeouts and unusable bodies."""
        loop = asyncio.get_running_loop()
        if self._open_until is not None:
            if not self._probing:
                return  # an answer to a request sent before the breaker opened
            self._probing = False
            if ok:
                logger.warning("the API answers again: resuming")
                self._open_until = self._outage_since = None
                self._cooldown = self._base_cooldown
                self._recent.clear()
            else:
                self._cooldown = min(self._max_cooldown, self._cooldown * 2)
                self._open_until = loop.time() + self._cooldown
                logger.warning("the API is still failing: next probe in %.0fs", self._cooldown)
            self._changed.set()
            return
        self._recent.append(ok)
        failures = self._recent.count(False)
        # Two thirds of the last 30 failing: an outage, not the odd flaky answer
        # (a 30% error rate trips it about once in 100,000 windows).
        if failures >= self._min_failures:
            self.trips += 1
            self._open_until = loop.time() + self._cooldown
            self._outage_since = loop.time()
            logger.warning(
                "the API is failing (%d of the last %d requests): pausing all requests for %.0fs",
                failures,
                len(self._recent),
                self._cooldown,
            )
            self._changed.set()
