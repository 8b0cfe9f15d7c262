"""Typed job params: the JSON they write is the JSON jobs.params has always held, and rows of older versions still read."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from datetime import date
from typing import Any

import pytest
from sqlalchemy import Engine, select

from harvester import clock, jobs, schema
from harvester.config import Config, FetchConfig
from harvester.nightly import params_for
from harvester.params import CitationsParams, FetchOptions, HarvestParams, NightlyParams, for_endpoint

FETCH = {"exclude_sources": [], "include_sections": ["counts", "posts"], "include_sources": ["news"], "post_types": None}
NIGHTLY = {
    "discover": True,
    "endpoint": "counts",
    "fetch": None,
    "filters": {"doi_prefix": "10.1038"},
    "follow_discovered": "30d",
    "max_items": None,
    "night": "2026-11-24",
    "not_found_refresh_after": "30d",
    "num_results": 100,
    "pages": 3,
    "refresh_after": "20h",
    "timeframe": "1d",
}

# Each as the code before harvester.params wrote it (json.dumps(sort_keys=True) of these dicts).
STORED = [
    ("counts", {"concurrency": None}),  # `harvest`
    ("fetch", {"concurrency": 8, "fetch": FETCH}),  # `harvest --endpoint fetch --concurrency 8`
    ("counts", {"nightly": 4}),  # a nightly's refresh
    ("fetch", {"fetch": FETCH, "nightly": 4}),
    ("fetch", {"after_job": 2, "fetch": FETCH}),  # `citations --then fetch`
    ("counts", {"after_job": 6, "nightly": 4}),
    ("citations", {"filters": {}, "num_results": 100, "pages": 1, "timeframe": "1w"}),
    (
        "citations",
        {"filters": {"doi_prefix": "10.1038"}, "num_results": 99, "pages": None, "then": "fetch", "then_job": 3, "timeframe": "1d"},
    ),
    ("citations", {"filters": {}, "nightly": 4, "num_results": 100, "pages": 3, "timeframe": "1d"}),
    ("nightly", NIGHTLY),
    ("nightly", NIGHTLY | {"discovery_job": None, "discovery_pages": 0, "refresh_job": 5}),
    (
        "nightly",
        NIGHTLY
        | {
            "discovery_job": 5,
            "discovery_pages": None,
            "refresh_job": 6,
            "refresh_selected": True,
            "refresh_due": {"discovered": 2, "lists": 1, "not_found": 0},
            "refresh_quota": None,
        },
    ),
    (
        "nightly",
        NIGHTLY | {"discovery_job": 5, "discovery_pages": 3, "refresh_job": 6, "report": {"exit_code": 0, "movers": [{"rank": 1}]}},
    ),
]


@pytest.mark.parametrize(("endpoint", "stored"), STORED)
def test_as_dict_writes_the_json_jobs_params_held(endpoint: str, stored: dict[str, Any]) -> None:
    params = for_endpoint(endpoint, json.loads(json.dumps(stored, sort_keys=True)))
    assert json.dumps(params.as_dict(), sort_keys=True) == json.dumps(stored, sort_keys=True)
    # Unsorted too: `status --json` prints the dict as it comes.
    assert json.dumps(params.as_dict()) == json.dumps(stored, sort_keys=True)
    assert pickle.loads(pickle.dumps(params)) == params  # the writer process receives them pickled


def test_rows_of_older_versions_take_defaults() -> None:
    old = {k: v for k, v in NIGHTLY.items() if k not in ("discover", "follow_discovered", "max_items")} | {
        "discovery_job": 1,
        "refresh_job": 2,
    }
    p = NightlyParams.from_dict(old)
    assert (p.discover, p.follow_discovered, p.max_items, p.discovery_pages, p.refresh_selected) == (True, "30d", None, None, False)
    assert p.night == date(2026, 11, 24) and p.refresh_job == 2
    assert HarvestParams.from_dict(None) == HarvestParams() == HarvestParams.from_dict({})
    assert FetchOptions.from_dict({"include_sources": ["news"]}) == FetchOptions(include_sources=("news",))


def test_params_for_writes_the_nightly_settings() -> None:
    config = Config(fetch=FetchConfig(include_sources=("news",)))
    p = params_for(replace(config, nightly=replace(config.nightly, endpoint="fetch")), clock.utcnow())
    assert p.fetch == FetchOptions(include_sources=("news",))
    assert p.as_dict()["fetch"] == {"exclude_sources": [], "include_sections": [], "include_sources": ["news"], "post_types": None}
    assert params_for(config, clock.utcnow()).as_dict()["fetch"] is None


def test_jobs_are_typed_by_endpoint_and_set_params_returns_the_new_params(engine: Engine) -> None:
    with engine.begin() as conn:
        nightly_id = jobs.new_job(conn, "nightly", "-", None, NightlyParams.from_dict(NIGHTLY))
        citations_id, follow_id = jobs.create_citations_job(
            conn, "1d", {}, 100, 3, "fetch", "n", nightly_id, then_params=HarvestParams(fetch=FetchOptions.from_dict(FETCH))
        )
        assert follow_id is not None  # with `then`, a follow-up job
        changed = jobs.set_params(conn, nightly_id, discovery_job=citations_id, refresh_job=follow_id, discovery_pages=3)
    assert isinstance(changed, NightlyParams) and changed.refresh_job == follow_id
    assert jobs.get_job(engine, nightly_id).params == changed
    assert jobs.get_job(engine, citations_id).params == CitationsParams("1d", 100, {}, 3, follow_id, "fetch", nightly_id)
    follow = jobs.get_job(engine, follow_id)
    assert follow.params == HarvestParams(fetch=FetchOptions.from_dict(FETCH), nightly=nightly_id, after_job=citations_id)
    assert isinstance(follow.params, HarvestParams) and follow.params.fetch == FetchOptions.from_dict(FETCH)
    assert [j.id for j in jobs.chain(engine, follow)] == [citations_id, follow_id]
    with engine.connect() as conn:
        stored = conn.execute(select(schema.jobs.c.params).where(schema.jobs.c.id == follow_id)).scalar_one()
    assert stored == json.dumps({"after_job": citations_id, "fetch": FETCH, "nightly": nightly_id}, sort_keys=True)
