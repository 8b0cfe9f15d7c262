"""Reading id lists: files or stdin, streamed line by line, never whole in memory.

Each line becomes either an id (normalized key + the exact text to store) or a
reject with its reason; the caller records both and the run goes on.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from stdnum import isbn
from stdnum.exceptions import InvalidChecksum, InvalidComponent, ValidationError

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
# How reference managers, spreadsheets and web pages label a DOI: "doi:", "DOI: ", "DOI "
# (no colon), "info:doi/" (OpenURL), "urn:doi:".
_DOI_LABEL = re.compile(r"(?i)^(?:info:doi/|urn:doi:|doi\s*:\s*|doi\s+)")
# A doi.org link, with or without its scheme; other hosts are not taken apart.
_DOI_LINK = re.compile(r"(?i)^(?:https?://)?(?:www\.|dx\.)?doi\.org/")
_URL = re.compile(r"(?i)^[a-z][a-z0-9+.-]*://")
# Quotes and brackets a DOI is wrapped in; a DOI starts with "10." so none of these is its own.
_WRAP_OPEN = "\"'“”‘’„‚«»‹›<([{"
_QUOTES = "\"'“”‘’„‚«»‹›"
_CLOSING = {")": "(", "]": "[", "}": "{", ">": "<"}
# Unicode hyphens from PDFs (Wiley prints DOIs with U+2010); registration agencies only issue ASCII.
_HYPHENS = str.maketrans({"\u2010": "-", "\u2011": "-"})
_ARXIV_PREFIX = re.compile(r"(?i)^(?:arxiv:\s*|https?://arxiv\.org/(?:abs|pdf)/)")
_ARXIV_NEW = re.compile(r"\d{4}\.\d{4,5}")
_ARXIV_OLD = re.compile(r"[a-zA-Z][a-zA-Z\-]*(?:\.[A-Z]{2})?/\d{7}")
_ARXIV_VERSION = re.compile(r"v\d+$")
_HANDLE_PREFIX = re.compile(r"(?i)^(?:hdl:\s*|https?://hdl\.handle\.net/)")
_HANDLE = re.compile(r"\d+(?:\.\d+)*/\S+")
_PMID_PREFIX = re.compile(r"(?i)^pmid:\s*")
_ISBN_PREFIX = re.compile(r"(?i)^(?:urn:isbn:|isbn(?:-1[03])?:?\s*)")
_ISBN_SEPARATORS = re.compile(r"[\s\-\u2010\u2011\u2012\u2013]")
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
        return _isbn(value)
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
    # Invisible format characters (zero-width spaces, soft hyphens, direction marks) come along
    # when a DOI is copied from a web page; none can be part of a DOI.
    value = "".join(c for c in value if unicodedata.category(c) != "Cf").translate(_HYPHENS)
    while True:  # e.g. “DOI: <https://doi.org/10.1000/x>” peels in three steps
        peeled = _DOI_LABEL.sub("", value.strip().lstrip(_WRAP_OPEN).strip())
        if peeled == value:
            break
        value = peeled
    if _DOI_LINK.match(value):
        value = _doi_from_link(value)
    elif _URL.match(value):
        raise InvalidId("a URL that is not a doi.org link")
    value = _strip_trailing(value)
    if not _DOI.fullmatch(value):
        if re.search(r"\s", value):
            raise InvalidId("a DOI cannot contain whitespace")
        raise InvalidId("not a DOI (10.NNNN/suffix)")
    # DOIs are case-insensitive (the DOI handbook); the API and our tables use lower case.
    return value.lower(), value


def _doi_from_link(link: str) -> str:
    """The DOI of a doi.org link: its path, decoded; a query or fragment is not part of it.

    A DOI's own '?' or '#' is percent-encoded in a link, so a literal one starts a
    tracking query (?utm_source=...) or a fragment. A bare trailing '#' is kept:
    SICI DOIs end in a check character that can be '#', and an empty fragment means nothing.
    """
    if not _URL.match(link):
        link = "https://" + link
    parts = urlsplit(link)
    path = parts.path + ("#" if link.endswith("#") and not parts.query else "")
    return unquote(path[1:])


def _strip_trailing(doi: str) -> str:
    """Drop what a sentence or a list put after a DOI, as Zotero's cleanDOI does.

    Trailing .,;: and quotes go; a closing bracket goes only when the DOI does not
    open it, so 10.1016/S0140-6736(20)30183-5 and SICI DOIs ending in '>' stay whole.
    """
    while doi:
        last = doi[-1]
        if last in ".,;:" or last in _QUOTES:
            doi = doi[:-1]
        elif last in _CLOSING and doi.count(last) > doi.count(_CLOSING[last]):
            doi = doi[:-1]
        else:
            break
    return doi


def _isbn(value: str) -> tuple[str, str]:
    compact = _ISBN_SEPARATORS.sub("", _ISBN_PREFIX.sub("", value)).upper()
    # stdnum would also take 9 digits as an old SBN; in a list that is far more often an
    # ISBN that lost a digit, which its check digit cannot always catch.
    if len(compact) not in (10, 13):
        raise InvalidId("an ISBN has 10 or 13 digits")
    try:
        # stdnum: check digits, the 978/979 prefix, and ISBN-10 -> ISBN-13, so one book is one id.
        key = isbn.validate(compact, convert=True)
    except InvalidChecksum:
        raise InvalidId("not a valid ISBN (wrong check digit)") from None
    except InvalidComponent:
        raise InvalidId("not a valid ISBN (an ISBN-13 starts with 978 or 979)") from None
    except ValidationError:
        raise InvalidId("not a valid ISBN (digits, and X only as an ISBN-10's check digit)") from None
    return key, compact


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
