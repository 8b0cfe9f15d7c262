"""Chaos: a faulty fake API, five random SIGKILLs of a real harvester, then resume.

The final database must equal that of an undisturbed run over every data table
and every item's outcome (timestamps and attempt counts aside), with no item
pending and no row doubled.

The short version runs in CI. The long one runs on demand:

    HARVESTER_CHAOS_LONG=1 python -m pytest tests/test_chaos.py -s
"""

from __future__ import annotations

import os
import random
import signal
import time
from dataclasses import replace
from pathlib import Path

import pytest

from harvester.fakeapi import FakeConfig, serve_in_thread
from harvester.vocabulary import ExitCode
from tests.conftest import KEY
from tests.subproc import final_count, query, snapshot, start, wait_until

LONG = os.environ.get("HARVESTER_CHAOS_LONG") == "1"
N = 20_000 if LONG else 2_500
KILLS = 5
# The mix: 5% 5xx, 2% connection resets, 1% garbage (cut-off JSON and HTML pages
# with status 200), 1% slow answers (past the read timeout), and a little latency so that
# a run can be killed midway.
FAULTY = FakeConfig(
    keys=(KEY,),
    error_rate=0.05,
    reset_rate=0.02,
    truncate_rate=0.005,
    html_rate=0.005,
    slow_rate=0.01,
    slow_seconds=0.6,
    latency=0.005,
    seed=11,
)
CONFIG = """\
[api]
read_timeout = 0.3
total_timeout = 5.0
[limits]
concurrency = 4
max_attempts = 10
backoff_base = 0.01
backoff_max = 0.1
"""


@pytest.mark.parametrize("endpoint", ["counts", "fetch"] if LONG else ["counts"])
def test_five_random_kills_then_resume_equal_an_undisturbed_run(tmp_path: Path, endpoint: str) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"10.5555/chaos.{i:06d}\n" for i in range(N)))
    config = tmp_path / "harvester.toml"
    config.write_text(CONFIG)
    harvest = ("harvest", "--no-progress", "--endpoint", endpoint, str(ids))

    with serve_in_thread(FAULTY) as server:
        calm = tmp_path / "calm.db"
        proc = start(calm, server, *harvest, config=config)
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == ExitCode.OK, err
        expected = snapshot(calm)

    seed = random.randrange(2**32)
    rng = random.Random(seed)
    # A fresh server with the same seed: its faults start over, as for the calm run.
    with serve_in_thread(replace(FAULTY)) as server:
        db = tmp_path / "chaos.db"
        proc = start(db, server, *harvest, config=config)
        kills: list[int] = []
        for _ in range(KILLS):
            # Once the run has committed something, at a random moment: mid-fetch,
            # mid-batch, or inside a commit.
            wait_until(db, (kills[-1] if kills else 0) + 1, proc, timeout=600)
            time.sleep(rng.uniform(0.0, 0.8 * N / 4_000))  # spread over the run, whatever its size
            assert proc.poll() is None, f"seed {seed}: the run ended before kill {len(kills) + 1}"
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills.append(final_count(db))
            proc = start(db, server, "resume", "--no-progress", config=config)
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == ExitCode.OK, f"seed {seed}: {err}"
        faults = dict(server.stats.faults)

    got = snapshot(db)
    assert query(db, "select count(*) from job_items where status = 'pending' or claimed_by is not null") == [(0,)]
    assert query(db, "select count(*) from job_items where status = 'failed'") == [(0,)]
    for table in expected:
        assert got[table] == expected[table], f"seed {seed}: {table} differs"
    rows = sum(len(v) for v in got.values())
    assert sum(faults.values()) > N * 0.05
    assert len(kills) == KILLS and kills[-1] < N  # every kill landed mid-run
    print(
        f"\nchaos ({endpoint}, seed {seed}): {N} items, {KILLS} kills at {kills} final items, "
        f"faults injected {faults}, {rows} rows compared over {len(got)} tables"
    )
