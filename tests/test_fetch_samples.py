"""Every fetch-shaped sample in harvester/data (the real API bodies) parses to the right rows.

The expected values are typed in from the sample files by hand (counts of
posts and of distinct citation_ids were taken with jq/python over the raw
JSON), not computed by the code under test.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import Engine

from harvester import schema
from harvester.parse import ParseError, Records, iso_time, parse_fetch
from harvester.store import save_records
from tests.conftest import ROOT, rows, sample

NOW = datetime(2026, 11, 24, 12, 0, 0)

DUMP_1491980 = "fetch-schema_datadump-line_altmetric-id-1491980.json"
DUMP_CHAPTER = "fetch-schema_datadump-line_altmetric-id-38405550_chapter.json"
JAMA = "fetch_camlib_10.1001-jama.2013.950.json"
AMBIO = "fetch_camlib_10.1007-s13280-011-0222-9.json"
CONTEXT_NULL = "fetch_camlib_10.1145-2145204.2145347_context-null.json"
MISC_POLICY = "fetch_camlib_10.1596-978-1-4648-1095-4_misc-and-policy.json"
BOOK = "fetch_camlib_10.4018-978-1-4666-8271-9_book-posts-empty-array.json"
DEMOGRAPHICS_EMPTY = "fetch_camlib_10.4232-1.12777_demographics-empty-array.json"
DOCS = "fetch_docs-example_10.1038-nature.2014.14583.json"
SZN = "fetch_sznaltmetric-edited_10.1038-srep00042.json"
ALL = (DUMP_1491980, DUMP_CHAPTER, JAMA, AMBIO, CONTEXT_NULL, MISC_POLICY, BOOK, DEMOGRAPHICS_EMPTY, DOCS, SZN)

# Fetch does not send these: a later counts harvest owns them, so fetch leaves them out.
COUNTS_ONLY = {"readers_count", "accounts_count", "last_updated", "is_oa", "url", "details_url"}
# Set by the writer, not the parser (only an unfiltered fetch harvest lists every post; the first harvest is the first store).
WRITER_SET = {"posts_seen_at", "first_harvested_at", "superseded_by", "superseded_at"}  # set by the writer (aliases.py), not parsed
# identifiers.asked is the writer's too: it marks the id a job asked by.
WRITER_COLUMNS = {"identifiers": {"asked"}}
TABLES = (
    "identifiers",
    "source_counts",
    "readers",
    "score_history",
    "score_context",
    "output_relations",
    "mentions",
    "mention_citations",
    "demographics",
)


def parse(name: str) -> Records:
    return parse_fetch(sample(name), NOW)


def per_source(r: Records) -> dict[str, int]:
    return dict(Counter(m["source"] for m in r.mentions))


def mention(r: Records, **match: Any) -> dict[str, Any]:
    [m] = [m for m in r.mentions if all(m[k] == v for k, v in match.items())]
    return m


def cited(r: Records, m: dict[str, Any]) -> set[int]:
    return {c["altmetric_id"] for c in r.mention_citations if c["mention_id"] == m["mention_id"]}


def sources(r: Records) -> dict[str, tuple[int | None, int | None]]:
    return {s["source"]: (s["posts_count"], s["unique_users_count"]) for s in r.source_counts}


def context(r: Records) -> dict[str, dict[str, Any]]:
    return {c["scope"]: c for c in r.score_context}


def demographics(r: Records) -> set[tuple[str, str, str, int]]:
    return {(d["platform"], d["dimension"], d["key"], d["value"]) for d in r.demographics}


CITATION_COLUMNS = set(schema.outputs.c.keys()) - COUNTS_ONLY - WRITER_SET - {"altmetric_id", "score", "posts_count", "harvested_at"}


def assert_row_shapes(r: Records, body: dict[str, Any] | None = None) -> None:
    """Every row of a table has exactly that table's columns; outputs only those its sections give."""
    expected = set(schema.outputs.c.keys()) - COUNTS_ONLY - WRITER_SET
    if body is not None:
        if not isinstance(body.get("citation"), dict):
            expected -= CITATION_COLUMNS
        if not isinstance(body.get("altmetric_score"), dict) and body.get("score") is None:
            expected.discard("score")
        if not isinstance(body.get("counts"), dict):
            expected.discard("posts_count")
    assert set(r.outputs) == expected
    for table in TABLES:
        shapes = {tuple(row) for row in getattr(r, table)}  # key order too: a cheap test of sameness
        assert len(shapes) <= 1, table
        for shape in shapes:
            assert set(shape) == set(schema.metadata.tables[table].c.keys()) - WRITER_COLUMNS.get(table, set()), table


