from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

import pytest

from imc_ray.config import (
    LIMITS,
    PRESETS,
    ConfigError,
    RunConfig,
    build_config,
    check_limits,
    numeric_fields,
    parse_overrides,
)


def test_presets_resolve_and_differ() -> None:
    cfgs = {name: build_config(name) for name in PRESETS}
    assert cfgs["default"] == dataclasses.replace(RunConfig(), preset="default")
    assert cfgs["fast"].features.max_keypoints < cfgs["default"].features.max_keypoints
    assert cfgs["accurate"].features.resize > cfgs["default"].features.resize
    assert cfgs["ec2"].retrieval.allow_download is True
    assert cfgs["default"].retrieval.allow_download is False  # no hidden downloads by default


def test_overrides_are_typed() -> None:
    cfg = build_config(
        "fast",
        [
            "features.max_keypoints=512",
            "matching.filter_threshold=0.2",
            "retrieval.allow_download=true",
            "images.background=0,0,0",
            "mapping.camera_model=OPENCV",
        ],
    )
    assert cfg.features.max_keypoints == 512
    assert cfg.features.resize == 640  # from the preset
    assert cfg.matching.filter_threshold == pytest.approx(0.2)
    assert cfg.retrieval.allow_download is True
    assert cfg.images.background == (0, 0, 0)
    assert cfg.mapping.camera_model == "OPENCV"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("featurs.max_keypoints=5", "unknown config key 'featurs'"),
        ("features.max_kp=5", "unknown config key 'features.max_kp'"),
        ("features.max_keypoints=many", "not a valid int"),
        ("features.max_keypoints=1.5", "not a valid int"),
        ("retrieval.allow_download=perhaps", "not a boolean"),
        ("mapping.camera_model=FISHEYE", "not one of"),
        ("features=3", "is a section"),
        ("preset=fast", "unknown config key 'preset'"),
        ("novalue", "must look like section.key=value"),
    ],
)
def test_bad_overrides_are_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config("default", [override])


def test_unknown_preset() -> None:
    with pytest.raises(ConfigError, match="unknown preset"):
        build_config("fastest")


def test_config_is_frozen() -> None:
    cfg = build_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.features.max_keypoints = 3  # type: ignore[misc]


def test_config_file_round_trip(tmp_path: Path) -> None:
    cfg = build_config("fast", ["matching.min_matches=30"])
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg.to_dict()))
    again = build_config("default", [], path)
    assert dataclasses.replace(again, preset="fast") == cfg
    path.write_text(json.dumps({"features": {"bogus": 1}}))
    with pytest.raises(ConfigError, match="features.bogus"):
        build_config("default", [], path)


def test_parse_overrides_nests() -> None:
    assert parse_overrides(["a.b=1", "a.c=x=y"]) == {"a": {"b": "1", "c": "x=y"}}


# ----------------------------------------------------------------------------- ranges and types (issue 16)


def _fields() -> list[tuple[str, Any]]:
    """(``section.key``, type) of every leaf field of RunConfig."""
    out = []
    for section in dataclasses.fields(RunConfig):
        if section.name == "preset":
            continue
        cls = type(getattr(RunConfig(), section.name))
        hints = typing.get_type_hints(cls)
        out.extend((f"{section.name}.{f.name}", hints[f.name]) for f in dataclasses.fields(cls))
    return out


def test_every_numeric_field_has_a_documented_range() -> None:
    numeric = set(numeric_fields(build_config()))
    assert numeric, "no numeric fields found"
    assert numeric == set(LIMITS), "LIMITS must list exactly the numeric fields"
    for name in PRESETS:
        check_limits(build_config(name))  # every preset is in range


HOSTILE: list[Any] = [
    0,
    -1,
    float("nan"),
    float("inf"),
    -float("inf"),
    10**30,
    1e300,
    True,
    False,
    None,
    [],
    {},
    "",
    "x",
]
"""Values tried on every field, as JSON values (a config file) and as --set strings."""


@pytest.mark.parametrize(("key", "tp"), _fields())
def test_hostile_values_are_accepted_in_range_or_refused_in_one_line(key: str, tp: Any, tmp_path: Path) -> None:
    """Property over every field: each hostile value either resolves to an in-range config of the field's
    type, or is a ConfigError whose one-line message names the key."""
    section, name = key.split(".")
    for value in HOSTILE:
        path = tmp_path / "cfg.json"
        path.write_text(json.dumps({section: {name: value}}))
        for source in ("json", "set"):
            try:
                if source == "json":
                    cfg = build_config("default", [], path)
                else:
                    cfg = build_config("default", [f"{key}={value}"])
            except ConfigError as exc:
                message = str(exc)
                assert key in message and "\n" not in message, (source, value, message)
                continue
            got = getattr(getattr(cfg, section), name)
            if isinstance(value, bool) or value is None or isinstance(value, list | dict):
                assert source == "set" or tp is bool, f"{key}: JSON {value!r} accepted as {got!r}"
            if key in LIMITS:
                for v in got if isinstance(got, tuple) else (got,):
                    assert not isinstance(v, bool) and LIMITS[key].allows(v), (source, value, got)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("compute.image_batch_size=0", "compute.image_batch_size=0 is out of range; allowed: 1 to 4096"),
        ("compute.mapping_cpus=0", "compute.mapping_cpus=0 is out of range"),
        ("compute.cpus_per_actor=0", "compute.cpus_per_actor=0.0 is out of range"),
        ("compute.pair_batch_size=-1", "compute.pair_batch_size=-1 is out of range"),
        ("matching.filter_threshold=nan", "matching.filter_threshold=nan is out of range; allowed: 0 to 1"),
        ("matching.depth_confidence=inf", "matching.depth_confidence=inf is out of range; allowed: -1, or 0 to 1"),
        ("features.max_keypoints=-5", "features.max_keypoints=-5 is out of range"),
        ("features.resize=7", "features.resize=7 is out of range; allowed: 0, or 32 to 65536"),
        ("images.background=0,0,300", "images.background=(0, 0, 300) is out of range; allowed: 0 to 255"),
        ("mapping.num_threads=0", "allowed: -1, or 1 to 1024"),
    ],
)
def test_out_of_range_values_name_key_value_and_range(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config("default", [override])
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"compute": {"image_batch_size": True}}, "compute.image_batch_size: True is not a valid int"),
        ({"matching": {"filter_threshold": False}}, "matching.filter_threshold: False is not a valid float"),
        ({"retrieval": {"weights": 5}}, "retrieval.weights: 5 is not a string"),
        ({"retrieval": {"allow_download": 1}}, "retrieval.allow_download: 1 is not a boolean"),
        ({"images": {"background": 7}}, "images.background: expected 3 comma-separated values"),
        ([1, 2], "holds list, not a JSON object"),
        (None, "holds null, not a JSON object"),
        ("features", "holds str, not a JSON object"),
    ],
)
def test_config_file_json_types(data: Any, message: str, tmp_path: Path) -> None:
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as info:
        build_config("default", [], path)
    assert message in str(info.value)
    assert str(path) in str(info.value) or "." in message.split(":")[0]


def test_cli_out_of_range_is_a_usage_error_before_ray(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from imc_ray import cli

    code = cli.main(["run", str(tmp_path), str(tmp_path / "o"), "--set", "compute.image_batch_size=0"])
    assert code == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err == "imc-ray: config error: compute.image_batch_size=0 is out of range; allowed: 1 to 4096"
    assert not (tmp_path / "o").exists()
