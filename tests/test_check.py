"""`harvester check` against the bundled fake API: keys, tiers, announced limits, exit codes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from harvester.fakeapi import FakeConfig, FakeServer, serve_in_thread
from harvester.vocabulary import ExitCode
from tests.conftest import KEY, Harness


def config(h: Harness, text: str) -> None:
    (h.tmp / "harvester.toml").write_text(text)


def test_a_full_key_may_call_every_endpoint_with_three_requests(h: Harness, fake: FakeServer) -> None:
    result = h.run("check")
    assert result.exit_code == ExitCode.OK, result.output
    out = result.stdout
    assert "ok: the key is valid" in out
    for endpoint in ("counts", "fetch", "citations"):
        assert f"ok: {endpoint}: allowed (200)" in out
    assert "limits announced:" in out
    assert fake.stats.total == 3  # one request an endpoint, no more
    assert KEY not in result.output + result.stderr


def test_check_json_is_one_object(h: Harness) -> None:
    result = h.run("check", "--json")
    assert result.exit_code == ExitCode.OK, result.output
    report = json.loads(result.stdout)
    assert report["key_valid"] is True
    assert {name: e["allowed"] for name, e in report["endpoints"].items()} == {"counts": True, "fetch": True, "citations": True}
    assert report["announced_limits"]["hourly"]["limit"] > 0
    assert report["exit_code"] == ExitCode.OK
    assert KEY not in result.stdout


def test_a_counts_only_key_fails_when_the_config_uses_fetch(h: Harness) -> None:
    result = h.run("check", ALTMETRIC_API_KEY="counts-only-key")
    assert result.exit_code == ExitCode.ERROR
    assert "ok: counts: allowed" in result.stdout
    assert "error: fetch: not allowed for this key's tier (403" in result.stderr
    assert "error: citations: not allowed" in result.stderr
    assert 'suggest: [api] endpoints = ["counts"]' in result.stdout


def test_a_counts_only_key_passes_when_the_config_uses_counts_only(h: Harness) -> None:
    config(h, '[api]\nendpoints = ["counts"]\n')
    result = h.run("check", ALTMETRIC_API_KEY="counts-only-key")
    assert result.exit_code == ExitCode.OK, result.output
    assert "info: fetch: not allowed for this key's tier" in result.stdout
    assert "error" not in result.output


@pytest.mark.parametrize(
    ("key", "endpoints", "why"),
    [
        ("counts-only-key", None, "this key's tier lacks Citations (403)"),
        (KEY, '["counts", "fetch"]', "[api] endpoints leaves Citations out"),
    ],
)
def test_a_change_feed_nightly_without_citations_is_warned_before_the_first_night(
    h: Harness, key: str, endpoints: str | None, why: str
) -> None:
    api = "" if endpoints is None else f"[api]\nendpoints = {endpoints}\n"
    config(h, api + '[nightly]\nmode = "changes"\n')
    result = h.run("check", ALTMETRIC_API_KEY=key)
    assert f'warning: [nightly] mode = "changes" needs Citations, and {why}: every night would run in refresh mode' in result.output
    assert 'suggest: [nightly] mode = "refresh"' in result.stdout
    # The same key in refresh mode hears nothing about it.
    config(h, api + '[nightly]\nmode = "refresh"\n')
    assert "needs Citations" not in h.run("check", ALTMETRIC_API_KEY=key).output


def test_a_wrong_key_is_one_error_after_one_request(h: Harness, fake: FakeServer) -> None:
    result = h.run("check", ALTMETRIC_API_KEY="not-a-key-123")
    assert result.exit_code == ExitCode.ERROR
    assert "error: the key is not valid: Counts answered 403" in result.stderr
    assert fake.stats.total == 1
    assert "not-a-key-123" not in result.output + result.stderr


def test_no_key_is_an_error_without_a_request(h: Harness, fake: FakeServer) -> None:
    result = h.run("check", ALTMETRIC_API_KEY=None)
    assert result.exit_code == ExitCode.ERROR
    assert "no API key configured" in result.stderr
    assert fake.stats.total == 0


def test_an_unreachable_api_is_one_line(h: Harness) -> None:
    result = h.run("check", HARVESTER_API_URL="http://127.0.0.1:9/v1")
    assert result.exit_code == ExitCode.ERROR
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("error: the API is unreachable: cannot connect to http://127.0.0.1:9/v1")


@pytest.fixture
def strict_fake() -> Iterator[FakeServer]:
    """A server announcing (and enforcing) less than the default free-tier limits."""
    with serve_in_thread(FakeConfig(keys=(KEY,), per_hour=1000, per_day=20000)) as server:
        yield server


def test_lower_announced_limits_are_reported_with_the_values_to_configure(h: Harness, strict_fake: FakeServer) -> None:
    env = {"HARVESTER_API_URL": strict_fake.url, "HARVESTER_TIER": "free"}
    result = h.run("check", **env)
    assert result.exit_code == ExitCode.OK, result.output  # every endpoint is allowed: the limits are warnings
    out = result.stdout
    assert "limits announced: 1,000 an hour" in out and "20,000 a day" in out
    assert "warning: [limits] per_hour = 3,600 is above the announced 1,000 an hour" in out
    assert "warning: [limits] per_day = 86,400 is above the announced 20,000 a day" in out
    assert "suggest: [limits] per_second = 0.231, per_hour = 1000, per_day = 20000" in out
    report = json.loads(h.run("check", "--json", **env).stdout)
    assert report["suggested_limits"] == {"per_second": 0.231, "per_hour": 1000, "per_day": 20000}
    assert report["configured_limits"]["per_hour"] == 3600

    # With the suggested values in the config, the configuration fits.
    config(h, "[limits]\nper_second = 0.231\nper_hour = 1000\nper_day = 20000\n")
    result = h.run("check", **env)
    assert result.exit_code == ExitCode.OK and "warning" not in result.output, result.output
    assert "ok: [limits] fit the announced limits" in result.stdout


def test_a_commercial_config_against_a_limited_key_suggests_the_free_tier(h: Harness, strict_fake: FakeServer) -> None:
    result = h.run("check", HARVESTER_API_URL=strict_fake.url, HARVESTER_TIER="commercial")
    assert result.exit_code == ExitCode.OK, result.output
    assert "warning: tier = commercial, but the server announces a limit of 1,000 an hour" in result.stdout
    assert 'suggest: tier = "free"; [limits] per_second = 0.231' in result.stdout


def test_quiet_check_prints_errors_only(h: Harness, tmp_path: Path) -> None:
    assert h.run("-q", "check").output == ""
    result = h.run("-q", "check", ALTMETRIC_API_KEY="counts-only-key")
    assert result.exit_code == ExitCode.ERROR and result.stdout == ""
    assert result.stderr.count("error:") == 2
