"""The key and database passwords never reach stored errors, status output or printed commands (issue 10)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from sqlalchemy import Engine, text

from harvester import clock, jobs, leases
from harvester.cli import State
from harvester.endpoints import Counts
from harvester.log import hide_password, redact, register_secret
from harvester.store import write_batch
from harvester.vocabulary import ExitCode, ItemResult, ItemStatus
from tests.conftest import KEY, Harness, lease_all, rows

PASSWORD = "pw-5e1f0a9c"  # distinctive, so that a leak cannot hide in an unrelated word


class EchoServer:
    """An API that answers every request with `status` and a body echoing the request, key included."""

    def __init__(self, status: int, body: str) -> None:
        self.status, self.body = status, body
        self.url = ""

    async def handler(self, request: web.Request) -> web.Response:
        # What a careless proxy or API does: repeat the request line, key and all.
        return web.Response(status=self.status, text=self.body.format(path_qs=request.path_qs, key=request.query.get("key")))


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer(400, "")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> web.AppRunner:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", server.handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port: int = runner.addresses[0][1]  # (host, port) of the site just started
        server.url = f"http://127.0.0.1:{port}/v1"
        return runner

    runner = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=30)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


@pytest.fixture
def eh(tmp_path: Path, echo: EchoServer, clean_env: None) -> Harness:
    return Harness(tmp_path, echo)  # type: ignore[arg-type]  # it only needs the server's url


def stored_texts(engine: Engine) -> str:
    """Every stored error text and note, and the job parameters, as one string to search."""
    parts = [json.dumps(rows(engine, "select last_error, params from jobs"))]
    parts.append(json.dumps(rows(engine, "select last_error, note from job_items")))
    return "\n".join(parts)


def test_redact_hides_the_key_parameter_and_url_passwords() -> None:
    assert (
        redact("GET https://api.altmetric.com/v1/doi/10.1/x?key=abc123&page=2")
        == "GET https://api.altmetric.com/v1/doi/10.1/x?key=***&page=2"
    )
    assert redact("cannot open postgresql+psycopg://u:s3cret@db/x") == "cannot open postgresql+psycopg://u:***@db/x"
    assert (
        redact("user@example.org, 10.1000/a:b@c, http://h:8080/v1/doi/10.1/a@b")
        == "user@example.org, 10.1000/a:b@c, http://h:8080/v1/doi/10.1/a@b"
    )
    assert hide_password("postgresql+psycopg://u:pw@127.0.0.1:1/x") == "postgresql+psycopg://u:***@127.0.0.1:1/x"
    assert hide_password("sqlite:///harvest.db") == "sqlite:///harvest.db"  # nothing to hide: left as typed


def test_write_batch_and_release_store_redacted_errors(engine: Engine, tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("10.1000/a\n10.1000/b\n")
    job = jobs.create_job(engine, [str(ids)], "doi", "counts")
    runner = leases.new_runner_id()
    leases.take_over(engine, job.id, runner)
    lease_all(engine, job.id, runner)
    url = f"https://api.altmetric.com/v1/doi/10.1000/a?key={KEY}"
    write_batch(
        engine,
        job.id,
        Counts(),
        [
            ItemResult("doi", "10.1000/a", ItemStatus.FAILED, 1, 400, f"HTTP 400: bad request {url}"),
            ItemResult("doi", "10.1000/b", ItemStatus.NOT_FOUND, 1, 404, None, None, f"asked {url}"),
        ],
        clock.utcnow(),
        runner,
    )
    register_secret(KEY)  # as the CLI does: then the bare key is hidden too, not only key=
    leases.release(engine, job.id, runner, "stopped", error=f"the API answered 403: key {KEY} is not valid for {url}")
    assert KEY not in stored_texts(engine)
    items = {r["identifier"]: r for r in rows(engine, "select identifier, last_error, note from job_items")}
    assert items["10.1000/a"]["last_error"] == "HTTP 400: bad request https://api.altmetric.com/v1/doi/10.1000/a?key=***"
    assert items["10.1000/b"]["note"] == "asked https://api.altmetric.com/v1/doi/10.1000/a?key=***"
    assert rows(engine, "select last_error from jobs") == [
        {"last_error": "the API answered 403: key *** is not valid for https://api.altmetric.com/v1/doi/10.1000/a?key=***"}
    ]


def test_a_harvest_stores_key_params_redacted_from_the_writer_process(eh: Harness, echo: EchoServer) -> None:
    echo.status, echo.body = 400, "bad request: {path_qs}"
    result = eh.run("harvest", "--no-progress", eh.ids(["10.1000/a", "10.1000/b"]))
    assert result.exit_code == ExitCode.SOME_FAILED, result.output
    stored = stored_texts(eh.engine)
    assert KEY not in stored and stored.count("key=***") == 2, stored
    for args in (("status", "1"), ("status", "1", "--json"), ("jobs", "--json")):
        out = eh.run(*args)
        assert out.exit_code == ExitCode.OK and KEY not in out.output
    assert "key=***" in eh.run("status", "1").stdout


def test_a_bare_key_in_an_items_error_is_redacted(eh: Harness, echo: EchoServer) -> None:
    echo.status, echo.body = 400, "no such output for key {key}"
    assert eh.run("harvest", "--no-progress", eh.ids(["10.1000/a"])).exit_code == ExitCode.SOME_FAILED
    assert KEY not in stored_texts(eh.engine)


def test_a_job_stopped_by_the_api_stores_its_text_redacted(eh: Harness, echo: EchoServer) -> None:
    echo.status, echo.body = 403, "key {key} may not call {path_qs}"
    result = eh.run("harvest", "--no-progress", eh.ids(["10.1000/a"]))
    assert result.exit_code == ExitCode.ERROR, result.output
    assert KEY not in result.output
    assert rows(eh.engine, "select last_error from jobs") == [
        {"last_error": "the API answered 403 on counts: key *** may not call /v1/doi/10.1000/a?key=***"}
    ]
    out = eh.run("status", "1")
    assert "stopped by: the API answered 403 on counts: key ***" in out.stdout and KEY not in out.output


def test_status_hides_a_key_stored_before_redaction(eh: Harness, engine: Engine, tmp_path: Path) -> None:
    ids = tmp_path / "old.txt"
    ids.write_text("10.1000/a\n")
    jobs.create_job(engine, [str(ids)], "doi", "counts")
    with engine.begin() as conn:  # a row written by an older version
        conn.execute(text("update jobs set last_error = :e"), {"e": f"stopped: key {KEY}"})
        conn.execute(text("update job_items set status = 'failed', last_error = :e"), {"e": f"HTTP 400 ?key={KEY}"})
    eh.env["HARVESTER_DATABASE_URL"] = str(engine.url)
    for args in (("status",), ("status", "--json"), ("jobs", "--json")):
        out = eh.run(*args)
        assert out.exit_code == ExitCode.OK and KEY not in out.output, out.output


def test_resume_command_hides_the_database_password() -> None:
    state = State(None, f"postgresql+psycopg://u:{PASSWORD}@db.example/x", 0)
    assert state.resume_command(3) == "harvester --database 'postgresql+psycopg://u:***@db.example/x' resume 3"


def test_printed_commands_carry_absolute_paths_that_work_from_another_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A resume line pasted into cron (another working folder) must name the same config and database."""
    monkeypatch.chdir(tmp_path)
    sqlite = State("h.toml", "sqlite:///my harvest.db", 0)
    assert sqlite.resume_command(3) == f"harvester --config {tmp_path}/h.toml --database 'sqlite:///{tmp_path}/my harvest.db' resume 3"
    assert sqlite.command("worker", "3") == f"harvester --config {tmp_path}/h.toml --database 'sqlite:///{tmp_path}/my harvest.db' worker 3"


