"""Id lists: prefixes, BOM, CRLF, case, duplicates, rejects, every id type."""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import pytest
from click.testing import Result
from sqlalchemy import Engine

from harvester.errors import InputError
from harvester.fakeapi import FakeServer
from harvester.ids import InvalidId, normalize, read_ids
from harvester.jobs import create_job
from harvester.vocabulary import ExitCode
from tests.conftest import Harness, rows


@pytest.mark.parametrize(
    ("text", "key", "exact"),
    [
        ("10.1038/news.2011.490", "10.1038/news.2011.490", "10.1038/news.2011.490"),
        ("  doi:10.1038/ABC  ", "10.1038/abc", "10.1038/ABC"),
        ("DOI: 10.1038/abc", "10.1038/abc", "10.1038/abc"),
        ("https://doi.org/10.1038/abc", "10.1038/abc", "10.1038/abc"),
        ("http://dx.doi.org/10.1038/abc", "10.1038/abc", "10.1038/abc"),
        ("https://doi.org/10.1000/a%23b", "10.1000/a#b", "10.1000/a#b"),  # links are percent-encoded
        ("10.1000/a%23b", "10.1000/a%23b", "10.1000/a%23b"),  # a bare DOI is literal: it may hold '%'
        (
            "10.1002/(SICI)1097-4571(199806)49:8<693::AID-ASI4>3.0.CO;2-0",
            "10.1002/(sici)1097-4571(199806)49:8<693::aid-asi4>3.0.co;2-0",
            "10.1002/(SICI)1097-4571(199806)49:8<693::AID-ASI4>3.0.CO;2-0",
        ),
        ("10.1000/x#y?z[1];<2>", "10.1000/x#y?z[1];<2>", "10.1000/x#y?z[1];<2>"),
    ],
)
def test_doi_forms(text: str, key: str, exact: str) -> None:
    assert normalize(text, "doi") == (key, exact)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("not a doi", "not a DOI"),
        ("10.1038/a b", "whitespace"),
        ("11.1038/abc", "not a DOI"),
        ("10.1038", "not a DOI"),
        ("https://example.org/10.1038/abc", "not a doi.org link"),
        ("10.1038/a\tb", "control"),
        # An id of another type says so (issue 20, item 7), rather than what a DOI's rules found.
        ("PMID: 19057659", "looks like a PMID, not a DOI: use --id-type pmid, or --id-type auto"),
        ("19057659", "looks like a PMID"),
        ("arXiv:1108.2455v2", "looks like an arXiv id"),
        ("978-0-306-40615-7", "looks like an ISBN"),
        ("hdl:2027/uc1.b3485937", "looks like a handle"),
    ],
)
def test_bad_dois(text: str, reason: str) -> None:
    with pytest.raises(InvalidId, match=reason):
        normalize(text, "doi")


@pytest.mark.parametrize(
    ("id_type", "text", "key"),
    [
        ("pmid", "21148220", "21148220"),
        ("pmid", "PMID: 21148220", "21148220"),
        ("arxiv", "arXiv:1108.2455v2", "1108.2455"),
        ("arxiv", "https://arxiv.org/abs/2301.01234v1", "2301.01234"),
        ("arxiv", "math.AG/0211159", "math.AG/0211159"),
        ("isbn", "978-1-4666-8271-9", "9781466682719"),
        ("isbn", "0-306-40615-2", "9780306406157"),  # ISBN-10s become the same book's ISBN-13
        ("isbn", "ISBN 0-8044-2957-x", "9780804429573"),
        ("isbn", "979-10-90636-07-1", "9791090636071"),
        ("handle", "hdl:10013/epic.43071", "10013/epic.43071"),
        ("handle", "https://hdl.handle.net/2027/uc1.b3485937", "2027/uc1.b3485937"),
        ("id", "241939", "241939"),
        ("ads", "2011Natur.480..426V", "2011Natur.480..426V"),
    ],
)
def test_other_id_types(id_type: str, text: str, key: str) -> None:
    assert normalize(text, id_type)[0] == key


