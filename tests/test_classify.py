"""The HTTP outcome table (docs/architecture.md), as the pure method of each endpoint that the workers call."""

from __future__ import annotations

import pytest

from harvester.endpoints import Citations, Counts, Endpoint, Fetch, Outcome
from harvester.jobs import Item
from harvester.params import CitationsParams, FetchOptions

DOI = Item("doi", "10.1038/480426a", 1)
PAGE_2 = Item("page", "2", 0)
ENDPOINTS: dict[str, Endpoint] = {"counts": Counts(), "fetch": Fetch(), "citations": Citations(CitationsParams("1w", 100))}


def classify(endpoint: str, item: Item, status: int, body: bytes) -> Outcome:
    return ENDPOINTS[endpoint].classify(item, status, body)


COUNTS = b'{"altmetric_id": 502878, "doi": "10.1038/480426a"}'


@pytest.mark.parametrize(
    ("endpoint", "item", "status", "body", "kind", "error"),
    [
        ("counts", DOI, 200, COUNTS, "done", None),
        ("counts", DOI, 200, b'{"title": "no id"}', "retry", "unusable body: the body has no altmetric_id"),
        ("counts", DOI, 200, b'{"altmetric_id": 1', "retry", "unusable body"),
        ("counts", DOI, 200, b"<html>maintenance</html>", "retry", "unusable body"),
        ("citations", PAGE_2, 200, b'{"query": {}}', "retry", "unusable body: the page has no list of results"),
        ("counts", DOI, 404, b"Not Found", "not_found", None),
        ("counts", DOI, 401, b"", "auth", None),
        ("fetch", DOI, 403, b"Forbidden", "auth", None),
        ("counts", DOI, 429, b"", "rate_limited", None),
        ("counts", DOI, 400, b"Bad request\n", "failed", "HTTP 400: Bad request"),
        ("counts", DOI, 410, b"Gone", "failed", "HTTP 410: Gone"),
        ("citations", PAGE_2, 400, b"page out of range", "not_found", None),
        ("citations", Item("page", "1", 0), 400, b"bad filter", "failed", "HTTP 400: bad filter"),
        ("counts", DOI, 500, b"", "retry", "HTTP 500"),
        ("counts", DOI, 502, b"<html>", "retry", "HTTP 502"),
    ],
)
def test_each_answer_has_one_meaning(endpoint: str, item: Item, status: int, body: bytes, kind: str, error: str | None) -> None:
    outcome = classify(endpoint, item, status, body)
    assert outcome.kind == kind
    if error is None:
        assert outcome.error is None
    else:
        assert outcome.error is not None and outcome.error.startswith(error)


def test_a_different_doi_than_asked_is_stored_and_noted() -> None:
    outcome = classify("counts", DOI, 200, b'{"altmetric_id": 7, "doi": "10.9999/OTHER"}')
    assert outcome.kind == "done"
    assert outcome.note == "the API returned DOI 10.9999/other for this id"
    assert classify("counts", DOI, 200, COUNTS).note is None


def test_past_the_last_page_says_so() -> None:
    outcome = classify("citations", PAGE_2, 400, b"page out of range")
    assert outcome.note == "past the last page: page out of range"


def test_each_endpoint_asks_for_its_own_url() -> None:
    assert Counts().url(Item("doi", "10.1038/480426a", 1)) == "/doi/10.1038/480426a"
    assert Fetch(FetchOptions(include_sources=("news", "blogs"))).url(DOI) == "/fetch/doi/10.1038/480426a?include_sources=news%2Cblogs"
    page = Citations(CitationsParams("1w", 100, {"doi_prefix": "10.1038"})).url(PAGE_2)
    assert page == "/citations/1w?num_results=100&page=2&doi_prefix=10.1038"
    # An id is one path segment's worth of text: a space or a hash must not end the path.
    assert Counts().url(Item("isbn", "978 0 #1", 1)) == "/isbn/978%200%20%231"