@pytest.mark.parametrize("command", [["resume"], ["status"], ["harvest", "ids.txt"], ["db", "upgrade"], ["db", "current"]])
def test_a_database_password_never_shows_on_stderr(tmp_path: Path, clean_env: None, command: list[str]) -> None:
    (tmp_path / "ids.txt").write_text("10.1000/a\n")
    url = f"postgresql+psycopg://u:{PASSWORD}@127.0.0.1:1/x"  # nothing listens on port 1
    for verbosity in ([], ["-v"]):
        result = subprocess.run(
            [sys.executable, "-m", "harvester", "--database", url, *verbosity, *command],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        assert result.returncode == ExitCode.ERROR, result.stderr
        assert result.stderr.startswith("Error: ") or verbosity
        assert PASSWORD not in result.stdout + result.stderr


def test_resume_with_line_hides_the_password_of_a_real_postgresql_url(pg_url: str, tmp_path: Path, clean_env: None) -> None:
    # The test server trusts every connection, so the password is accepted and ignored.
    url = pg_url.replace("postgres@", f"postgres:{PASSWORD}@")
    (tmp_path / "ids.txt").write_text("10.1000/a\n")
    env = {"HARVESTER_API_URL": "http://127.0.0.1:1/v1", "HARVESTER_CONFIG": str(tmp_path / "none.toml")}
    (tmp_path / "none.toml").write_text("[limits]\nmax_attempts = 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "harvester", "--database", url, "harvest", "--no-progress", "ids.txt"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**_base_env(), **env},
    )
    assert "Resume with: harvester --database 'postgresql+psycopg://postgres:***@" in result.stderr, result.stderr
    assert PASSWORD not in result.stdout + result.stderr


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("HARVESTER_") and k != "ALTMETRIC_API_KEY"}
