"""The limiter and the circuit breaker on a real event loop, with the wall clock where it is short."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from datetime import datetime
from typing import Any, TypeVar

import pytest
from sqlalchemy import Engine, text

from harvester.budget import FREE_TIER_MARGIN, SharedBudget, key_hash
from harvester.clock import to_datetime
from harvester.config import LimitsConfig
from harvester.endpoints import Counts, Fetch
from harvester.errors import OWN_DAILY, ApiUnavailableError, QuotaExhausted
from harvester.ratelimit import FIRST_GAP, CircuitBreaker, RateLimiter
from tests.conftest import rows

pytestmark = pytest.mark.timing  # rates, leases and speedups: alone under -n 4 (tests/conftest.py)

FREE = LimitsConfig(per_second=20.0, per_hour=3600, per_day=86400)
KEY = "sk-test-budget"


T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def limiter(engine: Engine, limits: LimitsConfig = FREE, tier: str = "free", key: str = KEY) -> RateLimiter:
    return RateLimiter(SharedBudget(engine, key, limits, tier), tier)


def budget_row(engine: Engine) -> dict[str, Any]:
    [row] = rows(engine, "select * from rate_budgets")
    return row


def test_free_tier_is_shaped_evenly_without_a_burst(engine: Engine) -> None:
    async def main() -> list[float]:
        lim = limiter(engine)
        times = []
        for _ in range(22):
            await lim.acquire()
            times.append(time.monotonic())
        await lim.close()
        return times

    times = run(main())
    interval = 1 / (20 * FREE_TIER_MARGIN)
    # After the first request, FIRST_GAP of the schedule stays empty (a cold first request can be late).
    assert times[1] - times[0] >= FIRST_GAP
    times = times[1:]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) > interval * 0.9  # no two requests back to back: no burst
    assert times[-1] - times[0] == pytest.approx(20 * interval, rel=0.1)
    # The budget counted what was sent, and took back what was leased but not used.
    row = budget_row(engine)
    assert (row["hour_used"], row["day_used"]) == (22, 22)


def test_the_key_is_stored_only_as_a_salted_hash(engine: Engine) -> None:
    run(limiter(engine).close())
    assert budget_row(engine)["key_hash"] == key_hash(KEY) != key_hash("another key")
    assert KEY not in str(rows(engine, "select * from rate_budgets"))


def test_two_processes_on_one_key_share_the_rate(engine: Engine) -> None:
    """Two limiters (as two processes would) on one key: together at the key's rate, evenly spaced."""

    async def main() -> list[float]:
        a, b = limiter(engine), limiter(engine)
        times: list[float] = []

        async def draw(lim: RateLimiter) -> None:
            for _ in range(40):
                await lim.acquire()
                times.append(time.monotonic())

        await asyncio.gather(draw(a), draw(b))
        await a.close()
        await b.close()
        return sorted(times)

    times = run(main())
    gaps = [b - a for a, b in zip(times, times[1:])]
    interval = 1 / (20 * FREE_TIER_MARGIN)
    assert min(gaps) > interval * 0.9  # the two never send together
    # Past both first requests and the half second (FIRST_GAP) each leaves empty after its own:
    # the two gaps overlap only in part, so the 10th request can still fall inside the second one.
    steady = times[20:]
    rate = (len(steady) - 1) / (steady[-1] - steady[0])
    assert 0.85 * 20 <= rate <= 20  # together, not twice the key's rate
    assert budget_row(engine)["day_used"] == 80  # the slots each left empty after its first request were given back


def test_commercial_tier_has_no_limit(engine: Engine) -> None:
    async def main() -> float:
        lim = limiter(engine, LimitsConfig(), "commercial")
        start = time.monotonic()
        for _ in range(1000):
            await lim.acquire()
        return time.monotonic() - start

    assert run(main()) < 1.0


