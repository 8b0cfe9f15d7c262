"""What the commands print: -q, --json outcomes, log lines, `config show`, and the PostgreSQL skip rule."""

from __future__ import annotations

import json
import logging
import re
import warnings
from pathlib import Path

import pytest

from harvester.log import UtcFormatter
from harvester.vocabulary import ExitCode
from tests import pg
from tests.conftest import KEY, Harness, dois

OUTCOME_KEYS = {"job_id", "status", "counts", "exit_code", "requests", "elapsed", "message", "resume_command"}


def test_quiet_harvest_prints_nothing_on_success(h: Harness) -> None:
    result = h.run("-q", "harvest", h.ids(dois(20)))
    assert result.exit_code == ExitCode.OK
    assert result.stdout == "" and result.stderr == ""
    assert sum(h.statuses().values()) == 20


def test_quiet_resume_and_worker_print_nothing(h: Harness) -> None:
    assert h.run("-q", "harvest", "--enqueue-only", h.ids(dois(5))).stdout.strip() == "1"  # data still goes to stdout
    result = h.run("-q", "worker")
    assert result.exit_code == ExitCode.OK and result.stdout == "" and result.stderr == ""
    result = h.run("-q", "resume", "1")
    assert result.exit_code == ExitCode.OK and result.stdout == "" and result.stderr == ""


def test_quiet_still_prints_errors(h: Harness) -> None:
    result = h.run("-q", "harvest", h.ids(dois(3)), ALTMETRIC_API_KEY="wrong-key")
    assert result.exit_code == ExitCode.ERROR
    assert "Error:" in result.stderr and "Resume with: harvester resume 1" in result.stderr
    assert "job 1:" not in result.stderr  # the notes are gone


def test_harvest_json_is_one_outcome_object(h: Harness) -> None:
    result = h.run("harvest", "--json", "--no-progress", h.ids(dois(10)))
    assert result.exit_code == ExitCode.OK, result.output
    outcome = json.loads(result.stdout)
    assert OUTCOME_KEYS <= set(outcome)
    assert outcome["job_id"] == 1 and outcome["status"] == "finished" and outcome["exit_code"] == ExitCode.OK
    assert outcome["counts"]["pending"] == 0 and sum(outcome["counts"].values()) == 10
    assert outcome["requests"] >= 10 and outcome["elapsed"] >= 0
    assert outcome["resume_command"] is None and outcome["message"] is None

    # resume of a finished job: still one object, exit 0
    again = json.loads(h.run("resume", "1", "--json").stdout)
    assert again["status"] == "finished" and again["exit_code"] == ExitCode.OK and again["requests"] == 0


def test_a_stopped_run_names_its_resume_command_in_json(h: Harness) -> None:
    result = h.run("harvest", "--json", "--no-progress", h.ids(dois(3)), ALTMETRIC_API_KEY="wrong-key")
    assert result.exit_code == ExitCode.ERROR
    outcome = json.loads(result.stdout)
    assert outcome["exit_code"] == ExitCode.ERROR and outcome["status"] != "finished"
    assert outcome["resume_command"] == "harvester resume 1"
    assert "403" in outcome["message"]
    assert "wrong-key" not in result.stdout + result.stderr


def test_worker_and_resume_json_are_one_outcome_object(h: Harness) -> None:
    assert h.run("harvest", "--enqueue-only", h.ids(dois(8))).exit_code == ExitCode.OK
    outcome = json.loads(h.run("worker", "--json", "--no-progress").stdout)
    assert OUTCOME_KEYS <= set(outcome) and outcome["exit_code"] == ExitCode.OK
    assert outcome["job_id"] == 1 and outcome["counts"]["pending"] == 0
    assert [j["id"] for j in outcome["jobs"]] == [1]
    assert h.run("harvest", "--enqueue-only", h.ids(dois(4, "10.5555/r"), "more.txt")).exit_code == ExitCode.OK
    result = h.run("resume", "2", "--json", "--no-progress")
    outcome = json.loads(result.stdout)
    assert outcome["job_id"] == 2 and outcome["status"] == "finished" and outcome["exit_code"] == result.exit_code == ExitCode.OK


def test_log_lines_carry_the_utc_date_and_time() -> None:
    record = logging.LogRecord("harvester.pipeline", logging.WARNING, __file__, 1, "slow down", None, None)
    record.created = 1_796_075_565.0  # 2026-11-30T21:52:45Z
    assert UtcFormatter().format(record) == "2026-11-30T21:52:45Z WARNING harvester.pipeline: slow down"


