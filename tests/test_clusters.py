"""IMC-2025 mode: a pile of images from two real scenes plus outliers is split into clusters."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imc_ray import cli, evaluate
from imc_ray.config import build_config
from imc_ray.distributed import pipeline

from .conftest import ROOT, SAMPLE_SCENE

FOX = ROOT.parent / "shared" / "data" / "instant_ngp" / "fox"

pytestmark = pytest.mark.slow


def _copy_scene(src: Path, names: list[str], images: Path, truth: Path) -> None:
    truth.mkdir(parents=True)
    with open(src / "labels.csv") as f:
        rows = [r for r in csv.reader(f)]
    with open(truth / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(rows[0])
        w.writerows(r for r in rows[1:] if r[0] in names)
    for n in names:
        shutil.copy(src / "images" / n, images / n)


@pytest.fixture(scope="module")
def pile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if not FOX.is_dir():
        pytest.skip(f"needs the development data at {FOX}")
    root = tmp_path_factory.mktemp("pile")
    images = root / "input" / "pile" / "mix" / "images"
    images.mkdir(parents=True)
    fox = sorted(p.name for p in (FOX / "images").iterdir())[:5]
    lego = ["r_33.png", "r_36.png", "r_43.png", "r_86.png", "r_99.png"]
    _copy_scene(FOX, fox, images, root / "truth" / "pile" / "fox")
    _copy_scene(SAMPLE_SCENE, lego, images, root / "truth" / "pile" / "lego")
    rng = np.random.default_rng(7)
    for i in range(2):  # outliers: images that belong to no scene
        Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(images / f"outlier{i}.jpg")
    return root / "input", root / "truth"


def test_pile_is_split_into_scenes(ray_local: None, pile: tuple[Path, Path], tmp_path: Path) -> None:
    input_root, truth = pile
    out = tmp_path / "out"
    rep = pipeline.run(input_root, out, build_config("fast", ["mapping.clusters=true"])).to_json()
    scene = rep["scenes"]["pile/mix"]
    assert len(scene["model_sizes"]) >= 2
    # no relaxed second attempt in clusters mode: its thresholds glued a larger fox + lego pile into one model
    assert list(scene["attempts"]) == ["default"] and scene["joined"] == []
    with open(out / "submission.csv") as f:
        labels = {r["image"]: r["scene"] for r in csv.DictReader(f)}
    assert {labels[f"outlier{i}.jpg"] for i in range(2)} == {"outliers"}
    result = evaluate.evaluate_clusters(out / "submission.csv", truth)
    [pile_score] = result["datasets"]
    assert pile_score["clusterness"] >= 0.95
    chosen = {s["scene"]: s for s in pile_score["per_scene"]}
    assert set(chosen) == {"fox", "lego"}
    assert all(s["overlap"] >= 4 for s in chosen.values())  # every scene recovered (5 images each)
    assert chosen["fox"]["cluster"] != chosen["lego"]["cluster"]
    assert cli.main(["evaluate", str(out / "submission.csv"), "--truth", str(truth), "--clusters"]) == 0
