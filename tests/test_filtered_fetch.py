"""A source-filtered Fetch after a full one (issue 17, items 6 and 7), through the CLI against the fake API.

A body filtered by `--include-sources` or `--exclude-sources` totals only the sources it
carries: the output's totals (outputs.posts_count, the day's counts_snapshots row) stay the
full harvest's. Its body is archived beside the full one, not over it, so that `reparse`
rebuilds every table exactly as the two harvests left it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harvester.fakeapi import FakeServer, fetch_body
from harvester.fakeapi.bodies import _filter_fetch
from harvester.vocabulary import ExitCode
from tests.conftest import Harness, dois
from tests.subproc import query, url_of
from tests.test_archive import whole, wipe

IDS = dois(80, "10.5555/filtered")
FILTERS = (("--include-sources", "news"), ("--exclude-sources", "twitter"))


def database(h: Harness, backend: str, request: pytest.FixtureRequest) -> Path | str:
    return h.db if backend == "sqlite" else str(request.getfixturevalue("pg_url"))


def fetch(h: Harness, db: Path | str, *options: str) -> None:
    result = h.run("--database", url_of(db), "harvest", "--endpoint", "fetch", "--no-progress", *options, h.ids(IDS))
    assert result.exit_code == ExitCode.OK, result.output


def totals(db: Path | str) -> dict[str, list[tuple[Any, ...]]]:
    return {
        "outputs": query(db, "select altmetric_id, posts_count, accounts_count from outputs order by 1"),
        "counts_snapshots": query(db, "select altmetric_id, harvested_on, posts_count, accounts_count from counts_snapshots order by 1, 2"),
    }


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_source_filtered_fetch_leaves_the_totals(h: Harness, backend: str, request: pytest.FixtureRequest) -> None:
    db = database(h, backend, request)
    fetch(h, db)
    full = totals(db)
    assert len(full["outputs"]) > 50 and all(n is not None for _, n, _ in full["outputs"])
    for option, value in FILTERS:
        # The filtered bodies do total less: storing them as totals would show.
        bodies = [b for b in (fetch_body("doi", d) for d in IDS) if b]
        parts = [
            _filter_fetch(b, [value], None, None) if option == "--include-sources" else _filter_fetch(b, None, [value], None)
            for b in bodies
        ]
        assert sum(p["counts"]["total"]["posts_count"] for p in parts) < sum(n for _, n, _ in full["outputs"])
        fetch(h, db, option, value)
        assert totals(db) == full, option
    # The filtered harvests did store what they carry (their time, their news rows).
    assert query(db, "select count(*) from outputs where harvested_at > first_harvested_at")[0][0] == len(full["outputs"])
    assert query(db, "select count(*) from source_counts where source = 'news'")[0][0] > 0


@pytest.mark.parametrize(("backend", "keep"), [("sqlite", "latest"), ("sqlite", "all"), ("postgresql", "latest")])
def test_reparse_after_a_filtered_fetch_rebuilds_what_the_harvests_stored(
    h: Harness, fake: FakeServer, backend: str, keep: str, request: pytest.FixtureRequest
) -> None:
    (h.tmp / "harvester.toml").write_text((h.tmp / "harvester.toml").read_text() + f'[archive]\nkeep = "{keep}"\n')
    db = database(h, backend, request)
    fetch(h, db)
    mentions = query(db, "select count(*) from mentions")[0][0]
    fetch(h, db, "--include-sources", "news")
    before = whole(db)
    assert len(before["mentions"]) == mentions > 300
    # Both bodies of each id are kept: the filtered one beside the full one, not over it.
    done = query(db, "select job_id, count(*) from job_items where status = 'done' group by job_id order by 1")
    assert query(db, "select job_id, count(*) from raw_bodies group by job_id order by 1") == done
    filtered = query(db, "select identifier, params from raw_bodies where job_id = 2")
    assert all(i.endswith("?include_sources=news") and '"include_sources": ["news"]' in p for i, p in filtered)

    wipe(db)
    asked = fake.stats.total
    result = h.run("--database", url_of(db), "reparse")
    assert result.exit_code == ExitCode.OK, result.output
    assert fake.stats.total == asked
    assert whole(db) == before
