"""One object per endpoint: what to ask for an item, how to read the answer, what the job does next.

On the run's side, Counts, Fetch and Citations differ in four places, and only here:

- the request: an id's path (`/doi/10.1/x`, `/fetch/doi/10.1/x`) or a listing's page
  (`/citations/1w?num_results=100&page=3`), with the job's query parameters;
- the body check the run makes before an item counts as done (a JSON object with an
  altmetric_id; a page with a list of results);
- the outcome table's one endpoint-specific row: a Citations page past the end of a
  listing that shrank while we paged is the end of the listing, not a failure;
- whether the job grows as it is written: each Citations page adds the pages its
  total implies, so a run must wait for its writes before it knows it is done.

The run (pipeline.py) asks the endpoint. The writer process (store.py) parses the bodies with
parse.py by the endpoint's name: it never imports the HTTP side this module brings along.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote, urlencode

from harvester.client import id_path
from harvester.jobs import Item, Job
from harvester.params import CitationsParams, FetchOptions
from harvester.parse import ParseError, as_int, decode, lower_doi


@dataclass(frozen=True)
class Outcome:
    """What one HTTP answer means for its item (docs/architecture.md, HTTP outcomes).

    kind: done, not_found, failed (final); retry (counts as an attempt); rate_limited
    (waits, never an attempt); auth (stops the job).
    """

    kind: str
    error: str | None = None
    note: str | None = None


class Endpoint:
    """The parts of a harvest that depend on the endpoint; the rest of the run is the same for all three."""

    name: ClassVar[str]
    grows: ClassVar[bool] = False  # writing a result can add items to the job

    def url(self, item: Item) -> str:
        """The item's path and query, encoded, relative to the API root (the key is the client's to add)."""
        raise NotImplementedError

    def check(self, raw: bytes) -> dict[str, Any]:
        """Decode a 200's body and check that it is what the endpoint sends (else ParseError: retried)."""
        body = decode(raw)
        if as_int(body.get("altmetric_id")) is None:
            raise ParseError("the body has no altmetric_id")
        return body

    def classify(self, item: Item, status: int, raw: bytes) -> Outcome:
        """The HTTP outcome table, as a pure function of the answer."""
        if status == 200:
            try:
                body = self.check(raw)
            except ParseError as e:
                return Outcome("retry", f"unusable body: {e}")
            returned = lower_doi(body.get("doi") or (body.get("citation") or {}).get("doi"))
            if item.id_type == "doi" and returned and returned != item.identifier:
                return Outcome("done", note=f"the API returned DOI {returned} for this id")
            return Outcome("done")
        if status in (401, 403):
            return Outcome("auth")
        if status == 429:
            return Outcome("rate_limited")
        if status == 404:
            return Outcome("not_found")
        ended = self.past_the_end(item, status, raw)
        if ended is not None:
            return ended
        if 400 <= status < 500:
            return Outcome("failed", f"HTTP {status}: {raw.decode('utf-8', 'replace').strip()[:500]}")
        return Outcome("retry", f"HTTP {status}")

    def past_the_end(self, item: Item, status: int, raw: bytes) -> Outcome | None:
        """An answer that ends the job's listing rather than failing its item (Citations only)."""
        return None


class Counts(Endpoint):
    name = "counts"

    def url(self, item: Item) -> str:
        return id_path(self.name, item.id_type, item.identifier)


class Fetch(Counts):
    name = "fetch"

    def __init__(self, query: dict[str, str] | None = None) -> None:
        # The job's [fetch] options, the same for every id of the job: encoded once.
        self._query = "?" + urlencode(query) if query else ""

    def url(self, item: Item) -> str:
        return super().url(item) + self._query


class Citations(Endpoint):
    name = "citations"
    grows = True

    def __init__(self, timeframe: str, num_results: int, filters: dict[str, str] | None = None) -> None:
        self._path = f"/citations/{quote(timeframe, safe='')}"
        self._num_results = str(num_results)
        self._filters = dict(filters or {})

    def url(self, item: Item) -> str:
        query = {"num_results": self._num_results, "page": item.identifier} | self._filters
        return f"{self._path}?{urlencode(query)}"

    def check(self, raw: bytes) -> dict[str, Any]:
        body = decode(raw)
        if not isinstance(body.get("results"), list):
            raise ParseError("the page has no list of results")
        return body

    def past_the_end(self, item: Item, status: int, raw: bytes) -> Outcome | None:
        if item.identifier != "1" and status == 400:
            # Past the last page (the listing shrank while we paged): the end, not a failure.
            return Outcome("not_found", note=f"past the last page: {raw.decode('utf-8', 'replace').strip()[:200]}")
        return None


def fetch_query(options: FetchOptions | None) -> dict[str, str]:
    """A Fetch job's options -> the endpoint's query parameters."""
    if options is None:
        return {}
    lists = {
        "include_sources": options.include_sources,
        "exclude_sources": options.exclude_sources,
        "include_sections": options.include_sections,
    }
    query = {name: ",".join(values) for name, values in lists.items() if values}
    if options.post_types:
        query["post_types"] = options.post_types
    return query


ENDPOINTS = ("counts", "fetch", "citations")


def endpoint_for(job: Job) -> Endpoint:
    """The endpoint object of a job, with the job's query parameters."""
    if isinstance(job.params, CitationsParams):
        return Citations(job.params.timeframe, job.params.num_results, job.params.filters)
    if job.endpoint == "fetch":
        return Fetch(fetch_query(job.fetch))
    if job.endpoint == "counts":
        return Counts()
    raise ValueError(f"job {job.id} is a {job.endpoint} job: no endpoint of the run's")
