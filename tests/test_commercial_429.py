"""A commercial key against a server that rate-limits it (issue 20, item 6).

Before: against a fake allowing 10 requests/s, a commercial run slowed to about 1/s and said
nothing without -v. Now it says so once, at WARNING, adapts back up to near the server's limit
(ratelimit.RateLimiter.slow_down and _recover, an AIMD), and the progress line shows the rate.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from harvester.fakeapi import FakeConfig, FakeServer, serve_in_thread
from harvester.progress import Reporter
from harvester.vocabulary import ExitCode
from tests.conftest import KEY, Harness, dois

WARNING = "commercial tier, but the API answers 429 (rate limited)"


@pytest.fixture
def limited() -> Iterator[FakeServer]:
    """The fake enforcing 10 requests/s on the key (no burst), as a rate-limited key's server would."""
    with serve_in_thread(FakeConfig(keys=(KEY,), per_second=10.0)) as server:
        yield server


@pytest.mark.timing
def test_a_commercial_run_against_a_limited_server_warns_once_and_keeps_near_its_limit(
    tmp_path: Path, limited: FakeServer, clean_env: None
) -> None:
    h = Harness(tmp_path, limited)  # tier commercial, concurrency 8
    result = h.run("harvest", h.ids(dois(150)))  # no -v: warnings and progress lines only
    assert result.exit_code == ExitCode.OK, result.stderr
    statuses = h.statuses()
    assert set(statuses) <= {"done", "not_found"} and sum(statuses.values()) == 150  # a 429 fails nothing

    # Said once, on one line, with what to change; never once per 429.
    warnings = [line for line in result.stderr.splitlines() if WARNING in line]
    assert len(warnings) == 1, result.stderr
    assert 'tier = "free"' in warnings[0] and "per_second" in warnings[0] and "harvester check" in warnings[0]
    assert " WARNING harvester.ratelimit: " in warnings[0]
    assert limited.stats.rate_limited > 1  # it was rate limited, more than once

    # Adapting back up: the answers the server gave (429s left out) per second, from the first
    # request to the last, were about 1.4/s before; the server allows 10/s, ~7/s are sustained.
    stats = limited.stats
    assert stats.first_at is not None and stats.last_at is not None
    answered = stats.total - stats.rate_limited
    rate = answered / (stats.last_at - stats.first_at)
    assert rate > 4.5, f"{rate:.2f} answers/s, {stats.rate_limited} 429s of {stats.total} requests"
    assert stats.rate_limited < 0.15 * stats.total

    # A progress line (not a terminal: one every 10 s) shows the rate it is held to.
    assert "/s after 429s" in result.stderr and " · throttled to " in result.stderr


def counts(done: int, pending: int) -> dict[str, int]:
    return {"pending": pending, "done": done, "not_found": 0, "failed": 0}


def test_the_progress_line_shows_the_throttled_rate() -> None:
    stream = io.StringIO()
    reporter = Reporter(7, "lines", stream)
    reporter(counts(0, 10))
    reporter(counts(10, 0), 8.5)  # the last batch: its line is written whatever the interval
    first, last = stream.getvalue().splitlines()
    assert "throttled" not in first
    assert " ids/s · throttled to 8.5/s after 429s · ETA " in last
    assert last.startswith("job 7: 10/10 (100.0%) done 10 · not found 0 · failed 0 · ")
    reporter(counts(10, 0), None)  # no longer throttled: the line says nothing of it
    assert "throttled" not in stream.getvalue().splitlines()[-1]


def test_the_last_progress_line_is_written_once() -> None:
    # Every batch collected after the end reports the same counts: not a line each.
    stream = io.StringIO()
    reporter = Reporter(7, "lines", stream)
    reporter(counts(0, 10))
    reporter(counts(10, 0))
    reporter(counts(10, 0))
    assert [line.split(" (")[0] for line in stream.getvalue().splitlines()] == ["job 7: 0/10", "job 7: 10/10"]
    empty = Reporter(8, "lines", stream)  # a nightly step with nothing due: no "0/0" line
    empty(counts(0, 0))
    assert "job 8" not in stream.getvalue()
