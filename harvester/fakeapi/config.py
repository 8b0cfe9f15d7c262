"""The fake's settings (FakeConfig), what it counts (Stats), and the API's vocabulary."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harvester.fakeapi.evolution import EVOLVE_EPOCH_DAY

logger = logging.getLogger(__name__)

ID_TYPES: frozenset[str] = frozenset(
    {
        "doi",
        "handle",
        "pmid",
        "arxiv",
        "ads",
        "ssrn",
        "repec",
        "isbn",
        "id",
        "nct_id",
        "urn",
        "uri",
        "dimensions_publication_id",
    }
)
# Reported as the limit of a window the fake does not enforce. Deliberately far above any
# real quota: a client that derives a pacing rate from X-HourlyRateLimit-Limit must not be
# slowed down (1,000,000/hour would be 277/s) and -Remaining must never reach 0 in a long
# benchmark against an "unlimited" server.
UNLIMITED_LIMIT = 1_000_000_000


# --------------------------------------------------------------------------------------------
# Configuration and statistics
# --------------------------------------------------------------------------------------------


@dataclass
class ListingFaults:
    """Switches that cut a universe listing short, for the change-feed tests (docs/fakeapi.md).

    Mutable on purpose: a test flips them between simulated nights on a running server.
    """

    fail_pages: set[int] = field(default_factory=set)  # these pages answer 500, every attempt
    total_shift_from: int | None = None  # pages from this one on report query.total one higher

    def off(self) -> None:
        self.fail_pages = set()
        self.total_shift_from = None


@dataclass(frozen=True)
class FakeConfig:
    """How the fake behaves: keys and tiers, enforced limits, share of 404s, injected faults."""

    keys: tuple[str, ...] = ("demo-key",)
    counts_only_keys: tuple[str, ...] = ("counts-only-key",)
    per_second: float | None = None
    burst: int = 1
    per_hour: int | None = None
    per_day: int | None = None
    tweet_ids_per_day: int | None = None  # Fetch's tweet-id quota; None = unlimited
    not_found_pct: float = 15.0
    seed: int = 0
    error_rate: float = 0.0
    reset_rate: float = 0.0
    truncate_rate: float = 0.0
    html_rate: float = 0.0  # 200 with an HTML maintenance page instead of JSON (as proxies do)
    slow_rate: float = 0.0
    slow_seconds: float = 2.0
    latency: float = 0.0
    # A server-imposed pause: after this many requests, every request for pause_seconds gets a
    # 429 with Retry-After (the first one is what tells the clients; the rest were sent into it).
    pause_after: int | None = None
    pause_seconds: float = 5.0
    clock: Callable[[], float] = time.time
    # Attention grows day by day (by the UTC day of `clock`): what nightly harvests and their
    # snapshots are tested against. Off, every body is the same whatever the day.
    evolve: bool = False
    # Benchmarks: accept POST /_fake/prebuild, which builds and encodes the answers for a list of
    # ids ahead of time; a prebuilt id is then served by a dict lookup (the same bytes). Off, the
    # route does not exist and nothing is kept beyond the usual bounded caches.
    prebuild: bool = False
    # A universe of this many outputs with daily attention (docs/fakeapi.md): their DOIs are
    # universe.universe_dois(); the Citations listings of a day hold exactly the universe's
    # outputs with attention in the timeframe's window. None: no universe (listings as before).
    # Universe outputs follow the attention model whether or not `evolve` is on; `evolve` still
    # grows every other output as before.
    universe: int | None = None
    # The share of the universe with attention on a day (the real 1d listing: ~1% of the
    # outputs Altmetric tracks; docs/fakeapi.md), and the first day with any attention.
    attention_rate: float = 0.01
    universe_epoch: int = EVOLVE_EPOCH_DAY
    # Faults of the universe's listings (None: none); the object may be changed while the server runs.
    listing_faults: ListingFaults | None = None


@dataclass
class Stats:
    """What the fake was asked and how it answered (exposed at ``GET /_stats``).

    ``per_path`` is keyed by the percent-decoded request path without the query string
    (e.g. ``/v1/doi/10.1038/abc``), so a raw and an encoded request for one DOI count together.
    """

    total: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    per_path: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    rate_limited: int = 0
    paused: int = 0  # requests that arrived during a server-imposed pause (pause_after)
    first_at: float | None = None  # time.monotonic() of the first and the last request
    last_at: float | None = None
    prebuilt_hits: int = 0  # answers served from the prebuilt cache (FakeConfig.prebuild)

    @property
    def rate(self) -> float:
        """Requests per second between the first request and the last (what a client sustained)."""
        if self.first_at is None or self.last_at is None or self.last_at <= self.first_at:
            return 0.0
        return (self.total - 1) / (self.last_at - self.first_at)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return {
            "total": self.total,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "per_path": dict(self.per_path),
            "faults": dict(self.faults),
            "rate_limited": self.rate_limited,
            "paused": self.paused,
            "rate": round(self.rate, 3),
            # CLOCK_MONOTONIC, the same in every process of the machine: another process can
            # compare these with its own time.monotonic().
            "first_at": self.first_at,
            "last_at": self.last_at,
            "prebuilt_hits": self.prebuilt_hits,
        }
