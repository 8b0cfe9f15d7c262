"""`harvester export`: round trips in every format, the attribution in each, errors, flat memory.

The data is a real harvest (the CLI against the fake API over HTTP) into SQLite and
PostgreSQL; each format read back with its own reader (csv, json, pyarrow) equals the
view's or table's rows read with the database's driver. The memory test runs the
exporter as a subprocess on a synthetic table of 20k and 200k rows and compares the
peak RSS (benchmarks/export.py does the same at 100k and 1M, and prints rows/s).
"""

from __future__ import annotations

import csv
import json
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import harvester.cli
from benchmarks.export import make_synthetic, run_export
from harvester.fakeapi import FakeConfig, serve_in_thread
from harvester.vocabulary import ExitCode
from tests.conftest import dois
from tests.subproc import query

SAMPLE_DOIS = ["10.1038/news.2011.490", "10.4018/978-1-4666-8271-9"]
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?$")


def harvest_into(url: str, ids: Path) -> None:
    with serve_in_thread(FakeConfig()) as server:
        env = {"HARVESTER_API_URL": server.url, "ALTMETRIC_API_KEY": "demo-key", "HARVESTER_TIER": "commercial", "HARVESTER_CONFIG": ""}
        for endpoint in ("counts", "fetch"):
            result = CliRunner().invoke(
                harvester.cli.cli, ["--database", url, "harvest", "--endpoint", endpoint, "--no-progress", str(ids)], env=env
            )
            assert result.exit_code == ExitCode.OK, result.output


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("export")
    ids = folder / "dois.txt"
    ids.write_text("\n".join(dois(120, "10.5555/doc") + SAMPLE_DOIS) + "\n")
    harvest_into(f"sqlite:///{folder / 'harvest.db'}", ids)
    return folder / "harvest.db"


