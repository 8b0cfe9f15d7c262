"""A faithful fake of the Altmetric Details Page API v1, as an ``aiohttp.web`` application.

It backs the ``mock-api`` and ``demo`` commands and the test suite, which run the real client
against it over loopback. Everything it serves is derived deterministically from the id asked
(a blake2b hash), so a test can compute the expected database contents with :func:`counts_body`
and :func:`fetch_body` without talking to the server. The real sample bodies in
``harvester/data/`` (see ``SOURCES.md`` there) are served verbatim for their own DOIs, so the
quirks of real responses reach the parser through the same HTTP path as synthetic ones.

Behaviour that the harvester must cope with, and which the fake therefore reproduces:

* 401 without a key, 403 (plain text) for an unknown key or an endpoint the key's tier lacks;
* 404 ``Not Found`` for a deterministic share of ids (same answer on counts and fetch);
* rate-limit headers on every response, an enforced token bucket, hourly and daily windows
  (429 with ``Retry-After``);
* seeded faults (5xx, connection resets, truncated JSON, slow answers) that depend only on
  (seed, request path, how many times that path was tried), so retries eventually succeed and
  two runs issuing the same requests see the same faults.
* ``/v1/id/{altmetric_id}`` names the output that was given that id, whichever id it was first
  asked by (the harvester refreshes outputs without a DOI by their altmetric id);
* with ``FakeConfig(prebuild=True)``, ``POST /_fake/prebuild`` builds and encodes the answers
  for a list of ids ahead of time (a benchmark's timed phase then costs the fake a dict lookup
  per request, the same bytes): see :func:`prebuild`;
* with ``FakeConfig(evolve=True)``, attention that grows from day to day (UTC days of the
  config's clock) and Citations listings that change daily, for nightly harvests: see
  :func:`_evolved` and :func:`_day_listing`. Pass the day to :func:`counts_body`,
  :func:`fetch_body` and :func:`citation_listing` to compute what such a server serves.
* with ``FakeConfig(universe=N)``, a universe of N outputs with attention on some days and not
  others, and Citations listings that hold exactly the outputs with attention in their window:
  see docs/fakeapi.md and :class:`Universe` (:func:`universe_dois`, ``truth``, ``attended``).

This module must never be reachable from a default production path: only the CLI's
``mock-api``/``demo`` commands and the tests import it.
"""

from __future__ import annotations

from harvester.fakeapi.bodies import (
    CITATION_TIMEFRAMES,
    HISTORY_TIMEFRAMES,
    SAMPLE_FILES,
    SOURCE_TO_COUNTS_KEY,
    iter_sample_files,
)
from harvester.fakeapi.config import ID_TYPES, UNLIMITED_LIMIT, FakeConfig, ListingFaults, Stats
from harvester.fakeapi.evolution import EVOLVE_EPOCH_DAY, counts_body, fetch_body
from harvester.fakeapi.listings import citation_listing
from harvester.fakeapi.server import (
    FakeServer,
    app_stats,
    clear_prebuilt,
    make_app,
    prebuild,
    run,
    serve_in_thread,
    start,
)
from harvester.fakeapi.universe import Truth, Universe, universe_dois, universe_for, universe_of

__all__ = [
    "CITATION_TIMEFRAMES",
    "EVOLVE_EPOCH_DAY",
    "HISTORY_TIMEFRAMES",
    "ID_TYPES",
    "SAMPLE_FILES",
    "SOURCE_TO_COUNTS_KEY",
    "UNLIMITED_LIMIT",
    "FakeConfig",
    "ListingFaults",
    "FakeServer",
    "Stats",
    "Truth",
    "Universe",
    "app_stats",
    "citation_listing",
    "clear_prebuilt",
    "counts_body",
    "fetch_body",
    "iter_sample_files",
    "make_app",
    "prebuild",
    "run",
    "serve_in_thread",
    "start",
    "universe_dois",
    "universe_for",
    "universe_of",
]
