"""Reading id lists: files or stdin, streamed line by line, never whole in memory.

Each line becomes either an id (normalized key + the exact text to store) or a
reject with its reason; the caller records both and the run goes on. A source is
one id a line, or a CSV/TSV export read with the csv module (`column`); UTF-8 (with
or without a BOM) and UTF-16 (with a BOM, or sniffed) are read, anything else is
an error naming the line. `--id-type auto` decides each id's type by its shape
(`detect`); README.md, "Id files", lists the shapes and what stays ambiguous.
"""

from __future__ import annotations

import codecs
import csv
import os
import re
import sys
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
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
# `--id-type auto`: each id's type from its shape (detect); a job may then hold several types.
AUTO = "auto"
INPUT_ID_TYPES = (*ID_TYPES, AUTO)

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
_PMID_PREFIX = re.compile(r"(?i)^(?:pmid\s*:?\s*|https?://(?:pubmed\.ncbi\.nlm\.nih\.gov|www\.ncbi\.nlm\.nih\.gov/pubmed)/)")
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
# A CSV/TSV row may be long (Scopus exports carry abstracts and references); past this a physical
# line is no export row this tool can read.
_MAX_ROW_BYTES = 1 << 20
# How much of a source is looked at to tell a table from a list and to find a header.
_SAMPLE_LINES = 20
_SAMPLE_BYTES = 1 << 18
_UTF8_BOM = b"\xef\xbb\xbf"
# Shapes of ids that carry no label (detect).
_ADS = re.compile(r"\d{4}[A-Za-z]\S{13}[A-Za-z.:]")  # a 19-character bibcode: 2011Natur.480..426V
_NCT = re.compile(r"(?i)NCT\d{8}")
_DIMENSIONS = re.compile(r"pub\.\d+")
_REPEC = re.compile(r"(?i)^repec:")
_ISBN_SHAPE = re.compile(r"(?:97[89][\s\-]?)?\d[\d\s\-]{7,}[\dXx]")
_LABELS = {
    "doi": "a DOI",
    "pmid": "a PMID",
    "arxiv": "an arXiv id",
    "isbn": "an ISBN",
    "handle": "a handle",
    "id": "an Altmetric id",
    "ads": "an ADS bibcode",
    "ssrn": "an SSRN id",
    "repec": "a RePEc handle",
    "nct_id": "a ClinicalTrials.gov id",
    "urn": "a URN",
    "uri": "a URI",
    "dimensions_publication_id": "a Dimensions publication id",
}
# Guesses too weak to name in a reject's reason: a DOI list's "11.1038/x" is a broken DOI rather
# than a handle, an ISBN list's 9 digits an ISBN that lost a digit rather than a PMID.
_NO_HINT = {("doi", "handle"), ("isbn", "pmid")}


class InvalidId(ValueError):
    """A line that is not a valid id of the requested type; str() is the reason."""


@dataclass(frozen=True, slots=True)
class IdLine:
    """One input id (key, exact, id_type) or a reject (reason), at its line of its file.

    `source_line` is the line of the file (1-based, blank and comment lines counted; for a CSV
    row, the line its record starts on: a quoted field may hold line breaks). `line_no` is the
    same count carried on through the sources, as if they were one file: equal to `source_line`
    for the first (usually the only) source, and unique within a job.
    """

    line_no: int
    source: str
    source_line: int
    text: str
    key: str | None = None  # what duplicates are compared on and the API is asked for
    exact: str | None = None  # the id as given, prefixes stripped
    reason: str | None = None
    id_type: str | None = None  # the id's type (with --id-type auto, its detected type)


def normalize(text: str, id_type: str) -> tuple[str, str]:
    """Return (key, exact) for one id, or raise InvalidId with the reason.

    An id that is not of `id_type` but clearly of another type says so ("looks like a PMID,
    not a DOI"), rather than what the wrong type's rules found wrong with it.
    """
    try:
        return _normalize(text, id_type)
    except InvalidId:
        hint = _hint(text, id_type)
        if hint is None:
            raise
        raise InvalidId(hint) from None