def export(database: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARVESTER_")}
    return subprocess.run(
        [sys.executable, "-m", "harvester", "--database", database, "export", *args], env=env, capture_output=True, text=True, timeout=120
    )


def canon(value: Any) -> str:
    """One text form of a value whatever the format carried it as: dates ISO, NULL empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, str) and _DATE.match(value):
        return (datetime.fromisoformat(value) if len(value) > 10 else date.fromisoformat(value)).isoformat()
    if isinstance(value, float) and value.is_integer():
        return repr(value)
    return str(value)


def table_rows(url: str, sql: str) -> tuple[list[str], list[list[str]]]:
    from sqlalchemy import create_engine

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            result = conn.exec_driver_sql(sql)
            return list(result.keys()), sorted(([canon(v) for v in r] for r in result), key=_key)
    finally:
        engine.dispose()


def _key(row: list[str]) -> tuple[int, list[str]]:
    return (int(row[0]) if row[0].lstrip("-").isdigit() else 0, row)


def read_back(path: Path, fmt: str) -> tuple[list[str], list[list[str]]]:
    if fmt == "csv":
        with open(path, newline="", encoding="utf-8") as f:
            header, *rows = list(csv.reader(f))
        return header, sorted(rows, key=_key)
    if fmt == "jsonl":
        objects = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        header = list(objects[0])
        return header, sorted(([canon(o[c]) for c in header] for o in objects), key=_key)
    table = pq.read_table(path)
    return table.column_names, sorted(([canon(v) for v in row.values()] for row in table.to_pylist()), key=_key)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
@pytest.mark.parametrize("source", ["output_summary", "outputs", "mentions"])
def test_round_trip_equals_the_rows_with_the_attribution(db: Path, tmp_path: Path, fmt: str, source: str) -> None:
    out = tmp_path / f"export.{fmt}"
    result = export(f"sqlite:///{db}", source, "--format", fmt, "-o", str(out))
    assert result.returncode == ExitCode.OK, result.stderr
    columns, expected = table_rows(f"sqlite:///{db}", f"SELECT * FROM {source}")
    assert len(expected) > 50
    assert read_back(out, fmt) == (columns, expected)
    if fmt == "parquet":
        metadata = pq.read_schema(out).metadata
        info = json.loads(metadata[b"altmetric_harvester.provenance"])
        assert b"Altmetric.com" in metadata[b"attribution"] and b"must not be" in metadata[b"terms"]
        assert "Parquet metadata" in result.stderr
    else:
        info = json.loads((tmp_path / f"export.{fmt}.provenance.json").read_text())
        assert info["rows"] == len(expected) and info["file"] == out.name
        assert f"export.{fmt}.provenance.json" in result.stderr
    assert info["source"] == "Altmetric.com" and info["source_url"] == "https://www.altmetric.com"
    assert info["endpoints"] == ["counts", "fetch"] and info["table"] == source
    assert info["query"] == f"SELECT * FROM {source}" and info["tool"].startswith("altmetric-harvester ")
    first, last = query(db, "select min(first_harvested_at), max(harvested_at) from outputs")[0]
    assert info["harvested_from"] == canon(first)[:19] and info["harvested_to"] == canon(last)[:19]
    assert "free" in info["terms"] and "redistributed" in info["terms"] and info["exported_at"].endswith("Z")


def test_parquet_keeps_the_column_types(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "summary.parquet"
    assert export(f"sqlite:///{db}", "-o", str(out)).returncode == ExitCode.OK  # the format from the suffix
    schema = pq.read_schema(out)
    types = {name: str(schema.field(name).type) for name in schema.names}
    assert types["altmetric_id"] == "int64" and types["score"] == "double" and types["doi"] == "string"
    assert types["published_on"] == "timestamp[us]" and types["twitter_accounts"] == "int64"


def test_to_stdout_csv_with_the_attribution_on_stderr(db: Path) -> None:
    result = export(f"sqlite:///{db}")
    assert result.returncode == ExitCode.OK, result.stderr
    rows = list(csv.reader(result.stdout.splitlines()))
    assert rows[0][:3] == ["altmetric_id", "doi", "title"]
    assert len(rows) - 1 == query(db, "select count(*) from output_summary")[0][0]
    assert "Source: Altmetric.com" in result.stderr and "must not be redistributed" in result.stderr
    assert "counts, fetch" in result.stderr
    quiet = subprocess.run(
        [sys.executable, "-m", "harvester", "-q", "--database", f"sqlite:///{db}", "export"], capture_output=True, text=True
    )
    assert quiet.returncode == ExitCode.OK and quiet.stderr == "" and quiet.stdout == result.stdout


def test_sql_query_jsonl_with_iso_dates(db: Path) -> None:
    result = export(
        f"sqlite:///{db}",
        "--sql",
        "SELECT doi, score, published_on FROM output_summary WHERE doi LIKE '10.5555/%' ORDER BY doi",
        "--format",
        "jsonl",
    )
    assert result.returncode == ExitCode.OK, result.stderr
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["doi"] for o in objects] == [
        r[0] for r in query(db, "select doi from output_summary where doi like '10.5555/%' order by doi")
    ]
    assert all(isinstance(o["score"], (float, int, type(None))) for o in objects)


def test_sql_must_be_read_only(db: Path) -> None:
    before = query(db, "select count(*) from outputs")[0][0]
    for sql in (
        "DELETE FROM outputs",
        "SELECT 1; DELETE FROM outputs",
        "WITH x AS (SELECT 1) DELETE FROM outputs",
        "UPDATE outputs SET score = 0",
    ):
        result = export(f"sqlite:///{db}", "--sql", sql)
        assert result.returncode == ExitCode.ERROR and result.stderr.startswith("Error: "), (sql, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert query(db, "select count(*) from outputs")[0][0] == before


def test_unknown_table_lists_valid_names(db: Path) -> None:
    result = export(f"sqlite:///{db}", "no_such_table")
    assert result.returncode == ExitCode.ERROR and result.stdout == ""
    line = result.stderr.strip()
    assert (
        len(line.splitlines()) == 1 and "no table or view named 'no_such_table'" in line and "output_summary" in line and "outputs" in line
    )


def test_unwritable_path_and_full_disk_are_one_line(db: Path, tmp_path: Path) -> None:
    for target, reason in ((tmp_path / "missing" / "x.csv", "No such file or directory"), (Path("/dev/full"), "No space left on device")):
        result = export(f"sqlite:///{db}", "-o", str(target))
        assert result.returncode == ExitCode.ERROR and result.stderr.strip() == f"Error: cannot write {target}: {reason}"
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o500)
    try:
        result = export(f"sqlite:///{db}", "-o", str(readonly / "x.csv"))
        if os.geteuid() != 0:  # root writes anyway
            assert result.returncode == ExitCode.ERROR and "Permission denied" in result.stderr and len(result.stderr.splitlines()) == 1
    finally:
        readonly.chmod(0o700)
    assert not list(tmp_path.rglob("*.partial"))  # a failed export leaves nothing half-written


def test_broken_pipe_exits_quietly(db: Path, tmp_path: Path) -> None:
    url = make_synthetic(tmp_path / "big.db", 50_000)
    for fmt in ("csv", "jsonl"):
        result = subprocess.run(
            f"{sys.executable} -m harvester --database {url} export synthetic --format {fmt} | head -n 2",
            shell=True,
            capture_output=True,
            text=True,
            timeout=120,
            executable="/bin/bash",
        )
        assert len(result.stdout.splitlines()) == 2
        assert result.stderr == "", result.stderr


def test_missing_pyarrow_hints_at_the_extra(db: Path, tmp_path: Path) -> None:
    code = "import sys; sys.modules['pyarrow'] = None; from harvester.cli import main; sys.argv[0] = 'harvester'; main()"
    out = tmp_path / "x.parquet"
    result = subprocess.run(
        [sys.executable, "-c", code, "--database", f"sqlite:///{db}", "export", "-o", str(out)], capture_output=True, text=True
    )
    assert result.returncode == ExitCode.ERROR and not out.exists()
    assert result.stderr.strip() == "Error: Parquet needs pyarrow: pip install 'altmetric-harvester[parquet]'"


def test_datasette_metadata(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "metadata.json"
    result = export(f"sqlite:///{db}", "--datasette-metadata", str(out))
    assert result.returncode == ExitCode.OK, result.stderr
    metadata = json.loads(out.read_text())
    assert metadata["source"] == "Altmetric.com" and metadata["source_url"] == "https://www.altmetric.com"
    assert "must not be published" in metadata["description"] and "redistributed" in metadata["license"]
    tables = metadata["databases"]["harvest"]["tables"]
    assert {"output_summary", "outputs", "mentions", "identifiers"} <= set(tables)
    assert "127.0.0.1" in result.stderr


@pytest.fixture
def pg_harvest(pg_url: str, tmp_path: Path) -> Iterator[str]:
    ids = tmp_path / "dois.txt"
    ids.write_text("\n".join(dois(40, "10.5555/doc") + SAMPLE_DOIS) + "\n")
    harvest_into(pg_url, ids)
    yield pg_url


def test_postgresql_round_trip_and_read_only(pg_harvest: str, tmp_path: Path) -> None:
    for fmt in ("csv", "jsonl", "parquet"):
        out = tmp_path / f"summary.{fmt}"
        result = export(pg_harvest, "--format", fmt, "-o", str(out))
        assert result.returncode == ExitCode.OK, result.stderr
        assert read_back(out, fmt) == table_rows(pg_harvest, "SELECT * FROM output_summary")
    before = query(pg_harvest, "select count(*) from outputs")[0][0]
    result = export(pg_harvest, "--sql", "WITH gone AS (DELETE FROM outputs RETURNING 1) SELECT COUNT(*) FROM gone")
    assert result.returncode == ExitCode.ERROR and len(result.stderr.splitlines()) == 1, result.stderr
    assert query(pg_harvest, "select count(*) from outputs")[0][0] == before
    # A write the server-side cursor would take (a function's) meets a read-only transaction.
    result = export(pg_harvest, "--sql", "SELECT current_setting('transaction_read_only') AS ro")
    assert result.returncode == ExitCode.OK and result.stdout.splitlines() == ["ro", "on"], result.stderr
    result = export(pg_harvest, "--sql", "SELECT nextval('jobs_id_seq')")
    assert result.returncode == ExitCode.ERROR and "read-only transaction" in result.stderr and len(result.stderr.splitlines()) == 1
    assert query(pg_harvest, "select count(*) from outputs")[0][0] == before


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_memory_is_flat_in_the_number_of_rows(tmp_path: Path, fmt: str) -> None:
    small = make_synthetic(tmp_path / "small.db", 20_000)
    big = make_synthetic(tmp_path / "big.db", 200_000)
    _, small_peak = run_export(small, fmt, tmp_path / f"small.{fmt}")
    _, big_peak = run_export(big, fmt, tmp_path / f"big.{fmt}")
    assert big_peak < 1.3 * small_peak + 20 * 2**20, f"{fmt}: {small_peak / 2**20:.0f} MB at 20k rows, {big_peak / 2**20:.0f} MB at 200k"
    # And every row is there.
    if fmt == "parquet":
        assert pq.read_metadata(tmp_path / "big.parquet").num_rows == 200_000
    else:
        with open(tmp_path / f"big.{fmt}", "rb") as f:
            assert sum(1 for _ in f) == 200_000 + (fmt == "csv")
    assert sqlite3.connect(tmp_path / "big.db").execute("select count(*) from synthetic").fetchone() == (200_000,)


def test_parquet_never_truncates_a_fraction_in_an_integer_column(db: Path, tmp_path: Path) -> None:
    """SQLite types a query's expression by the values of its first rows: a later fraction is an error, not cut to an int."""
    sql = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 15000) SELECT CASE WHEN i = 15000 THEN 0.5 ELSE i END AS v FROM n"
    result = export(f"sqlite:///{db}", "--sql", sql, "--format", "parquet", "-o", str(tmp_path / "x.parquet"))
    assert (
        result.returncode == ExitCode.ERROR
        and "column 'v' holds integers and then 0.5" in result.stderr
        and len(result.stderr.splitlines()) == 1
    )
    assert not (tmp_path / "x.parquet").exists()
    result = export(
        f"sqlite:///{db}",
        "--sql",
        sql.replace("ELSE i END", "ELSE CAST(i AS REAL) END"),
        "--format",
        "parquet",
        "-o",
        str(tmp_path / "x.parquet"),
    )
    assert result.returncode == ExitCode.OK and pq.read_table(tmp_path / "x.parquet").column("v").to_pylist()[-2:] == [14999.0, 0.5]


