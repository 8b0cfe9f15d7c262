"""Shared fixtures: real SQLite files migrated by alembic, the fake API on 127.0.0.1."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, text

from harvester.cli import cli
from harvester.db import open_database
from harvester.fakeapi import FakeConfig, FakeServer, serve_in_thread
from tests import pg

ROOT = Path(__file__).resolve().parents[1]
# The repository's own copy of the real API bodies (their provenance: harvester/data/SOURCES.md).
SAMPLES = ROOT / "harvester" / "data"
KEY = "sk-test-5f0d2c1e9b7a4e33"  # a full-access key of the fake API in tests; grepped for leaks

# A throwaway PostgreSQL 15 server for the session (started on first use) and a fresh database per test.
pg_cluster, pg_url = pg.pg_cluster, pg.pg_url


def sample(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SAMPLES / name).read_text())
    return data


# The fast tier (`python -m pytest -q -n 2 -m "not slow"`, README.md) leaves out what takes seconds a
# test: real subprocesses killed or timed, PostgreSQL, the browser, multi-day nightlies. CI runs it all.
SLOW_MODULES = {
    "test_chaos",
    "test_free_tier",
    "test_nightly",
    "test_nightly_order",
    "test_packaging",
    "test_workers",
    "test_resume",
    "test_database_failures",
    "test_redaction",
    "test_report",
    "test_changefeed",
    "test_mock_api",
    # whole harvests in a fixture or per test (a few seconds each): the CLI end to end
    "test_docs",
    "test_citations",
    "test_fetch",
    "test_export",
    "test_querying",
    "test_output",
    "test_views",
    "test_aliases",
    "test_archive",
    "test_replace",
    "test_harvest",
    "test_report_sets",
    "test_poison_bodies",
    "test_writer_logging",
    "test_filtered_fetch",
    "test_reparse_order",
    "test_input_files",
    "test_downloads",
}
SLOW_FIXTURES = {"pg_url", "pg_cluster", "reaper"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if isinstance(item, pytest.Function) and item.module is not None else ""
        fixtures = set(getattr(item, "fixturenames", ()))
        if module in SLOW_MODULES or fixtures & SLOW_FIXTURES or item.get_closest_marker("timing") or "postgresql" in item.name:
            item.add_marker(pytest.mark.slow)
    # Timing tests last: none runs beside another kind of test (below), and one that comes up among
    # the others makes every worker drain first; at the end they run two at a time with nothing else
    # to wait for. The whole suite under -n 4 went from 752 s to 661 s here; two at a time took the
    # timing tests from 236 s to 126-135 s (3 runs of `-n 2 -m timing`, no failure).
    items.sort(key=lambda item: item.get_closest_marker("timing") is not None)


# Timing tests that may run at once: each mostly waits on a rate (a fraction of a core), so two
# of them fit two cores; a CPU-bound test beside one is what made it measure the machine.
TIMING_SLOTS = 2


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
    """Under pytest-xdist (`-n 4`), a test marked `timing` runs with no other test beside it but
    one more timing test at most.

    Those tests measure rates, leases or speedups against real processes: a busy second core
    would make them measure the machine. The rooms are readers-writer locks across the workers:
    every other test holds all of them shared, a timing test holds one alone, and the turnstile
    lets a waiting timing test in before new tests start.
    """
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run_id is None:
        yield
        return
    locks = Path(tempfile.gettempdir()) / f"harvester-tests-{run_id}"
    locks.mkdir(exist_ok=True)
    with contextlib.ExitStack() as files:
        turnstile = files.enter_context(open(locks / "turnstile", "a"))
        rooms = [files.enter_context(open(locks / f"room-{i}", "a")) for i in range(TIMING_SLOTS)]
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        if item.get_closest_marker("timing") is not None:
            room = _take_a_room(rooms)  # waits for the other tests running, and for a free room
            fcntl.flock(turnstile, fcntl.LOCK_UN)
            try:
                yield
            finally:
                fcntl.flock(room, fcntl.LOCK_UN)
        else:
            for room in rooms:
                fcntl.flock(room, fcntl.LOCK_SH)
            fcntl.flock(turnstile, fcntl.LOCK_UN)
            try:
                yield
            finally:
                for room in rooms:
                    fcntl.flock(room, fcntl.LOCK_UN)


def _take_a_room(rooms: list[Any]) -> Any:
    while True:
        for room in rooms:
            try:
                fcntl.flock(room, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return room
            except BlockingIOError:
                continue
        time.sleep(0.05)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'harvest.db'}"


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = open_database(db_url)
    yield engine
    engine.dispose()


def rows(engine: Engine, sql: str, **params: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(text(sql), params)]


def lease_all(engine: Engine, job_id: int, runner: str) -> None:
    """Lease every pending item of a job to `runner`, as a worker's claims would: the writer
    stores only results whose lease their worker holds."""
    from datetime import timedelta

    from harvester import leases

    leases.claim(engine, job_id, runner, 10**9, timedelta(hours=1))


def scalar(engine: Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No stray settings from the developer's shell or a harvester.toml in the cwd."""
    for name in list(os.environ):
        if name.startswith("HARVESTER_") or name == "ALTMETRIC_API_KEY":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


FAKE = FakeConfig(keys=(KEY,), counts_only_keys=("counts-only-key",))


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with serve_in_thread(FAKE) as server:
        yield server


class Harness:
    """A working folder with a config, a database and an id file; runs the CLI in-process."""

    def __init__(self, tmp_path: Path, server: FakeServer) -> None:
        self.tmp = tmp_path
        self.db = tmp_path / "harvest.db"
        self.env = {
            "HARVESTER_API_URL": server.url,
            "ALTMETRIC_API_KEY": KEY,
            "HARVESTER_TIER": "commercial",
            "HARVESTER_DATABASE_URL": f"sqlite:///{self.db}",
            "HARVESTER_CONFIG": str(tmp_path / "harvester.toml"),
        }
        # Fast retries: the backoff policy is the same, only its base is tiny.
        (tmp_path / "harvester.toml").write_text("[limits]\nbackoff_base = 0.01\nbackoff_max = 0.05\nmax_attempts = 3\nconcurrency = 8\n")

    def ids(self, lines: list[str], name: str = "ids.txt") -> str:
        path = self.tmp / name
        path.write_text("\n".join(lines) + "\n")
        return str(path)

    def run(self, *args: str, **env: str | None) -> Result:
        return CliRunner().invoke(cli, list(args), env={**self.env, **env}, catch_exceptions=False)

    @property
    def engine(self) -> Engine:
        return open_database(f"sqlite:///{self.db}")

    def items(self) -> dict[str, dict[str, Any]]:
        return {r["identifier"]: r for r in rows(self.engine, "select * from job_items")}

    def statuses(self) -> dict[str, int]:
        return {r["status"]: r["n"] for r in rows(self.engine, "select status, count(*) as n from job_items group by status")}


@pytest.fixture
def h(tmp_path: Path, fake: FakeServer, clean_env: None) -> Harness:
    return Harness(tmp_path, fake)


def dois(n: int, prefix: str = "10.5555/t") -> list[str]:
    return [f"{prefix}.{i:05d}" for i in range(n)]