def test_lower_server_limits_tighten_the_budget_for_every_process(engine: Engine) -> None:
    async def main() -> None:
        lim = limiter(engine)
        await lim.observe({"X-HourlyRateLimit-Limit": "100", "X-DailyRateLimit-Limit": "1000"})

    run(main())
    row = budget_row(engine)
    assert (row["hour_limit"], row["day_limit"]) == (100, 1000)
    # Another process on the key is held to them too.
    budget = SharedBudget(engine, KEY, LimitsConfig(per_second=1000.0, per_hour=3600, per_day=86400), "free")
    assert len(budget.lease(500)[0]) == 100


def test_a_limit_announced_once_is_not_kept_when_the_api_raises_it(engine: Engine) -> None:
    """The row holds the latest announced limit: 20 an hour once, then 10**9, is the configured rate again."""
    limits = LimitsConfig(per_second=1000.0, per_hour=3600, per_day=86400)
    budget = SharedBudget(engine, KEY, limits, "free")
    budget.observe(20, None, 20, None)
    assert len(budget.lease(500)[0]) == 20
    budget.observe(10**9, None, 10**9, None)
    row = budget_row(engine)
    assert (row["hour_limit"], row["day_limit"]) == (10**9, 10**9)
    # The configured limits bound it again: the hour's 3,600 less the 20 already granted.
    assert len(budget.lease(5000)[0]) == 3600 - 20


def test_remaining_headers_raise_the_shared_counts(engine: Engine) -> None:
    async def main() -> None:
        lim = limiter(engine)
        await lim.observe(
            {
                "X-HourlyRateLimit-Limit": "3600",
                "X-HourlyRateLimit-Remaining": "3000",
                "X-DailyRateLimit-Limit": "86400",
                "X-DailyRateLimit-Remaining": "80000",
            }
        )

    run(main())
    row = budget_row(engine)
    assert (row["hour_used"], row["day_used"]) == (600, 6400)  # another client of the key used them


