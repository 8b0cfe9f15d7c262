"""Attention that grows from day to day (FakeConfig.evolve), and the bodies as served on a given day."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from harvester.fakeapi.bodies import (
    _by_altmetric_id,
    _counts_bytes,
    _dumps,
    _fetch_bytes,
    _unit,
)

logger = logging.getLogger(__name__)


# ---- attention that grows from day to day (FakeConfig.evolve) ---------------------------------

EVOLVE_EPOCH_DAY = 20454  # 2026-01-01 UTC (unix days): attention grows from here on
# Days back that each history timeframe looks ("at", all time, is the score itself).
_DAYS = {"1d": 1, "2d": 2, "3d": 3, "4d": 4, "5d": 5, "6d": 6, "1w": 7, "1m": 30, "3m": 90, "6m": 180, "1y": 365}


def _growth(altmetric_id: int) -> float:
    """New tweets a day: none for a quarter of outputs, 0-2 for most, 20-200 for a few movers.

    Keyed by the altmetric id (itself fixed by the resolved id), so the Counts, Fetch and
    ``id`` lookups of one output, and the real samples, grow alike.
    """
    u = _unit("growth", str(altmetric_id))
    if u < 0.25:
        return 0.0
    if u < 0.90:
        return (u - 0.25) / 0.65 * 2.0
    if u < 0.97:
        return 2.0 + (u - 0.90) / 0.07 * 18.0
    return 20.0 + (u - 0.97) / 0.03 * 180.0


def _gained(rate: float, day: int) -> int:
    """Twitter posts (and accounts) an output growing at ``rate`` a day has gained by ``day``."""
    return math.floor(rate * max(0, day - EVOLVE_EPOCH_DAY))


def _extra(altmetric_id: int, day: int) -> int:
    return _gained(_growth(altmetric_id), day)


def _grown(score: float, extra: int) -> float:
    # A quarter point a twitter account, as the profiles score them.
    return round(score + 0.25 * extra, 3)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _grown_history(history: dict[str, Any], rate: float, day: int, score: Any) -> dict[str, Any]:
    """A history (counts ``history``, fetch ``score_history``) on ``day``.

    Its values are the score *gained* over each timeframe (so 1d <= 1w <= 1y <= at, and an old
    output shows 0s: see the real samples and docs/schema.md), hence each grows by what the
    output gained between ``day - days(tf)`` and ``day``; ``at`` is the score on ``day``.
    Keys the fake does not know, and values that are not numbers, are passed on as they are.
    """
    extra = _gained(rate, day)
    out: dict[str, Any] = {}
    for tf, v in history.items():
        if tf == "at" and _is_number(score):
            out[tf] = score
        elif tf in _DAYS and _is_number(v):
            out[tf] = _grown(v, extra - _gained(rate, day - _DAYS[tf]))
        else:
            out[tf] = v
    return out


def _evolved(endpoint: str, raw: bytes, day: int) -> bytes:
    """A Counts or Fetch body as it is on ``day``: ``extra`` more twitter posts and accounts,
    a quarter point of score each, with ``extra = floor(rate * (day - EVOLVE_EPOCH_DAY))``.

    Counts: ``cited_by_tweeters_count``, ``cited_by_posts_count`` and ``cited_by_accounts_count``
    grow (added when the base lacks them), and ``score`` and ``history``. Fetch: ``score``,
    ``altmetric_score.score`` and ``.score_history``, ``counts.twitter`` (added when absent) and
    ``counts.total``; the ``posts`` listed do not grow (they stay the base body's), nor do
    context, cohorts, demographics, readers or badge URLs. The real samples grow like synthetic
    bodies. An output that has not moved (yet) is served byte for byte as without evolve.
    """
    if day <= EVOLVE_EPOCH_DAY:
        return raw  # nothing has grown yet: no need to parse
    body = json.loads(raw)
    aid = body.get("altmetric_id")
    if not isinstance(aid, int) or isinstance(aid, bool):
        return raw
    rate = _growth(aid)
    extra = _gained(rate, day)
    if extra <= 0:
        # Also keeps zero counts out of the body, as the real API leaves them out.
        return raw
    if endpoint == "counts":
        for key in ("cited_by_tweeters_count", "cited_by_posts_count", "cited_by_accounts_count"):
            body[key] = (body.get(key) or 0) + extra
        score: Any = body.get("score")
        if _is_number(score):
            score = body["score"] = _grown(score, extra)
        if isinstance(body.get("history"), dict):
            body["history"] = _grown_history(body["history"], rate, day, score)
        return _dumps(body)
    if _is_number(body.get("score")):
        body["score"] = _grown(body["score"], extra)
    counts = body.get("counts")
    if isinstance(counts, dict):
        twitter = counts.setdefault("twitter", {"unique_users_count": 0, "posts_count": 0})
        if isinstance(twitter, dict):
            for key in ("unique_users_count", "posts_count"):
                twitter[key] = (twitter.get(key) or 0) + extra
        total = counts.setdefault("total", {"posts_count": 0})
        if isinstance(total, dict):
            total["posts_count"] = (total.get("posts_count") or 0) + extra
    altmetric_score = body.get("altmetric_score")
    if isinstance(altmetric_score, dict):
        now: Any = altmetric_score.get("score")
        if _is_number(now):
            now = altmetric_score["score"] = _grown(now, extra)
        if isinstance(altmetric_score.get("score_history"), dict):
            altmetric_score["score_history"] = _grown_history(altmetric_score["score_history"], rate, day, now)
    return _dumps(body)


def counts_body(id_type: str, identifier: str, not_found_pct: float = 15.0, day: int | None = None) -> dict[str, Any] | None:
    """The body the fake serves on ``GET /v1/{id_type}/{identifier}``; None means 404.

    Pure and deterministic. Pass the server's ``not_found_pct`` if it is not the default,
    and with ``evolve`` the UTC day number (unix time // 86400) the server's clock is on
    (None: the body of a server without ``evolve``, the same every day). An ``id`` lookup names
    the output given that altmetric id, as the server does (see :func:`_by_altmetric_id`).
    """
    return _served("counts", id_type, identifier, not_found_pct, day)


def fetch_body(id_type: str, identifier: str, not_found_pct: float = 15.0, day: int | None = None) -> dict[str, Any] | None:
    """The unfiltered body the fake serves on ``GET /v1/fetch/{id_type}/{identifier}``; None = 404.

    ``day`` as for :func:`counts_body`. With it, scores and counts grow but the posts listed do
    not: a Fetch body's ``counts`` may then count more twitter posts than its ``posts`` hold.
    """
    return _served("fetch", id_type, identifier, not_found_pct, day)


def _served(endpoint: str, id_type: str, identifier: str, not_found_pct: float, day: int | None) -> dict[str, Any] | None:
    if id_type == "id":
        id_type, identifier = _by_altmetric_id(identifier)
    build = _counts_bytes if endpoint == "counts" else _fetch_bytes  # looked up per call: tests swap them
    raw = build(id_type, identifier, float(not_found_pct))
    if raw is not None and day is not None:
        raw = _evolved(endpoint, raw, day)
    return None if raw is None else json.loads(raw)