def detect(text: str) -> tuple[str, str, str]:
    """(id_type, key, exact) of one id whose type is decided by its shape (`--id-type auto`)."""
    value = text.strip()
    if not value:
        raise InvalidId("empty")
    if len(value) > MAX_ID_CHARS:
        raise InvalidId(TOO_LONG)
    id_type = _guess(value)
    if id_type is None:
        if _URL.match(value):
            raise InvalidId("a URL that is not a doi.org, arxiv.org, hdl.handle.net or PubMed link")
        raise InvalidId("not an id of a known shape (DOI 10.NNNN/suffix, PMID digits, arXiv YYMM.NNNNN, ISBN, handle PREFIX/SUFFIX, ...)")
    key, exact = _normalize(value, id_type)
    return id_type, key, exact


def _guess(value: str) -> str | None:
    """The id type a value's shape says, or None. The order settles the overlaps (README.md, "Id files")."""
    value = value.strip()
    peeled = "".join(c for c in value if unicodedata.category(c) != "Cf").translate(_HYPHENS).lstrip(_WRAP_OPEN).strip()
    if _DOI_LABEL.match(peeled) or _DOI_LINK.match(peeled) or peeled.startswith("10.") and _DOI.match(peeled):
        return "doi"  # a DOI is a handle with prefix 10.: the more precise type wins
    if _PMID_PREFIX.match(value):
        return "pmid"
    if _ARXIV_PREFIX.match(value):
        return "arxiv"
    if _HANDLE_PREFIX.match(value):
        return "handle"
    if _ISBN_PREFIX.match(value) and not value.isalpha():
        return "isbn"
    if _REPEC.match(value):
        return "repec"
    if _NCT.fullmatch(value):
        return "nct_id"
    if _DIMENSIONS.fullmatch(value):
        return "dimensions_publication_id"
    if value.lower().startswith("urn:"):
        return "urn"
    if _URL.match(value):
        return None
    bare = _ARXIV_VERSION.sub("", value)
    if _ARXIV_NEW.fullmatch(bare) or _ARXIV_OLD.fullmatch(bare):
        return "arxiv"
    if value.isdigit():
        # PMIDs have 8 digits today (9 accepted); 10 and 13 digits are ISBNs (check digit verified by stdnum).
        return "pmid" if len(value) <= 9 else "isbn" if len(value) in (10, 13) else None
    if _ISBN_SHAPE.fullmatch(value) and len(_ISBN_SEPARATORS.sub("", value)) in (10, 13):
        return "isbn"
    if _ADS.fullmatch(value):
        return "ads"
    if _HANDLE.fullmatch(value):
        return "handle"
    return None


def _hint(text: str, id_type: str) -> str | None:
    """'looks like a PMID, not a DOI: ...' when the text is a valid id of another type."""
    value = text.strip()
    if not value or len(value) > MAX_ID_CHARS or _CONTROL.search(value):
        return None
    other = _guess(value)
    labelled = _HANDLE_PREFIX.match(value) or _PMID_PREFIX.match(value)
    if other is None or other == id_type or ((id_type, other) in _NO_HINT and not labelled):
        return None
    try:
        _normalize(value, other)
    except InvalidId:
        return None
    return (
        f"looks like {_LABELS[other]}, not {_LABELS.get(id_type, id_type)}: "
        f"use --id-type {other}, or --id-type auto for a list of several types"
    )


def _normalize(text: str, id_type: str) -> tuple[str, str]:
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
        value = _PMID_PREFIX.sub("", value).rstrip("/")
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
        if value.startswith("10.") and re.search(r"\s", value):
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


