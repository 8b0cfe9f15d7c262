"""Citations listings: which outputs a timeframe and filters list, page by page, day by day."""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping

from harvester.fakeapi.bodies import (
    _JOURNALS,
    CITATION_FILTERS,
    _digest,
    _is_not_found,
    _profile,
    _unit,
)
from harvester.fakeapi.evolution import _extra, _grown

logger = logging.getLogger(__name__)


# ---- citations ---------------------------------------------------------------------------------


def _listing_names(timeframe: str, filters: tuple[tuple[str, str], ...]) -> tuple[str, str]:
    """(DOI prefix, tag) of the DOIs a Citations query lists: ``{prefix}/cit.{tag}.…``."""
    fkey = "&".join(f"{k}={v}" for k, v in filters)
    prefix = dict(filters).get("doi_prefix") or _JOURNALS[int(_unit("cit-prefix", fkey) * len(_JOURNALS))][4]
    return prefix.lower(), _digest("cit", timeframe, fkey).hex()[:8]


def _existing_doi(stem: str, not_found_pct: float) -> str:
    """``stem``, or ``stem.N`` for the first N that exists: listed outputs are never a 404."""
    doi = stem
    for salt in range(1, 50):
        if not _is_not_found("doi", doi, not_found_pct):
            break
        doi = f"{stem}.{salt}"
    return doi


@functools.lru_cache(maxsize=512)
def _citation_listing(timeframe: str, filters: tuple[tuple[str, str], ...], not_found_pct: float) -> tuple[str, ...]:
    """The DOIs listed for a query, best score first: stable for (timeframe, filters, rank)."""
    fkey = "&".join(f"{k}={v}" for k, v in filters)
    total = 20 + int(_unit("cit-total", timeframe, fkey) * 581)
    prefix, tag = _listing_names(timeframe, filters)
    dois = [_existing_doi(f"{prefix}/cit.{tag}.{rank}", not_found_pct) for rank in range(total)]
    scored = [(_profile("doi", d, d).score, d) for d in dois]
    if dict(filters).get("order_by", "score") == "score":
        scored.sort(key=lambda t: (-t[0], t[1]))
    return tuple(d for _, d in scored)


def _filter_key(filters: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    """The filters of a query as the server keys a listing: CITATION_FILTERS order, empty ones out."""
    given = filters or {}
    return tuple((k, given[k]) for k in CITATION_FILTERS if given.get(k))


def citation_listing(
    timeframe: str,
    filters: Mapping[str, str] | None = None,
    not_found_pct: float = 15.0,
    day: int | None = None,
) -> list[str]:
    """The DOIs ``GET /v1/citations/{timeframe}`` lists, in rank order (all pages).

    ``filters`` as the query sends them (``{"doi_prefix": "10.1038"}``; ``num_results``, ``page``
    and ``key`` are ignored); ``not_found_pct`` the server's; ``day`` the UTC day number of a
    server with ``evolve`` (None: without). ``query.total`` is the length of this list.
    """
    return list(_day_listing(timeframe, _filter_key(filters), float(not_found_pct), day))


@functools.lru_cache(maxsize=512)
def _day_listing(timeframe: str, filters: tuple[tuple[str, str], ...], not_found_pct: float, day: int | None) -> tuple[str, ...]:
    """With ``evolve``, a listing changes daily: each output of the base listing is active on a
    day with probability 0.7, 5-24 new ones appear (their DOIs name the day), and the ranks follow
    that day's scores, so the movers climb. Without (``day`` None), the base listing."""
    base = _citation_listing(timeframe, filters, not_found_pct)
    if day is None:
        return base
    active = [d for d in base if _unit("active", d, str(day)) < 0.7]
    prefix, tag = _listing_names(timeframe, filters)
    new = [_existing_doi(f"{prefix}/cit.{tag}.d{day}.{i}", not_found_pct) for i in range(5 + int(_unit("new", timeframe, str(day)) * 20))]
    listed = active + new
    if dict(filters).get("order_by", "score") != "score":
        return tuple(listed)
    scored = []
    for doi in listed:
        # The score the counts body of `day` has (see _evolved), without building that body.
        p = _profile("doi", doi, doi)
        scored.append((_grown(p.score, _extra(p.altmetric_id, day)), doi))
    scored.sort(key=lambda t: (-t[0], t[1]))
    return tuple(d for _, d in scored)
