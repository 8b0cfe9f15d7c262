"""Settings, layered once into frozen dataclasses.

Layers, later wins: defaults here -> TOML file -> environment -> command-line
options. Unknown keys and wrong types are errors naming the key and the file,
because a typo in a nightly cron config must not silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from harvester.errors import ConfigError
from harvester.parse import TIMEFRAMES as TIMEFRAMES  # one definition of the API's timeframes, re-exported
from harvester.vocabulary import ENDPOINTS, ID_ENDPOINTS

# The Citations endpoint's filters; `issn` is the API's alias of `issns`.
CITATION_FILTERS = ("cited_in", "doi_prefix", "issns", "order_by", "nlmid", "subjects")
MAX_NUM_RESULTS = 99
TIERS = ("free", "commercial")
DEFAULT_API_URL = "https://api.altmetric.com/v1"


@dataclass(frozen=True)
class ApiConfig:
    url: str = DEFAULT_API_URL
    # repr=False: a config printed in a traceback or a debug log must not show the key.
    key: str | None = field(default=None, repr=False)
    tier: str = "free"
    endpoints: tuple[str, ...] = ENDPOINTS
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    total_timeout: float = 60.0


@dataclass(frozen=True)
class LimitsConfig:
    per_second: float = 1.0
    per_hour: int = 3600
    per_day: int = 86400
    concurrency: int = 32
    max_per_second: float | None = None
    max_attempts: int = 5
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    max_outage: float = 1800.0


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = "sqlite:///harvest.db"


@dataclass(frozen=True)
class FetchConfig:
    include_sources: tuple[str, ...] = ()
    exclude_sources: tuple[str, ...] = ()
    include_sections: tuple[str, ...] = ()
    post_types: str | None = None


NIGHTLY_MODES = ("refresh", "changes")


@dataclass(frozen=True)
class NightlyConfig:
    timeframe: str = "1d"
    # {cited_in = "news", doi_prefix = "10.1038", ...}; lists become comma-separated values.
    filters: dict[str, str] = field(default_factory=dict)
    num_results: int = MAX_NUM_RESULTS
    pages: int | None = None  # None: every page of the listing
    # A daily time series needs every output harvested every night: 20h leaves room
    # for a nightly that started later yesterday than today.
    refresh_after: str = "20h"
    not_found_refresh_after: str = "30d"
    max_items: int | None = None
    endpoint: str = "counts"
    # Every night adds an item per output: after this long a nightly's done items are deleted
    # (their data stays in outputs and counts_snapshots). "never" keeps them all.
    keep_done_items: str = "30d"
    # An output Citations listed (and no list of the user's holds) is refreshed for this long
    # after it was last listed, after the user's lists; then it is left alone.
    follow_discovered: str = "30d"
    # "refresh": ask every due output each night (one request an output). "changes": ask the
    # Citations listing what changed since the last complete night and carry the rest forward
    # (harvester/changefeed.py, docs/nightly.md).
    mode: str = "refresh"
    # In "changes" mode, each tracked output is asked again at least this often, oldest first, in
    # the quota the listing leaves: readers (and recalculated scores) change without attention.
    full_refresh_after: str = "30d"


@dataclass(frozen=True)
class WorkersConfig:
    # An item claimed by a worker is its own for this long, renewed while the work goes
    # on; a worker frozen or cut off longer loses it to the others.
    lease: str = "5m"


ARCHIVE_KEEP = ("latest", "all")


@dataclass(frozen=True)
class ArchiveConfig:
    # Every 200 body, compressed, so that `harvester reparse` can rebuild the tables without the API.
    enabled: bool = True
    # "latest": one body per endpoint and id (the newest); "all": one per endpoint, id and UTC day.
    keep: str = "latest"


@dataclass(frozen=True)
class Config:
    api: ApiConfig = ApiConfig()
    limits: LimitsConfig = LimitsConfig()
    database: DatabaseConfig = DatabaseConfig()
    fetch: FetchConfig = FetchConfig()
    nightly: NightlyConfig = NightlyConfig()
    workers: WorkersConfig = WorkersConfig()
    archive: ArchiveConfig = ArchiveConfig()
    source: str | None = None  # the TOML file read, for messages

    def with_overrides(self, overrides: Mapping[str, Any]) -> Config:
        """Return a copy with dotted keys ("limits.concurrency") replaced; None values are ignored."""
        return _apply(self, {k: v for k, v in overrides.items() if v is not None}, "the command line")


SECTIONS: dict[str, type] = {
    "api": ApiConfig,
    "limits": LimitsConfig,
    "database": DatabaseConfig,
    "fetch": FetchConfig,
    "nightly": NightlyConfig,
    "workers": WorkersConfig,
    "archive": ArchiveConfig,
}

ENV_VARS = {
    "ALTMETRIC_API_KEY": "api.key",
    "HARVESTER_API_URL": "api.url",
    "HARVESTER_DATABASE_URL": "database.url",
    "HARVESTER_TIER": "api.tier",
}


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the Config from the file, the environment and the options."""
    env = os.environ if env is None else env
    path = config_path(path, env)
    config = Config()
    if path is not None:
        config = _apply(config, _anchored(_read_toml(Path(path)), Path(path).parent), str(path))
        config = dataclasses.replace(config, source=str(path))
    from_env = {dotted: env[name] for name, dotted in ENV_VARS.items() if env.get(name)}
    config = _apply(config, from_env, "the environment")
    if overrides:
        config = config.with_overrides(overrides)
    _validate(config)
    return config


