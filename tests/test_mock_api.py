"""`harvester mock-api` as a user runs it: a real subprocess on a free port, and the harvester against it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harvester.fakeapi import FakeConfig, universe_dois, universe_of
from harvester.vocabulary import ExitCode
from tests.subproc import query

UNIVERSE = 5_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("HARVESTER_") and k != "ALTMETRIC_API_KEY"}


@pytest.fixture
def mock_api(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    """A universe mock-api that wrote 40 of its DOIs to a file: (its URL, the file, the start-up lines)."""
    port, dois = free_port(), tmp_path / "dois.txt"
    args = ["mock-api", "--port", str(port), "--universe", str(UNIVERSE), "--write-dois", "40", str(dois)]
    proc = subprocess.Popen([sys.executable, "-m", "harvester", *args], env=clean_env(), stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while not any("listening on" in line for line in lines):
        assert time.monotonic() < deadline and proc.poll() is None, lines
        lines.append(proc.stderr.readline())
    try:
        yield f"http://127.0.0.1:{port}/v1", dois, lines
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url) as r:
        return dict(json.load(r))


def test_a_universe_to_try_the_change_feed_on(mock_api: tuple[str, Path, list[str]], tmp_path: Path) -> None:
    url, dois, lines = mock_api
    assert dois.read_text().split() == universe_dois(40)
    assert any(line.startswith(f"wrote 40 DOIs of the universe to {dois}") for line in lines)
    universe = universe_of(FakeConfig(universe=UNIVERSE))
    assert universe is not None
    today = int(time.time() // 86400)
    # Its 1d listing is exactly the universe's outputs with attention today.
    page = get(f"{url}/citations/1d?key=demo-key&num_results=99")
    assert page["query"]["total"] == len(universe.listing("1d", {}, today)) > 0
    # A user's trial: harvest the list, then a change-feed night that reads that listing whole.
    config = tmp_path / "harvester.toml"
    config.write_text('[api]\ntier = "commercial"\n[nightly]\nmode = "changes"\n')
    db = tmp_path / "trial.db"
    env = clean_env() | {"HARVESTER_API_URL": url, "ALTMETRIC_API_KEY": "demo-key"}
    base = [sys.executable, "-m", "harvester", "--config", str(config), "--database", f"sqlite:///{db}"]
    run = subprocess.run([*base, "harvest", "--no-progress", str(dois)], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == ExitCode.OK, run.stderr
    run = subprocess.run([*base, "nightly", "--json", "--no-progress"], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == ExitCode.OK, run.stderr
    [report] = json.loads(run.stdout)["reports"]
    assert report["complete"] and report["listed"] == page["query"]["total"]
    # Every tracked output's row of the day is the universe's truth.
    series = query(db, "SELECT o.doi, d.score, d.posts_count FROM daily_series d JOIN outputs o USING (altmetric_id)")
    assert len(series) == 40
    for doi, score, posts in series:
        truth = universe.truth(doi, today)
        assert truth is not None and (score, posts) == (pytest.approx(truth.score), truth.posts_count), doi


def test_universe_options_need_a_universe() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "harvester", "mock-api", "--write-dois", "5", "x.txt"], env=clean_env(), capture_output=True, text=True
    )
    assert run.returncode == ExitCode.USAGE
    assert "--attention-rate and --write-dois need --universe N" in run.stderr
