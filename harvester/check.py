"""`harvester check`: what the configured key may do, and whether the configuration fits it.

The fewest requests that tell: one Counts request (is the key valid?), then one
Fetch and one Citations request (is the endpoint in the key's tier?), each for a
known output. The rate-limit headers of those answers say what limits the server
announces; the configuration's tier and [limits] are compared against them.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from harvester.client import ApiClient, ConnectError, Response, TransportError
from harvester.config import Config
from harvester.endpoints import REGISTRY
from harvester.log import redact
from harvester.retry import RetryPolicy, Try, retry_after
from harvester.vocabulary import ENDPOINTS, ExitCode, JobKind, OutcomeKind

logger = logging.getLogger(__name__)

# A window this wide cannot bind this client (more than 10k requests a second, every second of it).
UNBOUNDED_RATE = 10_000.0
# A server asking for a pause longer than this is reported, not waited for: check must stay quick.
MAX_WAIT = 10.0

WINDOWS = {
    "hourly": ("X-HourlyRateLimit-Limit", "X-HourlyRateLimit-Remaining", 3600),
    "daily": ("X-DailyRateLimit-Limit", "X-DailyRateLimit-Remaining", 86400),
    "tweet_ids": ("X-TweetIDRateLimit-Limit", "X-TweetIDRateLimit-Remaining", 86400),
}


@dataclass
class Probe:
    """One endpoint's answer: its status (None: no answer) and what it means."""

    endpoint: str
    status: int | None
    allowed: bool | None  # None: the answer does not tell (5xx, timeout, rate limited)
    message: str = ""


@dataclass
class Finding:
    level: str  # ok, info, warning, error, suggest
    message: str


@dataclass
class CheckResult:
    """Everything `check` found; `exit_code` 0 when every configured endpoint is allowed."""

    api_url: str
    tier: str
    configured_endpoints: list[str]
    key_valid: bool | None = None
    probes: dict[str, Probe] = field(default_factory=dict)
    announced: dict[str, dict[str, int]] = field(default_factory=dict)
    configured_limits: dict[str, Any] = field(default_factory=dict)
    suggested_limits: dict[str, Any] | None = None
    findings: list[Finding] = field(default_factory=list)
    exit_code: ExitCode = ExitCode.OK

    def add(self, level: str, message: str) -> None:
        self.findings.append(Finding(level, redact(message)))

    def as_dict(self) -> dict[str, Any]:
        return {
            "api_url": redact(self.api_url),
            "tier": self.tier,
            "key_valid": self.key_valid,
            "configured_endpoints": self.configured_endpoints,
            "endpoints": {
                name: {"status": p.status, "allowed": p.allowed, "message": redact(p.message)} for name, p in self.probes.items()
            },
            "announced_limits": self.announced,
            "configured_limits": self.configured_limits,
            "suggested_limits": self.suggested_limits,
            "findings": [{"level": f.level, "message": f.message} for f in self.findings],
            "exit_code": self.exit_code,
        }

    def lines(self) -> list[str]:
        return [f"{f.level}: {f.message}" for f in self.findings]


def check(config: Config) -> CheckResult:
    """Probe the API with the configured key and compare what it says with the configuration."""
    return asyncio.run(check_async(config))


async def check_async(config: Config) -> CheckResult:
    api, limits = config.api, config.limits
    result = CheckResult(api.url, api.tier, list(api.endpoints))
    result.configured_limits = {
        "per_second": limits.per_second,
        "per_hour": limits.per_hour,
        "per_day": limits.per_day,
        "max_per_second": limits.max_per_second,
        "concurrency": limits.concurrency,
    }
    if not api.key:
        result.add("error", "no API key configured (set ALTMETRIC_API_KEY, or [api] key in the config file)")
        result.exit_code = ExitCode.ERROR
        return result
    async with ApiClient(api, concurrency=1) as client:
        for endpoint in ENDPOINTS:
            kind = REGISTRY[JobKind(endpoint)]
            path, params = kind.probe()
            try:
                response = await _get(client, path, params)
            except ConnectError as e:
                result.probes.clear()
                result.findings = []
                result.add("error", f"the API is unreachable: {e}")
                result.exit_code = ExitCode.ERROR
                return result
            except TransportError as e:
                result.probes[endpoint] = Probe(endpoint, None, None, str(e))
                continue
            probe = _probe(endpoint, response)
            result.probes[endpoint] = probe
            _read_limits(result.announced, response.headers)
            if kind.judges_the_key:
                if response.status in (401, 403):
                    result.key_valid = False
                    break  # a key the server refuses: the other endpoints cannot tell more
                if probe.allowed:
                    result.key_valid = True
    _judge(result, config)
    return result