def test_hourly_remaining_zero_pauses_every_process_until_the_next_hour(engine: Engine) -> None:
    async def main() -> float:
        lim = limiter(engine)
        await lim.observe({"X-HourlyRateLimit-Remaining": "0"})
        return lim.budget.now()

    now = run(main())
    paused_until = datetime.fromisoformat(str(budget_row(engine)["paused_until"]))
    assert paused_until == to_datetime(3600 * (now // 3600 + 1))


def test_a_spent_hourly_limit_moves_the_next_slot_to_the_next_hour(engine: Engine) -> None:
    limits = LimitsConfig(per_second=20.0, per_hour=5, per_day=86400)
    budget = SharedBudget(engine, KEY, limits, "free")
    slots, _ = budget.lease(5)
    assert len(slots) == 5
    [later], _ = budget.lease(1)
    assert later == pytest.approx(3600 * (slots[0] // 3600 + 1))  # the top of the next clock hour
    assert budget_row(engine)["hour_used"] == 1


def test_daily_budget_spent_pauses_the_job_and_holds_every_process(engine: Engine) -> None:
    limits = LimitsConfig(per_second=50.0, per_hour=3600, per_day=100)

    async def main() -> int:
        lim = limiter(engine, limits)
        sent = 0
        with pytest.raises(QuotaExhausted) as info:
            while True:
                await lim.acquire()
                sent += 1
        assert info.value.kind == OWN_DAILY  # the configured per_day: no server announced a quota
        # A process started afterwards (a restart, another job) is refused at once.
        with pytest.raises(QuotaExhausted):
            await limiter(engine, limits).acquire()
        await lim.close()
        return sent

    sent = run(main())
    # All of the day's 100: the slots left empty after the first request (FIRST_GAP, see
    # RateLimiter.acquire) cost time, not quota: they are given back at once.
    assert sent == 100
    assert budget_row(engine)["quota_until"] is not None
    assert budget_row(engine)["day_used"] == sent


def test_daily_remaining_ends_a_commercial_run_at_the_quota(engine: Engine) -> None:
    async def main() -> int:
        lim = limiter(engine, LimitsConfig(), "commercial")
        for _ in range(10):
            await lim.acquire()
        await lim.observe({"X-DailyRateLimit-Remaining": "3"})
        sent = 0
        with pytest.raises(QuotaExhausted) as info:
            while True:
                await lim.acquire()
                sent += 1
        assert info.value.kind == "daily"
        return sent

    assert run(main()) == 3


def test_a_429_with_a_spent_quota_is_a_pause_with_its_reset_time(engine: Engine) -> None:
    async def main() -> None:
        lim = limiter(engine, LimitsConfig(), "commercial")
        assert await lim.quota_error({"X-DailyRateLimit-Remaining": "7"}, None) is None
        tweets = await lim.quota_error({"X-TweetIDRateLimit-Remaining": "0"}, None, Fetch.quotas)
        assert tweets is not None and tweets.kind == "tweet-id"
        assert tweets.resume_at.hour == 0 and tweets.resume_at.minute == 0  # the next UTC midnight
        # The tweet-id quota means nothing to Counts.
        assert await lim.quota_error({"X-TweetIDRateLimit-Remaining": "0"}, None, Counts.quotas) is None
        assert budget_row(engine)["quota_until"] is None  # the tweet-id quota holds only Fetch
        daily = await lim.quota_error({"X-DailyRateLimit-Remaining": "0"}, 120.0)
        assert daily is not None and daily.kind == "daily"
        stored = datetime.fromisoformat(str(budget_row(engine)["quota_until"]))
        assert stored == daily.resume_at  # every process on the key stops

    run(main())


def test_a_pause_holds_requests_already_waiting_for_their_slot(engine: Engine) -> None:
    """The bug this fixes: workers queued in the pacer fired into a Retry-After pause."""
    limits = LimitsConfig(per_second=10.0, per_hour=36000, per_day=864000)

    async def main() -> tuple[list[float], float]:
        lim = limiter(engine, limits)
        other = limiter(engine, limits)  # another process on the key
        sent: list[float] = []

        async def worker() -> None:
            for _ in range(3):
                await lim.acquire()
                sent.append(time.monotonic())

        tasks = [asyncio.create_task(worker()) for _ in range(4)]
        await asyncio.sleep(0.35)  # a few sent, the rest queued for their slots
        paused_at = time.monotonic()
        await other.slow_down(1.0)  # the other process got a 429 with Retry-After: 1
        await asyncio.gather(*tasks)
        return sent, paused_at

    sent, paused_at = run(main())
    assert len(sent) == 12
    during = [t for t in sent if paused_at + 0.02 < t < paused_at + 0.98]
    assert during == [], f"{len(during)} requests sent into the pause"
    assert any(t >= paused_at + 0.98 for t in sent)


def test_one_429_pauses_and_persisting_429s_halve_the_shared_rate(engine: Engine) -> None:
    async def main() -> tuple[float, float]:
        lim = limiter(engine)
        for _ in range(5):
            await lim.acquire()
        await lim.slow_down(0.05)
        first = budget_row(engine)["rate_factor"]
        await asyncio.sleep(0.06)
        await lim.slow_down(0.05)
        return first, budget_row(engine)["rate_factor"]

    first, second = run(main())
    assert first == 1.0  # a single 429: a pause, no slow-down
    assert second == 0.5  # every process on the key slows down


def test_persisting_429s_halve_a_commercial_process(engine: Engine) -> None:
    async def main() -> tuple[float | None, float | None]:
        lim = limiter(engine, LimitsConfig(), "commercial")
        for _ in range(40):
            await lim.acquire()
        await lim.slow_down(0.05)
        first = lim.throttle_rate
        await asyncio.sleep(0.06)
        await lim.slow_down(0.05)
        return first, lim.throttle_rate

    first, second = run(main())
    assert first is None  # a single 429: a pause, no slow-down
    assert second is not None and second == pytest.approx(10.0, rel=0.05)  # 40 sent in the last 2 s: 20/s, halved


def test_budget_counts_survive_a_restart(engine: Engine) -> None:
    async def main() -> None:
        lim = limiter(engine)
        for _ in range(7):
            await lim.acquire()
        await lim.close()

    run(main())
    run(main())
    assert budget_row(engine)["day_used"] == 14
    with engine.begin() as conn:
        assert conn.execute(text("select count(*) from rate_budgets")).scalar() == 1


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
