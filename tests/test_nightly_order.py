"""A week of free-tier nightlies whose discovery finds more than the daily quota.

The user's list is refreshed every night, first; discovered outputs fill what
the quota leaves; nothing exceeds it. Real subprocesses on an injected clock
(HARVESTER_NOW for the harvester, FakeConfig.clock for the fake API), at 200
requests/s and a quota of 60 a day, so a night takes a second or two.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from harvester.budget import key_hash
from harvester.fakeapi import FakeConfig, FakeServer, serve_in_thread
from harvester.vocabulary import ExitCode
from tests.conftest import KEY
from tests.subproc import query, start

FIRST_NIGHT = datetime(2026, 11, 20, 2, 30)
NIGHTS = 7 if os.environ.get("HARVESTER_LONG") else 5  # a week with HARVESTER_LONG=1; 5 outlive follow_discovered = "3d"
PER_DAY = 60
LIST = 30  # the user's DOIs (a few are 404s)
SEED_KEY = "sk-seed-0000"  # the list's first harvest: another key, so it spends none of the nightly's quota
CONFIG = f"""
[limits]
per_second = 200.0
per_day = {PER_DAY}
backoff_base = 0.01
backoff_max = 0.05
max_attempts = 3
concurrency = 4
[nightly]
timeframe = "1d"
num_results = 10
pages = 3
follow_discovered = "3d"
"""


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Path, FakeServer, Clock]]:
    clock = Clock()
    (tmp_path / "harvester.toml").write_text(CONFIG)
    fake = FakeConfig(keys=(KEY, SEED_KEY), evolve=True, clock=clock, per_day=PER_DAY)
    with serve_in_thread(fake) as server:
        yield tmp_path, server, clock


def _run(tmp: Path, server: FakeServer, clock: Clock, when: datetime, *args: str, **env: str) -> tuple[int, str, str]:
    clock.now = when.replace(tzinfo=UTC).timestamp()
    proc = start(tmp / "harvest.db", server, *args, config=tmp / "harvester.toml", HARVESTER_NOW=when.isoformat(), **env)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


@pytest.mark.timing  # 200 requests/s against an exact quota: alone under -n 4
def test_a_week_of_free_nightlies_refreshes_the_list_first_and_stays_within_the_quota(world: tuple[Path, FakeServer, Clock]) -> None:
    tmp, server, clock = world
    db = tmp / "harvest.db"
    ids = tmp / "mine.txt"
    ids.write_text("".join(f"10.5555/mine.{i:03d}\n" for i in range(LIST)))
    code, _, err = _run(
        tmp,
        server,
        clock,
        FIRST_NIGHT - timedelta(days=1),
        "harvest",
        "--no-progress",
        str(ids),
        ALTMETRIC_API_KEY=SEED_KEY,
        HARVESTER_TIER="commercial",
    )
    assert code == ExitCode.OK, err
    mine = {a for (a,) in query(db, "select altmetric_id from job_items where job_id = 1 and status = 'done'")}
    assert 20 < len(mine) < LIST

    table = []
    for n in range(NIGHTS):
        night = FIRST_NIGHT + timedelta(days=n)
        # The dry run first: what tonight's lists will take.
        code, out, err = _run(tmp, server, clock, night, "nightly", "--dry-run", "--json", HARVESTER_TIER="free")
        assert code == ExitCode.OK, err
        plan = json.loads(out)
        if n == 1:
            print("\n" + _run(tmp, server, clock, night, "nightly", "--dry-run", HARVESTER_TIER="free")[1])
        before = server.stats.total
        code, out, err = _run(tmp, server, clock, night, "nightly", "--no-progress", HARVESTER_TIER="free")
        assert code == ExitCode.OK, err + out
        requests = server.stats.total - before
        [(refresh, discovery)] = query(db, "select refresh_job_id, discovery_job_id from nightly_runs order by job_id desc limit 1")
        refreshed = query(db, f"select altmetric_id, line_no from job_items where job_id = {refresh} and status = 'done'")
        lists = {a for a, _ in refreshed if a in mine}
        discovered = [a for a, _ in refreshed if a not in mine]
        pages = query(db, f"select count(*) from job_items where job_id = {discovery}")[0][0] if discovery else 0
        [(used,)] = query(db, f"select day_used from rate_budgets where key_hash = '{key_hash(KEY)}'")
        table.append((night.date().isoformat(), len(lists), len(discovered), pages, requests, PER_DAY - used))

        # Every output of the user's list has tonight's snapshot; the list came before anything discovered.
        assert lists == mine
        assert plan["planned"]["lists"] == plan["lists_due"] == len(mine)
        snapped = {a for (a,) in query(db, f"select altmetric_id from counts_snapshots where harvested_on = '{night.date()}'")}
        assert mine <= snapped
        assert max(line for a, line in refreshed if a in mine) < min((line for a, line in refreshed if a not in mine), default=10**12)
        # Discovery found more than the quota holds; discovered outputs filled what was left; nothing exceeded it.
        listed = query(db, f"select max(total) from citation_activity where job_id = {discovery}")[0][0]
        assert listed > PER_DAY
        assert requests == used <= PER_DAY
        assert len(discovered) > 0 and pages + len(lists) + len(discovered) == requests
        assert server.stats.rate_limited == 0

    print("\nnight       list refreshed  discovered refreshed  discovery pages  requests  quota left")
    for row in table:
        print(f"{row[0]}  {row[1]:>14}  {row[2]:>20}  {row[3]:>15}  {row[4]:>8}  {row[5]:>10}")
    # follow_discovered = 3d: an output listed only on the first night is no longer refreshed on the last.
    first = {a for (a,) in query(db, f"select altmetric_id from citation_activity where harvested_on = '{FIRST_NIGHT.date()}'")}
    later = {a for (a,) in query(db, f"select altmetric_id from citation_activity where harvested_on > '{FIRST_NIGHT.date()}'")}
    last_refresh = query(db, "select refresh_job_id from nightly_runs order by job_id desc limit 1")[0][0]
    last = {a for (a,) in query(db, f"select altmetric_id from job_items where job_id = {last_refresh}")}
    assert (first - later - mine) and not (first - later - mine) & last
