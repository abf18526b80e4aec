"""Test scenes built from real photos, and their features and matches computed by the real stage functions
(ALIKED, LightGlue; no Ray), written as the pipeline writes them so that ``mapping.run`` can read them."""

from __future__ import annotations

import importlib.util
import itertools
import shutil
from pathlib import Path
from types import ModuleType

import torch

from imc_ray.config import FeaturesConfig, ImagesConfig, MatchingConfig
from imc_ray.formats import (
    Features,
    SceneLayout,
    StageKeys,
    feature_rows,
    match_rows,
    write_features_h5,
    write_shard,
)
from imc_ray.stages import catalog, features, matching

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
FOX = SHARED / "instant_ngp" / "fox"
"""25 real phone photos with reference poses (non-commercial licence: read from ../shared, never bundled)."""
KEYS = StageKeys(retrieval="", features="", matches="test", mapping="test")
"""Stage keys of the match shards written by :func:`write_scene` (and of the mapping that reads them)."""


def camera_scenes() -> ModuleType:
    """``bench/camera_scenes.py`` (the two-camera scene builder) as a module."""
    spec = importlib.util.spec_from_file_location("camera_scenes", ROOT / "bench" / "camera_scenes.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def subset(source: Path, dest: Path, step: int) -> Path:
    """``dest`` with every ``step``-th photo of ``source`` (sorted) and their rows of ``labels.csv``."""
    lines = (source / "labels.csv").read_text().splitlines()
    rows = sorted(lines[1:])[::step]
    (dest / "images").mkdir(parents=True)
    for row in rows:
        shutil.copy(source / "images" / row.split(",")[0], dest / "images")
    (dest / "labels.csv").write_text("\n".join([lines[0], *rows]) + "\n")
    return dest


def extract(paths: list[Path], cfg: FeaturesConfig) -> dict[str, Features]:
    """ALIKED features of the images at ``paths`` (CPU), by file name."""
    device = torch.device("cpu")
    model = features.load_aliked(cfg, device)
    out = {}
    for path in paths:
        image, size = catalog.load_image(path, ImagesConfig(), cfg.resize)
        out[path.name] = features.extract(model, [image], [size], device)[0]
    return out


def match_all(feats: dict[str, Features], known: dict[tuple[str, str], tuple] | None = None) -> dict:
    """LightGlue matches of every pair of ``feats`` (name0 < name1); pairs in ``known`` are taken from it."""
    device = torch.device("cpu")
    model = matching.load_lightglue(MatchingConfig(), device)
    known = known or {}
    return {
        (a, b): known[(a, b)] if (a, b) in known else matching.match_pair(model, feats[a], feats[b], device)
        for a, b in itertools.combinations(sorted(feats), 2)
    }


def write_scene(scene_dir: Path, feats: dict[str, Features], matches: dict) -> SceneLayout:
    """One feature shard, ``features.h5`` and one match shard (stage keys :data:`KEYS`) in ``scene_dir``, as
    the pipeline writes them; returns the scene's layout."""
    layout = SceneLayout(scene_dir, KEYS)
    scene_dir.mkdir(parents=True, exist_ok=True)
    write_shard(layout.feature_shards, feature_rows("d", "s", sorted(feats.items())))
    write_features_h5(layout.features_h5, feats)
    rows = [(a, b, m, s) for (a, b), (m, s) in sorted(matches.items())]
    write_shard(layout.match_shards, match_rows("d", "s", rows))
    return layout