def test_a_failed_write_leaves_the_earlier_export_and_its_provenance_whole(tmp_path: Path) -> None:
    """A file size limit (as a full disk would) fails the provenance file's write midway:
    the earlier export and provenance stay whole, no temporary file is left, one line, exit 1."""
    import resource
    import signal
    import subprocess
    import sys

    from click.testing import CliRunner

    from harvester.cli import cli

    db = tmp_path / "harvest.db"
    assert CliRunner().invoke(cli, ["--database", f"sqlite:///{db}", "db", "upgrade"]).exit_code == ExitCode.OK
    out, sidecar = tmp_path / "small.csv", tmp_path / "small.csv.provenance.json"
    out.write_text("earlier\n")
    sidecar.write_text('{"earlier": true}\n')

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer instead of failing the write
        resource.setrlimit(resource.RLIMIT_FSIZE, (300, 300))

    proc = subprocess.run(
        [sys.executable, "-m", "harvester", "--database", f"sqlite:///{db}", "export", "--sql", "select 1 as x", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limited,
        cwd=tmp_path,
    )
    assert proc.returncode == ExitCode.ERROR, proc.stderr
    [line] = proc.stderr.splitlines()
    assert line.startswith(f"Error: cannot write the attribution file {sidecar}: File too large"), line
    assert sidecar.read_text() == '{"earlier": true}\n'
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("harvest.db")) == ["small.csv", "small.csv.provenance.json"]