# ---- one test per sample ---------------------------------------------------------------------


def test_datadump_article_1491980() -> None:
    r = parse(DUMP_1491980)
    assert r.altmetric_id == 1491980
    o = r.outputs
    assert o["doi"] == "10.1007/bf02190744"
    assert o["type"] == "article"
    assert o["journal"] == "Clinical Social Work Journal"
    assert o["publisher"] == "Kluwer Academic Publishers-Human Sciences Press"
    assert o["published_on"] == datetime(1996, 1, 1)
    assert o["added_on"] == datetime(2013, 5, 19, 17, 3, 34)
    # An int (unix seconds) here; the same instant as the tweet's posted_on.
    assert o["last_mentioned_on"] == datetime(2013, 5, 19, 16, 2, 6)
    assert o["score"] == 0.5  # no top-level score in a data-dump line
    assert o["posts_count"] == 1
    assert o["issns"] == '["1573-3343"]'
    assert json.loads(o["authors"]) == ["Daniel Coleman MSW, LICSW"]
    assert per_source(r) == {"twitter": 1}
    t = r.mentions[0]
    assert (t["tweet_id"], t["tweeter_id"], t["author_followers"], t["country"]) == ("336149776712220672", "612676100", 5191, "US")
    assert (t["title"], t["summary"]) == (None, None)
    assert t["author_id_on_source"] == "CSWJournal"
    assert t["post_key"] == "336149776712220672"
    assert t["posted_on"] == datetime(2013, 5, 19, 16, 2, 6)
    assert (t["first_seen_at"], t["last_seen_at"]) == (NOW, NOW)
    assert cited(r, t) == {1491980}
    assert sources(r) == {"twitter": (1, 1)}
    assert {x["platform"]: x["count"] for x in r.readers} == {"mendeley": 5, "citeulike": 0, "connotea": 0}
    assert set(context(r)) == {"all", "journal", "similar_age_3m", "similar_age_journal_3m"}
    j = context(r)["journal"]
    assert (j["count"], j["mean"], j["rank"], j["pct"], j["higher_than"]) == (846, 1.1388804734, 460, 2, 19)
    assert (j["sample_size"], j["percentile"], j["rank_type"]) == (846, 2, "exact")
    assert context(r)["similar_age_journal_3m"]["count"] == 6
    assert demographics(r) == {
        ("twitter", "poster_type", "science_communicator", 1),
        ("twitter", "country", "US", 1),
        ("mendeley", "status", "Student  > Master", 3),
        ("mendeley", "status", "Professor", 1),
        ("mendeley", "status", "Professor > Associate Professor", 1),
        ("mendeley", "discipline", "Business, Management and Accounting", 3),
        ("mendeley", "discipline", "Social Sciences", 1),
        ("mendeley", "discipline", "Psychology", 1),
        ("twitter", "cohort", "Science communicators (journalists, bloggers, editors)", 1),
    }
    assert len(r.score_history) == 12
    assert_row_shapes(r)


def test_datadump_chapter_38405550() -> None:
    r = parse(DUMP_CHAPTER)
    o = r.outputs
    assert o["doi"] == "10.1007/978-3-642-60907-7_15"
    assert o["type"] == "chapter"
    assert o["publisher"] == "Springer, Berlin, Heidelberg"
    assert o["published_on"] == datetime(1997, 1, 1)
    assert o["book_title"] == "National Parks and Protected Areas"
    assert json.loads(o["book_isbns"]) == ["9783642646034", "9783642609077"]
    assert (o["score"], o["posts_count"]) == (0, 0)
    # The book's ISBNs identify the book, not the chapter.
    assert {(i["scheme"], i["value"]) for i in r.identifiers} == {("doi", "10.1007/978-3-642-60907-7_15")}
    assert r.output_relations == [
        {
            "altmetric_id": 38405550,
            "related_altmetric_id": 35998107,
            "relation": "aggregated_in",
            "title": "National Parks and Protected Areas",
            "ordinal_number": None,
        }
    ]
    # posts: [], demographics: [], context_for_score: null, counts without sources.
    assert (r.mentions, r.mention_citations, r.demographics, r.score_context, r.source_counts) == ([], [], [], [], [])
    assert_row_shapes(r)