def test_log_lines_of_a_run_have_iso_timestamps(h: Harness) -> None:
    result = h.run("-v", "harvest", "--no-progress", h.ids(dois(3)))
    logged = [line for line in result.stderr.splitlines() if re.match(r"\d{4}-\d\d-\d\dT", line)]
    assert logged, result.stderr
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (DEBUG|INFO|WARNING|ERROR) ", line) for line in logged)


def test_config_show_names_sources_and_never_the_key(h: Harness) -> None:
    file_key = "sk-file-0123456789abcdef"
    (h.tmp / "harvester.toml").write_text(f'[api]\nkey = "{file_key}"\nendpoints = ["counts"]\n[limits]\nper_hour = 1000\n')
    for env_key in (KEY, None):  # the key from the environment, then from the file only
        result = h.run("--database", f"sqlite:///{h.tmp / 'other.db'}", "config", "show", ALTMETRIC_API_KEY=env_key)
        assert result.exit_code == ExitCode.OK, result.output
        out = result.stdout
        for secret in (KEY, file_key):
            for part in (secret, secret[:8], secret[-8:]):
                assert part not in out + result.stderr
        lines = {line.split(" = ")[0]: line for line in out.splitlines()}
        assert lines["api.key"].startswith('api.key = "***"')
        assert lines["api.key"].endswith("# environment ALTMETRIC_API_KEY" if env_key else f"# file {h.tmp / 'harvester.toml'}")
        assert lines["api.endpoints"].startswith('api.endpoints = ["counts"]')
        assert lines["api.endpoints"].endswith(f"# file {h.tmp / 'harvester.toml'}")
        assert lines["api.tier"].endswith("# environment HARVESTER_TIER")  # the environment wins over the file
        assert lines["limits.per_hour"].startswith("limits.per_hour = 1000") and "# file" in lines["limits.per_hour"]
        assert lines["api.url"].endswith("# environment HARVESTER_API_URL")
        assert lines["database.url"].endswith("# option")
        assert lines["limits.per_day"].endswith("# default")


def test_config_show_without_a_key_says_so(h: Harness) -> None:
    result = h.run("config", "show", ALTMETRIC_API_KEY=None)
    assert result.exit_code == ExitCode.OK
    assert re.search(r"^api\.key = \(not set\) +# default$", result.stdout, re.M)


def test_config_show_hides_a_database_password(h: Harness) -> None:
    result = h.run("config", "show", HARVESTER_DATABASE_URL="postgresql+psycopg://u:hunter2secret@db/x")
    assert "hunter2secret" not in result.stdout and "u:***@db/x" in result.stdout


def test_postgres_tests_skip_loudly_without_binaries(tmp_path: Path) -> None:
    with pytest.warns(pytest.PytestWarning, match="PostgreSQL tests SKIPPED"), pytest.raises(pytest.skip.Exception, match="SKIPPED"):
        pg.missing(tmp_path, env={})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: it fails
        for env in ({"CI": "1"}, {"CI": "true"}, {"HARVESTER_REQUIRE_PG": "1"}):
            with pytest.raises(pytest.fail.Exception, match="must run"):
                pg.missing(tmp_path, env=env)
    assert not pg.required({"CI": ""}) and not pg.required({"CI": "0"}) and pg.required({"CI": "yes"})


def test_nightly_json_is_one_outcome_object_and_quiet_prints_nothing(h: Harness) -> None:
    (h.tmp / "harvester.toml").write_text(
        "[limits]\nbackoff_base = 0.01\nconcurrency = 8\n[nightly]\npages = 1\nnum_results = 10\nmax_items = 10\n"
    )
    result = h.run("-q", "nightly")
    assert (result.exit_code, result.stdout, result.stderr) == (ExitCode.OK, "", "")
    result = h.run("nightly", "--json", "--no-progress")  # the same night again: refreshes its snapshots
    assert result.exit_code == ExitCode.OK, result.output
    outcome = json.loads(result.stdout)
    assert OUTCOME_KEYS <= set(outcome)
    assert outcome["status"] == "finished" and outcome["exit_code"] == ExitCode.OK and outcome["resume_command"] is None
    assert outcome["counts"]["discovered"] == 10
    [report] = outcome["reports"]
    assert report["job_id"] == outcome["job_id"]
