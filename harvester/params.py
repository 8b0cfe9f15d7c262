"""What each kind of job keeps in jobs.params: one frozen dataclass per kind, read and written as JSON.

jobs.params is a JSON column that every version of the harvester has written.
`as_dict()` writes the keys and values the code before these classes wrote
(sorted, as jobs.new_job stores them), so `status --json`, SQL over the column
and databases of either version agree without a migration; `from_dict()` reads
a row of any version, a key an older version did not write taking its default.
A key is left out of the JSON where an older reader tells jobs apart by its
presence (a Counts job without "nightly" or "after_job" is one of the user's lists).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from harvester.config import FetchConfig, NightlyConfig
from harvester.vocabulary import JobKind


def _sorted(d: dict[str, Any]) -> dict[str, Any]:
    """`d` with every dict's keys in order, as json.dumps(sort_keys=True) stored it and json.loads reads it back:
    `status --json` prints a job's params in the order the stored JSON has them."""
    return {k: _sorted_value(d[k]) for k in sorted(d)}


def _sorted_value(value: Any) -> Any:
    if isinstance(value, dict):
        return _sorted(value)
    if isinstance(value, list):
        return [_sorted_value(v) for v in value]
    return value


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


@dataclass(frozen=True)
class FetchOptions:
    """The [fetch] options a Fetch job was created with: they shape its bodies, so a resumed job keeps them."""

    include_sources: tuple[str, ...] = ()
    exclude_sources: tuple[str, ...] = ()
    include_sections: tuple[str, ...] = ()
    post_types: str | None = None

    @classmethod
    def from_config(cls, fetch: FetchConfig) -> FetchOptions:
        return cls(tuple(fetch.include_sources), tuple(fetch.exclude_sources), tuple(fetch.include_sections), fetch.post_types)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> FetchOptions:
        d = d or {}
        return cls(
            tuple(d.get("include_sources") or ()),
            tuple(d.get("exclude_sources") or ()),
            tuple(d.get("include_sections") or ()),
            d.get("post_types"),
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON: lists, not tuples, and every key, as jobs created from [fetch] have always stored them."""
        return _sorted(
            {
                "include_sources": list(self.include_sources),
                "exclude_sources": list(self.exclude_sources),
                "include_sections": list(self.include_sections),
                "post_types": self.post_types,
            }
        )


@dataclass(frozen=True)
class ApiUsed:
    """The API a job's requests went to (its base URL, without credentials or query) and the tier: the data's provenance."""

    url: str
    tier: str | None = None

    @classmethod
    def of(cls, url: str, tier: str | None) -> ApiUsed:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            netloc += f":{parts.port}"
        return cls(urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", "")) if netloc else url.strip(), tier)

    @classmethod
    def read(cls, value: Any) -> tuple[ApiUsed, ...]:
        """The "api" key of any version's JSON: absent (jobs run before it was recorded) is ()."""
        return tuple(cls(str(v["url"]), v.get("tier")) for v in value or () if isinstance(v, dict) and v.get("url"))

    def as_dict(self) -> dict[str, Any]:
        return {"tier": self.tier, "url": self.url}


@dataclass(frozen=True)
class HarvestParams:
    """A Counts or Fetch job's: the user's harvest, a Citations listing's follow-up, or a nightly's refresh."""

    concurrency: int | None = None  # --concurrency of `harvest` (None: the config's), kept for `resume`
    fetch: FetchOptions | None = None  # a Fetch job's options; None for Counts
    nightly: int | None = None  # the nightly this job is the refresh step of
    after_job: int | None = None  # the Citations job whose listing feeds this one
    api: tuple[ApiUsed, ...] = ()  # every API its runs used (jobs.record_api); written only once one has run

    @property
    def own_list(self) -> bool:
        """Whether this is a harvest of the user's own id list: neither a nightly's step nor a listing's follow-up."""
        return self.nightly is None and self.after_job is None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> HarvestParams:
        d = d or {}
        fetch = d.get("fetch")
        return cls(
            concurrency=_int(d.get("concurrency")),
            fetch=FetchOptions.from_dict(fetch) if fetch is not None else None,
            nightly=_int(d.get("nightly")),
            after_job=_int(d.get("after_job")),
            api=ApiUsed.read(d.get("api")),
        )

    def as_dict(self) -> dict[str, Any]:
        # `harvest` has always recorded its concurrency (null: none given); the jobs the nightly and
        # Citations listings create never did.
        out: dict[str, Any] = {"concurrency": self.concurrency} if self.own_list else {}
        if self.fetch is not None:
            out["fetch"] = self.fetch.as_dict()
        if self.nightly is not None:
            out["nightly"] = self.nightly
        if self.after_job is not None:
            out["after_job"] = self.after_job
        if self.api:
            out["api"] = [a.as_dict() for a in self.api]
        return _sorted(out)


@dataclass(frozen=True)
class CitationsParams:
    """A Citations job's query, and the jobs it is linked to."""

    timeframe: str
    num_results: int
    filters: dict[str, str] = field(default_factory=dict)  # the API's query parameters (config.citation_filters)
    pages: int | None = None  # at most this many pages; None: every page the listing's total implies
    then_job: int | None = None  # the follow-up harvest that the listed outputs are added to
    then: str | None = None  # its endpoint
    nightly: int | None = None  # the nightly this job is the discovery step of
    api: tuple[ApiUsed, ...] = ()  # every API its runs used (jobs.record_api)
    # A change-feed listing (changefeed.py): only outputs the database already tracks are stored, and
    # every page's query.total is kept (listing_pages) so the night can tell whether it read the listing whole.
    tracked_only: bool = False

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CitationsParams:
        return cls(
            timeframe=d["timeframe"],
            num_results=int(d["num_results"]),
            filters=dict(d.get("filters") or {}),
            pages=_int(d.get("pages")),
            then_job=_int(d.get("then_job")),
            then=d.get("then"),
            nightly=_int(d.get("nightly")),
            api=ApiUsed.read(d.get("api")),
            tracked_only=bool(d.get("tracked_only", False)),
        )

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"timeframe": self.timeframe, "filters": self.filters, "num_results": self.num_results, "pages": self.pages}
        if self.nightly is not None:
            out["nightly"] = self.nightly
        if self.then_job is not None:
            out |= {"then_job": self.then_job, "then": self.then}
        if self.api:
            out["api"] = [a.as_dict() for a in self.api]
        if self.tracked_only:
            out["tracked_only"] = True
        return _sorted(out)