def test_jama_twitter_and_wikipedia() -> None:
    r = parse(JAMA)
    o = r.outputs
    assert (o["doi"], o["type"], o["score"], o["posts_count"]) == ("10.1001/jama.2013.950", "article", 8.75, 10)
    assert o["published_on"] == datetime(2013, 2, 27)
    assert o["last_mentioned_on"] == datetime(2016, 5, 13, 22, 37, 51)
    assert o["publisher"] is None
    assert o["abstract"].startswith("Small abdominal aortic aneurysms (AAAs [3.0 cm-5.4 cm in diameter])")
    assert o["subjects"] == '["medicine"]'
    assert {(i["scheme"], i["value"]) for i in r.identifiers} == {
        ("doi", "10.1001/jama.2013.950"),
        ("pmid", "23443444"),
        ("uri", "http://jama.jamanetwork.com/article.aspx?doi=10.1001/jama.2013.950"),
    }
    assert per_source(r) == {"twitter": 9, "wikipedia": 1}
    t = mention(r, tweet_id="307372388302061569")
    assert (t["tweeter_id"], t["author_followers"], t["country"], t["author_name"]) == ("21013461", 83621, "BA", "Tom Heston")
    assert (t["title"], t["summary"]) == (None, None)
    assert mention(r, tweet_id="307101916456951811")["country"] is None  # geo with null lt/ln only
    assert mention(r, tweet_id="322339340355256320")["country"] is None  # no geo at all
    w = mention(r, source="wikipedia")
    assert w["wikipedia_lang"] == "en"
    assert w["title"] == "Abdominal aortic aneurysm"
    assert w["summary"].startswith("Abdominal aortic aneurysm (AAA or triple A)")
    assert w["author_name"] == "Doc James"
    assert w["url"] == w["post_key"] == "http://en.wikipedia.org/?diff=prev&oldid=550058363#altmetric_citation_70"
    assert w["posted_on"] == datetime(2013, 4, 12, 20, 52, 4)
    assert cited(r, w) == {1270180}  # listed twice in citation_ids
    assert sources(r) == {"twitter": (9, 9), "wikipedia": (1, 1)}
    assert {x["platform"]: x["count"] for x in r.readers} == {"citeulike": 0, "mendeley": 57, "connotea": 0}
    j = context(r)["journal"]
    assert (j["count"], j["percentile"], j["sample_size"], j["rank"]) == (19364, 61, 19364, 7541)
    assert context(r)["similar_age_journal_3m"]["count"] == 121
    d = demographics(r)
    assert len(d) == 2 + 2 + 11 + 6 + 4 + 3
    assert {
        ("twitter", "poster_type", "practitioner", 2),
        ("twitter", "cohort", "Members of the public", 7),
        ("mendeley", "discipline", "Medicine and Dentistry", 45),
        ("mendeley", "status", "Student  > Ph. D. Student", 12),
        ("twitter", "country", "CA", 3),
        ("mendeley", "country", "BR", 1),
    } <= d
    assert_row_shapes(r)


def test_ambio_blogs_news_policy_reddit_twitter() -> None:
    r = parse(AMBIO)
    o = r.outputs
    assert (o["doi"], o["score"], o["posts_count"], o["publisher"]) == ("10.1007/s13280-011-0222-9", 38.358, 10, "Springer Netherlands")
    assert o["published_on"] == datetime(2012, 1, 19)
    assert per_source(r) == {"blogs": 4, "twitter": 2, "reddit": 1, "policy": 2, "news": 1}
    n = mention(r, source="news")
    assert n["url"] == "http://www.nature.com/nature/journal/v499/n7459/full/499401a.html"
    assert n["title"] == "Climate science: Vast costs of Arctic change"
    assert n["posted_on"] == datetime(2013, 7, 24)
    assert n["author_name"] == "Nature"
    ipcc = mention(r, policy_source="Intergovernmental Panel on Climate Change")
    assert ipcc["country"] == "CH"
    assert ipcc["url"] == "http://www.climatechange2013.org/images/report/WG1AR5_ALL_FINAL.pdf"
    assert ipcc["title"] == "Climate Change 2013: The Physical Science Basis"
    assert ipcc["author_name"] is None  # policy authors are an image only
    assert len(cited(r, ipcc)) == 5079  # 5103 ids listed, 24 of them twice
    assert 584396 in cited(r, ipcc)
    assert mention(r, policy_source="National Academies Press")["country"] == "US"
    red = mention(r, source="reddit")
    assert (red["author_id_on_source"], red["author_followers"]) == ("climate", 4549)
    assert red["subreddit"] == "climate"
    grub = mention(r, tweet_id="164602940798140417")
    assert (grub["tweeter_id"], grub["author_followers"], grub["license"]) == ("353800535", 214, None)
    # The same blog post under http and https: two urls, two rows (counts says 4 posts too).
    agw = [m for m in r.mentions if m["author_name"] == "AGW Observer"]
    assert sorted(m["url"] for m in agw) == [
        "http://agwobserver.wordpress.com/2013/10/08/ipcc-ar5-references-wg1-introduction/",
        "https://agwobserver.wordpress.com/2013/10/08/ipcc-ar5-references-wg1-introduction/",
    ]
    assert len({m["mention_id"] for m in agw}) == 2
    assert sources(r) == {"blogs": (4, 3), "news": (1, 1), "policy": (2, 2), "reddit": (1, 1), "twitter": (2, 2)}
    assert {x["platform"]: x["count"] for x in r.readers}["mendeley"] == 69
    assert {h["timeframe"]: h["score"] for h in r.score_history}["1y"] == 11
    assert ("mendeley", "discipline", "Earth and Planetary Sciences", 27) in demographics(r)
    assert_row_shapes(r)