# One attempt, and a 429 is waited out once when the server asks for a short pause (the run's
# policy, with check's own patience: it must stay quick).
CHECK_RETRY = RetryPolicy(max_attempts=1)


async def _get(client: ApiClient, path: str, params: Mapping[str, str]) -> Response:
    """One request, through the retry policy: a transient failure is reported, not retried."""
    answers: list[Response] = []

    async def attempt(limited: int) -> Try:
        response = await client.get(path, params)
        answers.append(response)
        wait = retry_after(response.headers)
        if response.status == 429 and limited == 0 and wait is not None and wait <= MAX_WAIT:
            await asyncio.sleep(wait)
            return Try(OutcomeKind.RATE_LIMITED, response.status)
        return Try(OutcomeKind.DONE, response.status)

    await CHECK_RETRY.run(attempt)
    return answers[-1]


def _probe(endpoint: str, response: Response) -> Probe:
    text = response.body[:200].decode("utf-8", "replace").strip()
    status = response.status
    if status in (200, 404):
        return Probe(endpoint, status, True)
    if status in (401, 403):
        return Probe(endpoint, status, False, text)
    return Probe(endpoint, status, None, text)


def _read_limits(announced: dict[str, dict[str, int]], headers: Mapping[str, str]) -> None:
    for window, (limit_header, remaining_header, _) in WINDOWS.items():
        try:
            limit = int(headers[limit_header])
        except (KeyError, ValueError):
            continue
        entry = {"limit": limit}
        try:
            entry["remaining"] = int(headers[remaining_header])
        except (KeyError, ValueError):
            pass
        announced[window] = entry  # the latest answer is the freshest count


def _judge(result: CheckResult, config: Config) -> None:
    api = config.api
    counts = result.probes.get("counts")
    if result.key_valid is False and counts is not None:
        reason = "no key reached the server" if counts.status == 401 else "the key is not valid"
        result.add("error", f"{reason}: Counts answered {counts.status} ({counts.message})")
        result.exit_code = ExitCode.ERROR
        return
    if result.key_valid:
        result.add("ok", f"the key is valid (Counts answered {counts.status if counts else '?'})")
    for name in ENDPOINTS:
        probe = result.probes.get(name)
        used = name in api.endpoints
        role = "used by [api] endpoints" if used else "not in [api] endpoints"
        if probe is None:
            continue
        if probe.allowed:
            result.add("ok" if used else "info", f"{name}: allowed ({probe.status}); {role}")
        elif probe.allowed is False:
            result.add("error" if used else "info", f"{name}: not allowed for this key's tier ({probe.status}: {probe.message}); {role}")
        else:
            what = f"{probe.status}: {probe.message}" if probe.status is not None else probe.message
            result.add("error" if used else "warning", f"{name}: could not tell ({what}); {role}")
        if used and not probe.allowed:
            result.exit_code = ExitCode.ERROR
    _judge_mode(result, config)
    denied = [e for e in api.endpoints if (p := result.probes.get(e)) is not None and p.allowed is False]
    if denied:
        allowed = [e for e in ENDPOINTS if (p := result.probes.get(e)) is not None and p.allowed]
        result.add("suggest", f"[api] endpoints = {_toml_list(allowed)}")
    _judge_limits(result, config)


def _judge_mode(result: CheckResult, config: Config) -> None:
    """A change-feed nightly reads the Citations listing: say before the first night when it cannot."""
    if config.nightly.mode != "changes":
        return
    listing = result.probes.get(JobKind.CITATIONS)
    if JobKind.CITATIONS not in config.api.endpoints:
        why = "[api] endpoints leaves Citations out"
    elif listing is not None and listing.allowed is False:
        why = f"this key's tier lacks Citations ({listing.status})"
    else:
        return
    result.add("warning", f'[nightly] mode = "changes" needs Citations, and {why}: every night would run in refresh mode')
    result.add("suggest", '[nightly] mode = "refresh"')


