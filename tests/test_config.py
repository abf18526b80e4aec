from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from imc_ray.config import PRESETS, ConfigError, RunConfig, build_config, parse_overrides


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
