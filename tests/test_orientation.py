"""Turned photos: the geometry of turning, the choice of suspects, and a real scene with turned copies."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from imc_ray import evaluate
from imc_ray.config import build_config
from imc_ray.distributed import pipeline
from imc_ray.stages.orientation import rotate_image, suspects_and_partners, unrotate_keypoints

from .conftest import SAMPLE, SAMPLE_SCENE

TURNED = {"r_43.png": 90, "r_86.png": 180, "r_99.png": 270}


@pytest.mark.parametrize("degrees", [0, 90, 180, 270])
def test_unrotate_keypoints_inverts_rotate_image(degrees: int) -> None:
    rng = np.random.default_rng(degrees)
    h, w = 7, 11
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    turned = rotate_image(image, degrees)
    ys, xs = np.mgrid[0 : turned.shape[0], 0 : turned.shape[1]]
    kp = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)
    back = unrotate_keypoints(kp, degrees, (w, h)).round().astype(int)
    np.testing.assert_array_equal(turned[kp[:, 1].astype(int), kp[:, 0].astype(int)], image[back[:, 1], back[:, 0]])


def test_suspects_and_partners() -> None:
    names = ["a", "b", "c", "d", "x"]
    counts = {("a", "b"): 500, ("a", "c"): 300, ("b", "c"): 400, ("c", "d"): 100, ("a", "x"): 3, ("b", "x"): 5}
    plan = suspects_and_partners(names, counts, min_matches=30, num_partners=2)
    assert plan == {"x": ["b", "a"]}  # partners: paired with x, most matches in the scene first
    assert suspects_and_partners(names[:4], counts, 30, 2) == {}


def _turn_gt(row: list[str], degrees: int) -> list[str]:
    """Reference pose of the camera whose image was turned counter-clockwise by ``degrees``."""
    k = degrees // 90
    rz = np.linalg.matrix_power(np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), k)
    R = rz @ np.array(row[1].split(";"), float).reshape(3, 3)
    t = rz @ np.array(row[2].split(";"), float)
    return [row[0], ";".join(map(repr, R.ravel())), ";".join(map(repr, t)), row[3]]


@pytest.fixture(scope="module")
def turned_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("turned")
    scene = root / "nerf_synthetic" / "lego"
    (scene / "images").mkdir(parents=True)
    for p in (SAMPLE_SCENE / "images").iterdir():
        if p.name in TURNED:
            Image.fromarray(rotate_image(np.asarray(Image.open(p)), TURNED[p.name])).save(scene / "images" / p.name)
        else:
            shutil.copy(p, scene / "images" / p.name)
    with open(SAMPLE_SCENE / "labels.csv") as f:
        rows = list(csv.reader(f))
    with open(scene / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(rows[0])
        w.writerows(_turn_gt(r, TURNED[r[0]]) if r[0] in TURNED else r for r in rows[1:])
    return root


@pytest.mark.slow
def test_turned_photos_register_like_upright_ones(
    turned_scene: Path, sample_run: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    rep = pipeline.run(turned_scene, out, build_config("fast"))
    lego = rep["scenes"]["nerf_synthetic/lego"]
    assert lego["rotated"] == {name: (360 - d) % 360 for name, d in TURNED.items()}
    turned = {s["scene"]: s for s in evaluate.evaluate(out / "submission.csv", turned_scene)["scenes"]}["lego"]
    upright_out, _ = sample_run
    upright = {s["scene"]: s for s in evaluate.evaluate(upright_out / "submission.csv", SAMPLE)["scenes"]}["lego"]
    assert turned["registration_rate"] >= upright["registration_rate"] - 0.02
    assert turned["auc@5"] >= upright["auc@5"] - 0.02