def read_ids(
    sources: Iterable[str],
    id_type: str,
    stdin: BinaryIO | None = None,
    require_ids: bool = True,
    column: str | None = None,
) -> Iterator[IdLine]:
    """Yield every id and every reject of the sources ('-' is stdin), in order.

    A source is one id a line (blank lines and `#` comments skipped), or with `column` a CSV/TSV
    export whose column of that name (case-insensitive) holds the ids. A source that looks like
    a CSV/TSV export without `column` is an InputError offering its columns. `id_type` may be
    "auto": each id's type is then decided by its shape.

    With `require_ids`, input of which every line is rejected raises InputError at its end,
    naming the first reject's reason: a job of nothing would "succeed", and a nightly fed a
    broken export would report success. Raised inside the caller's loading transaction, so no
    empty job is left behind (as is every other InputError from here).
    """
    if id_type not in INPUT_ID_TYPES:
        raise InputError(f"unknown id type {id_type!r} (known: {', '.join(INPUT_ID_TYPES)})")
    offset = 0  # physical lines of the sources before this one
    accepted = rejected = 0
    first_reject: IdLine | None = None
    for source in sources:
        reader = _Source(source, stdin, id_type, column)
        for source_line, text in reader:
            line_no = offset + source_line
            if text is _TOO_LONG:
                reject = IdLine(line_no, source, source_line, "", reason=TOO_LONG)
            else:
                try:
                    if id_type == AUTO:
                        kind, key, exact = detect(text)
                    else:
                        kind, (key, exact) = id_type, normalize(text, id_type)
                except InvalidId as e:
                    reason = str(e)
                    if reason == "empty" and column is not None:
                        reason = f'the "{reader.column_name}" cell is empty'
                    reject = IdLine(line_no, source, source_line, text.strip()[:MAX_ID_CHARS], reason=reason)
                else:
                    accepted += 1
                    yield IdLine(line_no, source, source_line, text.strip(), key=key, exact=exact, id_type=kind)
                    continue
            rejected += 1
            first_reject = first_reject or reject
            yield reject
        offset += reader.lines
    if require_ids and accepted == 0 and first_reject is not None:
        where = "stdin" if first_reject.source == "-" else first_reject.source
        what = "id" if id_type == AUTO else id_type
        raise InputError(
            f"no valid {what} in the input: all {rejected:,} lines were rejected, nothing to harvest "
            f"(line {first_reject.source_line} of {where}: {first_reject.reason})"
        )


def describe_rejects(reasons: Sequence[tuple[str, int]], total: int) -> str:
    """The commonest reasons of `total` rejected lines, for a one-line summary: 54 empty cells read
    otherwise as 54 errors. `reasons`: (reason, lines), most lines first; "" when there are none."""
    if not reasons:
        return ""
    shown = "; ".join(f"{n:,} × {reason}" for reason, n in reasons[:REJECT_REASONS_SHOWN])
    rest = total - sum(n for _, n in reasons[:REJECT_REASONS_SHOWN])
    return shown + (f"; {rest:,} more" if rest > 0 else "")


REJECT_REASONS_SHOWN = 3

# What a source yields instead of a line's text when the line cannot be one id.
_TOO_LONG = "\x00too long"