@pytest.mark.parametrize(
    ("id_type", "text"),
    [
        ("pmid", "12ab"),
        ("arxiv", "1108.24"),
        ("isbn", "978-1-4666-8271-0"),
        ("isbn", "030640615"),  # 9 digits: an old SBN, or an ISBN that lost a digit
        ("isbn", "977-0-306-40615-2"),  # an EAN-13, not a book
        ("handle", "nohandle"),
        ("id", "x1"),
    ],
)
def test_other_id_types_rejected(id_type: str, text: str) -> None:
    with pytest.raises(InvalidId):
        normalize(text, id_type)


# One DOI in every form a reference manager, a spreadsheet or a web page writes it (issue 10).
ONE_DOI_FORMS = [
    "10.1000/xyz",
    "doi:10.1000/xyz",
    "DOI: 10.1000/xyz",
    "DOI 10.1000/xyz",
    "doi 10.1000/xyz",
    "info:doi/10.1000/xyz",
    "urn:doi:10.1000/xyz",
    "https://doi.org/10.1000/xyz",
    "http://dx.doi.org/10.1000/xyz",
    "doi.org/10.1000/xyz",
    "www.doi.org/10.1000/xyz",
    "dx.doi.org/10.1000/xyz",
    "https://www.doi.org/10.1000/XYZ",
    "https://doi.org/10.1000%2Fxyz",
    "https://doi.org/10.1000/xyz?utm_source=twitter&utm_medium=social",
    "https://doi.org/10.1000/xyz#abstract",
    "\u201c10.1000/xyz\u201d",
    "\u201810.1000/xyz\u2019",
    '"10.1000/xyz"',
    "<10.1000/xyz>",
    "<https://doi.org/10.1000/xyz>",
    "(10.1000/xyz)",
    "10.1000/xyz.",
    "10.1000/xyz,",
    "10.1000/xyz;",
    "10.1000/xyz:",
    "10.1000/xyz)",
    "10.1000/xyz].",
    "(doi:10.1000/xyz).",
    "DOI: https://doi.org/10.1000/xyz.",
    "\u200b10.1000/xyz\u00ad",  # invisible characters copied from a web page
]


@pytest.mark.parametrize("text", ONE_DOI_FORMS)
def test_every_common_doi_form_is_the_one_doi(text: str) -> None:
    assert normalize(text, "doi")[0] == "10.1000/xyz"


@pytest.mark.parametrize(
    ("text", "exact"),
    [
        # Balanced brackets are the DOI's own, at the end too (Lancet, SICI DOIs).
        ("10.1016/S0140-6736(20)30183-5", "10.1016/S0140-6736(20)30183-5"),
        ("10.1016/S0140-6736(20)30183-5).", "10.1016/S0140-6736(20)30183-5"),
        ("https://doi.org/10.1016/S0140-6736(20)30183-5", "10.1016/S0140-6736(20)30183-5"),
        ("10.1002/(SICI)1097-4571(199806)49:8<693::AID-ASI4>3.0.CO;2-0", "10.1002/(SICI)1097-4571(199806)49:8<693::AID-ASI4>3.0.CO;2-0"),
        ("10.1000/a(b)", "10.1000/a(b)"),
        ("10.1000/a[b]", "10.1000/a[b]"),
        ("10.1000/x#y?z[1];<2>", "10.1000/x#y?z[1];<2>"),
        # A SICI check character can be '#'; in a link an empty fragment is no fragment.
        (
            "10.1002/(SICI)1097-0177(200006)218:2<235::AID-DVDY2>3.0.CO;2-#",
            "10.1002/(SICI)1097-0177(200006)218:2<235::AID-DVDY2>3.0.CO;2-#",
        ),
        (
            "https://doi.org/10.1002/(SICI)1097-0177(200006)218:2<235::AID-DVDY2>3.0.CO;2-#",
            "10.1002/(SICI)1097-0177(200006)218:2<235::AID-DVDY2>3.0.CO;2-#",
        ),
        ("https://doi.org/10.1000/a%3Fb%23c", "10.1000/a?b#c"),  # an encoded '?' or '#' is the DOI's
        ("10.1111/j.1365\u20102648.2010.05312.x", "10.1111/j.1365-2648.2010.05312.x"),  # U+2010 from a PDF
    ],
)
def test_trailing_characters_that_belong_to_the_doi_are_kept(text: str, exact: str) -> None:
    assert normalize(text, "doi") == (exact.lower(), exact)


