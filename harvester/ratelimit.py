"""Admission control around every request attempt (retries included).

RateLimiter: this process's draw on the key's shared budget (budget.py).
  Free tier: each request takes a slot of the budget's schedule, evenly spaced
  a little under the configured rate across every process that uses the key,
  within the clock hour's and the UTC day's counts; a spent daily budget pauses
  the job. Commercial tier: no API limit; only the optional max_per_second
  (a schedule too, without the margin).
  Server headers: a lower X-*RateLimit-Limit tightens the budget; a
  -Remaining of 0 pauses until the window resets (the hour) or pauses the job
  (the day, and Fetch's tweet-id quota).
  After a 429 every process waits (Retry-After); when 429s persist the shared
  rate is halved, then grows back by a quarter every few seconds without one.
  A commercial process without a schedule slows itself down instead (an AIMD
  throttle, see RateLimiter.slow_down), saying so once at WARNING.
  A pause is checked again right before a request goes out, so requests that
  were already waiting for their slot are not sent into it.

CircuitBreaker: when most recent attempts fail (5xx, resets, timeouts, bodies
  that are not JSON), stop sending for a cool-down, then let one probe through;
  attempts that fail while it is open do not use up the items' attempts.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import Mapping
from datetime import timedelta

from harvester.budget import SharedBudget, State
from harvester.clock import hour_of, next_midnight, to_datetime, utcnow
from harvester.errors import ApiUnavailableError, QuotaExhausted

logger = logging.getLogger(__name__)

# Two 429s within this many seconds mean the rate itself is too high.
PERSISTENT_429_WINDOW = 10.0
# Seconds before its slot a request's process reads the budget row (for a pause) one last time.
PREWAKE = 0.005
# The free tier leaves this many seconds of its slots empty after a process's first request.
FIRST_GAP = 0.5
# Headers that only confirm what the budget knows are written to it at most this often.
OBSERVE_EVERY = 5.0
# A commercial process throttled after 429s (RateLimiter.slow_down) raises its rate after this many
# seconds without a 429 (a server's Retry-After pause does not count as quiet) ...
RECOVER_EVERY = 1.0
# ... by this factor while it knows no ceiling (the rate to return to after a halving) ...
RECOVER_FACTOR = 1.5
# ... and from the ceiling on by this share of it: the slow probe of AIMD's additive increase.
RECOVER_STEP = 0.03
# The ceiling is at most this share of the rate that drew the 429 (and the last rate that held).
CEILING_SHARE = 0.9


class Pacer:
    """Requests evenly spaced at `rate`, with no burst, on an absolute schedule.

    aiolimiter's bucket of one measures each gap from when the previous caller
    woke up, so every late wake-up (about a millisecond under load) is lost for
    good: 20/s came out as 19.07/s. Here slot k is at start + k/rate; a late
    wake-up does not move the slots after it. A caller more than half an
    interval behind (after an idle spell or a long pause) starts a new schedule
    instead of catching up with a burst. (The shared budget keeps the same
    absolute schedule across processes; this one slows a commercial process
    down after 429s, where there is no shared schedule to slow.)

    Its rate changes in place (`set_rate`): the next slot is the last one plus
    the new interval. A new Pacer instead would run beside the old one while
    callers still queue on the old one's lock: twice the rate, and 429s.
    """

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self._last = -math.inf  # the latest slot handed out, in loop time
        self._lock = asyncio.Lock()

    def set_rate(self, rate: float) -> None:
        self.interval = 1.0 / rate

    async def acquire(self) -> None:
        async with self._lock:
            now = asyncio.get_running_loop().time()
            slot = self._last + self.interval
            if slot < now - self.interval / 2:
                slot = now
            self._last = slot
            if slot > now:
                await asyncio.sleep(slot - now)


def _header_int(headers: Mapping[str, str], name: str) -> int | None:
    try:
        return int(headers.get(name, ""))
    except ValueError:
        return None


class RateLimiter:
    """This process's admission of requests, drawn from the key's SharedBudget. Create it inside the running loop."""

    def __init__(self, budget: SharedBudget, tier: str) -> None:
        self.budget = budget
        self._free = tier == "free"
        self._slots: collections.deque[float] = collections.deque()  # leased, in the database's clock
        self._interval = budget.interval(1.0) if budget.rate else 0.0  # of the slots held
        # Never two requests of this process closer than the server's interval, late wake-ups or not.
        self._min_gap = budget.server_interval or self._interval
        # How stale the budget row may be when a request goes out: fresh enough that
        # a pause recorded by another process holds this one's next request.
        self._fresh_for = 0.1 if not budget.rate else max(0.004, min(0.1, self._interval / 2))
        self._lock = asyncio.Lock()
        self._state = State(0.0, None, None, 1.0)
        self._read_at = -math.inf  # time.monotonic() of the last read of the row
        self._quota: QuotaExhausted | None = None
        self._quota_after: QuotaExhausted | None = None  # spent after the slot being waited for
        self._last_sent = -math.inf  # loop time
        self._sequence = 0  # requests sent, ever
        self._day_ends_at: int | None = None  # the request count at which the server's daily quota runs out
        self._quota_spent: str | None = None  # an endpoint's own quota that a response said is spent
        self._observed_at = -math.inf
        self._known_limits: tuple[int | None, int | None] = (None, None)
        self._sent: collections.deque[float] = collections.deque(maxlen=4096)
        self._throttle: Pacer | None = None
        self.throttle_rate: float | None = None  # requests/s of a commercial process slowed down after 429s
        self._decreased_at = 0.0  # loop time of the throttle's last halving
        self._ceiling: float | None = None  # where the throttle returns to after a halving (_recover)
        self._good: float | None = None  # the throttle's last rate that held RECOVER_EVERY without a 429
        self._quiet_since = 0.0  # loop time: no 429, rate change or server pause since
        self._warned = False  # the commercial tier's warning about 429s, once a run
        self._last_429 = -1e9
        self.forfeited = 0  # slots given up because this process woke too late for them
        self._pending: list[asyncio.Task[None]] = []  # give-backs under way

    @property
    def scheduled(self) -> bool:
        return self.budget.rate is not None

    @property
    def throttled(self) -> float | None:
        """The requests/s this process is held to after 429s (the progress line shows it); None when not slowed."""
        if self.throttle_rate is not None:
            return self.throttle_rate
        if self.budget.rate is not None and self._state.factor < 1.0:
            return self.budget.rate * self._state.factor
        return None

    @property
    def quota_spent(self) -> str | None:
        """The endpoint's own quota (Fetch's tweet ids) that a response said is spent, by its name."""
        return self._quota_spent

    async def acquire(self) -> None:
        """Wait for a slot; raise QuotaExhausted when the day's budget is spent."""
        loop = asyncio.get_running_loop()
        while True:
            if self._quota is not None:
                raise self._quota
            await self._wait_for_pause()
            if not self.scheduled:
                await self._refresh()
                if self._paused():
                    continue
                if self._day_ends_at is not None and self._sequence >= self._day_ends_at:
                    raise QuotaExhausted(next_midnight())
                if self._throttle is not None:
                    self._recover(loop.time())
                    if self._throttle is not None:
                        await self._throttle.acquire()
                        if self._paused():
                            continue  # a 429 came while this request waited for its turn: not into the pause
                break
            async with self._lock:
                slot, following = await self._take()
                # Wake a little early to read the row, so that reading it does not make the request late.
                delay = slot - self.budget.now() - PREWAKE
                if delay > 0:
                    await asyncio.sleep(delay)
                await self._refresh()
                delay = max(slot - self.budget.now(), self._last_sent + self._min_gap - loop.time())
                if delay > 0:
                    await asyncio.sleep(delay)
                if self._quota is not None:
                    raise self._quota
                if self._paused():
                    await self._give_back()  # every slot held falls in or before the pause: lease anew after it
                    continue
                now = self.budget.now()
                late = now - slot
                # The next slot is ours, or nobody's: once the day's budget is spent no slot is granted
                # after ours, so sending late crowds no one, and a slot given up then would be lost to
                # the day (the quota is already recorded as spent) and pause the job until midnight.
                # Ours only while it is still ahead: a process whose requests all waited on slow answers
                # comes back holding slots that have all passed, and "now" is then in someone else's slot.
                ours_next = self._quota_after is not None or (
                    following is not None and following - slot <= self._interval * 1.001 and following > now
                )
                if self._free and not ours_next and late > self._interval - self._min_gap:
                    # The next slot may be another process's: sent this late, the two would
                    # come closer than the server allows. Give this one up instead.
                    self.forfeited += 1
                    self._forget([slot])
                    continue
                if self._sequence == 0 and self._free:
                    # A process's first request opens a connection and runs cold code, often while the
                    # machine is busy starting other processes too: it can reach the server hundreds of
                    # milliseconds late, and a request in the next slot on time. The slots of the next
                    # FIRST_GAP seconds stay empty (leased with it, so they are nobody else's).
                    empty = []
                    while self._slots and self._slots[0] < slot + FIRST_GAP:
                        empty.append(self._slots.popleft())
                    self._forget(empty)
                self._last_sent = loop.time()
                if not self._slots:  # the last slot granted before the quota ran out
                    self._quota, self._quota_after = self._quota_after, None
                break
        self._sequence += 1
        self._sent.append(loop.time())

    async def _take(self) -> tuple[float, float | None]:
        """The next slot of this process, and the one after it (leased early, so we know whether it follows)."""
        if not self._slots:
            await self._lease()
        slot = self._slots.popleft()
        # The next slice is leased a slot ahead: its round trip then never makes a slot late.
        if len(self._slots) <= 1:
            try:
                await self._lease()
            except QuotaExhausted as e:
                self._quota_after = e  # this slot is still good; the next acquire stops
        return slot, self._slots[0] if self._slots else None

    def _forget(self, slots: list[float]) -> None:
        """Count slots this process will not send in for nobody, at once (a day's quota near its
        end must not lose them), while the schedule keeps them: nobody else sends in them either."""
        if slots:
            self._pending.append(asyncio.create_task(asyncio.to_thread(self.budget.give_back, slots, self._interval, False)))

    async def _lease(self) -> None:
        # Slots given back first: a lease that found the day's quota spent before they were
        # counted off would end the day a few requests early.
        pending, self._pending = self._pending, []
        await asyncio.gather(*pending)
        # The first lease holds the empty slots after the first request too (see acquire).
        first = max(self.budget.slice, 1 + math.ceil(FIRST_GAP * (self.budget.rate or 0.0)))
        slots, state = await asyncio.to_thread(self.budget.lease, None if self._sequence else first)
        self._interval = self.budget.interval(state.factor)
        self._slots.extend(slots)
        self._state = state

    async def _refresh(self) -> None:
        if time.monotonic() - self._read_at < self._fresh_for:
            return
        self._read_at = time.monotonic()
        self._apply(await asyncio.to_thread(self.budget.read))

    def _apply(self, state: State) -> None:
        self._state = state
        quota = state.quota_error(self.budget.now())
        # With _quota_after, the spent quota the row shows is the one this process's own lease
        # found after its last slots: those were granted within the budget and still go out.
        if quota is not None and self._quota_after is None:
            self._quota = quota

    def _paused(self) -> bool:
        return self.budget.now() < self._state.paused_until

    async def _wait_for_pause(self) -> None:
        while (wait := self._state.paused_until - self.budget.now()) > 0:
            await asyncio.sleep(wait)
            self._read_at = -math.inf  # the pause may have been extended meanwhile
            await self._refresh()

    async def _give_back(self) -> None:
        slots, self._slots = list(self._slots), collections.deque()
        if slots:
            await asyncio.to_thread(self.budget.give_back, slots, self._interval)

    async def close(self) -> None:
        """Return the slots leased but not used, so that they count for nobody."""
        await asyncio.gather(*self._pending)
        await self._give_back()

    async def observe(self, headers: Mapping[str, str], quotas: Mapping[str, str] = {}) -> None:
        """Adapt to the rate-limit headers of a response (before its status is handled).

        `quotas`: the endpoint's own quotas, {name: its -Remaining header} (Endpoint.quotas)."""
        hour_limit = _header_int(headers, "X-HourlyRateLimit-Limit")
        day_limit = _header_int(headers, "X-DailyRateLimit-Limit")
        hour_left = _header_int(headers, "X-HourlyRateLimit-Remaining")
        day_left = _header_int(headers, "X-DailyRateLimit-Remaining")
        if day_left is not None and not self.scheduled:
            # Without a schedule nothing counts the day in the budget: the server counts requests
            # as they arrive, ours in flight included, so what is left is left after every request
            # sent so far. The earliest end wins.
            ends_at = self._sequence + day_left
            self._day_ends_at = ends_at if self._day_ends_at is None else min(self._day_ends_at, ends_at)
        for name, header in quotas.items():
            if _header_int(headers, header) == 0:
                self._quota_spent = name
        if hour_left == 0:
            until = hour_of(self.budget.now()) + 3600.0
            if self._state.paused_until < until - 1:
                logger.warning("the API's hourly limit is spent: waiting %.0f minutes for the next hour", (until - self.budget.now()) / 60)
                self._apply(await asyncio.to_thread(self.budget.pause, until, "the hourly limit is spent"))
        if day_left == 0:
            reset = next_midnight(to_datetime(self.budget.now()))
            await asyncio.to_thread(self.budget.spend_quota, reset, "daily")
            self._quota = QuotaExhausted(reset)
            return
        limits = (hour_limit, day_limit)
        now = time.monotonic()
        if self.scheduled and (limits != self._known_limits or now - self._observed_at > OBSERVE_EVERY):
            self._known_limits, self._observed_at = limits, now
            await asyncio.to_thread(self.budget.observe, hour_limit, hour_left, day_limit, day_left)

    async def quota_error(
        self, headers: Mapping[str, str], retry_after: float | None, quotas: Mapping[str, str] = {}
    ) -> QuotaExhausted | None:
        """For a 429: the quota that is spent (daily, or one of the endpoint's own, `quotas` as for
        observe), if any; a spent daily quota holds every process."""
        day_left = _header_int(headers, "X-DailyRateLimit-Remaining")
        own = next((name for name, header in quotas.items() if _header_int(headers, header) == 0), None)
        if day_left != 0 and own is None:
            return None
        now = utcnow()
        resume_at = now + timedelta(seconds=retry_after) if retry_after else next_midnight(now)
        if day_left == 0:
            await asyncio.to_thread(self.budget.spend_quota, resume_at, "daily")
            return QuotaExhausted(resume_at, "daily")
        assert own is not None
        return QuotaExhausted(resume_at, own)

    async def slow_down(self, retry_after: float | None) -> None:
        """After a 429: every process waits; if 429s persist, halve the rate (at most once a second)."""
        loop_now = asyncio.get_running_loop().time()
        wait = retry_after if retry_after is not None else 1.0
        self._apply(await asyncio.to_thread(self.budget.pause, self.budget.now() + wait, "429"))
        persistent = loop_now - self._last_429 < PERSISTENT_429_WINDOW
        self._last_429 = loop_now
        self._quiet_since = max(self._quiet_since, loop_now + wait)
        if self.scheduled:
            if not persistent:
                return
            assert self.budget.rate is not None
            factor = await asyncio.to_thread(self.budget.slow_down, min(1.0, 0.2 / self.budget.rate))
            if factor is not None:
                await self._give_back()  # slots at the old spacing: lease anew at the new one
                self._state = State(self._state.paused_until, self._state.quota_until, self._state.quota_kind, factor)
                self._say_slowed(self.budget.rate * factor, "every process on this key")
            return
        # A commercial process without a schedule: an AIMD throttle of its own (a Pacer). A 429 that
        # persists (two within PERSISTENT_429_WINDOW; one alone may be a server's hiccup) starts it at
        # half the rate sent. Once throttled, every 429 halves it (AIMD's multiplicative decrease), but
        # at most once a second: the 429s that follow a halving within it answer requests sent at the
        # old rate. (A 429 soon after an increase is no such echo: the new rate is too high.) Halving,
        # not a step down to just under the limit, so that processes sharing the key converge on fair
        # shares of it. _recover raises the rate again once the 429s stop.
        if self._throttle is not None:
            if loop_now - self._decreased_at < 1.0:
                return
            assert self.throttle_rate is not None
            current = self.throttle_rate
            # Where the increase returns to at once: the last rate that held without a 429, and a
            # little under the rate that drew this one (the one measured at the server's limit).
            self._ceiling = min(CEILING_SHARE * current, self._good or current)
        else:
            if not persistent:
                return
            # A rate measured while unthrottled (a burst, a pause in it) says little about the
            # server's limit: no ceiling yet, and the increase grows fast until the next 429.
            sent = sum(1 for t in self._sent if t > loop_now - 2.0) / 2.0
            current, self._ceiling = sent or 1.0, None
        self._set_throttle(max(0.2, current / 2), loop_now)
        self._decreased_at = loop_now
        self._say_slowed(max(0.2, current / 2), "this process")

    def _say_slowed(self, rate: float, who: str) -> None:
        """The first slow-down of a commercial run is a WARNING (the key may be a rate-limited one,
        configured as commercial), said once; later ones, and the free tier's, are INFO."""
        if self._free or self._warned:
            logger.info("rate limited again: slowing %s down to %.2f requests/s", who, rate)
            return
        self._warned = True
        logger.warning(
            "commercial tier, but the API answers 429 (rate limited): slowing down to %.1f requests/s and adapting; "
            'if this key is rate limited, set [api] tier = "free" with [limits] per_second, or run "harvester check"',
            rate,
        )

    def _recover(self, now: float) -> None:
        """AIMD's increase, a step each RECOVER_EVERY seconds without a 429 (or a server's pause).

        No ceiling known yet (the first throttle): grow by RECOVER_FACTOR a step, to find the server's
        limit in a few seconds. Below the ceiling (after a halving): straight back to it, the last rate
        that held. From the ceiling on: the additive increase, a small share of the ceiling a step,
        which probes for the limit without a burst of 429s; the 429 that ends the probe halves the rate
        again. So the rate spends most of its time just under the server's limit, and sustains most of
        it, where a slow-down that never grew back (or a jump back to no limit, and a burst of 429s)
        would not. A rate twice the ceiling with no 429 means the limit went away: the ceiling is
        forgotten, and the rate grows fast until the throttle ends.
        """
        assert self.throttle_rate is not None
        if now - self._quiet_since < RECOVER_EVERY:
            return
        rate = self._good = self.throttle_rate  # it held
        if self._ceiling is None:
            rate *= RECOVER_FACTOR
        elif rate < self._ceiling:
            rate = self._ceiling
        else:
            rate += RECOVER_STEP * self._ceiling
            if rate >= 2 * self._ceiling:
                self._ceiling = None
        if rate > 10_000:
            self._throttle = self.throttle_rate = self._ceiling = self._good = None
            logger.info("no 429 for a while: back to the configured rate")
        else:
            self._set_throttle(rate, now)

    def _set_throttle(self, rate: float, now: float) -> None:
        self.throttle_rate = rate
        if self._throttle is None:
            self._throttle = Pacer(rate)
        else:
            self._throttle.set_rate(rate)  # the same schedule, and the callers queued on it
        self._quiet_since = max(self._quiet_since, now)


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

    async def admit(self) -> bool:
        """Wait while the breaker is open; after the cool-down, one caller goes ahead as the probe.

        True for that caller: it must `record()` its answer, or `release()` when it sends nothing
        (its item's lease was lost, its quota spent), so that another caller can probe at once."""
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
                return True
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), max(wait, 0.05) if wait > 0 else 1.0)
            except TimeoutError:
                pass
        return False

    def release(self) -> None:
        """The probe sent nothing: let the next caller probe, now."""
        if self._probing:
            self._probing = False
            self._changed.set()

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
