"""Shared fixtures: the bundled sample scene, a real local Ray cluster, and one real pipeline run."""

from __future__ import annotations

import io
import os
import shutil
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples"
SAMPLE_SCENE = SAMPLE / "nerf_synthetic" / "lego"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A private local Ray cluster (never attaches to a running one), shut down at the end."""
    import ray

    os.environ.pop("RAY_ADDRESS", None)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


SMALL = ("r_20.png", "r_28.png", "r_33.png", "r_36.png", "r_43.png", "r_46.png")
"""Six of the bundled lego views (15 pairs): for tests of how a run is launched, not of what it finds."""


def small_sample(root: Path) -> Path:
    """``root/nerf_synthetic/lego/images`` with the :data:`SMALL` views; returns ``root``."""
    images = root / "nerf_synthetic" / "lego" / "images"
    images.mkdir(parents=True)
    for name in SMALL:
        shutil.copy(SAMPLE_SCENE / "images" / name, images / name)
    return root


@pytest.fixture(scope="session")
def sample_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled scene plus an unreadable file in it, and a one-image scene."""
    root = tmp_path_factory.mktemp("input")
    shutil.copytree(SAMPLE, root, dirs_exist_ok=True)
    (root / "nerf_synthetic" / "lego" / "images" / "broken.jpg").write_bytes(b"")
    single = root / "nerf_synthetic" / "single" / "images"
    single.mkdir(parents=True)
    shutil.copy(SAMPLE_SCENE / "images" / "r_20.png", single)
    make_odd_scene(root / "odd" / "mixed" / "images")
    pair = root / "odd" / "pair" / "images"  # two views: COLMAP's mappers discard 2-image models
    pair.mkdir(parents=True)
    for name in ("r_33.png", "r_36.png"):
        shutil.copy(SAMPLE_SCENE / "images" / name, pair)
    disjoint = root / "odd" / "disjoint" / "images"  # images that share nothing
    disjoint.mkdir(parents=True)
    for seed in (1, 2, 3):
        noise = np.random.default_rng(seed).integers(0, 256, (240, 320, 3), dtype=np.uint8)
        Image.fromarray(noise).save(disjoint / f"noise{seed}.png")
    (root / "odd" / "empty" / "images").mkdir(parents=True)
    return root


BAD_FILES = {
    "empty.jpg": "empty file",
    "text.jpg": "not a readable image",
    "truncated.jpg": "corrupt or truncated",
    "tiny.png": "smaller than images.min_side",
    "bomb.png": "more than images.max_pixels",
}
"""Bad inputs of the ``odd/mixed`` scene and the words their error must contain."""