def test_context_null_policy_citing_many_outputs() -> None:
    r = parse(CONTEXT_NULL)
    o = r.outputs
    assert (o["doi"], o["type"], o["score"], o["posts_count"], o["publisher"]) == ("10.1145/2145204.2145347", "article", 3, 1, "ACM")
    assert o["last_mentioned_on"] == datetime(2013, 1, 1)
    assert r.score_context == []
    assert per_source(r) == {"policy": 1}
    p = r.mentions[0]
    assert (p["policy_source"], p["country"]) == ("National Academies Press", "US")
    assert p["url"] == "https://www.nap.edu/download/18548"
    assert p["posted_on"] == datetime(2013, 1, 1)
    assert len(cited(r, p)) == 110  # 112 listed: 1347277 and 3745475 twice
    assert len(r.mention_citations) == 110
    assert {x["platform"]: x["count"] for x in r.readers} == {"citeulike": 1, "mendeley": 104, "connotea": 0}
    assert sources(r) == {"policy": (1, 1)}
    d = demographics(r)
    assert len(d) == 13 + 12 + 11
    assert {("mendeley", "discipline", "Computer Science", 71), ("mendeley", "country", "DE", 4)} <= d
    assert not any(platform == "twitter" for platform, *_ in d)
    assert_row_shapes(r)


def test_misc_and_policy() -> None:
    r = parse(MISC_POLICY)
    o = r.outputs
    assert (o["doi"], o["score"], o["posts_count"]) == ("10.1596/978-1-4648-1095-4", 171.15, 92)
    assert o["publisher"] == "World Bank, Washington, DC"
    assert o["published_on"] == datetime(2017, 4, 1)
    assert o["last_mentioned_on"] == datetime(2017, 12, 28, 18, 42, 15)
    # `handle` and `handles` both hold it: one identifier.
    assert ("handle", "10986/26373") in {(i["scheme"], i["value"]) for i in r.identifiers}
    assert sum(1 for i in r.identifiers if i["scheme"] == "handle") == 1
    assert per_source(r) == {"twitter": 33, "news": 22, "facebook": 1, "misc": 35, "policy": 1}
    # counts has no misc: source_counts keeps to what counts says.
    assert sources(r) == {"news": (22, 17), "policy": (1, 1), "twitter": (33, 32), "facebook": (1, 1)}
    misc = mention(r, url="https://financialtribune.com/articles/world-economy/62522/south-asia-could-benefit-from-globalization-backlash")
    assert misc["source"] == "misc"
    assert misc["title"] == "South Asia Could Benefit From Globalization Backlash"
    assert misc["author_name"] == "https://financialtribune.com"
    assert misc["posted_on"] == datetime(2017, 4, 17)
    news = mention(
        r, url="http://feedproxy.google.com/~r/scroll_in/~3/u9hNZWGjEUE/indias-economy-will-grow-by-7-2-in-2017-18-predicts-world-bank"
    )
    assert (news["source"], news["title"]) == ("news", "India\u2019s economy will grow by 7.2% in 2017-\u201918, predicts World Bank")
    assert news["author_name"] == "Scroll India "  # the trailing space is the API's
    assert news["posted_on"] == datetime(2017, 4, 17, 2, 48, 21)
    policy = mention(r, source="policy")
    assert (policy["policy_source"], policy["country"]) == ("World Bank", "US")
    assert cited(r, policy) == {21480635, 21480636, 10197257, 18897334, 21480638}
    t = mention(r, tweet_id="853648670679605248")
    assert (t["tweeter_id"], t["author_followers"], t["country"], t["license"]) == ("39727570", 5885, "GB", "gnip")
    assert mention(r, tweet_id="853650653025099776")["country"] is None
    assert r.score_context == []
    assert len(r.mention_citations) == 91 + 5
    assert ("twitter", "country", "IN", 5) in demographics(r)
    assert_row_shapes(r)


