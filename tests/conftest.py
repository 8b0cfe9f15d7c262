"""Shared fixtures: real SQLite files migrated by alembic, the fake API on 127.0.0.1."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from harvester.db import open_database

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared" / "altmetric-samples"
KEY = "sk-test-5f0d2c1e9b7a4e33"  # a full-access key of the fake API in tests; grepped for leaks


def sample(name: str) -> dict[str, Any]:
    return json.loads((SAMPLES / name).read_text())


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