def config_path(path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> str | os.PathLike[str] | None:
    """The file to read: --config, else $HARVESTER_CONFIG, else ./harvester.toml if present."""
    if path is None:
        path = env.get("HARVESTER_CONFIG") or ("harvester.toml" if Path("harvester.toml").is_file() else None)
    return path


def explain_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> list[tuple[str, Any, str]]:
    """Every setting as (dotted name, effective value, where it came from), in section order.

    The source is "default", "file PATH", "environment VAR" or "option"; the later layer
    wins, as in load_config (which this calls, so an invalid configuration raises the same error).
    """
    env = os.environ if env is None else env
    config = load_config(path, env, overrides)
    path = config_path(path, env)
    sources: dict[str, str] = {}
    if path is not None:
        sources.update({dotted: f"file {path}" for dotted in _read_toml(Path(path))})
    sources.update({dotted: f"environment {name}" for name, dotted in ENV_VARS.items() if env.get(name)})
    sources.update({dotted: "option" for dotted, value in (overrides or {}).items() if value is not None})
    out = []
    for section, cls in SECTIONS.items():
        values = getattr(config, section)
        for f in dataclasses.fields(cls):
            dotted = f"{section}.{f.name}"
            out.append((dotted, getattr(values, f.name), sources.get(dotted, "default")))
    return out


def _anchored(flat: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A relative SQLite path in a config file is relative to the file's folder, as cron and a pasted
    `--config` from another folder expect; on the command line or in the environment it stays
    relative to the working directory, as any path there is."""
    url = flat.get("database.url")
    if not isinstance(url, str):
        return flat
    try:
        parsed = make_url(url)
    except ArgumentError:
        return flat  # _validate says what is wrong with it
    name = parsed.database
    if parsed.get_backend_name() != "sqlite" or name in (None, "", ":memory:") or name.startswith("file:"):
        return flat
    path = Path(name).expanduser()
    if path.is_absolute():
        return flat
    return flat | {"database.url": parsed.set(database=str(folder.resolve() / path)).render_as_string(hide_password=False)}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"config file {path}: {e}") from None
    flat: dict[str, Any] = {}
    for section, values in data.items():
        if section not in SECTIONS:
            raise ConfigError(f"{path}: unknown section [{section}] (known: {', '.join(SECTIONS)})")
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: [{section}] must be a table")
        for key, value in values.items():
            flat[f"{section}.{key}"] = value
    return flat


def _apply(config: Config, values: Mapping[str, Any], where: str) -> Config:
    sections = {name: getattr(config, name) for name in SECTIONS}
    for dotted, raw in values.items():
        section, _, key = dotted.partition(".")
        cls = SECTIONS.get(section)
        known = {f.name: f for f in dataclasses.fields(cls)} if cls else {}
        if key not in known:
            raise ConfigError(f"{where}: unknown setting {dotted}")
        value = _coerce(raw, typing.get_type_hints(cls)[key], dotted, where, from_text=where == "the environment")
        sections[section] = dataclasses.replace(sections[section], **{key: value})
    return dataclasses.replace(config, **sections)


def _coerce(value: Any, hint: Any, name: str, where: str, from_text: bool) -> Any:
    """Check (and for environment strings, convert) a value against the field's type."""
    optional = isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)
    if optional:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if value is None and optional:
        return None
    try:
        if hint is bool:
            if from_text and isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
                return value.strip().lower() in ("true", "1")
            if isinstance(value, bool):
                return value
        elif hint is float:
            if from_text and isinstance(value, str):
                return float(value)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        elif hint is int:
            if from_text and isinstance(value, str):
                return int(value)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif hint is str:
            if isinstance(value, str):
                return value
        elif typing.get_origin(hint) is dict:
            if isinstance(value, dict) and all(isinstance(v, (str, list)) for v in value.values()):
                return {str(k): v if isinstance(v, str) else ",".join(map(str, v)) for k, v in value.items()}
        elif typing.get_origin(hint) is tuple:
            if from_text and isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                return tuple(value)
    except ValueError:
        pass
    expected = getattr(hint, "__name__", str(hint)).replace("tuple", "list of strings").replace("dict", "table of strings")
    raise ConfigError(f"{where}: {name} must be {expected}, not {value!r}")


def _validate(config: Config) -> None:
    where = config.source or "the configuration"
    api, limits = config.api, config.limits
    if api.tier not in TIERS:
        raise ConfigError(f"{where}: api.tier must be one of {', '.join(TIERS)}, not {api.tier!r}")
    bad = [e for e in api.endpoints if e not in ENDPOINTS]
    if bad:
        raise ConfigError(f"{where}: api.endpoints has unknown {', '.join(bad)} (known: {', '.join(ENDPOINTS)})")
    if not api.url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: api.url must start with http:// or https://")
    for name in ("connect_timeout", "read_timeout", "total_timeout"):
        if getattr(api, name) <= 0:
            raise ConfigError(f"{where}: api.{name} must be > 0")
    for name in ("per_second", "per_hour", "per_day", "concurrency", "max_attempts", "backoff_max", "max_outage"):
        if getattr(limits, name) <= 0:
            raise ConfigError(f"{where}: limits.{name} must be > 0")
    if limits.backoff_base < 0:
        raise ConfigError(f"{where}: limits.backoff_base must be >= 0")
    if limits.max_per_second is not None and limits.max_per_second <= 0:
        raise ConfigError(f"{where}: limits.max_per_second must be > 0")
    _validate_nightly(config.nightly, where)
    if config.archive.keep not in ARCHIVE_KEEP:
        raise ConfigError(f"{where}: archive.keep must be one of {', '.join(ARCHIVE_KEEP)}, not {config.archive.keep!r}")
    try:
        if parse_duration(config.workers.lease).total_seconds() < 1:
            raise ValueError("must be at least 1s")
    except ValueError as e:
        raise ConfigError(f"{where}: workers.lease: {e}") from None


def _validate_nightly(n: NightlyConfig, where: str) -> None:
    if n.timeframe not in TIMEFRAMES:
        raise ConfigError(f"{where}: nightly.timeframe must be one of {' '.join(TIMEFRAMES)}, not {n.timeframe!r}")
    unknown = [k for k in n.filters if k not in (*CITATION_FILTERS, "issn")]
    if unknown:
        raise ConfigError(f"{where}: nightly.filters has unknown {', '.join(unknown)} (known: {', '.join(CITATION_FILTERS)})")
    if not 1 <= n.num_results <= MAX_NUM_RESULTS:
        raise ConfigError(f"{where}: nightly.num_results must be 1 to {MAX_NUM_RESULTS}")
    if n.pages is not None and n.pages < 1:
        raise ConfigError(f"{where}: nightly.pages must be >= 1")
    if n.max_items is not None and n.max_items < 0:
        raise ConfigError(f"{where}: nightly.max_items must be >= 0")
    if n.endpoint not in ID_ENDPOINTS:
        raise ConfigError(f"{where}: nightly.endpoint must be {' or '.join(ID_ENDPOINTS)}, not {n.endpoint!r}")
    if n.mode not in NIGHTLY_MODES:
        raise ConfigError(f"{where}: nightly.mode must be {' or '.join(repr(m) for m in NIGHTLY_MODES)}, not {n.mode!r}")
    if n.mode == "changes":
        # A filtered listing vouches only for the outputs the filter covers, and only a DOI prefix
        # can be matched against the database: other filters would carry values nobody checked.
        others = sorted(k for k in n.filters if k != "doi_prefix")
        if others:
            raise ConfigError(f'{where}: nightly.filters: mode = "changes" accepts only doi_prefix, not {", ".join(others)}')
    for name in ("refresh_after", "not_found_refresh_after", "keep_done_items", "follow_discovered", "full_refresh_after"):
        if name == "keep_done_items" and n.keep_done_items == "never":
            continue
        try:
            parse_duration(getattr(n, name))
        except ValueError as e:
            raise ConfigError(f"{where}: nightly.{name}: {e}") from None


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> timedelta:
    """'20h', '7d', '90m', '2w', '3600s' -> a timedelta."""
    value = text.strip().lower()
    try:
        number = float(value[:-1])
        seconds = number * _UNITS[value[-1]]
    except (KeyError, ValueError, IndexError):
        raise ValueError(f"{text!r} is not a duration like 20h, 7d or 90m") from None
    if number < 0:
        raise ValueError(f"{text!r} must not be negative")
    return timedelta(seconds=seconds)


def filters_text(filters: Mapping[str, str] | None) -> str:
    """Canonical filters as stored in citation_activity.filters and nightly_runs.filters: 'a=1&b=2', '' for none."""
    return "&".join(f"{k}={v}" for k, v in (filters or {}).items())


def citation_filters(filters: Mapping[str, str | None]) -> dict[str, str]:
    """The filters a query sends, in alphabetical order (so equal queries compare equal); `issn` becomes `issns`."""
    given = {("issns" if k == "issn" else k): v for k, v in filters.items() if v}
    return {k: str(given[k]) for k in sorted(given)}
