"""`report` and `export` on a chosen set (`--job N`, `--list NAME`), and the API the data came from.

Real harvests by the CLI against the fake API over HTTP (two fake servers for two URLs), into
real SQLite files and a real PostgreSQL database; the exports read back with the csv module
equal the set's rows read with SQL; the report's HTML says which set and which API.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from harvester.cli import cli
from harvester.fakeapi import FakeConfig, FakeServer, serve_in_thread
from harvester.vocabulary import ExitCode
from tests.conftest import KEY, dois
from tests.subproc import query

OURS = dois(40, "10.5555/ours")
OTHERS = dois(30, "10.5555/others")


def harvest(url: str, server: FakeServer, ids: Path, *args: str) -> None:
    env = {"HARVESTER_API_URL": server.url, "ALTMETRIC_API_KEY": KEY, "HARVESTER_TIER": "commercial", "HARVESTER_CONFIG": ""}
    result = CliRunner().invoke(cli, ["--database", url, "harvest", "--no-progress", str(ids), *args], env=env)
    assert result.exit_code in (ExitCode.OK, ExitCode.SOME_FAILED), result.output


def make_db(url: str, folder: Path) -> tuple[str, str]:
    """Job 1 `--name our-papers` and job 2 `--name others` from one fake, job 3 (our-papers again, Fetch) from another.

    Returns the two fakes' URLs."""
    ours, others = folder / "ours.txt", folder / "others.txt"
    ours.write_text("\n".join(OURS) + "\n")
    others.write_text("\n".join(OTHERS) + "\n")
    fake = FakeConfig(keys=(KEY,))
    with serve_in_thread(fake) as one, serve_in_thread(fake) as two:
        harvest(url, one, ours, "--name", "our-papers")
        harvest(url, one, others, "--name", "others")
        harvest(url, two, ours, "--name", "our-papers", "--endpoint", "fetch")
        return one.url, two.url


