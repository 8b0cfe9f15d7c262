"""Reading id lists: files or stdin, streamed line by line, never whole in memory.

Each line becomes either an id (normalized key + the exact text to store) or a
reject with its reason; the caller records both and the run goes on.
"""

from __future__ import annotations

import csv
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
# No real id of any type comes near this (DOIs run to a few hundred characters): a longer
# "id" is a whole file on one line, never to be sent to the API or stored.
MAX_ID_CHARS = 1000
# A line is read whole up to this many bytes (the UTF-8 of the longest id, with room for a
# label and quotes); past it, the rest of the line is skipped, never held in memory.
_MAX_LINE_BYTES = 4 * MAX_ID_CHARS + 64
_READ_SIZE = 1 << 16
_EOL = re.compile(rb"\r\n|\r|\n")  # universal newlines: a CR-only file (old Mac exports) reads line by line
_SEPARATORS = ("\t", ",", ";")
TOO_LONG = f"longer than {MAX_ID_CHARS:,} characters (no real id is)"
UTF16 = "this file looks UTF-16: save it as UTF-8"


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
    if len(value) > MAX_ID_CHARS:
        raise InvalidId(TOO_LONG)
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


def read_ids(sources: Iterable[str], id_type: str, stdin: BinaryIO | None = None, require_ids: bool = True) -> Iterator[IdLine]:
    """Yield every non-blank, non-comment line of the sources ('-' is stdin), in order.

    With `require_ids`, input of which every line is rejected raises InputError at its end,
    naming the first reject's reason (a CSV export, a UTF-16 file): a job of nothing would
    "succeed", and a nightly fed a broken export would report success. Raised inside the
    caller's loading transaction, so no empty job is left behind.
    """
    if id_type not in ID_TYPES:
        raise InputError(f"unknown id type {id_type!r} (known: {', '.join(ID_TYPES)})")
    line_no = 0
    accepted = 0
    first_reject: IdLine | None = None
    for source in sources:
        table = _Table()
        for source_line, text in _lines(source, stdin):
            line_no += 1
            if text is _TOO_LONG or text is _UTF16:
                reject = IdLine(line_no, source, source_line, "", reason=TOO_LONG if text is _TOO_LONG else UTF16)
            elif text is None:
                reject = IdLine(line_no, source, source_line, "", reason="not valid UTF-8")
            else:
                stripped = text.strip()
                if not stripped or stripped.startswith("#"):
                    line_no -= 1  # blank lines and comments are not counted as ids
                    continue
                csv_reason = table.reason(stripped, id_type)
                try:
                    if csv_reason is not None:
                        raise InvalidId(csv_reason)
                    key, exact = normalize(stripped, id_type)
                except InvalidId as e:
                    reject = IdLine(line_no, source, source_line, stripped[:MAX_ID_CHARS], reason=str(e))
                else:
                    accepted += 1
                    yield IdLine(line_no, source, source_line, stripped, key=key, exact=exact)
                    continue
            first_reject = first_reject or reject
            yield reject
    if require_ids and accepted == 0 and first_reject is not None:
        where = "stdin" if first_reject.source == "-" else first_reject.source
        raise InputError(
            f"no valid {id_type} in the input: all {line_no:,} lines were rejected, nothing to harvest "
            f"(line {first_reject.source_line} of {where}: {first_reject.reason})"
        )