def _judge_limits(result: CheckResult, config: Config) -> None:
    limits = config.limits
    hourly = result.announced.get("hourly", {}).get("limit")
    daily = result.announced.get("daily", {}).get("limit")
    tweets = result.announced.get("tweet_ids", {}).get("limit")
    if not result.announced:
        result.add("info", "the server announced no rate limits (no X-*RateLimit-* headers)")
    else:
        parts = []
        for label, window in (("an hour", "hourly"), ("a day", "daily"), ("tweet ids a day", "tweet_ids")):
            entry = result.announced.get(window)
            if entry is not None:
                left = f" ({entry['remaining']:,} left)" if "remaining" in entry else ""
                parts.append(f"{entry['limit']:,} {label}{left}")
        result.add("info", "limits announced: " + ", ".join(parts))
        for window in ("hourly", "daily"):
            entry = result.announced.get(window, {})
            if entry.get("remaining") == 0:
                result.add("warning", f"the {window} quota is spent: a run now would pause until the window resets")
    del tweets  # reported above; the harvester paces requests, not tweet ids
    binding_hourly = hourly if hourly is not None and hourly / 3600 < UNBOUNDED_RATE else None
    binding_daily = daily if daily is not None and daily / 86400 < UNBOUNDED_RATE else None
    if config.api.tier == "commercial":
        if binding_hourly is None and binding_daily is None:
            result.add("ok", "tier = commercial: the server announces no limit this client could reach")
            return
        window = f"{binding_hourly:,} an hour" if binding_hourly is not None else f"{binding_daily:,} a day"
        result.add("warning", f'tier = commercial, but the server announces a limit of {window}: use tier = "free" with the [limits] below')
        result.suggested_limits = _suggest(limits.per_second, binding_hourly, binding_daily, limits.per_hour, limits.per_day, free=False)
        result.add("suggest", 'tier = "free"; ' + _limits_line(result.suggested_limits))
        return
    # Free tier: the configured limits must stay within the announced ones.
    mismatched = False
    if binding_hourly is not None and limits.per_hour > binding_hourly:
        result.add("warning", f"[limits] per_hour = {limits.per_hour:,} is above the announced {binding_hourly:,} an hour")
        mismatched = True
    if binding_daily is not None and limits.per_day > binding_daily:
        result.add("warning", f"[limits] per_day = {limits.per_day:,} is above the announced {binding_daily:,} a day")
        mismatched = True
    ceiling = _per_second_ceiling(binding_hourly, binding_daily)
    if ceiling is not None and limits.per_second > ceiling:
        result.add(
            "warning", f"[limits] per_second = {limits.per_second:g} would spend the announced window early (it sustains {ceiling:g}/s)"
        )
        mismatched = True
    if binding_hourly is None and binding_daily is None and result.announced:
        result.add("info", 'tier = free, but the server announces no limit this client could reach; tier = "commercial" may fit the key')
    suggestion = _suggest(limits.per_second, binding_hourly, binding_daily, limits.per_hour, limits.per_day, free=True)
    result.suggested_limits = suggestion
    if mismatched:
        result.add("suggest", _limits_line(suggestion))
    else:
        result.add("ok", f"[limits] fit the announced limits ({_limits_line(suggestion)})")


def _per_second_ceiling(hourly: int | None, daily: int | None) -> float | None:
    rates = [limit / seconds for limit, seconds in ((hourly, 3600), (daily, 86400)) if limit is not None]
    # Rounded down to a millisecond of rate, so the suggestion never exceeds the window.
    return math.floor(min(rates) * 1000) / 1000 if rates else None


def _suggest(per_second: float, hourly: int | None, daily: int | None, per_hour: int, per_day: int, free: bool) -> dict[str, Any]:
    ceiling = _per_second_ceiling(hourly, daily)
    second = min(per_second, ceiling) if ceiling is not None and free else (ceiling if ceiling is not None else per_second)
    return {
        "per_second": second,
        "per_hour": min(per_hour, hourly) if hourly is not None and free else (hourly if hourly is not None else per_hour),
        "per_day": min(per_day, daily) if daily is not None and free else (daily if daily is not None else per_day),
    }


def _limits_line(values: Mapping[str, Any]) -> str:
    return "[limits] " + ", ".join(f"{k} = {v:g}" if isinstance(v, float) else f"{k} = {v}" for k, v in values.items())


def _toml_list(values: list[str]) -> str:
    return "[" + ", ".join(f'"{v}"' for v in values) + "]"
