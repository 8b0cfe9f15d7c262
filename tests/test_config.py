"""Config layering and validation, and that config.example.toml is complete and valid."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from harvester.config import SECTIONS, load_config
from harvester.errors import ConfigError
from tests.conftest import ROOT


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "h.toml"
    path.write_text(text)
    return str(path)


def test_layers_file_then_env_then_options(tmp_path: Path) -> None:
    path = write(tmp_path, '[api]\ntier = "commercial"\nurl = "http://file/v1"\n[limits]\nconcurrency = 8\n')
    env = {"HARVESTER_API_URL": "http://env/v1", "ALTMETRIC_API_KEY": "secret-key-123"}
    config = load_config(path, env=env, overrides={"limits.concurrency": 4, "database.url": None})
    assert config.api.tier == "commercial"
    assert config.api.url == "http://env/v1"
    assert config.api.key == "secret-key-123"
    assert config.limits.concurrency == 4
    assert config.database.url == "sqlite:///harvest.db"
    assert "secret-key-123" not in repr(config)  # the key is not in the repr (tracebacks, debug logs)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[api]\ntierr = 'free'\n", "unknown setting api.tierr"),
        ("[limits]\nconcurrency = 'many'\n", "limits.concurrency must be int"),
        ("[limits]\nper_second = true\n", "limits.per_second must be float"),
        ("[nonsense]\n", "unknown section"),
        ("[api]\ntier = 'gold'\n", "api.tier must be one of"),
        ("[api]\nendpoints = ['counts', 'stream']\n", "unknown stream"),
        ("[limits]\nconcurrency = 0\n", "limits.concurrency must be > 0"),
        ("[api\n", "h.toml"),
        ("[nightly]\ntimeframe = '2w'\n", "nightly.timeframe must be one of"),
        ("[nightly]\nrefresh_after = 'soon'\n", "nightly.refresh_after: 'soon' is not a duration"),
        ("[nightly]\nnot_found_refresh_after = '-3d'\n", "must not be negative"),
        ("[nightly]\nfilters = { doi_prefx = '10.1038' }\n", "nightly.filters has unknown doi_prefx"),
        ("[nightly]\nfilters = { doi_prefix = 10 }\n", "nightly.filters must be table of strings"),
        ("[nightly]\nnum_results = 100\n", "nightly.num_results must be 1 to 99"),
        ("[nightly]\nendpoint = 'citations'\n", "nightly.endpoint must be counts or fetch"),
    ],
)
def test_bad_files_name_the_key_and_file(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path, env={})
    assert "h.toml" in str(info.value) or "the configuration" not in str(info.value)


def test_nightly_filters_and_durations(tmp_path: Path) -> None:
    from datetime import timedelta

    from harvester.config import citation_filters, parse_duration

    path = write(tmp_path, "[nightly]\nfilters = { subjects = ['biology', 'ecology'], issn = '0028-0836' }\nrefresh_after = '36h'\n")
    nightly = load_config(path, env={}).nightly
    assert citation_filters(nightly.filters) == {"issns": "0028-0836", "subjects": "biology,ecology"}
    assert parse_duration(nightly.refresh_after) == timedelta(hours=36)
    assert [parse_duration(d) for d in ("90m", "2w", "3600s", "1.5d")] == [
        timedelta(minutes=90),
        timedelta(weeks=2),
        timedelta(hours=1),
        timedelta(hours=36),
    ]


def test_bad_environment_value() -> None:
    with pytest.raises(ConfigError, match="api.tier"):
        load_config(None, env={"HARVESTER_TIER": "platinum"})


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/h.toml", env={})


def test_example_config_documents_every_key_with_its_default(tmp_path: Path) -> None:
    example = ROOT / "config.example.toml"
    text = example.read_text()
    # Every key appears (commented out) with its default value.
    uncommented = "\n".join(line.removeprefix("# ") for line in text.splitlines() if not line.startswith("##"))
    data = tomllib.loads(uncommented)
    defaults = load_config(None, env={})
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f.name in data[section], f"config.example.toml lacks [{section}] {f.name}"
            if f.name == "key" or f.default is None:
                continue  # no default to show (TOML has no null): presence is enough
            value = getattr(getattr(defaults, section), f.name)
            expected = list(value) if isinstance(value, tuple) else value
            assert data[section][f.name] == expected, f"[{section}] {f.name}"
    # And the example, uncommented, is itself a valid config.
    path = tmp_path / "example.toml"
    path.write_text(uncommented)
    load_config(path, env={})