def test_a_list_of_one_doi_in_every_form_gives_one_id(tmp_path: Path) -> None:
    f = tmp_path / "ids.txt"
    f.write_text("\n".join(ONE_DOI_FORMS) + "\n", encoding="utf-8")
    lines = list(read_ids([str(f)], "doi"))
    assert [line.reason for line in lines if line.reason] == []
    assert {line.key for line in lines} == {"10.1000/xyz"}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("doi", "not a DOI"),
        ("doi: pending", "not a DOI"),
        ("DOI 10.1000", "not a DOI"),
        ("https://www.nature.com/articles/nature12373", "not a doi.org link"),
        ("ftp://doi.example/10.1000/xyz", "not a doi.org link"),
        ("https://doi.org/", "not a DOI"),
        ("https://doi.org/?utm_source=x", "not a DOI"),
        ("10.1000/xyz and more", "whitespace"),
        ("\u201c\u201d", "not a DOI"),
        ("(", "not a DOI"),
    ],
)
def test_non_dois_are_still_rejected(text: str, reason: str) -> None:
    with pytest.raises(InvalidId, match=reason):
        normalize(text, "doi")


def test_a_books_isbn_10_and_isbn_13_are_one_id(tmp_path: Path) -> None:
    f = tmp_path / "isbns.txt"
    f.write_text("0-306-40615-2\n0306406152\n978-0-306-40615-7\n9780306406157\nISBN 978 0 306 40615 7\nurn:isbn:0306406152\n")
    lines = list(read_ids([str(f)], "isbn"))
    assert [line.reason for line in lines if line.reason] == []
    assert {line.key for line in lines} == {"9780306406157"}


def test_create_job_gives_one_item_for_one_doi_in_every_form(engine: Engine, tmp_path: Path) -> None:
    f = tmp_path / "ids.txt"
    f.write_text("\n".join([*ONE_DOI_FORMS, "not a doi at all"]) + "\n", encoding="utf-8")
    job = create_job(engine, [str(f)], "doi", "counts")
    assert (job.total_items, job.duplicate_lines, job.rejected_lines) == (1, len(ONE_DOI_FORMS) - 1, 1)
    assert rows(engine, "select identifier, input from job_items") == [{"identifier": "10.1000/xyz", "input": "10.1000/xyz"}]
    assert rows(engine, "select line, reason from job_rejects") == [{"line": "not a doi at all", "reason": "not a DOI (10.NNNN/suffix)"}]


def test_create_job_gives_one_item_for_a_books_isbns(engine: Engine, tmp_path: Path) -> None:
    f = tmp_path / "isbns.txt"
    f.write_text("0-306-40615-2\n978-0-306-40615-7\n9780306406157\n0306406152\n978-0-306-40615-8\n")
    job = create_job(engine, [str(f)], "isbn", "counts")
    assert (job.total_items, job.duplicate_lines, job.rejected_lines) == (1, 3, 1)
    assert rows(engine, "select identifier, input from job_items") == [{"identifier": "9780306406157", "input": "0306406152"}]
    assert rows(engine, "select reason from job_rejects") == [{"reason": "not a valid ISBN (wrong check digit)"}]


