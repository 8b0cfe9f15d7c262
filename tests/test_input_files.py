"""Real input files (issue 20, item 1): CSV/TSV exports read by --column, mixed lists by
--id-type auto, UTF-16 and UTF-8-BOM files read, Latin-1 refused with the line, and
job_items/job_rejects keeping the file's own line numbers. Through the CLI, against the fake API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import Result

from harvester.fakeapi import FakeServer
from harvester.ids import read_ids
from harvester.vocabulary import ExitCode
from tests.conftest import Harness, rows

# Zotero's CSV export: every field quoted, bare DOIs, items without a DOI, a title holding a
# comma and a line break (a record spanning two lines), an abstract with quotes.
ZOTERO = (
    '"Key","Item Type","Publication Year","Author","Title","Publication Title","ISBN","ISSN","DOI","Url","Abstract Note"\n'
    '"Q2ZKX4AB","journalArticle","2011","Smith, Jane; Doe, John","Altmetrics, a manifesto\n(revised)","Nature","","0028-0836",'
    '"10.1038/news.2011.490","https://www.nature.com/news/x","He said ""hello"", then left."\n'
    '"8WXJ3KQ2","book","2015","Roe, Rick","A book","","978-1-4666-8271-9","","","",""\n'
    '"ZZ7H2M4C","journalArticle","2016","Poe, E.","Second","Cell","","","10.5555/ZOTERO.2","",""\n'
)

# Scopus: the BOM Excel-compatible exports start with, "DOI" among forty columns, a PubMed ID column.
SCOPUS = (
    "\ufeffAuthors,Author full names,Title,Year,Source title,DOI,Link,Abstract,PubMed ID,Document Type,Source,EID\n"
    'Smith J.,"Smith, Jane (123)","On things, and more",2020,Cell,10.5555/scopus.1,https://www.scopus.com/x,"Long, ""quoted"" abstract",19057659,Article,Scopus,2-s2.0-1\n'
    'Doe J.,"Doe, John (456)",Other,2021,Cell,10.5555/SCOPUS.2,https://www.scopus.com/y,,,Review,Scopus,2-s2.0-2\n'
)

# Web of Science "Tab-delimited (Win)": UTF-16 LE with a BOM, CRLF, the DOI in "DI", unquoted fields.
WOS = (
    "PT\tAU\tTI\tSO\tDI\tPY\tUT\r\n"
    'J\tSmith, J; Doe, J\tA "quoted" title, with a comma\tNATURE\t10.5555/wos.1\t2019\tWOS:000001\r\n'
    "J\tRoe, R\tNo DOI here\tCELL\t\t2020\tWOS:000002\r\n"
    "J\tPoe, E\tThird\tCELL\t10.5555/wos.3\t2020\tWOS:000003\r\n"
)

# Dimensions: a line of metadata before the header.
DIMENSIONS = (
    '"About the data: Exported on Nov 30, 2026. Criteria: ""altmetrics"" in title and abstract; © 2026 Digital Science."\n'
    '"Rank","Publication ID","DOI","PMID","Title","Source title","PubYear"\n'
    '"1","pub.1000000001","10.5555/dim.1","","T1","J","2020"\n'
    '"2","pub.1000000002","10.5555/dim.2","31452104","T2","J","2021"\n'
)

# An institutional repository: DOIs as doi.org links in a "Link" column, semicolon-separated (a European Excel).
REPOSITORY = "Title;Link;Year\nOne;https://doi.org/10.5555/REPO.1;2020\nTwo;http://dx.doi.org/10.5555/repo.2;2021\nThree;;2022\n"

# One list of several id types, with blank and comment lines: each line's type is its shape.
MIXED = [
    "# our papers, any id we had",
    "10.1038/news.2011.490",
    "PMID: 19057659",
    "",
    "arXiv:1108.2455v2",
    "https://doi.org/10.5555/MIXED.1",
    "978-1-4666-8271-9",
    "hdl:2027/uc1.b3485937",
    "31452104",
    "not an id at all",
    "hep-th/9901001",
]
MIXED_ITEMS = [
    ("doi", "10.1038/news.2011.490", 2),
    ("pmid", "19057659", 3),
    ("arxiv", "1108.2455", 5),
    ("doi", "10.5555/mixed.1", 6),
    ("isbn", "9781466682719", 7),
    ("handle", "2027/uc1.b3485937", 8),
    ("pmid", "31452104", 9),
    ("arxiv", "hep-th/9901001", 11),
]


def _harvest(h: Harness, *args: str) -> Result:
    return h.run("harvest", "--no-progress", *args)


def _items(h: Harness) -> list[tuple[str, str, int]]:
    return [
        (r["id_type"], r["identifier"], r["line_no"])
        for r in rows(h.engine, "select id_type, identifier, line_no from job_items order by line_no")
    ]


def _rejects(h: Harness) -> list[tuple[int, int, str]]:
    return [
        (r["line_no"], r["source_line"], r["reason"])
        for r in rows(h.engine, "select line_no, source_line, reason from job_rejects order by line_no")
    ]


def test_a_zotero_csv_by_its_doi_column(h: Harness, fake: FakeServer) -> None:
    path = h.tmp / "My Library.csv"
    path.write_text(ZOTERO, encoding="utf-8")
    # Without --column: exit 1, no job, the command to type and the columns to choose from.
    result = _harvest(h, str(path))
    assert result.exit_code == ExitCode.ERROR, result.output
    assert result.stderr.strip() == (
        f"Error: {path} looks like a CSV export: use --column DOI (columns: Key, Item Type, Publication Year, Author, "
        "Title, Publication Title, ISBN, ISSN, DOI, Url, Abstract Note)"
    )
    assert rows(h.engine, "select * from jobs") == [] and fake.stats.total == 0
    result = _harvest(h, "--column", "doi", str(path))  # the header is matched case-insensitively
    assert result.exit_code == ExitCode.OK, result.output
    # A record starts on line 2 and spans line 3 (its title holds a line break): the next starts on line 4.
    assert _items(h) == [("doi", "10.1038/news.2011.490", 2), ("doi", "10.5555/zotero.2", 5)]
    assert _rejects(h) == [(4, 4, 'the "DOI" cell is empty')]
    assert rows(h.engine, "select input from job_items order by line_no")[1] == {"input": "10.5555/ZOTERO.2"}


def test_a_scopus_csv_with_a_bom_by_doi_and_by_pubmed_id(h: Harness) -> None:
    path = h.tmp / "scopus.csv"
    path.write_bytes(SCOPUS.encode("utf-8"))
    assert SCOPUS.encode("utf-8").startswith(b"\xef\xbb\xbf")
    result = _harvest(h, "--column", "DOI", str(path))
    assert result.exit_code == ExitCode.OK, result.output
    assert _items(h) == [("doi", "10.5555/scopus.1", 2), ("doi", "10.5555/scopus.2", 3)]
    result = _harvest(h, "--column", "PubMed ID", "--id-type", "pmid", str(path))
    assert result.exit_code == ExitCode.OK, result.output
    assert rows(h.engine, "select id_type, identifier, line_no from job_items where job_id = 2") == [
        {"id_type": "pmid", "identifier": "19057659", "line_no": 2}
    ]
    assert rows(h.engine, "select line_no, reason from job_rejects where job_id = 2") == [
        {"line_no": 3, "reason": 'the "PubMed ID" cell is empty'}
    ]


def test_a_web_of_science_utf16_tab_delimited_export_by_di(h: Harness) -> None:
    path = h.tmp / "savedrecs.txt"
    path.write_bytes(WOS.encode("utf-16"))  # a BOM, then UTF-16 LE
    result = _harvest(h, str(path))
    assert (
        result.exit_code == ExitCode.ERROR
        and "looks like a TSV export: use --column DI (columns: PT, AU, TI, SO, DI, PY, UT)" in result.stderr
    ), result.output
    result = _harvest(h, "--column", "DI", str(path))
    assert result.exit_code == ExitCode.OK, result.output
    assert _items(h) == [("doi", "10.5555/wos.1", 2), ("doi", "10.5555/wos.3", 4)]
    assert _rejects(h) == [(3, 3, 'the "DI" cell is empty')]


def test_a_tsv_by_its_extension_and_a_utf16_be_file_without_a_bom(h: Harness) -> None:
    path = h.tmp / "ids.tsv"
    path.write_bytes("Title\tDOI\nA, B\t10.5555/tsv.1\n".encode("utf-16-be"))
    result = _harvest(h, "--column", "DOI", str(path))
    assert result.exit_code == ExitCode.OK, result.output
    assert _items(h) == [("doi", "10.5555/tsv.1", 2)]


def test_a_dimensions_export_with_metadata_before_the_header(h: Harness) -> None:
    path = h.tmp / "Dimensions-Publication-2026-11-30.csv"
    path.write_text(DIMENSIONS, encoding="utf-8")
    result = _harvest(h, str(path))
    assert (
        result.exit_code == ExitCode.ERROR
        and "use --column DOI (columns: Rank, Publication ID, DOI, PMID, Title, Source title, PubYear)" in result.stderr
    )
    result = _harvest(h, "--column", "DOI", str(path))
    assert result.exit_code == ExitCode.OK, result.output
    assert _items(h) == [("doi", "10.5555/dim.1", 3), ("doi", "10.5555/dim.2", 4)]


def test_a_repository_export_of_doi_links_separated_by_semicolons(h: Harness) -> None:
    path = h.tmp / "repository.csv"
    path.write_text(REPOSITORY, encoding="utf-8")
    result = _harvest(h, str(path))  # no DOI-named column: the column whose values are DOIs is offered
    assert result.exit_code == ExitCode.ERROR and "use --column Link (columns: Title, Link, Year)" in result.stderr, result.output
    result = _harvest(h, "--column", "LINK", str(path))
    assert result.exit_code == ExitCode.OK, result.output
    assert _items(h) == [("doi", "10.5555/repo.1", 2), ("doi", "10.5555/repo.2", 3)]
    assert _rejects(h) == [(4, 4, 'the "Link" cell is empty')]


def test_a_column_that_is_not_there_names_the_columns(h: Harness) -> None:
    path = h.tmp / "scopus.csv"
    path.write_text(SCOPUS, encoding="utf-8")
    result = _harvest(h, "--column", "DI", str(path))
    assert result.exit_code == ExitCode.ERROR
    assert result.stderr.strip() == (
        f'Error: {path}: no column "DI" in its first lines (columns: Authors, Author full names, Title, Year, Source title, DOI, '
        "Link, Abstract, PubMed ID, Document Type, Source, EID)"
    )
    assert rows(h.engine, "select * from jobs") == []


def test_a_utf16_list_is_read(h: Harness) -> None:
    path = h.tmp / "dois.txt"
    path.write_bytes("10.5555/u16.1\r\n\r\n10.5555/u16.2\r\n".encode("utf-16"))  # what Excel's "Unicode text" saves
    result = _harvest(h, str(path))
    assert result.exit_code == ExitCode.OK, result.output
    assert _items(h) == [("doi", "10.5555/u16.1", 1), ("doi", "10.5555/u16.2", 3)]
    path.write_bytes("10.5555/u16.3\n".encode("utf-16-le"))  # no byte order mark
    assert _harvest(h, str(path)).exit_code == ExitCode.OK
    assert ("doi", "10.5555/u16.3", 1) in _items(h)


def test_a_utf8_bom_list_is_read(h: Harness) -> None:
    path = h.tmp / "dois.txt"
    path.write_bytes(b"\xef\xbb\xbf10.5555/bom.1\n10.5555/bom.2\n")
    result = _harvest(h, str(path))
    assert result.exit_code == ExitCode.OK, result.output
    assert _items(h) == [("doi", "10.5555/bom.1", 1), ("doi", "10.5555/bom.2", 2)]


def test_a_latin1_file_is_refused_naming_the_line(h: Harness, fake: FakeServer) -> None:
    path = h.tmp / "export.csv"
    path.write_bytes("Title,DOI\nOne,10.5555/l1.1\nCaf\u00e9 society,10.5555/l1.2\n".encode("latin-1"))
    result = _harvest(h, "--column", "DOI", str(path))
    assert result.exit_code == ExitCode.ERROR, result.output
    assert result.stderr.strip() == (
        f"Error: {path}, line 3: not UTF-8 (byte 0xE9; the file is probably Latin-1 or Windows-1252): "
        "re-save it as UTF-8 (Excel: Save As > CSV UTF-8; or iconv -f WINDOWS-1252 -t UTF-8)"
    )
    assert rows(h.engine, "select * from jobs") == [] and fake.stats.total == 0


def test_rejects_keep_the_line_of_their_file_across_several_sources(h: Harness) -> None:
    a = h.tmp / "a.txt"
    a.write_text("# header comment\n10.5555/a.1\n\nPMID: 19057659\n")
    b = h.tmp / "b.txt"
    b.write_text("\n10.5555/b.1\nbad line\n")
    result = _harvest(h, "--enqueue-only", str(a), str(b))
    assert result.exit_code == ExitCode.OK, result.output
    # source_line is the line of its own file; line_no counts on through the files (4 lines in a.txt).
    assert [
        (r["line_no"], r["source"], r["source_line"], r["reason"]) for r in rows(h.engine, "select * from job_rejects order by line_no")
    ] == [
        (4, str(a), 4, "looks like a PMID, not a DOI: use --id-type pmid, or --id-type auto for a list of several types"),
        (7, str(b), 3, "not a DOI (10.NNNN/suffix)"),
    ]
    assert _items(h) == [("doi", "10.5555/a.1", 2), ("doi", "10.5555/b.1", 6)]


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_mixed_list_harvested_with_auto_end_to_end(h: Harness, fake: FakeServer, database: str, request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{h.db}" if database == "sqlite" else request.getfixturevalue("pg_url")
    path = h.ids(MIXED, "mixed.txt")

    def run(*args: str) -> Result:
        return h.run("--database", url, *args)

    result = run("harvest", "--id-type", "auto", "--name", "mixed", "--enqueue-only", path)
    assert result.exit_code == ExitCode.OK, result.output
    job = int(result.stdout.strip())
    # Claimed, requested by each item's own type, written, and resumed like any job.
    result = run("resume", "--no-progress", "--json", str(job))
    assert result.exit_code == ExitCode.OK, result.output
    assert json.loads(result.stdout)["status"] == "finished"
    from harvester.db import open_database

    engine = open_database(url)
    try:
        got = rows(engine, "select id_type, identifier, line_no, status from job_items order by line_no")
        assert [(r["id_type"], r["identifier"], r["line_no"]) for r in got] == MIXED_ITEMS
        assert {r["status"] for r in got} <= {"done", "not_found"}
        assert rows(engine, "select line_no, reason from job_rejects") == [
            {
                "line_no": 10,
                "reason": "not an id of a known shape (DOI 10.NNNN/suffix, PMID digits, arXiv YYMM.NNNNN, ISBN, handle PREFIX/SUFFIX, ...)",
            }
        ]
        assert rows(engine, "select id_type from jobs") == [{"id_type": "auto"}]
        done = {(r["id_type"], r["identifier"]) for r in got if r["status"] == "done"}
        asked = {(r["scheme"], r["value"]) for r in rows(engine, "select scheme, value from identifiers where asked")}
        assert done and done <= asked
    finally:
        engine.dispose()
    for id_type, identifier, _ in MIXED_ITEMS:
        assert any(p.endswith(f"/{id_type}/{identifier}") for p in fake.stats.per_path), (id_type, identifier)
    assert fake.stats.total == len(MIXED_ITEMS)
    status = run("status", "--json", str(job))
    assert status.exit_code == ExitCode.OK and json.loads(status.stdout)["total_items"] == len(MIXED_ITEMS)
    export = run(
        "export", "--sql", "select scheme, count(*) as n from identifiers where asked group by scheme order by scheme", "--format", "csv"
    )
    assert export.exit_code == ExitCode.OK, export.output
    assert {line.split(",")[0] for line in export.stdout.splitlines()[1:]} >= {"doi", "pmid", "arxiv"}
    # Again: nothing new is requested for ids already done (the job holds every type once).
    again = run("harvest", "--id-type", "auto", "--no-progress", path)
    assert again.exit_code == ExitCode.OK, again.output


def test_auto_detection_of_each_shape(tmp_path: Path) -> None:
    path = tmp_path / "mixed.txt"
    path.write_text(
        "\n".join(
            [*MIXED, "0306406152", "NCT01234567", "2011Natur.480..426V", "pub.1000000001", "https://pubmed.ncbi.nlm.nih.gov/31452104/"]
        )
        + "\n"
    )
    got = [(line.id_type, line.key) for line in read_ids([str(path)], "auto") if line.key]
    assert got[len(MIXED_ITEMS) :] == [
        ("isbn", "9780306406157"),  # ten digits: no PMID has them, a valid ISBN-10 check digit
        ("nct_id", "NCT01234567"),
        ("ads", "2011Natur.480..426V"),
        ("dimensions_publication_id", "pub.1000000001"),
        ("pmid", "31452104"),
    ]


def test_wrong_id_type_reasons_name_the_type_it_looks_like(h: Harness) -> None:
    path = h.ids(["10.1038/news.2011.490", "19057659", "0306406152", "arXiv:1108.2455"], "pmids.txt")
    result = _harvest(h, "--id-type", "pmid", "--enqueue-only", path)
    assert result.exit_code == ExitCode.OK, result.output
    assert [r["reason"] for r in rows(h.engine, "select reason from job_rejects order by line_no")] == [
        "looks like a DOI, not a PMID: use --id-type doi, or --id-type auto for a list of several types",
        "looks like an ISBN, not a PMID: use --id-type isbn, or --id-type auto for a list of several types",
        "looks like an arXiv id, not a PMID: use --id-type arxiv, or --id-type auto for a list of several types",
    ]


def test_the_summary_and_the_dry_run_group_the_rejects_by_reason(h: Harness) -> None:
    # 3 empty cells and 1 PMID in a DOI column: "4 rejected" alone reads as 4 errors.
    lines = ["Title,DOI", "a,", "b,10.5555/a.1", "c,PMID: 19057659", "d,", "e,10.5555/a.2", "f,"]
    path = h.tmp / "export.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    expected = (
        '3 × the "DOI" cell is empty; 1 × looks like a PMID, not a DOI: use --id-type pmid, or --id-type auto for a list of several types'
    )
    plan = h.run("harvest", "--column", "DOI", "--dry-run", str(path))
    assert plan.exit_code == ExitCode.OK, plan.output
    assert f"rejected:                   4  ({expected})" in plan.stdout
    result = _harvest(h, "--column", "DOI", "--enqueue-only", str(path))
    assert result.exit_code == ExitCode.OK, result.output
    assert f"rejected lines are in job_rejects (job_id = 1): {expected}" in result.stderr
