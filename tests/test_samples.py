"""Every counts-shaped sample in harvester/data (the real API bodies) lands with the right values.

The expected values are typed in from the sample files by hand, not computed
by the code under test.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import Engine, select

from harvester import schema
from harvester.clock import utcnow
from harvester.parse import parse_counts
from harvester.store import save_records
from tests.conftest import SAMPLES, rows, sample

NOW = datetime(2026, 11, 24, 12, 0, 0)


def store(engine: Engine, body: dict[str, Any]) -> int:
    records = parse_counts(body, NOW)
    with engine.begin() as conn:
        save_records(conn, [records])
    return records.altmetric_id


def output(engine: Engine, altmetric_id: int) -> dict[str, Any]:
    # Through the Table, so that booleans and datetimes come back typed.
    with engine.connect() as conn:
        [row] = conn.execute(select(schema.outputs).where(schema.outputs.c.altmetric_id == altmetric_id)).all()
    return dict(row._mapping)


def pairs(engine: Engine, sql: str, altmetric_id: int) -> dict[Any, Any]:
    return {tuple(r.values())[0]: tuple(r.values())[1] for r in rows(engine, sql, a=altmetric_id)}


def sources(engine: Engine, a: int) -> dict[str, int]:
    return pairs(engine, "select source, unique_users_count from source_counts where altmetric_id = :a", a)


def readers(engine: Engine, a: int) -> dict[str, int | None]:
    return pairs(engine, "select platform, count from readers where altmetric_id = :a", a)


def history(engine: Engine, a: int) -> dict[str, float]:
    return pairs(engine, "select timeframe, score from score_history where altmetric_id = :a", a)


def context(engine: Engine, a: int) -> dict[str, tuple[Any, ...]]:
    return {
        r["scope"]: (r["count"], r["mean"], r["rank"], r["pct"], r["higher_than"])
        for r in rows(engine, "select * from score_context where altmetric_id = :a", a=a)
    }


def identifiers(engine: Engine, a: int) -> set[tuple[str, str]]:
    return {(r["scheme"], r["value"]) for r in rows(engine, "select * from identifiers where altmetric_id = :a", a=a)}


ZERO_HISTORY = {t: 0.0 for t in ("1d", "2d", "3d", "4d", "5d", "6d", "1w", "1m", "3m", "6m", "1y")}
PYALTMETRIC_CONTEXT = {
    "all": (2162451, 4.7684323457198, 4979, 99.0, 2157568),
    "journal": (25073, 38.781049218251, 1332, 94.0, 23741),
    "similar_age_3m": (54719, 4.231628860704, 98, 99.0, 54621),
    "similar_age_journal_3m": (869, 41.477870967742, 41, 95.0, 828),
}


def test_pyaltmetric_average(engine: Engine) -> None:
    a = store(engine, sample("counts_pyaltmetric_10.1038-news.2011.490.json"))
    assert a == 241939
    o = output(engine, a)
    assert o["doi"] == "10.1038/news.2011.490"
    assert o["title"] == "Climate change will hit genetic diversity"
    assert o["journal"] == "Nature News"
    assert (o["score"], o["posts_count"], o["accounts_count"], o["readers_count"]) == (164.966, 196, 186, 1)
    assert o["is_oa"] is False
    assert o["published_on"] == datetime(2011, 8, 20, 23, 0, 0)
    assert o["added_on"] == datetime(2011, 8, 21, 17, 10, 57)
    assert o["last_updated"] == datetime(2012, 4, 12, 13, 25, 27)
    assert o["harvested_at"] == NOW
    assert o["issns"] == '["0028-0836", "1476-4687"]'
    assert sources(engine, a) == {"facebook": 5, "blogs": 3, "news": 1, "reddit": 1, "twitter": 176}
    assert readers(engine, a) == {"mendeley": 1, "connotea": 0, "citeulike": 0}
    assert history(engine, a) == {**ZERO_HISTORY, "at": 164.966}
    assert context(engine, a) == PYALTMETRIC_CONTEXT
    assert identifiers(engine, a) == {("doi", "10.1038/news.2011.490")}


def test_pyaltmetric_handedited_keeps_unknown_sources_and_ids(engine: Engine) -> None:
    a = store(engine, sample("counts_pyaltmetric-handedited_10.1038-news.2011.490.json"))
    assert output(engine, a)["is_oa"] is True
    assert sources(engine, a) == {
        "facebook": 5,
        "blogs": 3,
        "news": 1,
        "reddit": 1,
        "twitter": 176,
        "forums": 6,
        "googleplus": 3,
        "video": 1,
        "peer_reviews": 1,
        "delicious": 1,
        "qs": 1,  # unknown to us: kept under its own name
    }
    assert identifiers(engine, a) == {
        ("doi", "10.1038/news.2011.490"),
        ("pmid", "21148220"),
        ("arxiv", "1108.2455"),
        ("ads", "2011arxiv1108.2455l"),
    }


def test_researchhub_string_readers(engine: Engine) -> None:
    a = store(engine, sample("counts_researchhub-pyliteral_10.1038-news.2011.490.json"))
    o = output(engine, a)
    assert (o["journal"], o["type"], o["score"], o["posts_count"], o["accounts_count"]) == ("Nature", "news", 140.5, 157, 148)
    assert o["published_on"] == datetime(2011, 8, 21, 0, 0, 0)
    assert readers(engine, a) == {"citeulike": 0, "mendeley": 9, "connotea": 0}
    assert sources(engine, a) == {"facebook": 5, "blogs": 3, "news": 1, "reddit": 1, "twitter": 138}
    assert history(engine, a) == {**ZERO_HISTORY, "at": 140.5}
    assert context(engine, a)["all"] == (28840878, 10.743154505767821, 333214, 98.0, 28507882)
    assert identifiers(engine, a) == {
        ("doi", "10.1038/news.2011.490"),
        ("dimensions_publication_id", "pub.1056456446"),
    }


def test_sznaltmetric_partial_history_and_legacy_context(engine: Engine) -> None:
    a = store(engine, sample("counts_sznaltmetric-edited_10.1038-480426a.json"))
    assert a == 502878
    o = output(engine, a)
    assert (o["score"], o["posts_count"], o["accounts_count"], o["readers_count"]) == (353.626, 402, 393, 0)
    assert sources(engine, a) == {"facebook": 12, "blogs": 2, "googleplus": 20, "twitter": 359}
    assert history(engine, a) == {"1d": 0.0, "2d": 0.0, "6m": 77.35, "1y": 77.35, "at": 353.626}
    # The legacy context has only count and rank (and a sparkline we do not keep).
    assert context(engine, a) == {"journal": (252, None, 12, None, None), "all": (1076294, None, 2, None, None)}
    assert ("pmid", "22193080") in identifiers(engine, a)
    assert ("ads", "2011natur.480..426v") in identifiers(engine, a)


def test_unattributed_string_readers(engine: Engine) -> None:
    a = store(engine, sample("counts_unattributed-pystring_10.1038-480426a.json"))
    o = output(engine, a)
    assert (o["journal"], o["type"], o["score"], o["posts_count"], o["accounts_count"], o["readers_count"]) == (
        "news@nature.com",
        "news",
        1714.702,
        2695,
        2479,
        95,
    )
    assert readers(engine, a) == {"citeulike": 0, "mendeley": 95, "connotea": 0}
    assert sources(engine, a) == {"facebook": 22, "blogs": 5, "googleplus": 34, "twitter": 2418}
    assert history(engine, a)["1y"] == 1.35
    assert context(engine, a)["journal"] == (303, 110.46613245033, 1, 99.0, 302)
    assert o["last_updated"] == datetime(2017, 6, 26, 0, 33, 17)


def test_docs_example_negative_readers_are_null(engine: Engine) -> None:
    a = store(engine, sample("counts_docs-example_10.1038-news.2011.498.json"))
    assert a == 243700
    o = output(engine, a)
    assert (o["score"], o["posts_count"], o["accounts_count"], o["readers_count"]) == (114.5, 138, None, None)
    assert readers(engine, a) == {"mendeley": None, "downloads": None}
    assert sources(engine, a) == {"twitter": 134}
    assert len(history(engine, a)) == 11 and history(engine, a)["at"] == 114.5
    assert context(engine, a) == {}


def test_citations_results_are_counts_shaped(engine: Engine) -> None:
    body = sample("citations_docs-example_1m.json")
    assert body["query"]["total"] == 2418
    [result] = body["results"]
    a = store(engine, result)
    assert output(engine, a)["doi"] == "10.1038/news.2011.498"
    assert sources(engine, a) == {"twitter": 134}


def test_storing_twice_changes_nothing(engine: Engine) -> None:
    body = sample("counts_pyaltmetric_10.1038-news.2011.490.json")
    store(engine, body)
    tables = ("outputs", "identifiers", "source_counts", "readers", "score_history", "score_context")
    before = {t: rows(engine, f"select * from {t} order by 1, 2") for t in tables}
    store(engine, body)
    assert {t: rows(engine, f"select * from {t} order by 1, 2") for t in tables} == before


def test_a_newer_body_updates_the_rows(engine: Engine) -> None:
    a = store(engine, sample("counts_pyaltmetric_10.1038-news.2011.490.json"))
    store(engine, sample("counts_researchhub-pyliteral_10.1038-news.2011.490.json"))
    assert output(engine, a)["score"] == 140.5
    assert readers(engine, a)["mendeley"] == 9
    assert sources(engine, a)["twitter"] == 138
    assert len(rows(engine, "select * from outputs")) == 1


@pytest.mark.parametrize("path", sorted(p.name for p in SAMPLES.glob("counts_*.json")))
def test_every_counts_sample_is_covered(path: str) -> None:
    """A new sample in shared/ must get a test with its values above."""
    covered = {
        "counts_pyaltmetric_10.1038-news.2011.490.json",
        "counts_pyaltmetric-handedited_10.1038-news.2011.490.json",
        "counts_researchhub-pyliteral_10.1038-news.2011.490.json",
        "counts_sznaltmetric-edited_10.1038-480426a.json",
        "counts_unattributed-pystring_10.1038-480426a.json",
        "counts_docs-example_10.1038-news.2011.498.json",
    }
    assert path in covered
    assert parse_counts(sample(path), utcnow()).altmetric_id > 0
