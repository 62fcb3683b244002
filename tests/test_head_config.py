"""HeadConfig.from_json: validation by jsonschema against the packaged schema, errors naming the field."""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from visualad_med.model.checkpoint import FORMAT, HEAD_CONFIG_SCHEMA, HeadCheckpointError, HeadConfig
from visualad_med.model.scorings import MAP_REFERENCES, SCORINGS

ROOT = Path(__file__).resolve().parents[1]
CONFIG = HeadConfig(backbone="vit_tiny_patch16_224", weights_sha256=None, embed_dim=192, depth=12, patch_size=16,
                    image_size=224, taps=(3, 6, 9, 12), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _schema() -> dict:
    return json.loads((importlib.resources.files("visualad_med.model") / HEAD_CONFIG_SCHEMA).read_text())


def _with(**changes) -> str:
    """CONFIG's JSON with some keys replaced (or added)."""
    return json.dumps({**json.loads(CONFIG.to_json()), **changes})


def test_schema_is_valid_and_describes_every_field():
    schema = _schema()
    Draft202012Validator.check_schema(schema)
    fields = dataclasses.fields(HeadConfig)
    assert list(schema["properties"]) == [f.name for f in fields]
    assert set(schema["required"]) == {f.name for f in fields if f.default is dataclasses.MISSING
                                       and f.default_factory is dataclasses.MISSING}
    choices = {name: schema["properties"][name]["enum"] for name in ("scoring", "map_reference", "format")}
    assert choices == {"scoring": list(SCORINGS), "map_reference": list(MAP_REFERENCES), "format": [FORMAT]}


def test_schema_is_package_data():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert HEAD_CONFIG_SCHEMA in package_data["visualad_med.model"]


def test_valid_config_round_trips():
    assert HeadConfig.from_json(CONFIG.to_json()) == CONFIG
    full = dataclasses.replace(CONFIG, weights_sha256="ab" * 32, threshold=-0.5, scoring="combined",
                               selfsim_layers=(6, 9), map_reference="body", training={"epochs": 3})
    assert HeadConfig.from_json(full.to_json()) == full


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        # wrong type
        ("embed_dim", "192", "must be an integer in [1, 65536]"),
        ("depth", 12.0, "must be an integer in [1, 1024]"),
        ("patch_size", True, "must be an integer in [1, 1024]"),
        ("dropout", None, "must be a finite number in [0, 1]"),
        ("threshold", "0.5", "must be a finite number"),
        ("threshold", float("nan"), "must be a finite number"),
        ("backbone", 3, "must be a non-empty string"),
        ("training", [], "must be a JSON object"),
        ("taps", "3,6", "must be a list of 1 to 1024 items"),
        ("std", [0.25, "0.25", 0.25], "item 1 must be a finite number in [1e-06, 1000]"),
        # out of range
        ("image_size", 10**9, "must be an integer in [1, 8192]"),
        ("dropout", 1.5, "must be a finite number in [0, 1]"),
        ("selfsim_weight", 10**400, "must be a finite number in [-1e+06, 1e+06]"),
        ("mean", [0.5, 0.5], "must be a list of 3 to 3 items"),
        ("taps", [3, 0], "item 1 must be an integer in [1, 1024]"),
        ("weights_sha256", "", "must be a non-empty string"),
        # unknown choice
        ("scoring", "best", "must be one of ['visualad', 'selfsim', 'combined']"),
        ("map_reference", 7, "must be one of ['none', 'body']"),
        ("format", "visualad_med.head/0", "must be one of ['visualad_med.head/1']"),
    ],
)
def test_bad_field_is_refused_naming_the_field_and_the_rule(field, value, problem):
    with pytest.raises(HeadCheckpointError) as raised:
        HeadConfig.from_json(_with(**{field: value}))
    assert str(raised.value) == f"head config field {field!r}: {problem}, got {value!r}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (_with(colour="red", size=1), "unknown head config keys ['colour', 'size']"),
        (json.dumps({"backbone": "b", "depth": 1}),
         "head config lacks keys ['embed_dim', 'image_size', 'mean', 'patch_size', 'std', 'taps', 'weights_sha256']"),
        ("[1, 2]", "head config must be a JSON object, got list"),
        (_with(selfsim_layers=[6, 13]), "head config field 'selfsim_layers': layers beyond depth 12, got [6, 13]"),
    ],
)
def test_bad_config_shape_is_refused(text, message):
    with pytest.raises(HeadCheckpointError) as raised:
        HeadConfig.from_json(text)
    assert str(raised.value) == message


def test_invalid_json_is_refused():
    with pytest.raises(HeadCheckpointError, match="head config is not valid JSON"):
        HeadConfig.from_json("{'backbone': 1}")
