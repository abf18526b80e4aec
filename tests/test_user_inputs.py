"""What photogrammetry users bring (issue 17): masks (COLMAP's ``masks/<image name>.png``), their own pairs
file (hloc's pairs.txt) and GPS in EXIF, on real photos through the real Ray pipeline."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pycolmap
import pytest
import torch
from PIL import ExifTags, Image

from imc_ray.config import FeaturesConfig, ImagesConfig, build_config
from imc_ray.formats import SceneLayout, read_features_h5, read_pairs
from imc_ray.stages import catalog, features, geo

from . import scenes
from .conftest import SAMPLE_CONFIG


def _photo(path: Path, size: tuple[int, int], orientation: int = 1) -> np.ndarray:
    """A JPEG of ``size`` (stored pixels) with an EXIF orientation; returns its stored pixels (h, w, 3)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    pixels[: size[1] // 3] = 255  # a bright band on top of the stored image
    im = Image.fromarray(pixels)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(path, "JPEG", exif=exif.tobytes(), quality=100)
    return pixels


def test_masks_are_found_by_colmap_name_and_strays_are_named(tmp_path: Path, caplog: Any) -> None:
    scene = tmp_path / "ds" / "sc"
    _photo(scene / "images" / "a.jpg", (60, 40))
    _photo(scene / "images" / "sub" / "b.jpg", (60, 40))
    (scene / "masks" / "sub").mkdir(parents=True)
    Image.new("L", (60, 40), 255).save(scene / "masks" / "a.jpg.png")
    Image.new("L", (60, 40), 255).save(scene / "masks" / "sub" / "b.png")  # not COLMAP's name: b.jpg.png
    with caplog.at_level(logging.WARNING):
        [found] = catalog.find_scenes(tmp_path)
    masks = {r.name: r.mask_file for r in found.images}
    assert masks == {"a.jpg": str(scene / "masks" / "a.jpg.png"), "sub/b.jpg": ""}
    assert "sub/b.png" in caplog.text and "<image name>.png" in caplog.text
    assert found.folder == scene and not found.problems  # masks/ is not read as photos


def test_mask_follows_the_exif_turn_and_a_wrong_size_is_refused(tmp_path: Path) -> None:
    photo = tmp_path / "images" / "turned.jpg"
    _photo(photo, (60, 40), orientation=6)  # EXIF: turn by 90 degrees to display
    stored = np.asarray(Image.open(photo))  # the pixels as stored, not turned
    decoded = catalog.decode_image(photo, ImagesConfig())
    assert decoded.shape[:2] == (60, 40)
    mask_file = tmp_path / "masks" / "turned.jpg.png"
    mask_file.parent.mkdir()
    Image.fromarray(((stored.mean(axis=2) < 250) * 255).astype(np.uint8)).save(mask_file)  # in stored pixels
    mask = catalog.load_mask(mask_file, photo, (40, 60), (40, 60))
    np.testing.assert_array_equal(mask, decoded.mean(axis=2) < 250)  # turned with its photo
    half = catalog.load_mask(mask_file, photo, (40, 60), (20, 30))
    assert half.shape == (30, 20)
    Image.new("L", (50, 50)).save(mask_file)
    with pytest.raises(catalog.ImageError, match="mask is 50x50 but its photo") as err:
        catalog.load_mask(mask_file, photo, (40, 60), (40, 60))
    assert str(mask_file) in str(err.value) and str(photo) in str(err.value)
    mask_file.write_bytes(b"not a png")
    with pytest.raises(catalog.ImageError, match="not a readable mask"):
        catalog.load_mask(mask_file, photo, (40, 60), (40, 60))


def _dms(value: float) -> tuple[float, float, float]:
    v = abs(value)
    d, m = int(v), int((v - int(v)) * 60)
    return float(d), float(m), (v - d - m / 60) * 3600


def _write_gps(path: Path, fix: tuple[float, float, float]) -> None:
    """Give the photo at ``path`` an EXIF GPS fix (re-encoded: pixels change slightly)."""
    with Image.open(path) as im:
        im.load()
        exif = im.getexif()
        gps = ExifTags.GPS
        exif[ExifTags.IFD.GPSInfo] = {
            gps.GPSLatitudeRef: "N" if fix[0] >= 0 else "S",
            gps.GPSLatitude: _dms(fix[0]),
            gps.GPSLongitudeRef: "E" if fix[1] >= 0 else "W",
            gps.GPSLongitude: _dms(fix[1]),
            gps.GPSAltitude: abs(fix[2]),
            gps.GPSAltitudeRef: 0 if fix[2] >= 0 else 1,
        }
        im.save(path, "JPEG", exif=exif, quality=95)


def test_gps_fixes_are_read_from_exif_and_put_in_enu(tmp_path: Path) -> None:
    photo = tmp_path / "a.jpg"
    Image.new("RGB", (64, 48)).save(photo)
    assert geo.read_gps(photo) is None
    _write_gps(photo, (-33.8568, 151.2153, -12.5))  # south, east, below the ellipsoid
    lat, lon, alt = geo.read_gps(photo) or (0.0, 0.0, 0.0)
    assert abs(lat + 33.8568) < 1e-6 and abs(lon - 151.2153) < 1e-6 and alt == -12.5
    positions, origin = geo.enu_positions({"b": (47.0001, 8.0, 400.0), "a": (47.0, 8.0, 410.0)})
    assert origin == (47.0, 8.0, 410.0)
    np.testing.assert_allclose(positions["a"], 0.0, atol=1e-6)
    assert 11.0 < positions["b"][1] < 11.2 and abs(positions["b"][0]) < 1e-3  # 0.0001 degrees north: 11.1 m
    assert abs(positions["b"][2] + 10.0) < 0.01
    assert geo.scene_fixes(tmp_path, ["a.jpg"], "off") == {}


@pytest.mark.skipif(not scenes.FOX.is_dir(), reason="needs ../shared/data/instant_ngp/fox")
def test_masked_keypoints_are_dropped_on_a_real_photo() -> None:
    cfg = FeaturesConfig(resize=320, max_keypoints=512)
    image, (w, h) = catalog.load_image(scenes.FOX / "images" / "0001.jpg", ImagesConfig(), cfg.resize)
    found = features.extract(features.load_aliked(cfg, torch.device("cpu")), [image], [(w, h)], torch.device("cpu"))[0]
    mask = np.ones(image.shape[:2], bool)
    mask[:, : image.shape[1] // 2] = False  # the left half is masked out
    kept = features.drop_masked(found, mask)
    left = found.keypoints[:, 0] < w / 2 - w / image.shape[1]
    assert left.sum() > 50 and 0 < len(kept.keypoints) == (~left).sum()
    assert (kept.keypoints[:, 0] >= w / 2 - w / image.shape[1]).all()
    assert kept.descriptors.shape == (len(kept.keypoints), 128) and kept.image_size == (w, h)


@pytest.mark.skipif(not scenes.FOX.is_dir(), reason="needs ../shared/data/instant_ngp/fox")
def test_run_with_masks_and_a_pairs_file_on_real_photos(ray_local: None, tmp_path: Path) -> None:
    from imc_ray.distributed import pipeline

    scene = scenes.subset(scenes.FOX, tmp_path / "in" / "fox" / "walk", step=3)
    names = sorted(p.name for p in (scene / "images").iterdir())
    chain = [(names[i], names[j]) for i in range(len(names)) for j in (i + 1, i + 2, i + 3) if j < len(names)]
    (scene / "pairs.txt").write_text("".join(f"{b} {a}\n" for a, b in chain))  # either order is read
    masked = names[2]
    with Image.open(scene / "images" / masked) as im:
        size = im.size
    mask = np.full((size[1], size[0]), 255, np.uint8)
    mask[: size[1] // 2] = 0  # the top half of one photo is masked out
    (scene / "masks").mkdir()
    Image.fromarray(mask).save(scene / "masks" / f"{masked}.png")
    centres = _give_gps_from_reference(scene)
    preset, overrides = SAMPLE_CONFIG
    cfg = build_config(preset, [*overrides, "retrieval.pairs_file=pairs.txt", "mapping.gps=prior"])
    out = tmp_path / "out"
    rep = pipeline.run(tmp_path / "in", out, cfg).to_json()

    result = rep["scenes"]["fox/walk"]
    assert result["pairs_method"] == "file" and not rep["errors"]
    layout = SceneLayout.of(out, "fox", "walk")
    assert read_pairs(layout.pairs_txt, names) == sorted(chain)
    kp = read_features_h5(layout.features_h5)
    assert (kp[masked].keypoints[:, 1] >= size[1] / 2 - 2).all() and len(kp[masked].keypoints) > 50
    assert (kp[names[3]].keypoints[:, 1] < size[1] / 2).sum() > 50  # the others are whole
    assert result["num_registered"] >= len(names) - 1
    assert result["pairs"]["candidates"] == len(chain) and result["pairs"]["matched"] == len(chain)
    assert json.loads((out / "run.json").read_text())["config"]["retrieval"]["pairs_file"] == "pairs.txt"
    fit = result["geo"]  # the model is in ENU metres about the first photo's fix: an independent reader agrees
    assert fit["frame"] == "ENU" and fit["fixes"] == len(names) and fit["images"] == result["num_registered"]
    model = pycolmap.Reconstruction(str(layout.sparse / "0"))
    error = [np.linalg.norm(im.projection_center() - centres[im.name]) for im in model.images.values()]
    extent = np.ptp(np.stack(list(centres.values())), axis=0).max()
    assert max(error) < 0.05 * extent and abs(fit["rms_m"] - np.sqrt(np.mean(np.square(error)))) < 1e-3

    shutil.rmtree(out)
    (scene / "pairs.txt").write_text(f"{names[0]} typo.jpg\n")
    with pytest.raises(ValueError, match="typo.jpg") as err:
        pipeline.run(tmp_path / "in", out, cfg)
    assert str(scene / "pairs.txt") in str(err.value)


METRES_PER_UNIT = 10.0
"""The fox reference is in arbitrary units: its camera centres become GPS fixes this many metres apart per unit."""


def _give_gps_from_reference(scene: Path) -> dict[str, np.ndarray]:
    """Write EXIF GPS fixes into the scene's photos from their reference camera centres (scaled to metres,
    about a point in Zurich); returns the centres in the ENU frame of the first photo's fix."""
    with open(scene / "labels.csv") as f:
        rows = {r["image_name"]: r for r in csv.DictReader(f)}
    centres = {}
    for name, r in rows.items():
        R = np.array(r["rotation_matrix"].split(";"), float).reshape(3, 3)
        t = np.array(r["translation_vector"].split(";"), float)
        centres[name] = -R.T @ t * METRES_PER_UNIT
    to_gps = pycolmap.GPSTransform(pycolmap.GPSTransformEllipsoid.WGS84)
    fixes = {n: tuple(to_gps.enu_to_ellipsoid(c[None], 47.37, 8.54, 408.0)[0]) for n, c in centres.items()}
    for name, fix in fixes.items():
        _write_gps(scene / "images" / name, fix)
    first = sorted(fixes)[0]
    return {n: c - centres[first] for n, c in centres.items()}
