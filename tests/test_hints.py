"""Hints that work when copied (issue 20, item 7): global options after the command, a config's
relative SQLite path, a read-only database named with its cause, and a pause that is not an error."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine

from harvester.db import open_database
from harvester.fakeapi import FakeServer
from harvester.vocabulary import ExitCode
from tests.conftest import Harness, dois, rows


def test_global_options_are_accepted_after_the_command(h: Harness, tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    config = tmp_path / "late.toml"
    config.write_text("[limits]\nbackoff_base = 0.01\n")
    result = h.run("harvest", h.ids(dois(3)), "--no-progress", "--config", str(config), "--database", f"sqlite:///{other}")
    assert result.exit_code == ExitCode.OK, result.output
    assert rows(open_db(other), "select count(*) as n from outputs") == [{"n": 3}]
    assert not h.db.exists()  # HARVESTER_DATABASE_URL lost to the option given after the command
    # -v after the command as before it; and a nested command takes them too.
    assert "INFO harvester.db: upgrading" in h.run("db", "upgrade", "-v", "--database", f"sqlite:///{tmp_path / 'new.db'}").stderr
    status = h.run("status", "--database", f"sqlite:///{other}")
    assert status.exit_code == ExitCode.OK and "job 1: finished" in status.output


def open_db(path: Path) -> Engine:
    return open_database(f"sqlite:///{path}")


def test_a_relative_sqlite_path_in_a_config_file_is_relative_to_its_folder(h: Harness, tmp_path: Path) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "harvester.toml").write_text('[database]\nurl = "sqlite:///data/harvest.db"\n')
    (folder / "data").mkdir()
    elsewhere = tmp_path / "cron-cwd"
    elsewhere.mkdir()
    cwd = os.getcwd()
    os.chdir(elsewhere)
    try:
        result = h.run("--config", str(folder / "harvester.toml"), "harvest", h.ids(dois(2)), "--no-progress", HARVESTER_DATABASE_URL=None)
        shown = h.run("--config", str(folder / "harvester.toml"), "config", "show", HARVESTER_DATABASE_URL=None).output
        # On the command line a relative path stays relative to where the command runs.
        here = h.run("--database", "sqlite:///here.db", "db", "upgrade")
    finally:
        os.chdir(cwd)
    assert result.exit_code == ExitCode.OK, result.output
    assert (folder / "data" / "harvest.db").exists() and not (elsewhere / "data").exists()
    assert f'database.url = "sqlite:///{folder / "data" / "harvest.db"}"' in shown
    assert here.exit_code == ExitCode.OK and (elsewhere / "here.db").exists()


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make a file or folder unwritable for this process: chmod, and for root (who ignores modes) chattr +i."""
    mode = path.stat().st_mode
    path.chmod(0o555 if path.is_dir() else 0o444)
    immutable = os.geteuid() == 0
    if immutable:
        subprocess.run(["chattr", "+i", str(path)], check=True)
    try:
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        path.chmod(mode)


def test_a_read_only_database_names_its_path_and_why(h: Harness, tmp_path: Path) -> None:
    assert h.run("harvest", h.ids(dois(2)), "--no-progress").exit_code == ExitCode.OK
    with read_only(h.db):
        result = h.run("harvest", h.ids(dois(4)), "--no-progress")
    assert result.exit_code == ExitCode.ERROR
    [line] = result.stderr.strip().splitlines()[-1:]
    assert line.startswith(f"Error: the database {h.db} is read-only for this user ("), line
    assert "make it writable, or choose another with --database" in line
    # A folder SQLite cannot write its -wal and -shm files in.
    folder = tmp_path / "locked"
    folder.mkdir()
    db = folder / "h.db"
    assert h.run("harvest", h.ids(dois(2)), "--no-progress", HARVESTER_DATABASE_URL=f"sqlite:///{db}").exit_code == ExitCode.OK
    (folder / "h.db-wal").unlink(missing_ok=True)
    (folder / "h.db-shm").unlink(missing_ok=True)
    with read_only(folder):
        result = h.run("status", HARVESTER_DATABASE_URL=f"sqlite:///{db}")
    assert result.exit_code == ExitCode.ERROR
    assert result.stderr.strip().splitlines()[-1] == (
        f"Error: the database {db} cannot be written: its folder is read-only for this user"
        f" ({os.strerror(1) if os.geteuid() == 0 else os.strerror(13)}), and SQLite writes h.db-wal and h.db-shm beside it"
    )


def test_the_configured_per_day_pauses_as_itself_not_as_the_apis_quota(h: Harness, fake: FakeServer) -> None:
    (h.tmp / "harvester.toml").write_text("[limits]\nper_second = 200\nper_hour = 100000\nper_day = 5\n")
    result = h.run("harvest", h.ids(dois(12)), "--no-progress", HARVESTER_TIER="free")
    assert result.exit_code == ExitCode.PAUSED, result.output
    assert fake.stats.total == 5
    lines = result.stderr.strip().splitlines()
    paused = [line for line in lines if "per_day" in line]
    assert len(paused) == 1 and paused[0].startswith("Paused: today's requests reached [limits] per_day; the count starts again at ")
    assert not any(line.startswith("Error:") for line in lines), lines
    assert "API's daily quota" not in result.stderr
    assert any(line.startswith("Resume with: harvester ") for line in lines)
    # The job's row says the same.
    [job] = rows(h.engine, "select status, last_error from jobs")
    assert job["status"] == "paused"


def test_the_apis_own_daily_quota_is_still_called_the_apis(tmp_path: Path, clean_env: None) -> None:
    from dataclasses import replace

    from harvester.fakeapi import serve_in_thread
    from tests.conftest import FAKE

    with serve_in_thread(replace(FAKE, per_day=4)) as server:
        h = Harness(tmp_path, server)
        result = h.run("harvest", h.ids(dois(10)), "--no-progress")
    assert result.exit_code == ExitCode.PAUSED
    assert "Paused: the API's daily quota is spent; it resets at" in result.stderr
    assert "Error:" not in result.stderr


def test_the_demo_says_where_its_lines_went(tmp_path: Path, clean_env: None) -> None:
    from click.testing import CliRunner

    from harvester.cli import cli

    db = tmp_path / "demo.db"
    result = CliRunner().invoke(cli, ["--database", f"sqlite:///{db}", "demo", "--ids", "40", "--no-progress"], catch_exceptions=False)
    assert result.exit_code == ExitCode.OK, result.output
    out = result.stdout
    [job] = rows(open_db(db), "select total_items, duplicate_lines, rejected_lines from jobs")
    assert (job["total_items"], job["duplicate_lines"], job["rejected_lines"]) == (38, 1, 1)
    assert "The list had 40 lines: 38 distinct DOIs were asked, 1 duplicate (DOIs ignore case" in out
    assert "  line 5: 'not a doi': not a DOI (10.NNNN/suffix)" in out
    assert "select source_line, line, reason from job_rejects" in out
