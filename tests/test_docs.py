"""The docs stay true: their SQL runs on a real harvest, the schema and every CLI option are documented.

The SQL examples in README.md and docs/schema.md are run against a database filled
by the real CLI harvesting the fake API over HTTP, on SQLite and on PostgreSQL (the
session's throwaway server, tests/pg.py). Each must run and return rows: a query
that returns nothing proves nothing.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, timedelta
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine

import harvester.cli
from harvester import clock, fakeapi, schema
from harvester.db import open_database
from harvester.fakeapi import FakeConfig, serve_in_thread
from harvester.vocabulary import ExitCode
from tests.conftest import ROOT, rows, scalar
from tests.subproc import start

README = ROOT / "README.md"
SCHEMA_DOC = ROOT / "docs" / "schema.md"
CI_RUN = ROOT / ".ci" / "run"

# About 200 synthetic DOIs, a real sample DOI (the fake serves its recorded body),
# a book and a chapter whose recorded Fetch bodies give output_relations rows,
# and the messes that give the job tables rows: a duplicate in another case, a line
# that is no DOI, a DOI the fake answers 400 to, and one it answers with another output.
ID_LINES = (
    [f"10.5555/doc.{i:05d}" for i in range(200)]
    + ["10.1038/news.2011.490", "10.4018/978-1-4666-8271-9", "10.1007/978-3-642-60907-7_15"]
    + ["doi:10.1038/NEWS.2011.490", "not a doi", "10.5555/badrequest.1", "10.5555/bogus.1"]
)
# Re-harvested with Fetch after upstream lost a post of each source (see _posts_lost_upstream).
REHARVEST_LINES = ["10.1038/news.2011.490"] + [f"10.5555/doc.{i:05d}" for i in range(20)]

_SQL_BLOCK = re.compile(r"^```sql[ \t]*\n(.*?)^```", re.S | re.M)


def sql_blocks(path: Path) -> list[str]:
    return [m.group(1).strip() for m in _SQL_BLOCK.finditer(path.read_text(encoding="utf-8"))]


def all_sql_blocks() -> list[tuple[str, str]]:
    return [(f"{path.name}#{n}", sql) for path in (README, SCHEMA_DOC) for n, sql in enumerate(sql_blocks(path), start=1)]


def _posts_lost_upstream(
    fetch_bytes: Callable[[str, str, float], bytes | None],
) -> Callable[[str, str, float], bytes | None]:
    """The fake's Fetch bodies with the first post of every source gone, as if deleted upstream."""

    def served(id_type: str, identifier: str, not_found_pct: float) -> bytes | None:
        raw = fetch_bytes(id_type, identifier, not_found_pct)
        if raw is None:
            return None
        body = json.loads(raw)
        if isinstance(body.get("posts"), dict):
            body["posts"] = {source: posts[1:] for source, posts in body["posts"].items()}
        return json.dumps(body).encode("utf-8")

    return served


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def harvested(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """One real harvest per database engine for the whole module: the CLI in-process against the fake API.

    Counts, then Fetch over the same ids (mentions, demographics, relations), a Citations
    listing, then a Fetch re-harvest of a few ids after upstream lost some posts (they are
    deleted); then two nightlies a day apart (snapshots, movers, reports).
    """
    tmp = tmp_path_factory.mktemp("docs")
    ids_file = tmp / "dois.txt"
    ids_file.write_text("\n".join(ID_LINES) + "\n")
    reharvest_file = tmp / "reharvest.txt"
    reharvest_file.write_text("\n".join(REHARVEST_LINES) + "\n")
    with ExitStack() as stack:
        if request.param == "postgresql":
            url = stack.enter_context(request.getfixturevalue("pg_cluster").database())  # dropped after the module
        else:
            url = f"sqlite:///{tmp / 'harvest.db'}"
        _harvest(tmp, url, ids_file, reharvest_file)
        _two_nights(tmp, url)
        engine = open_database(url)
        yield engine
        engine.dispose()


def _harvest(tmp: Path, url: str, ids_file: Path, reharvest_file: Path) -> None:
    with pytest.MonkeyPatch.context() as mp, serve_in_thread(FakeConfig()) as server:
        # clean_env, module-wide: no settings from the developer's shell or a ./harvester.toml.
        for name in list(os.environ):
            if name.startswith("HARVESTER_") or name == "ALTMETRIC_API_KEY":
                mp.delenv(name)
        mp.chdir(tmp)

        def harvest(*args: str, command: str = "harvest") -> Result:
            return CliRunner().invoke(
                harvester.cli.cli,
                ["--database", url, command, "--no-progress", *args],
                env={
                    "HARVESTER_API_URL": server.url,
                    "ALTMETRIC_API_KEY": "demo-key",
                    "HARVESTER_TIER": "commercial",
                    "HARVESTER_CONFIG": "",
                },
            )

        # 3: finished with the badrequest DOI failed, everything else final.
        result = harvest(str(ids_file))
        assert result.exit_code == ExitCode.SOME_FAILED, result.output
        result = harvest("--endpoint", "fetch", str(ids_file))
        assert result.exit_code == ExitCode.SOME_FAILED, result.output
        result = harvest("1w", "--num-results", "20", command="citations")
        assert result.exit_code == ExitCode.OK, result.output
        # The server thread looks _fetch_bytes up on every request; fetch_body (below) too.
        lost = _posts_lost_upstream(fakeapi.bodies._fetch_bytes)
        mp.setattr(fakeapi.server, "_fetch_bytes", lost)
        mp.setattr(fakeapi.evolution, "_fetch_bytes", lost)
        result = harvest("--endpoint", "fetch", str(reharvest_file))
        assert result.exit_code == ExitCode.OK, result.output


def _two_nights(tmp: Path, url: str) -> None:
    """Two nightlies, a day apart, against a fake whose attention grows: snapshots, movers, reports."""
    config = tmp / "nightly.toml"
    config.write_text('[nightly]\ntimeframe = "1d"\nnum_results = 20\npages = 1\n')
    fake_now = [0.0]
    with serve_in_thread(FakeConfig(keys=("demo-key",), evolve=True, clock=lambda: fake_now[0])) as server:
        for days in (1, 2):
            when = clock.utcnow() + timedelta(days=days)
            fake_now[0] = when.replace(tzinfo=UTC).timestamp()
            proc = start(
                url, server, "nightly", "--no-progress", config=config, HARVESTER_NOW=when.isoformat(), ALTMETRIC_API_KEY="demo-key"
            )
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == ExitCode.OK, err


def test_the_docs_have_sql_examples() -> None:
    assert len(sql_blocks(SCHEMA_DOC)) >= 6
    assert len(sql_blocks(README)) >= 3


@pytest.mark.parametrize(("where", "sql"), all_sql_blocks(), ids=[w for w, _ in all_sql_blocks()])
def test_sql_example_runs_and_returns_rows(harvested: Engine, where: str, sql: str) -> None:
    statement = sql.rstrip().rstrip(";")
    assert ";" not in statement, f"{where}: one statement per ```sql block"
    with harvested.connect() as conn:
        # The text goes to the database as written, as in sqlite3 or psql: no_parameters, or
        # psycopg would read the % of a LIKE '10.5555/%' as a placeholder.
        rows = conn.execution_options(no_parameters=True).exec_driver_sql(statement).all()
    assert rows, f"{where} returned no rows on a real harvest:\n{sql}"


def test_the_harvest_has_what_the_examples_need(harvested: Engine) -> None:
    """Two nightlies with their movers, and posts lost upstream deleted, on both engines."""
    assert scalar(harvested, "select count(*) from nightly_runs") == 2
    assert [r["n"] for r in rows(harvested, "select count(*) as n from nightly_movers group by job_id order by job_id")] == [10, 10]
    lost = "select count(*) from mentions m join outputs o on o.altmetric_id = m.altmetric_id where m.last_seen_at < o.posts_seen_at"
    assert scalar(harvested, lost) == 0
    # The re-harvested outputs have the posts upstream still lists, and no more.
    served = 0
    for doi in REHARVEST_LINES:
        body = fakeapi.fetch_body("doi", doi)
        if body and isinstance(body.get("posts"), dict):
            served += sum(len(posts[1:]) for posts in body["posts"].values())
    stored = (
        "select count(*) from mentions m join identifiers i on i.altmetric_id = m.altmetric_id where i.scheme = 'doi' and i.value in ({})"
    )
    assert scalar(harvested, stored.format(", ".join(f"'{d.lower()}'" for d in REHARVEST_LINES))) == served > 0


def _doc_sections(text: str) -> dict[str, str]:
    """`### \\`table\\`` heading -> the text up to the next heading of level 2 or 3."""
    sections: dict[str, str] = {}
    parts = re.split(r"^(#{2,3} .*)$", text, flags=re.M)
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        m = re.fullmatch(r"### `(\w+)`\s*", heading)
        if m:
            sections[m.group(1)] = body
    return sections


def test_every_table_and_column_is_documented() -> None:
    sections = _doc_sections(SCHEMA_DOC.read_text(encoding="utf-8"))
    missing_tables = sorted(set(schema.metadata.tables) - set(sections))
    assert not missing_tables, f"docs/schema.md has no ### `table` section for {missing_tables}"
    missing_columns = [
        f"{table.name}.{column.name}"
        for table in schema.metadata.sorted_tables
        for column in table.columns
        if not re.search(rf"^\| `{re.escape(column.name)}` \|", sections[table.name], re.M)
    ]
    assert not missing_columns, f"docs/schema.md does not describe {missing_columns} (a `| \\`column\\` |` row)"


def test_documented_tables_exist() -> None:
    """The reverse check: the doc describes no table that is not in the schema."""
    sections = _doc_sections(SCHEMA_DOC.read_text(encoding="utf-8"))
    assert set(sections) <= set(schema.metadata.tables)


def _commands(command: click.Command, path: str = "harvester") -> Iterator[tuple[str, click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _commands(sub, f"{path} {name}")


COMMANDS = list(_commands(harvester.cli.cli))


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[p for p, _ in COMMANDS])
def test_commands_have_help(path: str, command: click.Command) -> None:
    assert (command.help or "").strip(), f"`{path}` has no help text"
    no_help = [param.opts[-1] for param in command.params if isinstance(param, click.Option) and not (param.help or "").strip()]
    assert not no_help, f"`{path}` options without help: {no_help}"


def test_readme_quick_start_matches_ci() -> None:
    readme = README.read_text(encoding="utf-8")
    assert "harvester demo" in readme
    lines = CI_RUN.read_text(encoding="utf-8").splitlines()
    marker = lines.index("# The README's test command:")
    command = lines[marker + 1].strip()
    assert command, ".ci/run has no command after its marker line"
    assert command in readme, f"README.md does not show the test command .ci/run runs: {command!r}"
    # And it is in the quick start's two-command block, after an install of the test extras.
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", quick_start, re.S)
    assert block, "the quick start has no ```sh block"
    commands = [line for line in block.group(1).splitlines() if line.strip()]
    assert len(commands) == 2, commands
    assert commands[0].endswith("harvester demo")
    assert commands[1].endswith(command)
