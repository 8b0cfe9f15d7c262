"""Alembic for real: one head, upgrade from empty, no drift, downgrade/upgrade round trip."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from harvester import schema
from harvester.db import alembic_config, current_revision, head_revision, make_engine, open_database
from tests.conftest import ROOT, scalar


def test_single_head() -> None:
    assert len(ScriptDirectory.from_config(alembic_config()).get_heads()) == 1


def test_the_schemas_head_is_alembics() -> None:
    # Every command compares the database with schema.HEAD_REVISION: a new migration changes both.
    assert schema.HEAD_REVISION == head_revision()


def test_a_command_on_a_database_at_head_loads_no_alembic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    open_database(url).dispose()
    code = (
        "import sys; from harvester.cli import cli; from harvester.db import open_database; "
        f"open_database({url!r}).dispose(); print(sorted(m for m in sys.modules if m.startswith('alembic')))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_upgrade_from_empty_creates_every_table(tmp_path: Path) -> None:
    engine = open_database(f"sqlite:///{tmp_path / 'new.db'}")
    assert current_revision(engine) == head_revision()
    assert set(inspect(engine).get_table_names()) == set(schema.metadata.tables) | {"alembic_version"}
    open_database(f"sqlite:///{tmp_path / 'new.db'}")  # idempotent


def test_no_drift_between_models_and_migrations(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'check.db'}"
    open_database(url)
    assert_no_drift(url)


def assert_no_drift(url: str) -> None:
    """`alembic check` from a checkout, as a developer runs it: models and migrations agree."""
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "check"],
        cwd=ROOT,
        env={"HARVESTER_DATABASE_URL": url, "PATH": "/usr/bin:/bin", "HARVESTER_CONFIG": ""},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No new upgrade operations detected" in result.stdout + result.stderr


def test_downgrade_and_upgrade_round_trip(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'trip.db'}")
    cfg = alembic_config(engine)
    command.upgrade(cfg, "head")
    with engine.begin() as conn:
        conn.execute(schema.identifiers.insert().values(scheme="doi", value="10.1/x", altmetric_id=1))
    command.downgrade(cfg, "base")
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    command.upgrade(cfg, "head")
    assert scalar(engine, "select count(*) from identifiers") == 0
    assert current_revision(engine) == head_revision()