def test_book_with_chapters_and_no_posts() -> None:
    r = parse(BOOK)
    o = r.outputs
    assert (o["doi"], o["type"], o["publisher"], o["score"], o["posts_count"]) == ("10.4018/978-1-4666-8271-9", "book", "IGI Global", 0, 0)
    assert o["published_on"] == datetime(2015, 1, 1)
    assert (o["book_title"], o["book_isbns"]) == (None, None)
    assert {(i["scheme"], i["value"]) for i in r.identifiers} == {
        ("doi", "10.4018/978-1-4666-8271-9"),
        ("isbn", "9781466682719"),
        ("isbn", "9781466682726"),
    }
    # aggregate_citation_ids repeats the three chapters: no extra rows.
    assert {(x["related_altmetric_id"], x["relation"], x["title"], x["ordinal_number"]) for x in r.output_relations} == {
        (17334682, "chapter", "Public Art, Digital Technology, and Building Teacher Capacity", None),
        (22367244, "chapter", "Self-Belief and Confidence to Teach Arts and Digital Technology in K-6 Classrooms", None),
        (22367923, "chapter", "K-12 Arts Pedagogies and Technology Use Transitioning into Higher Education", None),
    }
    assert (r.mentions, r.mention_citations, r.score_context, r.source_counts) == ([], [], [], [])
    assert {x["platform"]: x["count"] for x in r.readers}["mendeley"] == 9
    assert demographics(r) >= {("mendeley", "status", "Student  > Master", 4), ("mendeley", "discipline", "Arts and Humanities", 4)}
    assert len(r.demographics) == 10
    assert_row_shapes(r)


def test_aggregate_ids_missing_from_chapters_are_chapters_without_title() -> None:
    body = sample(BOOK)
    body["citation"]["aggregate_citation_ids"].append(99999901)
    body["citation"]["chapters"][0]["ordinal_number"] = "3"
    rel = {x["related_altmetric_id"]: x for x in parse_fetch(body, NOW).output_relations}
    assert len(rel) == 4
    assert (rel[99999901]["relation"], rel[99999901]["title"], rel[99999901]["ordinal_number"]) == ("chapter", None, None)
    assert rel[17334682]["title"] == "Public Art, Digital Technology, and Building Teacher Capacity"
    assert rel[17334682]["ordinal_number"] == 3


def test_demographics_empty_array() -> None:
    r = parse(DEMOGRAPHICS_EMPTY)
    o = r.outputs
    assert (o["doi"], o["publisher"], o["score"], o["posts_count"]) == ("10.4232/1.12777", "GESIS Data Archive, Cologne", 3, 1)
    assert o["published_on"] == datetime(2017, 5, 23)
    assert r.demographics == []
    assert r.score_context == []
    assert per_source(r) == {"policy": 1}
    p = r.mentions[0]
    assert (p["policy_source"], p["country"]) == ("Oxfam GB Policy & Practice", "GB")
    assert p["title"] == "Attitudes Towards Inequality in the UK: A review of opinion surveys"
    assert p["posted_on"] == datetime(2018, 3, 13, 14, 8, 30)
    assert cited(r, p) == {34412823, 2897074, 34412834}
    assert {h["timeframe"]: h["score"] for h in r.score_history}["1y"] == 3
    assert {x["platform"]: x["count"] for x in r.readers} == {"mendeley": 0, "citeulike": 0, "connotea": 0}
    assert_row_shapes(r)


