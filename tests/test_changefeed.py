"""`nightly` with [nightly] mode = "changes" against the fake's universe, checked against its truth.

Real parts: the fake over HTTP (universe on, its clock moved night by night), the harvester
in subprocesses on HARVESTER_NOW, real SQLite (and PostgreSQL for the first test).
daily_series must equal Universe.truth on every day it has a row (score, posts, accounts; readers
on observed days), and may only lack a row inside an incomplete night's gap.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from harvester.budget import key_hash
from harvester.changefeed import choose_timeframe
from harvester.fakeapi import FakeConfig, FakeServer, ListingFaults, serve_in_thread, universe_dois, universe_of
from harvester.fakeapi.universe import Universe
from harvester.vocabulary import ExitCode
from tests.conftest import KEY, rows
from tests.subproc import start

NIGHT = datetime(2026, 11, 20, 2, 30)
D0 = NIGHT.date()
SEED_KEY = "sk-seed-0000"
COUNTS_ONLY = "counts-only-key"
PER_SECOND = 40  # a free key's rate in the test of three processes sharing it
CONFIG = """
[limits]
backoff_base = 0.01
backoff_max = 0.05
max_attempts = 2
per_second = {per_second}
per_hour = 1000000
per_day = {per_day}
[nightly]
mode = "changes"
num_results = 99
full_refresh_after = "{full}"
"""


def unix_day(d: date) -> int:
    return (d - date(1970, 1, 1)).days


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Feed:
    tmp: Path
    url: str
    server: FakeServer
    clock: Clock
    universe: Universe
    faults: ListingFaults
    tracked: list[str]

    def config(self, full: str = "30d", per_day: int = 1_000_000, per_second: int = 1000) -> Path:
        path = self.tmp / f"harvester-{full}-{per_day}-{per_second}.toml"
        path.write_text(CONFIG.format(full=full, per_day=per_day, per_second=per_second))
        return path

    def run(self, when: datetime, *args: str, config: Path | None = None, **env: str) -> tuple[int, str, str]:
        self.clock.now = when.replace(tzinfo=UTC).timestamp()
        env.setdefault("ALTMETRIC_API_KEY", KEY)
        proc = start(self.url, self.server, *args, config=config or self.config(), HARVESTER_NOW=when.isoformat(), **env)
        out, err = proc.communicate(timeout=300)
        return proc.returncode, out, err

    def night(self, when: datetime, config: Path | None = None, **env: str) -> tuple[int, dict[str, Any], str]:
        before = self.server.stats.total
        code, out, err = self.run(when, "nightly", "--json", "--no-progress", config=config, **env)
        report = json.loads(out)["reports"][-1] if out.strip() else {}
        report["_fake_requests"] = self.server.stats.total - before
        return code, report, err

    def harvest(self, dois: list[str], when: datetime, *extra: str) -> None:
        ids = self.tmp / f"ids-{len(dois)}-{when:%d%H}.txt"
        ids.write_text("".join(d + "\n" for d in dois))
        code, _, err = self.run(when, "harvest", "--no-progress", *extra, str(ids), ALTMETRIC_API_KEY=SEED_KEY)
        assert code == ExitCode.OK, err

    def series(self) -> dict[tuple[str, date], dict[str, Any]]:
        engine = create_engine(self.url)
        try:
            found = rows(engine, "SELECT o.doi, d.* FROM daily_series d JOIN outputs o USING (altmetric_id)")
        finally:
            engine.dispose()
        return {(r["doi"], r["day"] if isinstance(r["day"], date) else date.fromisoformat(r["day"])): r for r in found}

    def runs(self) -> list[dict[str, Any]]:
        engine = create_engine(self.url)
        try:
            return rows(engine, "SELECT * FROM nightly_runs ORDER BY job_id")
        finally:
            engine.dispose()


def make_feed(tmp: Path, url: str) -> Generator[Feed, None, None]:
    clock = Clock()
    faults = ListingFaults()
    cfg = FakeConfig(
        keys=(KEY, SEED_KEY),
        counts_only_keys=(COUNTS_ONLY,),
        universe=20_000,
        universe_epoch=unix_day(D0) - 5,
        attention_rate=0.01,
        clock=clock,
        listing_faults=faults,
    )
    u = universe_of(cfg)
    assert u is not None
    # A user's list: quiet outputs, and outputs with attention on the first nights (so listed ones exist every night).
    busy = sorted(set().union(*(u.attended(unix_day(D0) + k) for k in range(4))))[:25]
    tracked = sorted(set(universe_dois(40)) | set(busy))
    with serve_in_thread(cfg) as server:
        yield Feed(tmp, url, server, clock, u, faults, tracked)


@pytest.fixture
def feed(tmp_path: Path) -> Iterator[Feed]:
    yield from make_feed(tmp_path, f"sqlite:///{tmp_path / 'harvest.db'}")


def check_truth(feed: Feed, last: date, gaps: dict[str, set[date]] | None = None, readers_exact: bool = True) -> int:
    """Every row of daily_series equals the truth; every tracked output has a row every day except its gaps. Returns rows checked."""
    series = feed.series()
    gaps = gaps or {}
    checked = 0
    for doi in feed.tracked:
        first = min(d for (x, d) in series if x == doi)
        d = first
        while d <= last:
            row = series.get((doi, d))
            if row is None:
                assert d in gaps.get(doi, set()), f"{doi}: no row on {d}"
            else:
                truth = feed.universe.truth(doi, unix_day(d))
                assert truth is not None
                assert row["score"] == pytest.approx(truth.score), (doi, d, row, truth)
                assert (row["posts_count"], row["accounts_count"]) == (truth.posts_count, truth.accounts_count), (doi, d)
                if row["observed"] and readers_exact:
                    assert row["readers_count"] == truth.readers_count, (doi, d)
                checked += 1
            d += timedelta(days=1)
    return checked


def listed_gaps(feed: Feed, night: date) -> dict[str, set[date]]:
    """The days a night's window spans before it, for the outputs its listing held: their truth there is
    unknown (attention on one of those days, but which?) unless another night observed or covered them."""
    engine = create_engine(feed.url)
    try:
        [run] = [r for r in rows(engine, "SELECT * FROM nightly_runs") if str(r["night"]) == night.isoformat()]
        listed = rows(
            engine, f"SELECT o.doi FROM citation_activity c JOIN outputs o USING (altmetric_id) WHERE c.job_id = {run['listing_job_id']}"
        )
    finally:
        engine.dispose()
    first = run["window_from"] if isinstance(run["window_from"], date) else date.fromisoformat(run["window_from"])
    days = {first + timedelta(days=k) for k in range((night - first).days)}
    return {r["doi"]: days for r in listed}


def test_choose_timeframe_covers_the_time_since_the_last_listing_with_a_margin() -> None:
    assert choose_timeframe(timedelta(0)) == ("1d", 1)
    assert choose_timeframe(timedelta(hours=22)) == ("1d", 1)
    assert choose_timeframe(timedelta(hours=24)) == ("2d", 2)  # the margin: a night a little late is still covered
    assert choose_timeframe(timedelta(days=2)) == ("3d", 3)
    assert choose_timeframe(timedelta(days=6, hours=12)) == ("1w", 7)
    assert choose_timeframe(timedelta(days=8)) == ("1m", 28)
    assert choose_timeframe(timedelta(days=400)) == ("1y", 365)


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_nights_ask_only_for_the_listing_and_new_outputs_and_the_series_equals_the_truth(
    engine: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("pg_url") if engine == "postgresql" else f"sqlite:///{tmp_path / 'harvest.db'}"
    world = make_feed(tmp_path, url)
    feed = next(world)
    try:
        new = [d for d in universe_dois(60) if d not in feed.tracked][:3]
        feed.harvest(feed.tracked, NIGHT - timedelta(days=1))
        nights = [NIGHT + timedelta(days=k) for k in range(4)]
        for k, when in enumerate(nights):
            if k == 1:
                # New ids of the user's, never harvested: asked first, once, that night.
                feed.harvest(new, when - timedelta(hours=1), "--enqueue-only")
            code, report, err = feed.night(when)
            assert code == ExitCode.OK, err
            assert report["mode"] == "changes" and report["complete"] is True
            pages = -(-report["listed"] // 99)
            expected = pages + (len(new) if k == 1 else 0)
            assert report["requests"] == report["_fake_requests"] == expected, report
            assert report["new_outputs"] == (len(new) if k == 1 else 0)
            assert report["full_refreshed"] == 0
            assert report["carried"] > 0 and report["listed_tracked"] > 0
        feed.tracked += new
        runs = feed.runs()
        assert [r["timeframe"] for r in runs] == ["1d", "2d", "2d", "2d"]
        assert all(r["mode"] == "changes" and r["complete"] for r in runs)
        assert check_truth(feed, nights[-1].date()) >= len(feed.tracked) * 4
        # Carried rows exist (the point), and every day of every output has a row (no gap on complete nights).
        assert any(not r["observed"] for r in feed.series().values())
    finally:
        world.close()  # stops the fake


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_a_night_shares_its_key_with_a_bulk_harvest_and_worker_processes_help(
    engine: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The nightly, a bulk harvest of other ids and a `worker --wait`, at once on one free key: one
    shared budget holds all three to per_second and counts every request, workers take items of the
    night's jobs too, and the series stays the truth."""
    url = request.getfixturevalue("pg_url") if engine == "postgresql" else f"sqlite:///{tmp_path / 'harvest.db'}"
    world = make_feed(tmp_path, url)
    feed = next(world)
    try:
        feed.harvest(feed.tracked, NIGHT - timedelta(days=1))
        assert feed.night(NIGHT)[0] == ExitCode.OK
        when = NIGHT + timedelta(days=1)
        bulk = [d for d in universe_dois(400) if d not in feed.tracked][:150]
        ids = feed.tmp / "bulk.txt"
        ids.write_text("".join(d + "\n" for d in bulk))
        # Every tracked output due for a full refresh too: the night has items for the workers.
        config = feed.config(full="1h", per_second=PER_SECOND)
        free = {"HARVESTER_TIER": "free", "HARVESTER_NOW": when.isoformat(), "ALTMETRIC_API_KEY": KEY}
        feed.clock.now = when.replace(tzinfo=UTC).timestamp()
        before = feed.server.stats.total
        started = time.monotonic()
        harvest = start(
            feed.url, feed.server, "harvest", "--no-progress", "--name", "bulk", "--concurrency", "2", str(ids), config=config, **free
        )
        nightly = start(feed.url, feed.server, "nightly", "--json", "--no-progress", config=config, **free)
        # The worker once the bulk job is there (else it would look again only after IDLE_POLL).
        db = create_engine(feed.url)
        try:
            deadline = time.monotonic() + 60
            while not rows(db, "SELECT id FROM jobs WHERE name = 'bulk'") and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            db.dispose()
        helper = start(feed.url, feed.server, "worker", "--wait", "--no-progress", "--concurrency", "2", config=config, **free)
        out, err = nightly.communicate(timeout=300)
        assert nightly.returncode == ExitCode.OK, err
        _, harvest_err = harvest.communicate(timeout=300)
        assert harvest.returncode == ExitCode.OK, harvest_err
        elapsed = time.monotonic() - started
        helper.send_signal(signal.SIGTERM)
        _, helper_err = helper.communicate(timeout=60)
        sent = feed.server.stats.total - before
        report = json.loads(out)["reports"][-1]
        assert report["mode"] == "changes" and report["complete"] is True, report
        assert report["full_refreshed"] >= len(feed.tracked) - report["listed_tracked"]
        # One budget for the three processes: every request counted once, and together within per_second.
        with create_engine(feed.url).connect() as conn:
            used = conn.execute(text("SELECT day_used FROM rate_budgets WHERE key_hash = :k"), {"k": key_hash(KEY)}).scalar_one()
        assert used == sent, (used, sent)
        assert sent / elapsed <= PER_SECOND * 1.05, (sent, elapsed)
        assert sent >= len(bulk) + report["requests"]
        # The worker took items of the other processes' jobs (it prints each job it worked on).
        worked = [line for line in helper_err.splitlines() if line.startswith("job ") and " in " in line]
        assert any(int(line.split("(")[1].split(" in ")[0].replace(",", "")) > 0 for line in worked), helper_err
        feed.tracked += bulk
        assert check_truth(feed, when.date()) >= len(feed.tracked)
    finally:
        world.close()


