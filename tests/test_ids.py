"""Id lists: prefixes, BOM, CRLF, case, duplicates, rejects, every id type."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from sqlalchemy import Engine

from harvester.errors import InputError
from harvester.ids import InvalidId, normalize, read_ids
from harvester.jobs import create_job
from tests.conftest import rows


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
        ("10.1002/(SICI)1097-4571(199806)49:8<693::AID-ASI4>3.0.CO;2-0", "10.1002/(sici)1097-4571(199806)49:8<693::aid-asi4>3.0.co;2-0", "10.1002/(SICI)1097-4571(199806)49:8<693::AID-ASI4>3.0.CO;2-0"),
        ("10.1000/x#y?z[1];<2>", "10.1000/x#y?z[1];<2>", "10.1000/x#y?z[1];<2>"),
    ],
)
def test_doi_forms(text: str, key: str, exact: str) -> None:
    assert normalize(text, "doi") == (key, exact)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("not a doi", "whitespace"),
        ("11.1038/abc", "not a DOI"),
        ("10.1038", "not a DOI"),
        ("https://example.org/10.1038/abc", "not a doi.org link"),
        ("10.1038/a\tb", "control"),
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
        ("isbn", "0-306-40615-2", "0306406152"),
        ("isbn", "ISBN 0-8044-2957-x", "080442957X"),
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
    [("pmid", "12ab"), ("arxiv", "1108.24"), ("isbn", "978-1-4666-8271-0"), ("handle", "nohandle"), ("id", "x1")],
)
def test_other_id_types_rejected(id_type: str, text: str) -> None:
    with pytest.raises(InvalidId):
        normalize(text, id_type)


def test_read_ids_bom_crlf_blank_comments_and_bad_bytes(tmp_path: Path) -> None:
    f = tmp_path / "ids.txt"
    f.write_bytes(b"\xef\xbb\xbf10.1038/one\r\n\r\n# a comment\r\n10.1038/two\r\nbad \xff line\r\nnope\n")
    lines = list(read_ids([str(f)], "doi"))
    assert [(l.line_no, l.source_line, l.key, l.reason) for l in lines] == [
        (1, 1, "10.1038/one", None),
        (2, 4, "10.1038/two", None),
        (3, 5, None, "not valid UTF-8"),
        (4, 6, None, "not a DOI (10.NNNN/suffix)"),
    ]


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
    assert items == [
        {"identifier": "10.1038/abc", "input": "10.1038/ABC", "line_no": 1, "status": "pending"},
        {"identifier": "10.1000/x#y", "input": "10.1000/x#y", "line_no": 5, "status": "pending"},
        {"identifier": "10.5555/other", "input": "10.5555/other", "line_no": 7, "status": "pending"},
    ]
    assert rows(engine, "select line_no, source, source_line, line, reason from job_rejects") == [
        {"line_no": 4, "source": str(a), "source_line": 4, "line": "garbage", "reason": "not a DOI (10.NNNN/suffix)"}
    ]
