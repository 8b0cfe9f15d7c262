"""When to ask again: the attempt loop of one item, its backoff, and Retry-After.

One policy for the run (pipeline.Run.fetch) and the key check (check.py), after dlt's
`requests/retry.py` and aiohttp_retry's ExponentialRetry (docs/architecture.md, HTTP outcomes):

- a final answer (done, not found, failed) ends the loop;
- a transient failure (5xx, timeout, reset, an unusable body) counts as an attempt and waits a
  capped exponential backoff with jitter, up to `max_attempts`, then the item fails with the
  last reason; one that came while the circuit breaker was open is the API's outage, not the
  item's, and does not count;
- a 429 never counts: the attempt waits for `Retry-After` (seconds or an HTTP date) and, without
  one, for 1 s, 2 s, 4 s ... up to a minute, and goes again.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from harvester.config import LimitsConfig
from harvester.vocabulary import OutcomeKind


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asks us to wait (`Retry-After` as seconds or as an HTTP date), or None."""
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT; a date without a zone is taken as such
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


@dataclass(frozen=True, slots=True)
class Try:
    """One attempt's answer, as the policy needs it.

    `counts`: False for a failure while the circuit breaker was open (the API's outage).
    `attempts`: how many attempts counted, set by the policy on the answer it returns.
    """

    kind: OutcomeKind
    status: int | None = None
    error: str | None = None
    body: bytes | None = None
    note: str | None = None
    counts: bool = True
    attempts: int = 0


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    first_429_wait: float = 1.0  # without Retry-After: then twice as long each time, up to max_429_wait
    max_429_wait: float = 60.0

    @classmethod
    def from_limits(cls, limits: LimitsConfig) -> RetryPolicy:
        return cls(limits.max_attempts, limits.backoff_base, limits.backoff_max)

    def backoff(self, attempt: int) -> float:
        """Capped exponential backoff with full jitter in the upper half."""
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        return float(ceiling / 2 + random.uniform(0, ceiling / 2))

    def rate_limited_wait(self, headers: Mapping[str, str], times: int) -> float:
        """How long the `times`-th 429 in a row (from 0) waits: Retry-After, else doubling from 1 s."""
        asked = retry_after(headers)
        if asked is not None:
            return asked
        return float(min(self.max_429_wait, self.first_429_wait * 2**times))

    async def run(self, attempt: Callable[[int], Awaitable[Try | None]]) -> Try | None:
        """Call `attempt(times_rate_limited)` until it gives a final answer; that answer, with its count.

        `attempt` sends one request (it waits for admission itself, and for a 429's wait, see
        rate_limited_wait) and says what came back; None ends the loop at once (the item is no
        longer ours to ask for). A transient failure is retried after a backoff; on the last
        attempt it becomes the item's `failed`, with the reason.
        """
        attempts = limited = 0
        while True:
            answer = await attempt(limited)
            if answer is None:
                return None
            if answer.kind is OutcomeKind.RATE_LIMITED:
                limited += 1
                continue
            if answer.kind is not OutcomeKind.RETRY:
                return replace(answer, attempts=attempts + 1)
            if not answer.counts:
                continue
            attempts += 1
            if attempts >= self.max_attempts:
                return replace(answer, kind=OutcomeKind.FAILED, body=None, attempts=attempts)
            await asyncio.sleep(self.backoff(attempts))