def test_docs_example() -> None:
    r = parse(DOCS)
    o = r.outputs
    assert (o["doi"], o["type"], o["journal"]) == ("10.1038/nature.2014.14583", "news", "Nature")
    assert o["published_on"] == datetime(2014, 1, 24)  # from epubdate: there is no pubdate
    assert o["score"] == 3734.705999999944
    assert o["posts_count"] == 4930
    assert per_source(r) == {"twitter": 2, "facebook": 3, "news": 3, "reddit": 3, "video": 3, "qna": 2, "wikipedia": 2}
    t = mention(r, tweet_id="428180819338092544")
    assert (t["tweeter_id"], t["url"], t["post_key"], t["posted_on"]) == ("1128600265", None, "428180819338092544", None)
    assert cited(r, mention(r, tweet_id="1535964094242689025")) == {2068207}
    v = mention(r, url="https://www.youtube.com/watch?v=isimsXwilvc")
    assert (v["source"], v["video_embed_id"], v["author_name"]) == ("video", "isimsXwilvc", "Phan Hien")
    assert v["posted_on"] == datetime(2014, 1, 25, 7, 30, 28)
    assert {m["wikipedia_lang"] for m in r.mentions if m["source"] == "wikipedia"} == {"de", "pl"}
    red = mention(r, url="http://www.reddit.com/r/worldnews/comments/1w1p8h/stephen_hawking_announces_in_surprising_statement/")
    assert (red["subreddit"], red["author_id_on_source"], red["author_followers"]) == ("worldnews", "worldnews", 26840073)
    n = mention(r, url="http://www.nature.com/news/stephen-hawking-questions-nature-of-black-holes-1.14583")
    assert cited(r, n) == {1336291, 2068207, 2065243}
    qna = [m for m in r.mentions if m["source"] == "qna"]
    assert sorted(len(cited(r, m)) for m in qna) == [1, 4]
    sc = sources(r)
    assert sc["qna"] == (2, 2)
    assert sc["twitter"] == (3604, 3381)
    assert sc["facebook"] == (1096, 1056)
    assert "q&a" not in sc and "readers" not in sc and "total" not in sc
    assert len(sc) == 9
    assert {x["platform"]: x["count"] for x in r.readers} == {"mendeley": 76, "citeulike": 1, "connotea": 0}
    j = context(r)["journal"]
    assert (j["count"], j["rank"], j["percentile"], j["sample_size"]) == (88504, 119, 99, 88504)
    assert {
        ("twitter", "country", "US", 732),
        ("twitter", "poster_type", "researcher", 379),
        ("twitter", "cohort", "Scientists", 379),
    } <= demographics(r)
    assert len(r.demographics) == 4 + 4 + 13 + 16 + 5 + 3
    assert_row_shapes(r)


def test_szn_edited_legacy_context() -> None:
    r = parse(SZN)
    o = r.outputs
    assert (o["doi"], o["journal"], o["publisher"], o["score"], o["posts_count"]) == (
        "10.1038/srep00042",
        "Scientific Reports",
        "Nature Publishing Group",
        32.338,
        32,
    )
    assert o["type"] is None  # this citation has no type
    # "2011-07-21T00:00:00+01:00" is 23:00 UTC the day before.
    assert o["published_on"] == datetime(2011, 7, 20, 23, 0)
    # counts has 30 tweets, but the body lists only the one Google+ post.
    assert per_source(r) == {"googleplus": 1}
    g = r.mentions[0]
    assert g["url"] == "https://plus.google.com/100057069861700562165/posts/TqwPho8xGVA"
    assert (g["author_name"], g["author_id_on_source"]) == ("Glenn Tenney", "100057069861700562165")
    assert g["posted_on"] == datetime(2011, 7, 22, 20, 38, 23)
    assert cited(r, g) == {194098}  # no citation_ids: the output whose body lists it
    assert sources(r) == {"blogs": (1, 1), "googleplus": (1, 1), "twitter": (30, 29)}
    assert {x["platform"]: x["count"] for x in r.readers} == {"mendeley": 27, "citeulike": 0, "connotea": 0}
    j = context(r)["journal"]
    assert (j["count"], j["sample_size"], j["pct"], j["higher_than"], j["mean"]) == (1187, 1187, 95, 1119, 12.023588879528)
    assert (j["rank"], j["percentile"], j["rank_type"]) == (None, None, None)
    assert ("twitter", "poster_type", "researcher", 17) in demographics(r)
    assert len(r.demographics) == 4 + 10
    assert_row_shapes(r)


# ---- tolerance, identity ---------------------------------------------------------------------