def test_read_ids_bom_crlf_blank_comments_and_real_line_numbers(tmp_path: Path) -> None:
    f = tmp_path / "ids.txt"
    f.write_bytes(b"\xef\xbb\xbf10.1038/one\r\n\r\n# a comment\r\n10.1038/two\r\nnope\n")
    lines = list(read_ids([str(f)], "doi"))
    # line_no is the file's own line number: blank and comment lines are counted (issue 20).
    assert [(line.line_no, line.source_line, line.key, line.reason) for line in lines] == [
        (1, 1, "10.1038/one", None),
        (4, 4, "10.1038/two", None),
        (5, 5, None, "not a DOI (10.NNNN/suffix)"),
    ]


def test_bytes_that_are_not_utf8_are_an_error_naming_the_line(tmp_path: Path) -> None:
    f = tmp_path / "ids.txt"
    f.write_bytes(b"10.1038/one\r\n\r\nbad \xff line\r\n")
    with pytest.raises(InputError, match=r"ids.txt, line 3: not UTF-8 \(byte 0xFF.*re-save it as UTF-8"):
        list(read_ids([str(f)], "doi"))


def test_read_ids_streams_from_stdin() -> None:
    stdin = io.BytesIO(b"10.1/a\n10.1000/b\n")
    lines = read_ids(["-"], "doi", stdin)
    first = next(lines)  # a generator: nothing read ahead of what is asked
    assert first.reason is not None  # 10.1 has too short a registrant code
    assert next(lines).key == "10.1000/b"


def test_missing_and_compressed_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        list(read_ids([str(tmp_path / "nope.txt")], "doi"))
    gz = tmp_path / "ids.txt.gz"
    gz.write_bytes(b"\x1f\x8b\x08\x00rest")
    with pytest.raises(InputError, match="compressed"):
        list(read_ids([str(gz)], "doi"))


def test_create_job_collapses_duplicates_and_records_rejects(engine: Engine, tmp_path: Path) -> None:
    a = tmp_path / "a.txt"
    a.write_text("10.1038/ABC\ndoi:10.1038/abc\nhttps://doi.org/10.1038/Abc\ngarbage\n10.1000/x#y\n")
    b = tmp_path / "b.txt"
    b.write_text("10.1000/X#Y\n\n10.5555/other\n")
    job = create_job(engine, [str(a), str(b)], "doi", "counts")
    assert (job.total_items, job.duplicate_lines, job.rejected_lines) == (3, 3, 1)
    items = rows(engine, "select identifier, input, line_no, status from job_items order by line_no")
    # line_no counts on through the sources as if they were one file: b.txt's line 3 is line 5 + 3.
    assert items == [
        {"identifier": "10.1038/abc", "input": "10.1038/ABC", "line_no": 1, "status": "pending"},
        {"identifier": "10.1000/x#y", "input": "10.1000/x#y", "line_no": 5, "status": "pending"},
        {"identifier": "10.5555/other", "input": "10.5555/other", "line_no": 8, "status": "pending"},
    ]
    assert rows(engine, "select line_no, source, source_line, line, reason from job_rejects") == [
        {"line_no": 4, "source": str(a), "source_line": 4, "line": "garbage", "reason": "not a DOI (10.NNNN/suffix)"}
    ]


# -- input that yields no id (issue 17, item 14): through the CLI, against the fake API ---------


def _harvest_file(h: Harness, path: Path, *options: str) -> Result:
    return h.run("harvest", "--no-progress", *options, str(path))


def test_a_csv_export_exits_1_naming_csv_and_the_doi_column_and_creates_no_job(h: Harness, fake: FakeServer) -> None:
    path = h.tmp / "export.csv"
    path.write_text('Title,DOI,Year\n"A paper, with a comma",10.1038/news.2011.490,2011\n"Another",10.1038/abc,2012\n')
    for options in ((), ("--enqueue-only",), ("--json",)):
        result = _harvest_file(h, path, *options)
        assert result.exit_code == ExitCode.ERROR, result.output
        assert result.stdout == ""  # no job id, no outcome: there is no job
        [line] = result.stderr.splitlines()
        assert line == f"Error: {path} looks like a CSV export: use --column DOI (columns: Title, DOI, Year)", line
    assert rows(h.engine, "select * from jobs") == []
    assert fake.stats.total == 0


