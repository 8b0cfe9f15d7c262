"""One object per endpoint: what to ask for an item, how to read the answer, what the job does next.

Counts, Fetch and Citations differ in these places, and only here:

- the request: an id's path (`/doi/10.1/x`, `/fetch/doi/10.1/x`) or a listing's page
  (`/citations/1w?num_results=100&page=3`), with the job's query parameters;
- the body check the run makes before an item counts as done (a JSON object with an
  altmetric_id; a page with a list of results);
- the outcome table's one endpoint-specific row: a Citations page past the end of a
  listing that shrank while we paged is the end of the listing, not a failure;
- the parser, in the writer process (`read`): a body's rows, or a page's results with their
  ranks; and what part of each section a Fetch job's bodies carry (`coverage`);
- what a commit does besides storing rows (`Batch.after`): a Citations page adds the pages its
  total implies and its outputs to the follow-up job, in the page's transaction; so the
  job grows as it is written (`grows`), and a run must wait for its writes before it knows it is done;
- what the raw archive records of a body (`archive_params`, `archived_as`), and how an
  archived body becomes rows again for `reparse` (`from_archive`, `rebuild`);
- its job parameters' type (`params_type`), its own quotas' headers (`quotas`: Fetch's tweet
  ids), and so the CLI's choices: every class here registers itself by its kind (`REGISTRY`).

Adding an endpoint is adding a class here (and its kind to vocabulary.JobKind); nothing else
compares endpoint names.

The run (pipeline.py) asks the endpoint; the writer process (store.write_batch) is given the
same object. Nothing here imports the HTTP client: the writer process does not load aiohttp.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar
from urllib.parse import quote, urlencode

from sqlalchemy import Connection, func, select

from harvester import archive, jobs, schema
from harvester.config import FetchConfig, filters_text
from harvester.db import upsert
from harvester.jobs import Item, Job
from harvester.params import CitationsParams, FetchOptions, HarvestParams, JobParams
from harvester.parse import FETCH_SOURCES, ParseError, Records, as_int, decode, lower_doi, parse_citations, parse_counts, parse_fetch
from harvester.vocabulary import ENDPOINTS, ItemResult, ItemStatus, JobKind, OutcomeKind

# Characters left raw in an id's path segment; everything else is
# percent-encoded, so '#', '?', '%', ';', '<', '>', '[', ']' in DOIs survive.
_SAFE = "/:()"


def id_path(id_type: str, identifier: str, prefix: str = "") -> str:
    """The URL path (already encoded) of one id: `/doi/10.1/x` (Counts), with `prefix` `/fetch` (Fetch)."""
    return f"{prefix}/{id_type}/{quote(identifier, safe=_SAFE)}"


@dataclass(frozen=True)
class Coverage:
    """What a job's Fetch options cut from its bodies, so that replacing a section stays within what was asked.

    `sources`: None when every source is in the bodies, else ("in" or "not in",
    our source names). `posts`: whether a source's posts list is complete
    (False with `post_types`, which leaves retweets out). `totals`: whether the
    body's `counts.total` is the output's (False whenever a filter cut sources or
    posts out: the API then totals only what it sent, and storing that as
    outputs.posts_count would overwrite the output's total with a part of it).
    """

    sources: tuple[str, tuple[str, ...]] | None = None
    posts: bool = True
    totals: bool = True


COMPLETE = Coverage()


def coverage(fetch_options: FetchOptions | None) -> Coverage:
    """A Fetch job's options (Job.fetch) -> the part of each section its bodies carry."""
    options = fetch_options or FetchOptions()
    sources: tuple[str, tuple[str, ...]] | None = None
    if options.include_sources:
        sources = ("in", tuple(FETCH_SOURCES.get(s, s) for s in options.include_sources))
    elif options.exclude_sources:
        sources = ("not in", tuple(FETCH_SOURCES.get(s, s) for s in options.exclude_sources))
    # post_types counts too: whether the API's total then counts the posts it left out is not
    # documented, and a total that may be a part's must not replace the whole's.
    return Coverage(sources, posts=not options.post_types, totals=sources is None and not options.post_types)


def lists_every_post(fetch_options: FetchOptions | None) -> bool:
    """Whether a Fetch job's bodies list every post of their output (no source filter, no post_types, posts not cut out by include_sections)."""
    options = fetch_options or FetchOptions()
    if options.include_sources or options.exclude_sources or options.post_types:
        return False
    sections = options.include_sections
    return not sections or "posts" in sections


def other_doi(id_type: str, identifier: str, body: dict[str, Any]) -> str | None:
    """The DOI a body names when a DOI was asked and the body is another output's (else None):
    the asked DOI is then not an identifier of the output stored."""
    # A citation that is not an object (a poison body) names no DOI, rather than stopping the run.
    citation = body.get("citation")
    returned = lower_doi(body.get("doi") or (citation.get("doi") if isinstance(citation, dict) else None))
    return returned if id_type == "doi" and returned and returned != identifier else None


def asked_rows(id_type: str, identifier: str, altmetric_id: int) -> list[dict[str, Any]]:
    """The asked id as an identifier row of the output it found (an ISBN body may not list the ISBN
    it was found by); an Altmetric id is not an identifier."""
    return [] if id_type == "id" else [{"scheme": id_type, "value": identifier, "altmetric_id": altmetric_id, "asked": True}]


# The writer's way of storing parsed outputs (store.py: aliases followed, as for any batch); given to
# Batch.after rather than imported, since the writer's side imports this module.
StoreRecords = Callable[[Connection, list[Records]], None]


@dataclass
class Batch:
    """What the writer commits of a batch of results, besides their statuses (Endpoint.read).

    `records`: each done result's parsed outputs, by its index in the batch; `altmetric_ids`:
    the output a result is of (a page is of none); `asked`: the identifier rows of the ids
    asked; `after`: what else the commit writes, given the identifiers of the results the
    database refused (and of those whose lease was lost), and the writer's way of storing records
    (StoreRecords: a change-feed listing stores the outputs it finds tracked); it returns how many
    items it added to the batch's own job (a listing's next pages), which the run's counts include.
    """

    records: dict[int, list[Records]] = field(default_factory=dict)
    altmetric_ids: dict[int, int] = field(default_factory=dict)
    asked: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    after: Callable[[Connection, set[str], StoreRecords], int] | None = None


@dataclass(frozen=True)
class Outcome:
    """What one HTTP answer means for its item (docs/architecture.md, HTTP outcomes).

    kind: see OutcomeKind (done, not_found, failed are final).
    """

    kind: OutcomeKind
    error: str | None = None
    note: str | None = None


REGISTRY: dict[JobKind, type[Endpoint]] = {}


class Endpoint:
    """The parts of a harvest that depend on the endpoint; the rest of the run is the same for every one."""

    kind: ClassVar[JobKind]
    grows: ClassVar[bool] = False  # writing a result can add items to the job
    # The endpoint's own quotas, {name: the header that says how much is left}: spent, the job pauses.
    quotas: ClassVar[Mapping[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            REGISTRY[cls.kind] = cls

    @classmethod
    def for_params(cls, params: JobParams | None) -> Endpoint:
        """This endpoint with a job's parameters (a Fetch job's options, a Citations job's query)."""
        return cls()

    by_id: ClassVar[bool] = False  # asked about one id at a time (vocabulary.ID_ENDPOINTS)

    @classmethod
    def harvest_params(cls, fetch: FetchConfig, concurrency: int | None = None) -> HarvestParams:
        """A harvest job's parameters on this endpoint, from the [fetch] settings (only Fetch keeps them)."""
        return HarvestParams(concurrency=concurrency)

    # `harvester check`: the one request that tells whether the key may use this endpoint, and
    # whether its answer also tells whether the key is valid at all (Counts: every tier has it).
    judges_the_key: ClassVar[bool] = False

    @classmethod
    def probe(cls) -> tuple[str, dict[str, str]]:
        """The path and query of the cheapest request for a known output."""
        raise NotImplementedError

    @classmethod
    def from_archive(cls, params: Mapping[str, Any] | None) -> Endpoint:
        """This endpoint as a harvest with these archived parameters (raw_bodies.params) was: for reparse."""
        return cls()

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
                return Outcome(OutcomeKind.RETRY, f"unusable body: {e}")
            returned = other_doi(item.id_type, item.identifier, body)
            if returned:
                return Outcome(OutcomeKind.DONE, note=f"the API returned DOI {returned} for this id")
            return Outcome(OutcomeKind.DONE)
        if status in (401, 403):
            return Outcome(OutcomeKind.AUTH)
        if status == 429:
            return Outcome(OutcomeKind.RATE_LIMITED)
        if status == 404:
            return Outcome(OutcomeKind.NOT_FOUND)
        ended = self.past_the_end(item, status, raw)
        if ended is not None:
            return ended
        if 400 <= status < 500:
            return Outcome(OutcomeKind.FAILED, f"HTTP {status}: {raw.decode('utf-8', 'replace').strip()[:500]}")
        return Outcome(OutcomeKind.RETRY, f"HTTP {status}")

    def past_the_end(self, item: Item, status: int, raw: bytes) -> Outcome | None:
        """An answer that ends the job's listing rather than failing its item (Citations only)."""
        return None

    # -- the writer's side ---------------------------------------------------------------------

    coverage: Coverage = COMPLETE  # the part of each section the bodies carry
    archive_params: str | None = None  # what raw_bodies records of the job's parameters

    def archived_as(self, identifier: str) -> str:
        """The archive's identifier of an item's body."""
        return identifier

    def asked_as(self, archived: str) -> str:
        """The id an archived body was asked by (the inverse of archived_as, for ids; not for Citations pages)."""
        return archived

    def read(self, results: Sequence[ItemResult], now: datetime, job_id: int) -> Batch:
        """Parse the batch's bodies (in the writer process), letting go of each; a body that is
        checked JSON yet unusable fails its item (not transient: asking again gives the same)."""
        raise NotImplementedError

    def rebuild(self, id_type: str, archived: str, body: dict[str, Any], at: datetime) -> tuple[list[Records], list[dict[str, Any]]]:
        """An archived body (decoded) -> its records and its asked-identifier rows, as the writer made them."""
        raise NotImplementedError


# The Altmetric docs' example output: it exists, so Counts and Fetch answer 200 for an allowed key.
PROBE_DOI = "10.1038/news.2011.498"


class Counts(Endpoint):
    kind = JobKind.COUNTS
    path_prefix: ClassVar[str] = ""
    judges_the_key = True
    by_id = True

    @classmethod
    def probe(cls) -> tuple[str, dict[str, str]]:
        return id_path("doi", PROBE_DOI, cls.path_prefix), {}

    def url(self, item: Item) -> str:
        return id_path(item.id_type, item.identifier, self.path_prefix)

    def rebuild(self, id_type: str, archived: str, body: dict[str, Any], at: datetime) -> tuple[list[Records], list[dict[str, Any]]]:
        record = self.parse(body, at)
        asked = self.asked_as(archived)  # a filtered Fetch body is archived with its query
        if other_doi(id_type, asked, body):
            return [record], []
        return [record], asked_rows(id_type, asked, record.altmetric_id)

    def parse(self, body: dict[str, Any], now: datetime) -> Records:
        return parse_counts(body, now)

    def read(self, results: Sequence[ItemResult], now: datetime, job_id: int) -> Batch:
        batch = Batch()
        for i, r in enumerate(results):
            if r.body is None:
                continue
            try:
                rec = self.parse(decode(r.body), now)
            except ParseError as e:
                r.status, r.error = ItemStatus.FAILED, f"unusable body: {e}"
                continue
            finally:
                r.body = None
            batch.records[i] = [rec]
            batch.altmetric_ids[i] = rec.altmetric_id
            # Unless the API answered with another output (classify noted it).
            if r.note is None:
                batch.asked[i] = asked_rows(r.id_type, r.identifier, rec.altmetric_id)
        return batch


class Fetch(Counts):
    kind = JobKind.FETCH
    path_prefix = "/fetch"
    quotas = {"tweet-id": "X-TweetIDRateLimit-Remaining"}  # tweets the bodies carry, a day
    judges_the_key = False

    @classmethod
    def probe(cls) -> tuple[str, dict[str, str]]:
        return id_path("doi", PROBE_DOI, cls.path_prefix), {"include_sections": "counts"}

    @classmethod
    def for_params(cls, params: JobParams | None) -> Fetch:
        return cls(params.fetch if isinstance(params, HarvestParams) else None)

    @classmethod
    def harvest_params(cls, fetch: FetchConfig, concurrency: int | None = None) -> HarvestParams:
        return HarvestParams(concurrency=concurrency, fetch=FetchOptions.from_config(fetch))

    @classmethod
    def from_archive(cls, params: Mapping[str, Any] | None) -> Fetch:
        return cls(FetchOptions.from_dict(params or {}))

    def __init__(self, options: FetchOptions | None = None) -> None:
        # The job's [fetch] options, the same for every id of the job: encoded once.
        query = fetch_query(options)
        self._query = "?" + urlencode(query) if query else ""
        self.coverage = coverage(options)
        self.all_posts = lists_every_post(options)
        # A Fetch body filtered by include_sources or include_sections carries only part of
        # its sections: reparse must replace no more than the harvest did.
        self.archive_params = json.dumps(options.as_dict() if options is not None else {}, sort_keys=True)

    def url(self, item: Item) -> str:
        return super().url(item) + self._query

    def archived_as(self, identifier: str) -> str:
        """A filtered body is archived as the id with the job's query ('10.1/x?include_sources=news'),
        beside the unfiltered one: under one key it replaced the fuller body, and `reparse`
        then rebuilt only the filtered part of every section (issue 17, item 7)."""
        return identifier + self._query

    def asked_as(self, archived: str) -> str:
        # A body archived before filtered ones were kept apart has no query: it is the id as it is.
        if self._query and archived.endswith(self._query):
            return archived[: -len(self._query)]
        return archived

    def parse(self, body: dict[str, Any], now: datetime) -> Records:
        rec = parse_fetch(body, now)
        if self.all_posts:
            rec.outputs["posts_seen_at"] = now
        return rec


class Citations(Endpoint):
    kind = JobKind.CITATIONS
    grows = True

    @classmethod
    def probe(cls) -> tuple[str, dict[str, str]]:
        return "/citations/1d", {"num_results": "1", "page": "1"}

    @classmethod
    def for_params(cls, params: JobParams | None) -> Citations:
        if not isinstance(params, CitationsParams):
            raise ValueError("a Citations job needs its query")
        return cls(params)

    @classmethod
    def from_archive(cls, params: Mapping[str, Any] | None) -> Citations:
        # A page is archived by its query: its results need nothing of the job's to be parsed.
        query = dict(params or {})
        return cls(CitationsParams(str(query.get("timeframe", "")), int(query.get("num_results") or 100), dict(query.get("filters") or {})))

    def __init__(self, params: CitationsParams) -> None:
        self.params = params
        self._path = f"/citations/{quote(params.timeframe, safe='')}"
        self._num_results = str(params.num_results)
        self._filters = dict(params.filters)
        query = {"timeframe": params.timeframe, "num_results": params.num_results, "filters": params.filters}
        self.archive_params = json.dumps(query, sort_keys=True)

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
            return Outcome(OutcomeKind.NOT_FOUND, note=f"past the last page: {raw.decode('utf-8', 'replace').strip()[:200]}")
        return None

    def archived_as(self, identifier: str) -> str:
        """A page is archived as the query that asks for it again."""
        return archive.page_query(self.params, identifier)

    def read(self, results: Sequence[ItemResult], now: datetime, job_id: int) -> Batch:
        pages = _Pages(job_id, self.params, now)
        return Batch(pages.parse(results), after=pages.save)

    def rebuild(self, id_type: str, archived: str, body: dict[str, Any], at: datetime) -> tuple[list[Records], list[dict[str, Any]]]:
        # A page's results, in rank order; a page was asked by no id.
        _, parsed = parse_citations(body, at)
        return [r for r in parsed if r is not None], []


class _Pages:
    """What a batch of Citations pages writes besides outputs: ranks, further pages, follow-up items."""

    def __init__(self, job_id: int, params: CitationsParams, now: datetime) -> None:
        self.job_id = job_id
        self.now = now
        self.timeframe = params.timeframe
        self.filters = filters_text(params.filters)
        self.num = params.num_results
        self.max_pages = params.pages
        self.then_job = params.then_job
        self.activity: list[tuple[str, dict[str, Any]]] = []  # (page, row)
        self.last_page = 0  # the highest page the batch's totals imply
        self.follow: list[tuple[str, tuple[str, str, int]]] = []  # (page, item)
        # A change-feed listing: (page, total, [(rank, record)]) of each page, stored by save() once the
        # database says which results it tracks (save_tracked).
        self.tracked_only = params.tracked_only
        self.listed: list[tuple[int, int | None, list[tuple[int, Records]]]] = []

    def parse(self, results: Sequence[ItemResult]) -> dict[int, list[Records]]:
        records: dict[int, list[Records]] = {}
        for i, r in enumerate(results):
            if r.body is None:
                continue
            page = int(r.identifier)
            try:
                total, parsed = parse_citations(decode(r.body), self.now)
            except ParseError as e:
                r.status, r.error = ItemStatus.FAILED, f"unusable page: {e}"
                continue
            finally:
                r.body = None
            if self.tracked_only:
                self.listed.append((page, total, [((page - 1) * self.num + k + 1, rec) for k, rec in enumerate(parsed) if rec is not None]))
                if total is not None:
                    self.last_page = max(
                        self.last_page,
                        math.ceil(total / self.num) if self.max_pages is None else min(self.max_pages, math.ceil(total / self.num)),
                    )
                continue
            mine = records[i] = []
            for index, rec in enumerate(parsed):
                if rec is None:
                    continue
                rank = (page - 1) * self.num + index + 1
                mine.append(rec)
                self.activity.append(
                    (
                        r.identifier,
                        {
                            "timeframe": self.timeframe,
                            "harvested_on": self.now.date(),
                            "filters": self.filters,
                            "altmetric_id": rec.altmetric_id,
                            "rank": rank,
                            "score": rec.outputs.get("score"),
                            "page": page,
                            "total": total,
                            "job_id": self.job_id,
                            "harvested_at": self.now,
                        },
                    )
                )
                self.follow.append((r.identifier, ("doi", rec.doi, rank) if rec.doi else ("id", str(rec.altmetric_id), rank)))
            skipped = parsed.count(None)
            if skipped:
                r.note = f"{skipped} results without an altmetric_id were skipped"
            if total is not None:
                # Keep paging while page * num_results < query.total. Every page
                # adds the pages its total implies: a listing that grows while we
                # page is followed, and one that shrinks ends in a 404 (not_found).
                last = math.ceil(total / self.num)
                if self.max_pages is not None:
                    last = min(last, self.max_pages)
                self.last_page = max(self.last_page, last)
        return records

    def save(self, conn: Connection, refused: set[str], store: StoreRecords) -> int:
        """Ranks and follow-up items of the pages stored; `refused`: pages the database refused.
        Returns how many pages it added to the job."""
        if self.tracked_only:
            self.save_tracked(conn, [p for p in self.listed if str(p[0]) not in refused], store)
        upsert(conn, schema.citation_activity, [row for page, row in self.activity if page not in refused])
        # Only pages the job lacks: every page of a 20,000-page listing reports the same total.
        known = conn.execute(select(func.max(schema.job_items.c.line_no)).where(schema.job_items.c.job_id == self.job_id)).scalar_one() or 0
        pages = range(known + 1, self.last_page + 1)
        added = jobs.add_items(conn, self.job_id, [("page", str(p), p) for p in pages], self.now)
        if self.then_job is not None:
            jobs.add_items(conn, self.then_job, [item for page, item in self.follow if page not in refused], self.now)
        return added

    def save_tracked(
        self, conn: Connection, pages: Sequence[tuple[int, int | None, list[tuple[int, Records]]]], store: StoreRecords
    ) -> None:
        """Store the listed outputs the database already tracks (by Altmetric id, or by DOI when upstream merged
        records), record their ranks in citation_activity, and every page's query.total in listing_pages.

        Untracked results are only counted: the global listing holds hundreds of thousands of outputs a
        day, and a user's database is for the user's outputs. In the writer's transaction, so a page's
        outputs, its ranks and its total commit together.
        """
        job_id, timeframe, filters, now = self.job_id, self.timeframe, self.filters, self.now
        records = [rec for _, _, results in pages for _, rec in results]
        ids = {rec.altmetric_id for rec in records}
        dois = {rec.doi.lower() for rec in records if rec.doi}
        o, i = schema.outputs.c, schema.identifiers.c
        known_ids = set(conn.execute(select(o.altmetric_id).where(o.altmetric_id.in_(ids))).scalars()) if ids else set()
        known_dois = set(conn.execute(select(i.value).where(i.scheme == "doi", i.value.in_(dois))).scalars()) if dois else set()

        def tracked(rec: Records) -> bool:
            return rec.altmetric_id in known_ids or bool(rec.doi and rec.doi.lower() in known_dois)

        kept: list[Records] = []
        activity: list[dict[str, Any]] = []
        page_rows: list[dict[str, Any]] = []
        for page, total, results in pages:
            mine = [(rank, rec) for rank, rec in results if tracked(rec)]
            page_rows.append(
                {"job_id": job_id, "page": page, "total": total, "results": len(results), "tracked": len(mine), "harvested_at": now}
            )
            for rank, rec in mine:
                kept.append(rec)
                activity.append(
                    {
                        "timeframe": timeframe,
                        "harvested_on": now.date(),
                        "filters": filters,
                        "altmetric_id": rec.altmetric_id,
                        "rank": rank,
                        "score": rec.outputs.get("score"),
                        "page": page,
                        "total": total,
                        "job_id": job_id,
                        "harvested_at": now,
                    }
                )
        store(conn, kept)  # before their ranks: citation_activity refers to outputs
        upsert(conn, schema.citation_activity, activity)
        upsert(conn, schema.listing_pages, page_rows)


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


def by_kind(kind: str) -> type[Endpoint]:
    """The endpoint class of a kind (an endpoint's name); ValueError for a kind that is no endpoint."""
    if kind not in ENDPOINTS:
        raise ValueError(f"no endpoint {kind!r}: one of {', '.join(ENDPOINTS)}")
    return REGISTRY[JobKind(kind)]


def endpoint_for(job: Job) -> Endpoint:
    """The endpoint object of a job, with the job's parameters."""
    endpoint = REGISTRY.get(JobKind(job.endpoint)) if job.endpoint in ENDPOINTS else None
    if endpoint is None:
        raise ValueError(f"job {job.id} is a {job.endpoint} job: no endpoint of the run's")
    return endpoint.for_params(job.params)


def named(name: str, params: JobParams | None = None) -> Endpoint:
    """The endpoint object of this name, with a job's parameters (a Fetch job's options, a Citations job's query)."""
    if name not in ENDPOINTS:
        raise ValueError(f"no endpoint {name!r}: one of {', '.join(ENDPOINTS)}")
    return REGISTRY[JobKind(name)].for_params(params)
