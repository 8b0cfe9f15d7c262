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
from pathlib import Path
from typing import Any

from harvester.errors import ConfigError

ENDPOINTS = ("counts", "fetch", "citations")
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


@dataclass(frozen=True)
class Config:
    api: ApiConfig = ApiConfig()
    limits: LimitsConfig = LimitsConfig()
    database: DatabaseConfig = DatabaseConfig()
    fetch: FetchConfig = FetchConfig()
    source: str | None = None  # the TOML file read, for messages

    def with_overrides(self, overrides: Mapping[str, Any]) -> Config:
        """Return a copy with dotted keys ("limits.concurrency") replaced; None values are ignored."""
        return _apply(self, {k: v for k, v in overrides.items() if v is not None}, "the command line")


SECTIONS: dict[str, type] = {"api": ApiConfig, "limits": LimitsConfig, "database": DatabaseConfig, "fetch": FetchConfig}

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
    if path is None:
        path = env.get("HARVESTER_CONFIG") or ("harvester.toml" if Path("harvester.toml").is_file() else None)
    config = Config()
    if path is not None:
        config = _apply(config, _read_toml(Path(path)), str(path))
        config = dataclasses.replace(config, source=str(path))
    from_env = {dotted: env[name] for name, dotted in ENV_VARS.items() if env.get(name)}
    config = _apply(config, from_env, "the environment")
    if overrides:
        config = config.with_overrides(overrides)
    _validate(config)
    return config


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
        if hint is float:
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
        elif typing.get_origin(hint) is tuple:
            if from_text and isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                return tuple(value)
    except ValueError:
        pass
    expected = getattr(hint, "__name__", str(hint)).replace("tuple", "list of strings")
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
