"""The limiter and the circuit breaker on a real event loop, with the wall clock where it is short."""

from __future__ import annotations

import asyncio
import time

import pytest

from harvester.config import LimitsConfig
from harvester.errors import ApiUnavailableError, QuotaExhausted
from harvester.ratelimit import FREE_TIER_MARGIN, CircuitBreaker, RateLimiter

FREE = LimitsConfig(per_second=20.0, per_hour=3600, per_day=86400)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_free_tier_is_shaped_evenly_without_a_burst() -> None:
    async def main() -> list[float]:
        limiter = RateLimiter(FREE, "free")
        times = []
        for _ in range(21):
            await limiter.acquire()
            times.append(time.monotonic())
        return times

    times = run(main())
    gaps = [b - a for a, b in zip(times, times[1:])]
    interval = 1 / (20 * FREE_TIER_MARGIN)
    assert min(gaps) > interval * 0.9  # no two requests back to back: no burst
    assert times[-1] - times[0] == pytest.approx(20 * interval, rel=0.1)


def test_commercial_tier_has_no_limit() -> None:
    async def main() -> float:
        limiter = RateLimiter(LimitsConfig(), "commercial")
        start = time.monotonic()
        for _ in range(1000):
            await limiter.acquire()
        return time.monotonic() - start

    assert run(main()) < 0.5


def test_lower_server_limits_tighten_the_buckets() -> None:
    async def main() -> RateLimiter:
        limiter = RateLimiter(FREE, "free")
        limiter.observe({"X-HourlyRateLimit-Limit": "100", "X-DailyRateLimit-Limit": "1000"}, "counts")
        return limiter

    limiter = run(main())
    assert limiter._hour_limit == 100
    assert limiter._per_day == 1000
    # Higher server limits never loosen the configuration.
    assert run(_observe({"X-HourlyRateLimit-Limit": "99999"}))._hour_limit == 3600


async def _observe(headers: dict[str, str], clock: float | None = None) -> RateLimiter:
    limiter = RateLimiter(FREE, "free", clock=(lambda: clock) if clock is not None else time.time)
    limiter.observe(headers, "counts")
    return limiter


def test_hourly_remaining_zero_pauses_until_the_next_hour() -> None:
    async def main() -> float:
        # 30 seconds before the top of an hour.
        limiter = await _observe({"X-HourlyRateLimit-Remaining": "0"}, clock=3600 * 500 - 30.0)
        return limiter._paused_until - asyncio.get_running_loop().time()

    assert run(main()) == pytest.approx(30.0, abs=0.5)


def test_daily_remaining_ends_the_run_at_the_quota() -> None:
    async def main() -> int:
        limiter = RateLimiter(LimitsConfig(), "commercial")
        for _ in range(10):
            await limiter.acquire()
        limiter.observe({"X-DailyRateLimit-Remaining": "3"}, "counts")
        sent = 0
        with pytest.raises(QuotaExhausted) as info:
            while True:
                await limiter.acquire()
                sent += 1
        assert info.value.kind == "daily"
        return sent

    assert run(main()) == 3


def test_a_429_with_a_spent_quota_is_a_pause_with_its_reset_time() -> None:
    async def main() -> None:
        limiter = RateLimiter(LimitsConfig(), "commercial")
        assert limiter.quota_error({"X-DailyRateLimit-Remaining": "7"}, "counts", None) is None
        daily = limiter.quota_error({"X-DailyRateLimit-Remaining": "0"}, "counts", 120.0)
        assert daily is not None and daily.kind == "daily"
        tweets = limiter.quota_error({"X-TweetIDRateLimit-Remaining": "0"}, "fetch", None)
        assert tweets is not None and tweets.kind == "tweet-id"
        assert tweets.resume_at.hour == 0 and tweets.resume_at.minute == 0  # the next UTC midnight
        # The tweet-id quota means nothing to Counts.
        assert limiter.quota_error({"X-TweetIDRateLimit-Remaining": "0"}, "counts", None) is None

    run(main())


def test_one_429_pauses_and_persisting_429s_halve_the_rate() -> None:
    async def main() -> tuple[float | None, float | None, float]:
        limiter = RateLimiter(LimitsConfig(), "commercial")
        for _ in range(40):
            await limiter.acquire()
        limiter.slow_down(0.05)
        first = limiter.throttle_rate
        await asyncio.sleep(0.06)
        limiter.slow_down(0.05)
        paused = limiter._paused_until - asyncio.get_running_loop().time()
        return first, limiter.throttle_rate, paused

    first, second, paused = run(main())
    assert first is None  # a single 429: a pause, no slow-down
    assert second is not None and second == pytest.approx(10.0, rel=0.05)  # 40 sent in the last 2 s: 20/s, halved
    assert 0 < paused <= 0.05


def test_breaker_opens_on_an_outage_probes_and_closes() -> None:
    async def main() -> tuple[bool, bool, float, bool]:
        breaker = CircuitBreaker(cooldown=0.2, max_outage=60)
        for _ in range(19):
            breaker.record(False)
        before = breaker.is_open
        breaker.record(False)  # the 20th failure of 30
        opened = breaker.is_open
        start = time.monotonic()
        await breaker.admit()  # waits for the cool-down, then goes ahead as the probe
        waited = time.monotonic() - start
        breaker.record(True)
        return before, opened, waited, breaker.is_open

    before, opened, waited, still_open = run(main())
    assert (before, opened, still_open) == (False, True, False)
    assert waited == pytest.approx(0.2, abs=0.1)


def test_breaker_tolerates_a_flaky_api() -> None:
    async def main() -> bool:
        breaker = CircuitBreaker()
        for i in range(1000):
            breaker.record(i % 3 != 0)  # a third of all attempts fail
        return breaker.is_open

    assert run(main()) is False


def test_breaker_gives_up_after_max_outage() -> None:
    async def main() -> None:
        breaker = CircuitBreaker(cooldown=0.05, max_outage=0.3)
        for _ in range(20):
            breaker.record(False)
        while True:
            await breaker.admit()
            breaker.record(False)  # every probe fails

    with pytest.raises(ApiUnavailableError):
        run(main())