_N = NightlyConfig  # the defaults a nightly row of an older version did not record


@dataclass(frozen=True)
class NightlyParams:
    """A nightly's settings (nightly.params_for), kept with it so that a nightly resumed tomorrow
    finishes as it began, and its progress through its steps (each set once, in order, by jobs.set_params)."""

    night: date
    discover: bool = True  # whether [api] endpoints allowed a discovery through Citations
    timeframe: str = _N.timeframe
    filters: dict[str, str] = field(default_factory=dict)
    num_results: int = _N.num_results
    pages: int | None = _N.pages
    refresh_after: str = _N.refresh_after
    not_found_refresh_after: str = _N.not_found_refresh_after
    max_items: int | None = _N.max_items
    follow_discovered: str = _N.follow_discovered
    endpoint: str = _N.endpoint  # the refresh's: counts or fetch
    fetch: FetchOptions | None = None  # a Fetch refresh's options
    mode: str = _N.mode  # "refresh" or "changes" ([nightly] mode when the night began)
    full_refresh_after: str = _N.full_refresh_after  # "changes" mode's slow full refresh
    # "changes" mode's progress (changefeed.py): its jobs, window, spent requests, outcome; None until it starts.
    changes: dict[str, Any] | None = None
    # Step 1, the jobs created (together): discovery_job is None when there is no discovery tonight.
    refresh_job: int | None = None
    discovery_job: int | None = None
    discovery_pages: int | None = None  # the pages discovery may list (None: every page; 0: no discovery)
    # Step 2, what is due added to the refresh job (together).
    refresh_selected: bool = False
    refresh_due: dict[str, int] | None = None  # items added per part (nightly.PARTS)
    refresh_quota: int | None = None  # the free tier's quota left then; None on the commercial tier
    # Step 3, the finished nightly's report (nightly.Report.as_dict).
    report: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NightlyParams:
        fetch = d.get("fetch")
        return cls(
            night=date.fromisoformat(d["night"]),
            discover=bool(d.get("discover", True)),
            timeframe=d.get("timeframe", _N.timeframe),
            filters=dict(d.get("filters") or {}),
            num_results=int(d.get("num_results", _N.num_results)),
            pages=_int(d.get("pages", _N.pages)),
            refresh_after=d.get("refresh_after", _N.refresh_after),
            not_found_refresh_after=d.get("not_found_refresh_after", _N.not_found_refresh_after),
            max_items=_int(d.get("max_items", _N.max_items)),
            follow_discovered=d.get("follow_discovered") or _N.follow_discovered,
            endpoint=d.get("endpoint", _N.endpoint),
            fetch=FetchOptions.from_dict(fetch) if fetch else None,
            mode=d.get("mode") or _N.mode,
            full_refresh_after=d.get("full_refresh_after") or _N.full_refresh_after,
            changes=d.get("changes"),
            refresh_job=_int(d.get("refresh_job")),
            discovery_job=_int(d.get("discovery_job")),
            discovery_pages=_int(d.get("discovery_pages")),
            refresh_selected=bool(d.get("refresh_selected", False)),
            refresh_due=d.get("refresh_due"),
            refresh_quota=_int(d.get("refresh_quota")),
            report=d.get("report"),
        )

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "discover": self.discover,
            "night": self.night.isoformat(),
            "timeframe": self.timeframe,
            "filters": self.filters,
            "num_results": self.num_results,
            "pages": self.pages,
            "refresh_after": self.refresh_after,
            "not_found_refresh_after": self.not_found_refresh_after,
            "max_items": self.max_items,
            "follow_discovered": self.follow_discovered,
            "endpoint": self.endpoint,
            "fetch": self.fetch.as_dict() if self.fetch is not None else None,
        }
        # A refresh night's JSON stays what it always was: the change feed's keys appear only where it was asked for.
        if self.mode != "refresh":
            out |= {"mode": self.mode, "full_refresh_after": self.full_refresh_after}
        if self.changes is not None:
            out["changes"] = self.changes
        # The state keys appear as each step records them: until then the JSON has none of them.
        if self.refresh_job is not None:
            out |= {"discovery_job": self.discovery_job, "refresh_job": self.refresh_job, "discovery_pages": self.discovery_pages}
        if self.refresh_selected:
            out |= {"refresh_selected": True, "refresh_due": self.refresh_due, "refresh_quota": self.refresh_quota}
        if self.report is not None:
            out["report"] = self.report
        return _sorted(out)


JobParams = HarvestParams | CitationsParams | NightlyParams


# What each kind of job keeps in jobs.params (a kind not listed keeps HarvestParams).
PARAMS_TYPES: dict[str, type[CitationsParams] | type[NightlyParams]] = {JobKind.CITATIONS: CitationsParams, JobKind.NIGHTLY: NightlyParams}


def for_endpoint(endpoint: str, d: Mapping[str, Any] | None) -> JobParams:
    """A job row's params, typed by its kind (jobs.endpoint)."""
    special = PARAMS_TYPES.get(endpoint)
    return special.from_dict(d or {}) if special is not None else HarvestParams.from_dict(d)