ODD_GOOD = ("gray.png", "deep16.png", "cmyk.jpg", "exif_rotated.jpg", "ñandú r_43.png", "rgba.png")
"""Unusual but valid images of the ``odd/mixed`` scene (lego views)."""


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def make_odd_scene(images: Path) -> None:
    """Unusual valid images (grayscale, 16-bit, CMYK, EXIF-rotated, non-ASCII name, RGBA) and bad files."""
    images.mkdir(parents=True)
    src = SAMPLE_SCENE / "images"
    rgb = {n: Image.open(src / n).convert("RGB") for n in ("r_20.png", "r_28.png", "r_33.png", "r_36.png")}
    rgb["r_20.png"].convert("L").save(images / "gray.png")
    deep = (np.asarray(rgb["r_28.png"].convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(deep).save(images / "deep16.png")
    rgb["r_33.png"].convert("CMYK").save(images / "cmyk.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 3  # stored upside down; displays upright after EXIF rotation
    rgb["r_36.png"].rotate(180).save(images / "exif_rotated.jpg", exif=exif, quality=95)
    shutil.copy(src / "r_43.png", images / "ñandú r_43.png")
    shutil.copy(src / "r_46.png", images / "rgba.png")
    (images / "empty.jpg").write_bytes(b"")
    (images / "text.jpg").write_text("this is not a JPEG")
    buf = io.BytesIO()
    rgb["r_20.png"].save(buf, format="JPEG", quality=90)
    (images / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    Image.new("RGB", (1, 1)).save(images / "tiny.png")
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)  # 30000x30000 RGB, no pixel data at all
    (images / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b""))


@pytest.fixture(scope="session")
def sample_run(
    ray_local: None, sample_input: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Any]]:
    """One real end-to-end run of the Ray pipeline (real models, real pycolmap) on ``sample_input``."""
    from imc_ray.config import build_config
    from imc_ray.distributed import pipeline

    out = tmp_path_factory.mktemp("sample_run")
    rep = pipeline.run(sample_input, out, build_config(*SAMPLE_CONFIG)).to_json()
    return out, rep


def read_poses(submission: Path, scene: tuple[str, str] | None = None) -> dict[tuple[str, str, str], Any]:
    """``(dataset, scene, image) -> evaluate.Pose`` (None when unregistered) of a submission CSV,
    optionally of one ``(dataset, scene)`` only."""
    import csv

    from imc_ray import evaluate

    with open(submission) as f:
        rows = list(csv.DictReader(f))
    out: dict[tuple[str, str, str], Any] = {}
    for r in rows:
        if scene is not None and (r["dataset"], r["scene"]) != scene:
            continue
        R = np.array(r["rotation_matrix"].split(";"), float).reshape(3, 3)
        t = np.array(r["translation_vector"].split(";"), float)
        out[(r["dataset"], r["scene"], r["image"])] = evaluate.Pose(R, t) if np.isfinite(R).all() else None
    return out


def assert_same_poses(got: dict[tuple[str, str, str], Any], want: dict[tuple[str, str, str], Any]) -> None:
    """Same images, same registered set, poses equal to 1e-6 (one mapping thread is bit-reproducible)."""
    assert set(got) == set(want)
    registered = {k for k, p in got.items() if p is not None}
    assert registered == {k for k, p in want.items() if p is not None}
    for k in registered:
        np.testing.assert_allclose(got[k].R, want[k].R, atol=1e-6, err_msg=str(k))
        np.testing.assert_allclose(got[k].t, want[k].t, atol=1e-6, err_msg=str(k))


SAMPLE_CONFIG = ("fast", ["mapping.num_threads=1"])
"""The settings of ``sample_run``: one mapping thread makes pycolmap bit-reproducible (with two threads,
bundle adjustment is not), so reruns can be compared exactly."""

QUICK_CONFIG = ("fast", ["mapping.num_threads=1", "features.resize=320", "features.max_keypoints=512"])
""":data:`SAMPLE_CONFIG` with smaller images and fewer keypoints (a quarter of the pixels, half the keypoints
of the fast preset): for tests of how a run is launched, resumed, interrupted or spread over nodes, not of
what it finds. Every stage still runs (the orientation check included), and one mapping thread keeps it
bit-reproducible."""


def config_args(config: tuple[str, list[str]]) -> list[str]:
    """``--preset NAME --set K=V ...`` of ``config`` for ``imc-ray run``."""
    preset, overrides = config
    return ["--preset", preset, *(arg for o in overrides for arg in ("--set", o))]


@pytest.fixture(scope="session")
def odd_run(
    ray_local: None, sample_input: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Any]]:
    """One uninterrupted real run (in-process, on ``ray_local``) with :data:`QUICK_CONFIG` of the sample's
    ``odd`` dataset (its scenes ``mixed``, ``pair``, ``disjoint`` and ``empty``): the reference of tests
    that run its ``odd/mixed`` scene alone and killed, resumed or spread over nodes (so these also check
    that a scene's outputs do not depend on the other scenes of a run)."""
    from imc_ray.config import build_config
    from imc_ray.distributed import pipeline

    root = tmp_path_factory.mktemp("odd_input")
    shutil.copytree(sample_input / "odd", root / "odd")
    out = tmp_path_factory.mktemp("odd_run")
    rep = pipeline.run(root, out, build_config(*QUICK_CONFIG))
    return out, rep