def test_a_missed_night_is_covered_by_the_next_nights_larger_window(feed: Feed) -> None:
    feed.harvest(feed.tracked, NIGHT - timedelta(days=1))
    assert feed.night(NIGHT)[0] == ExitCode.OK
    code, report, err = feed.night(NIGHT + timedelta(days=2))  # the night of D0+1 never ran
    assert code == ExitCode.OK, err
    assert report["timeframe"] == "3d" and report["complete"]
    [_, second] = feed.runs()
    assert second["window_from"] in (D0, D0.isoformat())
    # D0+1 has its rows, carried or observed, all true; only outputs the 3d listing held may lack one there.
    gaps = listed_gaps(feed, D0 + timedelta(days=2))
    assert check_truth(feed, D0 + timedelta(days=2), gaps=gaps)
    series = feed.series()
    assert all((doi, D0 + timedelta(days=1)) in series for doi in feed.tracked if doi not in gaps)


def test_the_dry_run_shows_the_window_the_pages_new_outputs_and_full_refresh_without_a_request(feed: Feed) -> None:
    feed.harvest(feed.tracked, NIGHT - timedelta(days=1))
    assert feed.night(NIGHT)[0] == ExitCode.OK
    [first] = feed.runs()
    when = NIGHT + timedelta(days=1)
    new = [d for d in universe_dois(60) if d not in feed.tracked][:4]
    feed.harvest(new, when - timedelta(hours=1), "--enqueue-only")
    config = feed.config(per_day=5_000)
    before = feed.server.stats.total
    code, out, err = feed.run(when, "nightly", "--dry-run", "--json", config=config, HARVESTER_TIER="free")
    assert code == ExitCode.OK, err
    assert feed.server.stats.total == before  # a plan, not a night
    plan = json.loads(out)
    # A day and a margin since the last listing: 2d, its pages scaled from last night's 1d listing.
    assert plan["mode"] == "changes" and plan["timeframe"] == "2d" and plan["window_from"] == D0.isoformat()
    assert plan["pages_expected"] == -(-(first["listed"] * 2) // 99)
    assert plan["new_outputs"] == len(new) and plan["planned"]["new"] == len(new)
    assert plan["full_due"] == 0 and plan["planned"]["full"] == 0  # everything was asked within 30d
    assert plan["quota_left"] == plan["quota_per_day"] == 5_000  # a new UTC day, on the free tier
    code, text, err = feed.run(when, "nightly", "--dry-run", config=config, HARVESTER_TIER="free")
    assert code == ExitCode.OK, err
    assert 'mode = "changes"' in text and "timeframe 2d" in text and f"{len(new)} of {len(new)} never harvested" in text
    # The night it planned: the pages it expected are an upper bound of the pages it read.
    code, report, err = feed.night(when, config=config, HARVESTER_TIER="free")
    assert code == ExitCode.OK, err
    assert report["timeframe"] == "2d" and report["new_outputs"] == len(new)
    assert report["requests"] - len(new) <= plan["pages_expected"]
    # With everything due (full_refresh_after shorter than a day), the full refresh takes what the quota leaves.
    code, out, err = feed.run(
        when + timedelta(days=1), "nightly", "--dry-run", "--json", config=feed.config(full="1h", per_day=60), HARVESTER_TIER="free"
    )
    assert code == ExitCode.OK, err
    plan = json.loads(out)
    assert plan["full_due"] >= len(feed.tracked) + len(new)
    assert plan["quota_left"] == 60  # a new UTC day
    assert plan["planned"]["new"] == 0 and plan["planned"]["pages"] > 0
    assert plan["planned"]["full"] == 60 - plan["planned"]["pages"]


@pytest.mark.parametrize("fault", ["failed_page", "total_changes", "quota"])
def test_an_incomplete_listing_leaves_a_gap_never_a_wrong_value(feed: Feed, fault: str) -> None:
    feed.harvest(feed.tracked, NIGHT - timedelta(days=1))
    assert feed.night(NIGHT)[0] == ExitCode.OK
    bad = NIGHT + timedelta(days=1)
    config = None
    if fault == "failed_page":
        feed.faults.fail_pages = {2}
    elif fault == "total_changes":
        feed.faults.total_shift_from = 2
    else:
        # Free tier: one request a day, a listing of several pages.
        config = feed.config(per_day=1)
    code, report, err = feed.night(bad, config=config, **({"HARVESTER_TIER": "free"} if fault == "quota" else {}))
    feed.faults.off()
    assert code in (3, 75), err
    assert report["complete"] is False and report["carried"] == 0, report
    series = feed.series()
    observed_bad = {doi for (doi, d), r in series.items() if d == bad.date() and r["observed"]}
    # No carried row on the bad night: only what was observed that night has a row.
    assert {doi for (doi, d) in series if d == bad.date()} == observed_bad
    unseen = set(feed.tracked) - observed_bad
    assert unseen
    check_truth(feed, bad.date(), gaps={doi: {bad.date()} for doi in unseen})
    # The next night reads from the last complete one: the gap is covered, with true values.
    code, report, err = feed.night(bad + timedelta(days=1))
    assert code == ExitCode.OK, err
    assert report["complete"] and report["timeframe"] == "3d"
    after = bad.date() + timedelta(days=1)
    gaps = listed_gaps(feed, after)
    check_truth(feed, after, gaps=gaps)
    series = feed.series()
    assert all((doi, bad.date()) in series for doi in feed.tracked if doi not in gaps)


def test_readers_drift_and_are_caught_up_within_full_refresh_after(feed: Feed) -> None:
    feed.harvest(feed.tracked, NIGHT - timedelta(days=1))
    config = feed.config(full="2d")
    refreshed = 0
    for k in range(5):
        code, report, err = feed.night(NIGHT + timedelta(days=k), config=config)
        assert code == ExitCode.OK, err
        refreshed += report["full_refreshed"]
        assert report["requests"] == report["_fake_requests"]
    assert refreshed >= len(feed.tracked)  # every output asked again at least once
    last = (NIGHT + timedelta(days=4)).date()
    check_truth(feed, last, readers_exact=True)
    series = feed.series()
    drifted = 0
    for doi in feed.tracked:
        observed = sorted(d for (x, d), r in series.items() if x == doi and r["observed"])
        # Never more than full_refresh_after (2d) plus a night between observations: readers lag at most that.
        assert all((b - a).days <= 3 for a, b in zip(observed, observed[1:], strict=False)), (doi, observed)
        assert (last - observed[-1]).days <= 3
        readers = {series[doi, d]["readers_count"] for d in observed}
        drifted += len(readers) > 1
    assert drifted > 0  # readers changed without attention, and the full refresh saw it


def test_a_key_without_citations_runs_the_night_in_refresh_mode(feed: Feed) -> None:
    feed.harvest(feed.tracked, NIGHT - timedelta(days=1))
    code, report, err = feed.night(NIGHT, ALTMETRIC_API_KEY=COUNTS_ONLY)
    assert code == ExitCode.OK, err
    lines = [line for line in err.splitlines() if "needs Citations" in line]
    assert len(lines) == 1, err
    assert report["mode"] == "refresh" and "403" in report["mode_note"]
    [run] = feed.runs()
    assert run["mode"] == "refresh" and "Citations" in run["mode_note"]
    assert run["refreshed"] == len(feed.tracked)
    # A refresh night observes every output; nothing is carried (no complete change-feed night).
    series = feed.series()
    assert all(series[doi, D0]["observed"] for doi in feed.tracked)
    check_truth(feed, D0)


def test_the_first_nights_dry_run_plans_at_least_the_listings_first_page(feed: Feed) -> None:
    # No listing read yet: its pages are unknown, but page 1 is a request all the same.
    feed.harvest(feed.tracked, NIGHT - timedelta(days=1))
    config = feed.config(per_day=5_000)
    code, out, err = feed.run(NIGHT, "nightly", "--dry-run", "--json", config=config, HARVESTER_TIER="free")
    assert code == ExitCode.OK, err
    plan = json.loads(out)
    assert plan["pages_expected"] is None and plan["planned"]["pages"] == 1
    code, text, err = feed.run(NIGHT, "nightly", "--dry-run", config=config, HARVESTER_TIER="free")
    assert code == ExitCode.OK, err
    assert "pages unknown until page 1 is read" in text and "requests: at least 1 " in text
    assert "nothing to request" not in text


def test_the_nights_text_report_speaks_of_the_change_feed(feed: Feed) -> None:
    feed.harvest(feed.tracked, NIGHT - timedelta(days=1))
    assert feed.night(NIGHT)[0] == ExitCode.OK
    code, out, err = feed.run(NIGHT + timedelta(days=1), "nightly", "--no-progress")
    assert code == ExitCode.OK, err
    lines = out.splitlines()
    assert re.fullmatch(
        r"  changes: \d+[dw] listing complete · \d+ requests · [\d,]+ listed \(\d+ tracked\) · \d+ carried · 0 fully refreshed", lines[1]
    )
    assert re.fullmatch(r"  0 new · 0 not found · 0 failed", lines[2])
    assert "discovered" not in out  # the refresh mode's word
    # Movers with two decimals on both sides (435.823 -> 12624.3 read as a typo).
    movers = [line for line in lines if re.match(r"\s+\d+\. ", line)]
    assert "top score movers" in out and movers
    assert all(re.search(r"  [\d,]+\.\d\d -> [\d,]+\.\d\d  \(", line) for line in movers), movers
    # They are stored too, and each is an output the listing observed that night.
    [_, second] = feed.runs()
    engine = create_engine(feed.url)
    try:
        stored = rows(engine, f"SELECT altmetric_id, score, previous_score FROM nightly_movers WHERE job_id = {second['job_id']}")
        listed = {
            r["altmetric_id"] for r in rows(engine, f"SELECT altmetric_id FROM citation_activity WHERE job_id = {second['listing_job_id']}")
        }
    finally:
        engine.dispose()
    assert len(stored) == len(movers) and all(m["score"] != m["previous_score"] and m["altmetric_id"] in listed for m in stored)
