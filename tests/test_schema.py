"""brats_lightning.schema: files read back as bounded data (YAML and JSON): sizes, nesting and aliases checked
before anything is built."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from brats_lightning.errors import ConfigError
from brats_lightning.schema import read_yaml

#: a "billion laughs": nine lines whose aliases expand into 10^9 strings
LAUGHS = "\n".join(
    ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]" for i in range(8)]
    + ["data: *i"]
)


def test_a_run_config_reads_as_the_safe_loader_reads_it(tmp_path: Path) -> None:
    doc = {"data": {"root": None, "crop_size": [144, 192], "modalities": ["flair", "t1"]}, "seed": 3, "x": "${a.b}"}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert read_yaml(path, "run config") == yaml.safe_load(path.read_text()) == doc


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (LAUGHS, r"config.yaml: the run config is not usable YAML \(an alias \(\*a\)"),
        ("x: " + "[" * 100_000 + "]" * 100_000, r"config.yaml: the run config is not usable YAML \(nested more than"),
        ("data: !!python/object/apply:os.system [echo hi]", r"config.yaml: the run config is not usable YAML"),
        ("data: [unclosed", r"config.yaml: the run config is not usable YAML"),
    ],
    ids=["billion laughs", "deep", "python tag", "broken"],
)
def test_a_hostile_yaml_file_is_one_line_naming_it(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_yaml(path, "run config")


def test_a_deep_cache_record_is_rebuilt_not_a_crash(tmp_path: Path, synthetic_root: Path) -> None:
    """A prepared case's meta.json nested 100,000 deep is derived data gone bad: not fresh, so prepared again."""
    from brats_lightning.data.cache import is_fresh
    from brats_lightning.data.layouts import discover_cases

    case = discover_cases(synthetic_root)[0]
    (tmp_path / "meta.json").write_text('{"cache_version": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert is_fresh(tmp_path, case) is False
    (tmp_path / "meta.json").write_text(json.dumps({"cache_version": -1}))
    assert is_fresh(tmp_path, case) is False
