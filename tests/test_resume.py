"""Rerunning into the same OUTPUT resumes: finished work is reused, changed settings invalidate exactly
the stages they shape, and outputs equal those of the first run."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from imc_ray.config import build_config, stage_keys
from imc_ray.distributed import pipeline

from .conftest import BAD_FILES, ODD_GOOD, SAMPLE_CONFIG

Run = tuple[Path, dict[str, Any]]


def _poses(path: Path) -> dict[str, str]:
    with open(path) as f:
        return {r["image"]: r["rotation_matrix"] + "|" + r["translation_vector"] for r in csv.DictReader(f)}


def test_stage_keys_follow_dependencies() -> None:
    base = stage_keys(build_config("fast"))
    more_kp = stage_keys(build_config("fast", ["features.max_keypoints=512"]))
    assert more_kp.features != base.features and more_kp.matches != base.matches and more_kp.mapping != base.mapping
    glue = stage_keys(build_config("fast", ["matching.filter_threshold=0.2"]))
    assert glue.features == base.features and glue.matches != base.matches
    assert glue.mapping != base.mapping
    colmap = stage_keys(build_config("fast", ["mapping.min_num_inliers=30"]))
    assert colmap.matches == base.matches and colmap.mapping != base.mapping
    speed = stage_keys(build_config("fast", ["compute.pair_batch_size=4", "compute.max_actors=1"]))
    assert speed == base


def _copy_of(sample_run: Run, tmp_path: Path) -> Path:
    """A private copy of the shared run's output: other tests (the viewer's) read the original."""
    out = tmp_path / "out"
    shutil.copytree(sample_run[0], out)
    return out


def test_rerun_reuses_everything(sample_run: Run, sample_input: Path, tmp_path: Path) -> None:
    out = _copy_of(sample_run, tmp_path)
    before = _poses(out / "submission.csv")
    rep = pipeline.run(sample_input, out, build_config(*SAMPLE_CONFIG)).to_json()
    n_good = 10 + 1 + len(ODD_GOOD) + 2 + 3  # lego, one-image scene, unusual images, pair, disjoint
    assert rep["stages"]["features"]["reused"] == n_good
    assert rep["stages"]["features"]["images"] == 1 + len(BAD_FILES)  # only unreadable files are tried again
    n_pairs = 45 + len(ODD_GOOD) * (len(ODD_GOOD) - 1) // 2 + 1 + 3
    assert rep["stages"]["matching"]["reused"] == n_pairs and rep["stages"]["matching"]["pairs"] == 0
    assert rep["stages"]["mapping"]["reused"] == 5
    assert _poses(out / "submission.csv") == before
    assert json.loads((out / "run.json").read_text())["stages"]["matching"]["reused"] == n_pairs


def test_changed_matching_setting_recomputes_matches_only(sample_run: Run, sample_input: Path, tmp_path: Path) -> None:
    """On the sample's small ``odd`` scenes (unusual images, a pair, disjoint views): 15 + 1 + 3 pairs."""
    out = _copy_of(sample_run, tmp_path)
    odd = tmp_path / "input"
    shutil.copytree(sample_input / "odd", odd / "odd")
    cfg = build_config(SAMPLE_CONFIG[0], [*SAMPLE_CONFIG[1], "matching.filter_threshold=0.3"])
    rep = pipeline.run(odd, out, cfg).to_json()
    assert rep["stages"]["features"]["reused"] == len(ODD_GOOD) + 2 + 3
    assert rep["stages"]["matching"]["reused"] == 0
    assert rep["stages"]["matching"]["pairs"] == len(ODD_GOOD) * (len(ODD_GOOD) - 1) // 2 + 1 + 3
    assert rep["stages"]["mapping"]["reused"] == 0
    assert rep["scenes"]["odd/mixed"]["num_registered"] >= 5
    # shards of both configs stay side by side and are never mixed
    scene = out / "odd" / "mixed" / "shards"
    dirs = sorted(p.name for p in scene.glob("matches-*"))
    assert len(dirs) == 2
    assert np.all([len(list((scene / d).glob("*.parquet"))) > 0 for d in dirs])
