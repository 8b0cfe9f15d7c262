"""Reading id lists: files or stdin, streamed line by line, never whole in memory.

Each line becomes either an id (normalized key + the exact text to store) or a
reject with its reason; the caller records both and the run goes on.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import unquote

from harvester.errors import InputError

# The API's id types, as they appear in its URL paths.
ID_TYPES = (
    "doi",
    "pmid",
    "arxiv",
    "isbn",
    "handle",
    "id",
    "ads",
    "ssrn",
    "repec",
    "nct_id",
    "urn",
    "uri",
    "dimensions_publication_id",
)

_DOI = re.compile(r"10\.\d{3,9}(?:\.\d+)*/\S+")
_DOI_PREFIX = re.compile(r"(?i)^(?:doi:\s*|https?://(?:dx\.)?doi\.org/)")
_DOI_URL = re.compile(r"(?i)^https?://")
_ARXIV_PREFIX = re.compile(r"(?i)^(?:arxiv:\s*|https?://arxiv\.org/(?:abs|pdf)/)")
_ARXIV_NEW = re.compile(r"\d{4}\.\d{4,5}")
_ARXIV_OLD = re.compile(r"[a-zA-Z][a-zA-Z\-]*(?:\.[A-Z]{2})?/\d{7}")
_ARXIV_VERSION = re.compile(r"v\d+$")
_HANDLE_PREFIX = re.compile(r"(?i)^(?:hdl:\s*|https?://hdl\.handle\.net/)")
_HANDLE = re.compile(r"\d+(?:\.\d+)*/\S+")
_PMID_PREFIX = re.compile(r"(?i)^pmid:\s*")
_ISBN_PREFIX = re.compile(r"(?i)^isbn(?:-1[03])?:?\s*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class InvalidId(ValueError):
    """A line that is not a valid id of the requested type; str() is the reason."""


@dataclass(frozen=True, slots=True)
class IdLine:
    """One non-blank input line: an id (key, exact) or a reject (reason)."""

    line_no: int  # counted across all sources
    source: str
    source_line: int
    text: str
    key: str | None = None  # what duplicates are compared on and the API is asked for
    exact: str | None = None  # the id as given, prefixes stripped
    reason: str | None = None


def normalize(text: str, id_type: str) -> tuple[str, str]:
    """Return (key, exact) for one id, or raise InvalidId with the reason."""
    value = text.strip()
    if not value:
        raise InvalidId("empty")
    if _CONTROL.search(value):
        raise InvalidId("contains control characters")
    if id_type == "doi":
        return _doi(value)
    if id_type == "pmid":
        value = _PMID_PREFIX.sub("", value)
        if not value.isdigit() or len(value) > 9:
            raise InvalidId("a PMID is 1 to 9 digits")
        return value, value
    if id_type == "arxiv":
        value = _ARXIV_VERSION.sub("", _ARXIV_PREFIX.sub("", value))
        if not (_ARXIV_NEW.fullmatch(value) or _ARXIV_OLD.fullmatch(value)):
            raise InvalidId("not an arXiv id (YYMM.NNNNN or archive/NNNNNNN)")
        return value, value
    if id_type == "isbn":
        value = re.sub(r"[\s-]", "", _ISBN_PREFIX.sub("", value)).upper()
        if not _isbn_ok(value):
            raise InvalidId("not a valid ISBN-10 or ISBN-13 (length or check digit)")
        return value, value
    if id_type == "handle":
        value = _HANDLE_PREFIX.sub("", value)
        if not _HANDLE.fullmatch(value):
            raise InvalidId("a handle looks like PREFIX/SUFFIX")
        return value, value
    if id_type == "id":
        if not value.isdigit():
            raise InvalidId("an Altmetric id is digits only")
        return value, value
    if id_type not in ID_TYPES:
        raise InvalidId(f"unknown id type {id_type}")
    if re.search(r"\s", value):
        raise InvalidId("contains whitespace")
    return value, value


def _doi(value: str) -> tuple[str, str]:
    if _DOI_URL.match(value) and not _DOI_PREFIX.match(value):
        raise InvalidId("a URL that is not a doi.org link")
    stripped = _DOI_PREFIX.sub("", value)
    if stripped != value and _DOI_URL.match(value):
        # doi.org links are percent-encoded; bare DOIs are taken literally (a DOI may hold '%').
        stripped = unquote(stripped)
    if not _DOI.fullmatch(stripped):
        if re.search(r"\s", stripped):
            raise InvalidId("a DOI cannot contain whitespace")
        raise InvalidId("not a DOI (10.NNNN/suffix)")
    # DOIs are case-insensitive (the DOI handbook); the API and our tables use lower case.
    return stripped.lower(), stripped


def _isbn_ok(value: str) -> bool:
    if len(value) == 10 and value[:9].isdigit() and (value[9].isdigit() or value[9] == "X"):
        total = sum((10 - i) * int(c) for i, c in enumerate(value[:9]))
        total += 10 if value[9] == "X" else int(value[9])
        return total % 11 == 0
    if len(value) == 13 and value.isdigit():
        total = sum(int(c) * (1 if i % 2 == 0 else 3) for i, c in enumerate(value))
        return total % 10 == 0
    return False


def read_ids(sources: Iterable[str], id_type: str, stdin: BinaryIO | None = None) -> Iterator[IdLine]:
    """Yield every non-blank, non-comment line of the sources ('-' is stdin), in order."""
    if id_type not in ID_TYPES:
        raise InputError(f"unknown id type {id_type!r} (known: {', '.join(ID_TYPES)})")
    line_no = 0
    for source in sources:
        for source_line, text in _lines(source, stdin):
            line_no += 1
            if text is None:
                yield IdLine(line_no, source, source_line, "", reason="not valid UTF-8")
                continue
            stripped = text.strip()
            if not stripped or stripped.startswith("#"):
                line_no -= 1  # blank lines and comments are not counted as ids
                continue
            try:
                key, exact = normalize(stripped, id_type)
            except InvalidId as e:
                yield IdLine(line_no, source, source_line, stripped, reason=str(e))
            else:
                yield IdLine(line_no, source, source_line, stripped, key=key, exact=exact)


def _lines(source: str, stdin: BinaryIO | None) -> Iterator[tuple[int, str | None]]:
    """Decode lines one at a time, so one bad byte costs one line, not the file."""
    if source == "-":
        yield from _decode(stdin if stdin is not None else sys.stdin.buffer)
        return
    try:
        f = open(source, "rb")
    except OSError as e:
        raise InputError(f"cannot read {source}: {e.strerror or e}") from None
    with f:
        if f.read(4).startswith(b"\x1f\x8b"):
            raise InputError(f"{source} looks compressed; decompress it first (e.g. zcat {source} | harvester harvest -)")
        f.seek(0)
        yield from _decode(f)


def _decode(f: BinaryIO) -> Iterator[tuple[int, str | None]]:
    for number, raw in enumerate(f, start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            yield number, raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            yield number, None