class _Table:
    """Notices a CSV/TSV export given where one id a line is expected, from its first line.

    A header line (cells on a tab, comma or semicolon, itself no id) makes every later line
    that has the separator a row, rejected as such: a quoted row "10.1/x","Title" would
    otherwise pass for the DOI `10.1/x","title`. The reason names the id column when the
    header or the row shows it.
    """

    def __init__(self) -> None:
        self.lines = 0
        self.separator: str | None = None
        self.header: list[str] = []

    def reason(self, line: str, id_type: str) -> str | None:
        self.lines += 1
        if self.lines == 1:
            counts = {sep: line.count(sep) for sep in _SEPARATORS}
            separator = max(_SEPARATORS, key=lambda sep: counts[sep])
            if counts[separator] == 0:
                return None
            try:
                normalize(line, id_type)
                return None  # an id that holds the character: not a header
            except InvalidId:
                pass
            self.separator, self.header = separator, _cells(line, separator)
            return self._reason(self.header, id_type)
        if self.separator is None or self.separator not in line:
            return None
        return self._reason(_cells(line, self.separator), id_type)

    def _reason(self, cells: list[str], id_type: str) -> str:
        kind = "TSV" if self.separator == "\t" else "CSV"
        named = [h for h in self.header if h.strip().lower() == id_type] or [h for h in self.header if id_type in h.strip().lower()]
        column = named[0].strip() if named else None
        if column is None:
            for i, cell in enumerate(cells):
                try:
                    normalize(cell, id_type)
                except InvalidId:
                    continue
                column = self.header[i].strip() if i < len(self.header) and self.header is not cells else f"number {i + 1}"
                break
        where = f' (the {id_type}s are in column "{column}")' if column else ""
        return f"this looks like a {kind} export{where}: give one id a line, e.g. only that column"


def _cells(line: str, separator: str) -> list[str]:
    try:
        return next(csv.reader([line], delimiter=separator))
    except (csv.Error, StopIteration):
        return line.split(separator)


# What _lines yields instead of a line's text when the line cannot be one id.
_TOO_LONG = "\x00too long"
_UTF16 = "\x00utf-16"


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
    """(line number, text): None for a line that is not UTF-8, _TOO_LONG, or _UTF16 for every line of a UTF-16 file."""
    chunks = _chunks(f)
    head = next(chunks, b"")
    utf16 = _looks_utf16(head)
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    number = 0
    for raw, too_long in _raw_lines(_prepend(head, chunks)):
        number += 1
        if utf16:
            yield number, _UTF16
        elif too_long:
            yield number, _TOO_LONG
        else:
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError:
                yield number, None


def _looks_utf16(head: bytes) -> bool:
    """A UTF-16 byte order mark, or ASCII text with a NUL after (or before) every character."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return True
    sample = head[:4096]
    return len(sample) >= 8 and sample.count(0) * 3 >= len(sample)


def _chunks(f: BinaryIO) -> Iterator[bytes]:
    # read1 where there is one: stdin hands over what it has instead of waiting for 64 KB.
    read = getattr(f, "read1", f.read)
    while chunk := read(_READ_SIZE):
        yield chunk


def _prepend(head: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if head:
        yield head
    yield from rest


def _raw_lines(chunks: Iterable[bytes]) -> Iterator[tuple[bytes, bool]]:
    """Lines ending at LF, CRLF or a lone CR, without their ending: (bytes, True if the line was
    longer than _MAX_LINE_BYTES). A longer line keeps only its start; the rest is skipped as it is
    read, so a 10 MB "line" costs one chunk of memory, not ten megabytes several times over."""
    line = bytearray()
    too_long = after_cr = False
    for chunk in chunks:
        pos = 1 if after_cr and chunk[:1] == b"\n" else 0  # a CRLF split between two chunks
        after_cr = False
        while True:
            m = _EOL.search(chunk, pos)
            end = len(chunk) if m is None else m.start()
            if not too_long:
                room = _MAX_LINE_BYTES - len(line)
                line += chunk[pos : min(end, pos + room + 1)]
                if len(line) > _MAX_LINE_BYTES:
                    too_long = True
                    del line[_MAX_LINE_BYTES:]
            if m is None:
                break
            yield bytes(line), too_long
            line.clear()
            too_long = False
            after_cr = m.group() == b"\r" and m.end() == len(chunk)
            pos = m.end()
    if line or too_long:
        yield bytes(line), too_long
