"""The views equal what Python computes from the base tables, on SQLite and PostgreSQL.

A real harvest (subprocesses against the fake API, whose attention grows day by day):
Counts on one day and Fetch on the next, with a DOI whose altmetric id
changes every day (superseded outputs). Snapshots a week older are then added, with
a gap, so that every kind of change (previous snapshot, exact day before, a week) has
rows with and without a value.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, inspect, text

from harvester import schema
from harvester.db import alembic_config, open_database
from harvester.vocabulary import ExitCode
from tests.conftest import rows
from tests.subproc import start
from tests.test_nightly import NIGHT, SEED_KEY, make_world

MERGED = "10.5555/merged.0001"
DOIS = [f"10.5555/view.{i:04d}" for i in range(30)] + [MERGED, "10.1038/news.2011.490"]
DAYS = [NIGHT + timedelta(days=n) for n in range(2)]
# Added by hand: the week before the harvests, with no row on DAYS[0] - 1 day (a gap).
EXTRA_DAYS = [DAYS[0] - timedelta(days=7), DAYS[0] - timedelta(days=6), DAYS[0] - timedelta(days=5)]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def harvested(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    tmp = tmp_path_factory.mktemp("views")
    ids = tmp / "ids.txt"
    ids.write_text("\n".join(DOIS) + "\n")
    with ExitStack() as stack:
        if request.param == "postgresql":
            url = stack.enter_context(request.getfixturevalue("pg_cluster").database())
        else:
            url = f"sqlite:///{tmp / 'harvest.db'}"
        for world in make_world(tmp):
            for n, when in enumerate(DAYS):
                endpoint = "fetch" if n == 1 else "counts"
                world.clock.now = when.replace(tzinfo=UTC).timestamp()
                proc = start(
                    url,
                    world.server,
                    "harvest",
                    "--no-progress",
                    "--endpoint",
                    endpoint,
                    str(ids),
                    config=world.config,
                    HARVESTER_NOW=when.isoformat(),
                    ALTMETRIC_API_KEY=SEED_KEY,
                )
                _, err = proc.communicate(timeout=120)
                assert proc.returncode in (ExitCode.OK, ExitCode.SOME_FAILED), err
        engine = open_database(url)
        _older_snapshots(engine)
        yield engine
        engine.dispose()


def _older_snapshots(engine: Engine) -> None:
    """A week of history before the harvests for half the outputs, with scores that move."""
    first = rows(engine, "select altmetric_id, score, posts_count from counts_snapshots where harvested_on = :d", d=DAYS[0].date())
    with engine.begin() as conn:
        for i, snap in enumerate(first[::2]):
            for k, when in enumerate(EXTRA_DAYS):
                conn.execute(
                    schema.counts_snapshots.insert().values(
                        altmetric_id=snap["altmetric_id"],
                        harvested_on=when.date(),
                        score=None if (i + k) % 7 == 3 else float(i * 3 + k),
                        posts_count=snap["posts_count"],
                        harvested_at=when,
                    )
                )


def _day(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _close(got: dict[str, Any], want: dict[str, Any]) -> bool:
    return got.keys() == want.keys() and all(
        (g == pytest.approx(w)) if isinstance(w, float) and g is not None else g == w for g, w in ((got[k], want[k]) for k in want)
    )


def test_the_harvest_has_what_the_views_need(harvested: Engine) -> None:
    assert rows(harvested, "select count(*) as n from outputs where superseded_by is not null")[0]["n"] == 1
    assert rows(harvested, "select count(distinct harvested_on) as n from counts_snapshots")[0]["n"] == 5
    assert rows(harvested, "select count(*) as n from source_counts where posts_count is not null")[0]["n"] > 0
    assert rows(harvested, "select count(*) as n from score_context where scope = 'journal'")[0]["n"] > 0


# The main sources a user looks for first; the view has a column pair for every source of the mapping.
MAIN_SOURCES = ["twitter", "news", "blogs", "policy", "wikipedia", "patents", "reddit", "facebook", "video", "bluesky"]


def test_output_summary_equals_python_over_the_base_tables(harvested: Engine) -> None:
    got = {r["altmetric_id"]: r for r in rows(harvested, "select * from output_summary")}
    columns = list(next(iter(got.values())))
    sources = [c.removesuffix("_accounts") for c in columns if c.endswith("_accounts") and c != "accounts_count"]
    assert set(MAIN_SOURCES) <= set(sources)
    assert all(f"{s}_posts" in columns for s in sources)

    accounts: dict[tuple[int, str], int] = {}
    posts: dict[tuple[int, str], int] = {}
    for r in rows(harvested, "select altmetric_id, source, unique_users_count, posts_count from source_counts"):
        accounts[r["altmetric_id"], r["source"]] = r["unique_users_count"] or 0
        posts[r["altmetric_id"], r["source"]] = r["posts_count"] or 0
    mendeley = {
        r["altmetric_id"]: r["count"] for r in rows(harvested, "select altmetric_id, r.count from readers r where platform = 'mendeley'")
    }
    journal = {r["altmetric_id"]: r for r in rows(harvested, "select * from score_context where scope = 'journal'")}
    want = {}
    for o in rows(harvested, "select * from outputs"):
        if o["superseded_by"] is not None:
            continue
        aid = o["altmetric_id"]
        row = {k: o[k] for k in ("altmetric_id", "doi", "title", "journal", "type", "published_on", "score", "first_harvested_at")}
        row |= {k: o[k] or 0 for k in ("posts_count", "accounts_count", "readers_count")}
        for s in sources:
            row[f"{s}_accounts"] = accounts.get((aid, s), 0)
            row[f"{s}_posts"] = posts.get((aid, s), 0)
        row["mendeley_readers"] = mendeley.get(aid, 0)
        context = journal.get(aid, {})
        row |= {"journal_percentile": context.get("pct"), "journal_rank": context.get("rank"), "journal_outputs": context.get("count")}
        row["last_harvested_at"] = o["harvested_at"]
        want[aid] = row
    assert got.keys() == want.keys()
    bad = [aid for aid in want if not _close(got[aid], want[aid])]
    assert not bad, [(got[a], want[a]) for a in bad[:2]]
    # The data exercise every branch: counts and posts of the main sources, zeros, a percentile, readers.
    assert any(r["twitter_accounts"] > 0 for r in got.values()) and any(r["twitter_accounts"] == 0 for r in got.values())
    assert any(r["news_posts"] > 0 for r in got.values())
    assert any(r["journal_percentile"] is not None for r in got.values()) and any(r["mendeley_readers"] for r in got.values())


def test_score_changes_equals_python_over_the_snapshots(harvested: Engine) -> None:
    series: dict[int, dict[date, float | None]] = defaultdict(dict)
    for r in rows(harvested, "select altmetric_id, harvested_on, score from counts_snapshots"):
        series[r["altmetric_id"]][_day(r["harvested_on"])] = r["score"]
    want = {}
    for aid, by_day in series.items():
        previous: tuple[date, float | None] | None = None
        for d in sorted(by_day):
            score = by_day[d]
            want[aid, d] = {
                "score": score,
                "previous_on": previous[0] if previous else None,
                "previous_score": previous[1] if previous else None,
                "change": _diff(score, previous[1]) if previous else None,
                "change_1d": _diff(score, by_day.get(d - timedelta(days=1))),
                "change_7d": _diff(score, by_day.get(d - timedelta(days=7))),
            }
            previous = (d, score)
    got = {}
    for r in rows(harvested, "select * from score_changes"):
        r["previous_on"] = None if r["previous_on"] is None else _day(r["previous_on"])
        got[r.pop("altmetric_id"), _day(r.pop("harvested_on"))] = r
    assert got.keys() == want.keys()
    bad = [k for k in want if not _close(got[k], want[k])]
    assert not bad, [(k, got[k], want[k]) for k in bad[:3]]
    # Every column has rows with a value and rows without one.
    for column in ("previous_on", "change", "change_1d", "change_7d"):
        assert any(r[column] is None for r in got.values()) and any(r[column] is not None for r in got.values()), column
    assert any(r["change_1d"] is None and r["change"] is not None for r in got.values())  # the gap


def test_the_views_are_views(harvested: Engine) -> None:
    names = {"output_summary", "score_changes"}
    assert names <= set(inspect(harvested).get_view_names())
    assert not names & set(inspect(harvested).get_table_names())


def test_a_downgrade_drops_the_views_and_an_upgrade_brings_them_back(tmp_path: Path) -> None:
    engine = open_database(f"sqlite:///{tmp_path / 'trip.db'}")
    try:
        _round_trip(engine)
    finally:
        engine.dispose()


def test_a_downgrade_drops_the_views_on_postgresql(pg_url: str) -> None:
    engine = open_database(pg_url)
    try:
        _round_trip(engine)
    finally:
        engine.dispose()


def _round_trip(engine: Engine) -> None:
    names = {"output_summary", "score_changes"}
    cfg = alembic_config(engine)
    command.downgrade(cfg, "0008")
    assert not names & set(inspect(engine).get_view_names())
    command.upgrade(cfg, "head")
    assert names <= set(inspect(engine).get_view_names())
    with engine.connect() as conn:
        assert conn.execute(text("select count(*) from output_summary")).scalar() == 0
        assert conn.execute(text("select count(*) from score_changes")).scalar() == 0


def test_the_report_reads_the_views_on_both_engines(harvested: Engine, tmp_path: Path) -> None:
    """`harvester report` queries output_summary and the snapshots with SQL both engines take."""
    from harvester.report import write_report

    data = write_report(harvested, tmp_path / "report.html")
    assert data.headline["outputs"] == len(rows(harvested, "select altmetric_id from output_summary"))
    assert data.top and data.movers and data.sources and data.score_bins and data.jobs_by_status
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert page.count('<figure class="chart"') == 4  # every chart but the nightlies' (none ran here)