def test_a_quoted_csv_row_is_not_taken_for_a_doi(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    path.write_text('"doi","title"\n"10.1038/abc","x"\n')
    with pytest.raises(InputError, match="looks like a CSV export: use --column doi"):
        list(read_ids([str(path)], "doi", require_ids=False))
    assert [(line.line_no, line.key) for line in read_ids([str(path)], "doi", column="DOI")] == [(2, "10.1038/abc")]


def test_one_odd_first_line_with_a_comma_does_not_make_a_list_a_table(tmp_path: Path) -> None:
    path = tmp_path / "dois.txt"
    path.write_text("Smith, J. et al.\n10.1038/a\n10.1038/b\n10.1038/c\n")
    lines = list(read_ids([str(path)], "doi"))
    assert [(line.line_no, line.key) for line in lines] == [(1, None), (2, "10.1038/a"), (3, "10.1038/b"), (4, "10.1038/c")]


def test_a_cr_only_file_is_read_line_by_line(h: Harness) -> None:
    path = h.tmp / "dois.txt"
    path.write_bytes(b"10.5555/cr.1\r10.5555/cr.2\r\r10.5555/cr.3\r\n10.5555/cr.4")
    result = _harvest_file(h, path)
    assert result.exit_code == ExitCode.OK, result.output
    items = rows(h.engine, "select identifier, line_no from job_items order by line_no")
    assert [(r["identifier"], r["line_no"]) for r in items] == [
        ("10.5555/cr.1", 1),
        ("10.5555/cr.2", 2),
        ("10.5555/cr.3", 4),
        ("10.5555/cr.4", 5),
    ]


def test_a_10_mb_line_is_rejected_unsent_and_unstored(h: Harness, fake: FakeServer) -> None:
    path = h.tmp / "dois.txt"
    with path.open("wb") as f:
        f.write(b"10.5555/ok.1\n10.5555/" + b"x" * 10_000_000 + b"\n10.5555/ok.2\n")
    result = _harvest_file(h, path)
    assert result.exit_code == ExitCode.OK, result.output
    assert sorted(h.items()) == ["10.5555/ok.1", "10.5555/ok.2"]
    [reject] = rows(h.engine, "select line_no, reason, length(line) as n from job_rejects")
    assert reject == {"line_no": 2, "reason": "longer than 1,000 characters (no real id is)", "n": 0}
    assert fake.stats.total == 2 and all(len(p) < 100 for p in fake.stats.per_path)
    assert h.db.stat().st_size < 2_000_000
    # Alone in a file, it is input that yields no id: exit 1.
    path.write_bytes(b"10.5555/" + b"y" * 10_000_000)
    result = _harvest_file(h, path)
    assert result.exit_code == ExitCode.ERROR and "longer than 1,000 characters" in result.stderr


def test_reading_a_10_mb_line_holds_a_chunk_not_the_line(tmp_path: Path) -> None:
    path = tmp_path / "dois.txt"
    path.write_bytes(b"10.5555/" + b"x" * 10_000_000 + b"\r10.5555/ok\n")
    tracemalloc.start()
    try:
        lines = list(read_ids([str(path)], "doi"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [line.reason for line in lines] == ["longer than 1,000 characters (no real id is)", None]
    assert peak < 1_000_000, peak


def test_ids_longer_than_any_real_id_are_rejected() -> None:
    with pytest.raises(InvalidId, match="longer than 1,000"):
        normalize("10.5555/" + "x" * 1000, "doi")
    assert normalize("10.5555/" + "x" * 900, "doi")[0].startswith("10.5555/")
