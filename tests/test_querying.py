"""Every recipe of docs/querying.md runs, as written, against a real harvest.

One harvest (Counts then Fetch, through the real CLI against the fake API) into a
SQLite file and into a database of the session's throwaway PostgreSQL server. Each
recipe is a fenced block after a `<!-- recipe: NAME -->` line; the test runs it with
only the database's address and Datasette's port changed: the `sqlite3` shell, psql,
pandas on both engines, `harvester export`, and Datasette serving the file with the
metadata.json the harvester writes, bound to 127.0.0.1.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

import harvester.cli
from harvester.fakeapi import FakeConfig, serve_in_thread
from harvester.vocabulary import ExitCode
from tests.conftest import ROOT, dois
from tests.pg import Cluster
from tests.subproc import query

QUERYING = ROOT / "docs" / "querying.md"
DOC_PG_URL = "postgresql+psycopg://harvester@localhost/altmetric"
DOC_PG_CONNINFO = "postgresql://harvester@localhost/altmetric"
DOC_PORT = "8001"
BIN = Path(sys.executable).parent  # harvester and datasette of this environment

_RECIPE = re.compile(r"^<!-- recipe: (\S+) -->\n```(\w+)\n(.*?)^```", re.S | re.M)


def recipes() -> dict[str, tuple[str, str]]:
    return {m.group(1): (m.group(2), m.group(3)) for m in _RECIPE.finditer(QUERYING.read_text(encoding="utf-8"))}


@dataclass
class Harvest:
    folder: Path  # holds harvest.db, the recipes' working folder
    pg_url: str

    @property
    def conninfo(self) -> str:
        return self.pg_url.replace("postgresql+psycopg://", "postgresql://")


@pytest.fixture(scope="module")
def harvest(tmp_path_factory: pytest.TempPathFactory, pg_cluster: Cluster) -> Iterator[Harvest]:
    folder = tmp_path_factory.mktemp("querying")
    ids = folder / "dois.txt"
    ids.write_text("\n".join(dois(60, "10.5555/doc") + ["10.1038/news.2011.490"]) + "\n")
    with ExitStack() as stack:
        pg_url = stack.enter_context(pg_cluster.database())
        server = stack.enter_context(serve_in_thread(FakeConfig()))
        env = {"HARVESTER_API_URL": server.url, "ALTMETRIC_API_KEY": "demo-key", "HARVESTER_TIER": "commercial", "HARVESTER_CONFIG": ""}
        for url in (f"sqlite:///{folder / 'harvest.db'}", pg_url):
            for endpoint in ("counts", "fetch"):
                result = CliRunner().invoke(
                    harvester.cli.cli, ["--database", url, "harvest", "--endpoint", endpoint, "--no-progress", str(ids)], env=env
                )
                assert result.exit_code == ExitCode.OK, result.output
        yield Harvest(folder, pg_url)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARVESTER_") and k != "ALTMETRIC_API_KEY"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_recipe(name: str, harvest: Harvest, **replace: str) -> str:
    """Run a recipe in the harvest's folder; its stdout."""
    lang, code = recipes()[name]
    code = code.replace(DOC_PG_URL, harvest.pg_url).replace(DOC_PG_CONNINFO, harvest.conninfo)
    for old, new in replace.items():
        code = code.replace(old, new)
    if lang == "python":
        command = [sys.executable, "-c", code]
    else:
        assert lang == "sh", name
        command = ["bash", "-euo", "pipefail", "-c", code]
    result = subprocess.run(command, cwd=harvest.folder, env=_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"recipe {name} failed:\n{code}\n{result.stderr}"
    return result.stdout


def test_every_recipe_is_tested() -> None:
    tested = {
        "sqlite3-top",
        "sqlite3-journals",
        "pandas-sqlite",
        "pandas-postgresql",
        "psql",
        "export",
        "export-parquet",
        "datasette",
        "datasette-json",
    }
    assert set(recipes()) == tested


def test_sqlite3_shell(harvest: Harvest) -> None:
    rows = list(csv.reader(io.StringIO(run_recipe("sqlite3-top", harvest))))
    assert rows[0] == ["doi", "title", "score"] and len(rows) == 11
    expected = query(harvest.folder / "harvest.db", "select doi from output_summary where score is not null order by score desc limit 10")
    assert [r[0] for r in rows[1:]] == [e[0] for e in expected]
    assert "mean_score" in run_recipe("sqlite3-journals", harvest)


def test_pandas_on_sqlite(harvest: Harvest) -> None:
    out = run_recipe("pandas-sqlite", harvest)
    top = query(harvest.folder / "harvest.db", "select doi from output_summary where score is not null order by score desc limit 1")[0][0]
    assert top in out and "median" in out


def test_pandas_on_postgresql(harvest: Harvest) -> None:
    out = run_recipe("pandas-postgresql", harvest)
    n = query(harvest.pg_url, "select count(*) from source_counts")[0][0]
    assert n > 0 and f"{n} source_counts rows" in out


def test_psql(harvest: Harvest) -> None:
    out = run_recipe("psql", harvest)
    top = query(harvest.pg_url, "select doi from output_summary order by score desc nulls last limit 1")[0][0]
    assert top in out and "(10 rows)" in out
    with open(harvest.folder / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == query(harvest.pg_url, "select count(*) from output_summary")[0][0] > 0


def test_export_recipes(harvest: Harvest) -> None:
    run_recipe("export", harvest)
    db = harvest.folder / "harvest.db"
    with open(harvest.folder / "summary.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == query(db, "select count(*) from output_summary")[0][0]
    lines = (harvest.folder / "outputs.jsonl").read_text().splitlines()
    assert len(lines) == query(db, "select count(*) from outputs")[0][0]
    assert json.loads((harvest.folder / "outputs.jsonl.provenance.json").read_text())["source"] == "Altmetric.com"
    assert (harvest.folder / "sources.csv.provenance.json").exists()
    out = run_recipe("export-parquet", harvest)
    assert "Altmetric.com" in out and "doi" in out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, deadline: float) -> bytes:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return bytes(response.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_datasette_serves_the_file_with_the_metadata(harvest: Harvest) -> None:
    port = str(_free_port())
    lang, code = recipes()["datasette"]
    write_metadata, serve = [line for line in code.splitlines() if line.strip()]
    assert "127.0.0.1" in serve  # never a public address in the docs
    env = _env()
    subprocess.run(["bash", "-c", write_metadata], cwd=harvest.folder, env=env, check=True, timeout=120)
    metadata = json.loads((harvest.folder / "metadata.json").read_text())
    assert metadata["source"] == "Altmetric.com" and "must not be" in metadata["about"]
    assert "output_summary" in metadata["databases"]["harvest"]["tables"]
    proc = subprocess.Popen(
        ["bash", "-c", f"exec {serve.replace(DOC_PORT, port)}"],
        cwd=harvest.folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        served = json.loads(_get(f"http://127.0.0.1:{port}/-/metadata.json", deadline))
        assert served["source"] == "Altmetric.com" and served["source_url"] == "https://www.altmetric.com"
        assert "Altmetric.com" in _get(f"http://127.0.0.1:{port}/harvest/output_summary", deadline).decode()
        run_recipe("datasette-json", harvest, **{DOC_PORT: port})  # as written, both lines
        lines = [line.replace(DOC_PORT, port) for line in recipes()["datasette-json"][1].splitlines() if line.strip()]
        first, second = (
            json.loads(subprocess.run(["bash", "-c", line], env=env, capture_output=True, check=True, timeout=60).stdout) for line in lines
        )
        assert len(first) == 5 and "doi" in first[0] and "twitter_accounts" in first[0]
        top = query(harvest.folder / "harvest.db", "select doi from outputs order by score desc limit 5")
        assert [r["doi"] for r in second] == [t[0] for t in top]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