class _Source:
    """One source's candidate ids as (line of the file, text), streamed.

    One id a line, or a CSV/TSV export's column (`column`). The first lines are read ahead
    (at most _SAMPLE_LINES / _SAMPLE_BYTES) to tell a table from a list, find the delimiter and
    the header (which need not be the first line: some Dimensions exports start with a line of
    metadata). `lines` is the number of physical lines read, once the source is exhausted.
    """

    def __init__(self, source: str, stdin: BinaryIO | None, id_type: str, column: str | None) -> None:
        self.source = source
        self.where = "stdin" if source == "-" else source
        self.stdin = stdin
        self.id_type = id_type
        self.column = column
        self.column_name = column or ""
        self.lines = 0
        self.limit = _MAX_ROW_BYTES if column is not None else _MAX_LINE_BYTES

    def __iter__(self) -> Iterator[tuple[int, str]]:
        lines = self._text_lines()
        if self.column is not None:
            yield from self._table(lines, self.column)
            return
        sample: list[str] = []
        for text in lines:
            sample.append(text)
            stripped = text.strip()
            if text is _TOO_LONG or (stripped and not stripped.startswith("#")):
                break
        if sample and sample[-1] is not _TOO_LONG and self._starts_a_table(sample[-1].strip()):
            self.limit = _MAX_ROW_BYTES  # the rows that follow may be long: read them whole
            sample += self._more(lines)
            self._refuse_table(sample)
            self.limit = _MAX_LINE_BYTES
        for number, text in enumerate(chain(sample, lines), 1):
            if text is not _TOO_LONG:
                if len(text) > MAX_ID_CHARS and len(text.encode("utf-8")) > _MAX_LINE_BYTES:
                    text = _TOO_LONG  # a line read ahead under the larger limit
                else:
                    stripped = text.strip()
                    if not stripped or stripped.startswith("#"):
                        continue
            yield number, text

    # -- telling a table from a list -----------------------------------------------------------

    def _starts_a_table(self, first: str) -> bool:
        """The first line of content holds a delimiter and is not itself an id: a header."""
        if not any(sep in first for sep in _SEPARATORS):
            return False
        try:
            if self.id_type == AUTO:
                detect(first)
            else:
                normalize(first, self.id_type)
        except InvalidId:
            return True
        return False  # an id that holds the character (a SICI DOI's ';')

    def _more(self, lines: Iterator[str]) -> list[str]:
        more: list[str] = []
        size = 0
        for text in lines:
            if text is _TOO_LONG:
                raise InputError(f"{self.where}, line {self.lines}: a line longer than {_MAX_ROW_BYTES >> 20} MB")
            more.append(text)
            size += len(text)
            if len(more) >= _SAMPLE_LINES or size >= _SAMPLE_BYTES:
                break
        return more

    def _refuse_table(self, sample: list[str]) -> None:
        """A table given without --column: an error offering its columns, unless most lines lack the delimiter."""
        content = [t for t in sample if t.strip() and not t.strip().startswith("#")]
        delimiter = self._delimiter(content[0])
        rest = content[1:]
        if rest and sum(delimiter in t for t in rest) * 2 < len(rest):
            return  # one odd first line in a list of ids: it is rejected as any bad line is
        rows = _parse(content, delimiter)
        header_at = next((i for i, row in enumerate(rows) if len(row) >= 2), 0)
        header, body = rows[header_at], rows[header_at + 1 :]
        likely = self._likely_column(header, body)
        kind = "TSV" if delimiter == "\t" else "CSV"
        use = f"use --column {_shell_word(likely)}" if likely else "give the column of ids with --column NAME"
        raise InputError(f"{self.where} looks like a {kind} export: {use} (columns: {_column_list(header)})")

    def _likely_column(self, header: list[str], body: list[list[str]]) -> str | None:
        names = [_cell_name(h) for h in header]
        wanted = {
            "doi": ("doi", "di", "doi link", "doi url"),
            "pmid": ("pmid", "pubmed id", "pm", "pubmed"),
            "arxiv": ("arxiv", "arxiv id", "eprint"),
            "isbn": ("isbn", "isbn-13", "isbn13", "isbn-10", "bn"),
            "handle": ("handle", "hdl"),
        }.get(self.id_type, (self.id_type,) if self.id_type != AUTO else ("doi", "di", "pmid", "pubmed id", "arxiv", "isbn"))
        for name in wanted:
            if name in names:
                return header[names.index(name)].strip()
        for i, name in enumerate(header):  # else the first column whose values are ids
            values = [row[i] for row in body if i < len(row) and row[i].strip()]
            if values and all(_is_id(v, self.id_type) for v in values):
                return name.strip()
        return None

    def _delimiter(self, header_line: str) -> str:
        ext = os.path.splitext(self.source.lower())[1]
        if ext in (".tsv", ".tab"):
            return "\t"
        counts = {sep: header_line.count(sep) for sep in _SEPARATORS}
        best = max(_SEPARATORS, key=lambda sep: counts[sep])
        return best if counts[best] else ","

    # -- reading a column ----------------------------------------------------------------------

    def _table(self, lines: Iterator[str], column: str) -> Iterator[tuple[int, str]]:
        sample = self._more(lines)
        found = self._find_header(sample, column)
        if found is None:
            content = [t for t in sample if t.strip()]
            parsed = _parse(content, self._delimiter(content[0])) if content else []
            header = next((row for row in parsed if len(row) >= 2), [])  # past a line of metadata
            listed = f" (columns: {_column_list(header)})" if len(header) > 1 else ""
            raise InputError(f'{self.where}: no column "{column}" in its first lines{listed}')
        delimiter, header_row, index = found
        reader = csv.reader((t + "\n" for t in chain(sample, lines)), delimiter=delimiter)
        seen = 0
        try:
            for n, row in enumerate(reader):
                start, seen = seen + 1, reader.line_num
                if n <= header_row or not any(cell.strip() for cell in row):
                    continue
                yield start, row[index] if index < len(row) else ""
        except csv.Error as e:
            raise InputError(f"{self.where}, line {seen + 1}: not a CSV row this can read ({e})") from None

    def _find_header(self, sample: list[str], column: str) -> tuple[str, int, int] | None:
        """(delimiter, header's record number, column index): the delimiter whose parse finds the column first."""
        want = _cell_name(column)
        preferred = self._delimiter(next((t for t in sample if t.strip()), ""))
        best: tuple[int, int, str, int] | None = None  # (record number, preference, delimiter, index)
        for delimiter in _SEPARATORS:
            for n, row in enumerate(_parse(sample, delimiter, keep_blank=True)):
                names = [_cell_name(c) for c in row]
                if want in names:
                    candidate = (n, 0 if delimiter == preferred else 1, delimiter, names.index(want))
                    best = min(best, candidate) if best else candidate
                    break
        if best is None:
            return None
        self.column_name = _parse(sample, best[2], keep_blank=True)[best[0]][best[3]].strip()
        return best[2], best[0], best[3]

    # -- bytes to lines ------------------------------------------------------------------------

    def _text_lines(self) -> Iterator[str]:
        """The source's lines, decoded; _TOO_LONG for a line past the limit. Counts self.lines."""
        if self.source == "-":
            yield from self._decode(self.stdin if self.stdin is not None else sys.stdin.buffer)
            return
        try:
            f = open(self.source, "rb")
        except OSError as e:
            raise InputError(f"cannot read {self.source}: {e.strerror or e}") from None
        with f:
            if f.read(4).startswith(b"\x1f\x8b"):
                raise InputError(f"{self.source} looks compressed; decompress it first (e.g. zcat {self.source} | harvester harvest -)")
            f.seek(0)
            yield from self._decode(f)

    def _decode(self, f: BinaryIO) -> Iterator[str]:
        chunks = _chunks(f)
        head = b""
        for chunk in chunks:  # enough for a byte order mark, however a pipe hands the bytes over
            head += chunk
            if len(head) >= 4:
                break
        codec = _utf16(head)
        if head.startswith(_UTF8_BOM):
            head = head[len(_UTF8_BOM) :]
        stream = _prepend(head, chunks)
        if codec is not None:
            stream = _transcode(stream, codec, self.where)
        for raw, too_long in _raw_lines(stream, self):
            self.lines += 1
            if too_long:
                yield _TOO_LONG
                continue
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                byte = raw[e.start]
                raise InputError(
                    f"{self.where}, line {self.lines}: not UTF-8 (byte 0x{byte:02X}; the file is probably Latin-1 or Windows-1252): "
                    "re-save it as UTF-8 (Excel: Save As > CSV UTF-8; or iconv -f WINDOWS-1252 -t UTF-8)"
                ) from None