def merge(url: str) -> tuple[int, int]:
    """Upstream merged one of our outputs into one of the others' (as aliases.follow records it): returns (old, new)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            old = conn.execute(text("select min(altmetric_id) from job_items where job_id = 1 and status = 'done'")).scalar_one()
            new = conn.execute(text("select min(altmetric_id) from job_items where job_id = 2 and status = 'done'")).scalar_one()
            conn.execute(
                text(
                    "insert into output_aliases (old_altmetric_id, new_altmetric_id, via, detected_at) values (:o, :n, 'doi:x', '2026-01-01')"
                ),
                {"o": old, "n": new},
            )
            conn.execute(text("update outputs set superseded_by = :n where altmetric_id = :o"), {"o": old, "n": new})
    finally:
        engine.dispose()
    return int(old), int(new)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str, tuple[int, int]]]:
    folder = tmp_path_factory.mktemp("sets")
    url = f"sqlite:///{folder / 'harvest.db'}"
    one, two = make_db(url, folder)
    yield url, one, two, merge(url)


def run(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARVESTER_") and k != "ALTMETRIC_API_KEY"}
    return subprocess.run(
        [sys.executable, "-m", "harvester", "--database", url, *args], env=env, capture_output=True, text=True, timeout=180
    )


def set_ids(url: str, jobs: str) -> set[int]:
    """The set's current outputs, by SQL written here (not the code's): done items of the jobs, aliases followed."""
    return {
        r[0]
        for r in query(
            url,
            f"""select coalesce(o.superseded_by, i.altmetric_id) from job_items i join outputs o on o.altmetric_id = i.altmetric_id
                where i.job_id in ({jobs}) and i.status = 'done'""",
        )
    }


def exported(result: subprocess.CompletedProcess[str]) -> list[dict[str, str]]:
    assert result.returncode == ExitCode.OK, result.stderr
    return list(csv.DictReader(io.StringIO(result.stdout)))


def test_export_of_a_list_is_its_jobs_outputs_following_aliases(world: tuple[str, str, str, tuple[int, int]]) -> None:
    url, _, _, (old, new) = world
    ours = set_ids(url, "1, 3")
    assert new in ours and old not in ours and len(ours) > 20
    rows = exported(run(url, "export", "--list", "our-papers"))
    assert {int(r["altmetric_id"]) for r in rows} == ours  # output_summary: one row per current output
    assert {r["doi"] for r in rows} - set(OURS) == {query(url, f"select doi from outputs where altmetric_id = {new}")[0][0]}
    # Job 2 alone: the others' list, which holds the merged output as itself.
    rows = exported(run(url, "export", "--job", "2"))
    assert {int(r["altmetric_id"]) for r in rows} == set_ids(url, "2")
    assert len(exported(run(url, "export"))) == query(url, "select count(*) from output_summary")[0][0]
    # A table keeps the rows of the set's outputs and of old ids merged into them (snapshots stay under the old id).
    rows = exported(run(url, "export", "counts_snapshots", "--list", "our-papers"))
    assert {int(r["altmetric_id"]) for r in rows} == ours | {old}
    # Tables about jobs keep the rows of the set's jobs, not-found items included.
    rows = exported(run(url, "export", "job_items", "--list", "our-papers"))
    assert {r["job_id"] for r in rows} == {"1", "3"} and len(rows) == 2 * len(OURS)
    assert [r["id"] for r in exported(run(url, "export", "jobs", "--job", "2", "--job", "3"))] == ["2", "3"]


def test_export_refuses_what_a_set_cannot_choose(world: tuple[str, str, str, tuple[int, int]]) -> None:
    url = world[0]
    result = run(url, "export", "rate_budgets", "--list", "our-papers")
    assert result.returncode == ExitCode.ERROR and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "Error: 'rate_budgets' has no altmetric_id column, so --job/--list cannot choose its rows: export it without them, or use --sql"
    ]
    result = run(url, "export", "--sql", "select doi from outputs", "--job", "1")
    assert result.returncode == ExitCode.USAGE and "--job/--list choose the rows of a table or view, not of --sql" in result.stderr
    result = run(url, "export", "--datasette-metadata", "m.json", "--list", "our-papers")
    assert result.returncode == ExitCode.USAGE and "whole database" in result.stderr
    for args, message in (
        (("--job", "99"), "Error: no job 99 in this database (harvester jobs lists them)"),
        (("--list", "nope"), "Error: no list named 'nope': no job was harvested with --name 'nope'; lists: 'others', 'our-papers'"),
    ):
        for command in (["export"], ["report", "-o", os.devnull]):
            result = run(url, *command, *args)
            assert result.returncode == ExitCode.ERROR and result.stderr.strip().splitlines() == [message], result.stderr
    result = run(url, "report", "--job", "0")
    assert result.returncode == ExitCode.USAGE


def test_provenance_names_every_api_the_data_came_from(world: tuple[str, str, str, tuple[int, int]], tmp_path: Path) -> None:
    url, one, two, _ = world
    out = tmp_path / "ours.csv"
    result = run(url, "export", "--list", "our-papers", "-o", str(out))
    assert result.returncode == ExitCode.OK, result.stderr
    info = json.loads((tmp_path / "ours.csv.provenance.json").read_text())
    # Our list: jobs 1 and 3 (two fakes); its merged output was made done by job 2 too (the first fake).
    assert info["api_urls"] == [one, two] and info["api"] == f"{one}, {two}" and info["tiers"] == ["commercial"]
    assert info["not_altmetric_api"] == [one, two] and "api.altmetric.com" not in json.dumps(info)
    assert info["outputs"] == {"title": "List 'our-papers'", "lists": ["our-papers"], "jobs": [], "all_jobs": [1, 3]}
    assert info["rows"] == len(set_ids(url, "1, 3"))
    assert info["query"].startswith("SELECT * FROM output_summary WHERE altmetric_id IN (")
    # The others' list came from the first fake, but the output merged into one of theirs keeps rows (its
    # snapshots) under its old id that the second fake gave: both are named; on stderr when the data goes to stdout.
    result = run(url, "export", "--list", "others", "--format", "jsonl")
    assert result.returncode == ExitCode.OK and f"from {one}, {two} with altmetric-harvester" in result.stderr
    assert "not from Altmetric's API" in result.stderr
    # Parquet carries the same in its metadata.
    import pyarrow.parquet as pq

    result = run(url, "export", "--job", "2", "-o", str(tmp_path / "x.parquet"))
    assert result.returncode == ExitCode.OK, result.stderr
    meta = json.loads(pq.read_schema(tmp_path / "x.parquet").metadata[b"altmetric_harvester.provenance"])
    assert meta["api_urls"] == [one, two] and meta["outputs"]["title"] == "Job 2"


def test_a_job_run_before_the_url_was_recorded_is_unknown(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(OURS[:5]) + "\n")
    with serve_in_thread(FakeConfig(keys=(KEY,))) as server:
        harvest(url, server, ids, "--name", "old")
        harvest(url, server, ids, "--name", "new")
    # As an older version left it: no "api" in the first job's params.
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        params = json.loads(conn.execute(text("select params from jobs where id = 1")).scalar_one())
        assert params["api"] == [{"tier": "commercial", "url": server.url}]
        del params["api"]
        conn.execute(text("update jobs set params = :p where id = 1"), {"p": json.dumps(params)})
    engine.dispose()
    result = run(url, "export", "--list", "old", "-o", str(tmp_path / "old.csv"))
    assert result.returncode == ExitCode.OK, result.stderr
    info = json.loads((tmp_path / "old.csv.provenance.json").read_text())
    assert info["api_urls"] == [server.url, "unknown"]  # job 2 refreshed the same outputs from the fake
    page = tmp_path / "r.html"
    assert run(url, "report", "--job", "1", "-o", str(page)).returncode == ExitCode.OK
    assert "and unknown (1 job run before the address was recorded)" in page.read_text()


def test_the_report_title_and_numbers_follow_the_set(world: tuple[str, str, str, tuple[int, int]], tmp_path: Path) -> None:
    url, one, two, (old, new) = world
    pages = {}
    for name, args in (("all", ()), ("list", ("--list", "our-papers")), ("jobs", ("--job", "3", "--job", "2"))):
        pages[name] = tmp_path / f"{name}.html"
        result = run(url, "report", *args, "-o", str(pages[name]))
        assert result.returncode == ExitCode.OK, result.stderr
    html = {k: p.read_text() for k, p in pages.items()}
    assert '<h1>Altmetric harvest report: <span id="report-set">All outputs</span></h1>' in html["all"]
    assert "<title>Altmetric harvest report: List &#x27;our-papers&#x27;</title>" in html["list"]
    assert '<span id="report-set">Jobs 2, 3</span>' in html["jobs"]
    assert 'id="set-jobs">The outputs of jobs 1, 3 ' in html["list"]
    for key, jobs in (("all", "1, 2, 3"), ("list", "1, 3"), ("jobs", "2, 3")):
        outputs = len(set_ids(url, jobs))
        assert f'<div class="card" id="card-outputs"><div class="value">{outputs:,}</div>' in html[key], key
    # Where the data came from: both fakes, the tier, the dates, and a warning that it is not Altmetric's.
    assert f"the API at <code>{one}</code>, <code>{two}</code>; tier commercial; harvested " in html["list"]
    assert 'id="not-altmetric"><strong>Not Altmetric data.</strong>' in html["list"]
    # Job health covers the set's jobs only.
    assert "Jobs: 2 finished." in html["jobs"] and "Jobs: 3 finished." in html["all"]


def test_postgresql_sets(pg_url: str, tmp_path: Path) -> None:
    one, two = make_db(pg_url, tmp_path)
    old, new = merge(pg_url)
    ours = set_ids(pg_url, "1, 3")
    assert new in ours and old not in ours
    assert {int(r["altmetric_id"]) for r in exported(run(pg_url, "export", "--list", "our-papers"))} == ours
    rows = exported(run(pg_url, "export", "counts_snapshots", "--list", "our-papers"))
    assert {int(r["altmetric_id"]) for r in rows} == ours | {old}
    out = tmp_path / "x.csv"
    assert run(pg_url, "export", "--job", "2", "-o", str(out)).returncode == ExitCode.OK
    assert json.loads((tmp_path / "x.csv.provenance.json").read_text())["api_urls"] == [one, two]  # the merged output's old rows
    page = tmp_path / "r.html"
    result = run(pg_url, "report", "--list", "our-papers", "-o", str(page))
    assert result.returncode == ExitCode.OK, result.stderr
    text = page.read_text()
    assert '<span id="report-set">List &#x27;our-papers&#x27;</span>' in text and f"<code>{two}</code>" in text
    assert f'<div class="card" id="card-outputs"><div class="value">{len(ours):,}</div>' in text
