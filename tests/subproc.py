"""Helpers for tests that run real `harvester` subprocesses against a fake API."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, create_engine, text

from harvester import schema
from harvester.fakeapi import FakeServer
from harvester.store import DATA_TABLES
from tests.conftest import KEY


def env_for(server: FakeServer, config: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARVESTER_") and k != "ALTMETRIC_API_KEY"}
    env.update(
        HARVESTER_API_URL=server.url,
        ALTMETRIC_API_KEY=KEY,
        HARVESTER_TIER="commercial",
        HARVESTER_CONFIG=str(config) if config else "",
    )
    return env


def url_of(db: Path | str) -> str:
    """A SQLite file's path, or a database URL as it is (PostgreSQL)."""
    return db if isinstance(db, str) else f"sqlite:///{db}"


def start(db: Path | str, server: FakeServer, *args: str, config: Path | None = None, **env: str) -> subprocess.Popen[str]:
    """`harvester --database DB ARGS` against the fake; `env` adds variables (HARVESTER_NOW=...)."""
    return subprocess.Popen(
        [sys.executable, "-m", "harvester", "--database", url_of(db), *args],
        env=env_for(server, config) | env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def query(db: Path | str, sql: str) -> list[tuple[Any, ...]]:
    engine = create_engine(url_of(db))
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql))]
    finally:
        engine.dispose()


def final_count(db: Path | str) -> int:
    try:
        return int(query(db, "select count(*) from job_items where status != 'pending'")[0][0])
    except Exception:
        return 0  # the job is not created yet


def wait_until(db: Path | str, final: int, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while final_count(db) < final:
        assert proc.poll() is None, f"the harvester ended early: {proc.communicate()}"
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.02)


def snapshot(db: Path | str) -> dict[str, list[tuple[Any, ...]]]:
    """Every data table and the items' outcomes, ordered by key, without timestamps or attempt counts.

    `db` is a SQLite file or a database URL, so two engines' harvests compare row by row.
    """
    out = {}
    for name in DATA_TABLES:
        table = schema.metadata.tables[name]
        columns = [c.name for c in table.columns if not isinstance(c.type, DateTime)]
        key = ", ".join(c.name for c in table.primary_key.columns)
        out[name] = query(db, f"select {', '.join(columns)} from {name} order by {key}")
    # Sorted here, on every column: an id in several jobs ties on `identifier`, and engines order ties differently.
    out["job_items"] = sorted(
        query(db, "select identifier, status, http_status, altmetric_id, note from job_items"), key=lambda r: (r[0], repr(r))
    )
    return out