def _parse(lines: list[str], delimiter: str, keep_blank: bool = False) -> list[list[str]]:
    """The records of a few lines (the last may be cut off: it is parsed as far as it goes)."""
    rows: list[list[str]] = []
    try:
        for row in csv.reader((t + "\n" for t in lines), delimiter=delimiter):
            if row or keep_blank:
                rows.append(row)
    except csv.Error:
        pass
    return rows


def _cell_name(cell: str) -> str:
    return cell.strip().strip('"').strip().lower()


def _column_list(header: list[str], limit: int = 400) -> str:
    names = ", ".join(h.strip() for h in header if h.strip())
    return names if len(names) <= limit else names[: limit - 1].rsplit(", ", 1)[0] + ", ..."


def _shell_word(name: str) -> str:
    return name if re.fullmatch(r"[\w.\-]+", name) else '"' + name.replace('"', '\\"') + '"'


def _is_id(value: str, id_type: str) -> bool:
    try:
        detect(value) if id_type == AUTO else normalize(value, id_type)
    except InvalidId:
        return False
    return True


def _utf16(head: bytes) -> str | None:
    """The codec of a UTF-16 file: from its byte order mark, or from the NULs of ASCII text (no BOM)."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"  # the codec reads the mark and drops it
    sample = head[:4096]
    if len(sample) < 8 or sample.count(0) * 3 < len(sample):
        return None
    return "utf-16-le" if sample[1::2].count(0) >= sample[0::2].count(0) else "utf-16-be"


def _transcode(chunks: Iterator[bytes], codec: str, where: str) -> Iterator[bytes]:
    """UTF-16 bytes to UTF-8 bytes, chunk by chunk, so the rest reads one encoding."""
    decoder = codecs.getincrementaldecoder(codec)()
    try:
        for chunk in chunks:
            if text := decoder.decode(chunk):
                yield text.encode("utf-8")
        if text := decoder.decode(b"", final=True):
            yield text.encode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{where} looks UTF-16 but is not valid UTF-16 ({e.reason}): re-save it as UTF-8") from None


def _chunks(f: BinaryIO) -> Iterator[bytes]:
    # read1 where there is one: stdin hands over what it has instead of waiting for 64 KB.
    read = getattr(f, "read1", f.read)
    while chunk := read(_READ_SIZE):
        yield chunk


def _prepend(head: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if head:
        yield head
    yield from rest


def _raw_lines(chunks: Iterable[bytes], cap: _Source) -> Iterator[tuple[bytes, bool]]:
    """Lines ending at LF, CRLF or a lone CR, without their ending: (bytes, True if the line was
    longer than cap.limit bytes). A longer line keeps only its start; the rest is skipped as it is
    read, so a 10 MB "line" costs one chunk of memory, not ten megabytes several times over. The
    limit is read at each line: a source found to be a table reads its long rows whole."""
    line = bytearray()
    too_long = after_cr = False
    for chunk in chunks:
        pos = 1 if after_cr and chunk[:1] == b"\n" else 0  # a CRLF split between two chunks
        after_cr = False
        while True:
            m = _EOL.search(chunk, pos)
            end = len(chunk) if m is None else m.start()
            if not too_long:
                room = cap.limit - len(line)
                line += chunk[pos : min(end, pos + room + 1)]
                if len(line) > cap.limit:
                    too_long = True
                    del line[cap.limit :]
            if m is None:
                break
            yield bytes(line), too_long
            line.clear()
            too_long = False
            after_cr = m.group() == b"\r" and m.end() == len(chunk)
            pos = m.end()
    if line or too_long:
        yield bytes(line), too_long