def _paths(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every dict key's path; lists are entered through their first element only."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*path, key)
            yield from _paths(value, (*path, key))
    elif isinstance(node, list) and node:
        yield from _paths(node[0], (*path, 0))


_GONE = object()


@pytest.mark.parametrize("name", ALL)
def test_every_section_null_empty_or_missing_never_raises(name: str) -> None:
    body = sample(name)
    altmetric_id = body["altmetric_id"]
    for path in list(_paths(body)):
        if path == ("altmetric_id",):
            continue
        *parents, key = path
        holder = body
        for p in parents:
            holder = holder[p]
        original = holder[key]
        for replacement in (None, [], _GONE):
            if replacement is _GONE:
                del holder[key]
            else:
                holder[key] = replacement
            try:
                records = parse_fetch(body, NOW)
            except Exception as e:  # pragma: no cover - the message says where
                raise AssertionError(f"{path} = {replacement!r}: {e!r}") from e
            assert records.altmetric_id == altmetric_id
            assert_row_shapes(records, body)
            holder[key] = original


def test_no_usable_altmetric_id_is_a_parse_error() -> None:
    body = sample(DOCS)
    bad: Any
    for bad in (None, [], "", "abc", {}):
        body["altmetric_id"] = bad
        with pytest.raises(ParseError):
            parse_fetch(body, NOW)
    del body["altmetric_id"]
    with pytest.raises(ParseError):
        parse_fetch(body, NOW)
    body["altmetric_id"] = "2068207"  # a numeric string is usable
    assert parse_fetch(body, NOW).altmetric_id == 2068207


def test_mention_id_is_stable_and_differs_between_posts() -> None:
    for name in (JAMA, AMBIO, MISC_POLICY, DOCS):
        first, again = parse(name), parse_fetch(sample(name), datetime(2030, 1, 1))
        assert [m["mention_id"] for m in first.mentions] == [m["mention_id"] for m in again.mentions]
        ids = [m["mention_id"] for m in first.mentions]
        assert len(set(ids)) == len(ids)
        assert all(0 <= i < 2**63 for i in ids)
    # The documented formula, so other tools can compute it.
    t = mention(parse(DUMP_1491980), tweet_id="336149776712220672")
    digest = hashlib.blake2b(b"1491980\x1ftwitter\x1f336149776712220672", digest_size=8).digest()
    assert t["mention_id"] == int.from_bytes(digest, "big") & (2**63 - 1)


def test_posts_without_tweet_id_or_url_get_a_content_hash_key() -> None:
    body = sample(DOCS)
    body["posts"] = {"q&a": [{"title": "A", "author": {"id_on_source": "x"}}, {"title": "B"}]}
    r = parse_fetch(body, NOW)
    keys = [m["post_key"] for m in r.mentions]
    assert all(k.startswith("sha1:") and len(k) == 5 + 40 for k in keys)
    assert len(set(keys)) == 2
    assert keys == [m["post_key"] for m in parse_fetch(copy.deepcopy(body), NOW).mentions]
    assert {m["source"] for m in r.mentions} == {"qna"}


def test_duplicate_posts_keep_the_last_and_tweets_keep_no_text() -> None:
    body = sample(DUMP_1491980)
    tweet = body["posts"]["twitter"][0]
    later = copy.deepcopy(tweet)
    later["author"]["followers"] = "6000"
    later["title"] = "tweet text"
    later["summary"] = "more tweet text"
    later["citation_ids"] = [1491980, "42"]
    body["posts"]["twitter"].append(later)
    r = parse_fetch(body, NOW)
    [m] = r.mentions
    assert m["author_followers"] == 6000
    assert (m["title"], m["summary"]) == (None, None)
    assert {(c["mention_id"], c["altmetric_id"]) for c in r.mention_citations} == {(m["mention_id"], 1491980), (m["mention_id"], 42)}


def test_demographics_of_other_shapes_are_flattened_or_skipped() -> None:
    body = sample(DUMP_CHAPTER)
    body["demographics"] = {
        "poster_types": [],
        "geo": {"twitter": {"US": "3", "XX": "n/a"}, "mendeley": None},
        "users": {"mendeley": {"by_status": {"Researcher": 2.0}, "cohorts": {"Scientists": 1}}, "twitter": "odd"},
        "research_types": {"clinical": 4},
        "by_region": {"twitter": {"Europe": 5}},
        "text": "not numbers",
        "deep": {"twitter": {"by_x": {"k": 1, "deeper": {"z": 1}}}},
    }
    assert demographics(parse_fetch(body, NOW)) == {
        ("twitter", "country", "US", 3),
        ("mendeley", "status", "Researcher", 2),
        ("mendeley", "cohort", "Scientists", 1),
        ("all", "research_types", "clinical", 4),
        ("twitter", "region", "Europe", 5),
        ("twitter", "x", "k", 1),
    }


def test_video_embed_ids_other_than_youtube() -> None:
    body = sample(DOCS)
    body["posts"] = {
        "video": [{"url": "https://vimeo.com/1", "embed": {"type": "vimeo", "vimeo_id": 76979871}}, {"url": "u", "embed": "<iframe>"}]
    }
    assert [m["video_embed_id"] for m in parse_fetch(body, NOW).mentions] == ["76979871", None]


def test_iso_time() -> None:
    assert iso_time("2014-01-25T07:30:28+00:00") == datetime(2014, 1, 25, 7, 30, 28)
    assert iso_time("2014-01-25T07:30:28Z") == datetime(2014, 1, 25, 7, 30, 28)
    assert iso_time("2014-01-25T07:30:28+05:30") == datetime(2014, 1, 25, 2, 0, 28)
    assert iso_time("2014-01-25T07:30:28") == datetime(2014, 1, 25, 7, 30, 28)
    assert iso_time("2014-01-25") == datetime(2014, 1, 25)
    assert iso_time(1368979326) == datetime(2013, 5, 19, 16, 2, 6)
    assert iso_time(1368979326.0) == datetime(2013, 5, 19, 16, 2, 6)
    assert iso_time("1368979326") == datetime(2013, 5, 19, 16, 2, 6)
    garbage: Any
    for garbage in (None, "", "soon", "2014-13-01", "2014", True, [], {}, 1e20, float("nan"), "0001-01-01T00:00:00+05:00"):
        assert iso_time(garbage) is None, garbage


# ---- into a real migrated SQLite file ----------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_every_sample_stores_and_a_reharvest_changes_no_count(engine: Engine, name: str) -> None:
    first = parse(name)
    with engine.begin() as conn:
        save_records(conn, [first])
    counts = {t: len(rows(engine, f"select * from {t}")) for t in ("outputs", *TABLES)}
    assert counts == {"outputs": 1, **{t: len(getattr(first, t)) for t in TABLES}}
    later = datetime(2026, 11, 25, 12, 0, 0)
    with engine.begin() as conn:
        save_records(conn, [parse_fetch(sample(name), later)])
    assert {t: len(rows(engine, f"select * from {t}")) for t in ("outputs", *TABLES)} == counts
    for m in rows(engine, "select first_seen_at, last_seen_at from mentions"):
        assert str(m["first_seen_at"]).startswith("2026-11-24 12:00:00")
        assert str(m["last_seen_at"]).startswith("2026-11-25 12:00:00")
    [o] = rows(engine, "select doi, score, posts_count from outputs")
    assert (o["doi"], o["score"], o["posts_count"]) == (first.outputs["doi"], first.outputs["score"], first.outputs["posts_count"])


def test_a_body_without_its_citation_section_does_not_blank_the_output(engine: Engine) -> None:
    """--include-sections posts (or a body missing a section) leaves stored metadata alone."""
    full = sample(DOCS)
    with engine.begin() as conn:
        save_records(conn, [parse_fetch(full, NOW)])
    partial = {k: v for k, v in full.items() if k not in ("citation", "altmetric_score", "counts")}
    with engine.begin() as conn:
        save_records(conn, [parse_fetch(partial, NOW)])
    [o] = rows(engine, "select doi, title, score, posts_count from outputs")
    assert o == {
        "doi": full["citation"]["doi"].lower(),
        "title": full["citation"]["title"],
        "score": full["altmetric_score"]["score"],
        "posts_count": full["counts"]["total"]["posts_count"],
    }


def test_tweet_urls_are_stored_and_the_docs_say_so() -> None:
    """Real tweet posts carry their link (twitter.com/<account>/status/<id>); the docs example sends ids only.

    A link is no tweet text, so it is kept (issue 17, item 11), and docs/schema.md must not say
    mentions.url is NULL for tweets.
    """
    tweets = [m for m in parse(JAMA).mentions if m["source"] == "twitter"]
    assert tweets and all(m["url"] and m["url"].startswith(("http://twitter.com/", "https://twitter.com/")) for m in tweets)
    raw = [p["url"] for p in sample(JAMA)["posts"]["twitter"]]
    assert [m["url"] for m in tweets] == raw
    assert all(m["title"] is None and m["summary"] is None for m in tweets)
    assert all(m["url"] is None for m in parse(DOCS).mentions if m["source"] == "twitter")
    doc = (ROOT / "docs" / "schema.md").read_text(encoding="utf-8")
    [url_row] = [line for line in doc.splitlines() if line.startswith("| `url` | TEXT | link to the post")]
    assert "NULL for tweets" not in url_row and "tweet" in url_row
