"""Mapping with real pycolmap: the database we write, cameras, split scenes and the relaxed retry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pycolmap
import pytest

from imc_ray.config import MappingConfig
from imc_ray.formats import Features
from imc_ray.stages import cameras, mapping


def _features(n: int, size: tuple[int, int]) -> Features:
    rng = np.random.default_rng(n)
    return Features(
        keypoints=rng.uniform(0, 100, (n, 2)).astype(np.float32),
        scores=np.ones(n, np.float32),
        descriptors=np.zeros((n, 128), np.float32),
        image_size=size,
    )


def test_build_database(tmp_path: Path) -> None:
    feats = {"a.jpg": _features(20, (640, 480)), "b.jpg": _features(30, (640, 480)), "c.jpg": _features(5, (480, 640))}
    many = np.stack([np.arange(16), np.arange(16)], axis=1).astype(np.int32)
    matches = {
        ("a.jpg", "b.jpg"): (many, np.ones(16, np.float32)),
        ("a.jpg", "c.jpg"): (many[:4], np.ones(4, np.float32)),  # below min_matches: left out
    }
    db_path = tmp_path / "database.db"
    groups = cameras.plan({n: f.image_size for n, f in feats.items()}, tmp_path, "single")
    assert mapping.build_database(db_path, feats, matches, groups, "SIMPLE_RADIAL", min_matches=15) == 1
    assert [g.camera_id for g in groups] == [1, 2]
    with pycolmap.Database.open(str(db_path)) as db:
        images = {im.name: im for im in db.read_all_images()}
        assert set(images) == set(feats)
        assert db.num_cameras() == 2 and db.num_rigs() == 2 and db.num_frames() == 3
        assert images["a.jpg"].camera_id == images["b.jpg"].camera_id != images["c.jpg"].camera_id
        np.testing.assert_allclose(db.read_keypoints(images["b.jpg"].image_id), feats["b.jpg"].keypoints + 0.5)
        np.testing.assert_array_equal(db.read_matches(images["a.jpg"].image_id, images["b.jpg"].image_id), many)
        assert not db.exists_matches(images["a.jpg"].image_id, images["c.jpg"].image_id)
        cam = db.read_camera(images["c.jpg"].camera_id)
        assert (cam.width, cam.height) == (480, 640)
        assert cam.focal_length == 1.2 * 640 and not cam.has_prior_focal_length


def _synthetic(path: Path, seed: int, prefix: str) -> None:
    opts = pycolmap.SyntheticDatasetOptions()
    opts.num_rigs = 1
    opts.num_cameras_per_rig = 1
    opts.num_frames_per_rig = 6
    opts.num_points3D = 300
    pycolmap.set_random_seed(seed)
    with pycolmap.Database.open(str(path)) as db:
        pycolmap.synthesize_dataset(opts, db)
        for image in db.read_all_images():
            image.name = prefix + image.name
            db.update_image(image)


def test_split_scene_keeps_every_model_and_records_attempts(tmp_path: Path) -> None:
    """Two groups of images that share nothing: two models, both kept, largest first."""
    _synthetic(tmp_path / "a.db", 1, "a_")
    _synthetic(tmp_path / "b.db", 2, "b_")
    with (
        pycolmap.Database.open(str(tmp_path / "a.db")) as a,
        pycolmap.Database.open(str(tmp_path / "b.db")) as b,
        pycolmap.Database.open(str(tmp_path / "merged.db")) as merged,
    ):
        pycolmap.Database.merge(a, b, merged)
        assert merged.num_images() == 12
    (tmp_path / "images").mkdir()
    cfg = MappingConfig(num_threads=1)
    images, sparse = tmp_path / "images", tmp_path / "sparse"
    models, attempts = mapping.map_database(tmp_path / "merged.db", images, sparse, cfg, 12, [])
    assert [m.num_reg_images() for m in models] == [6, 6]
    assert attempts == {"default": 6, "relaxed": 6}  # 6 < 0.9 * 12: a second, relaxed attempt was made
    mapping.write_models(models, tmp_path / "sparse")
    assert sorted(p.name for p in (tmp_path / "sparse").iterdir()) == ["0", "1"]
    assert pycolmap.Reconstruction(str(tmp_path / "sparse" / "1")).num_reg_images() == 6
    _, attempts = mapping.map_database(
        tmp_path / "merged.db", tmp_path / "images", tmp_path / "sparse2", MappingConfig(retry_below=0), 12, []
    )
    assert attempts == {"default": 6}


def _offcentre_scene(db_path: Path, focal: float) -> None:
    """12 noise-free views of one camera whose principal point is 1% off the centre of 1024x768 (a longer
    focal length spreads the synthetic points over more of the frame); the database starts from COLMAP's
    centred guess."""
    opts = pycolmap.SyntheticDatasetOptions()
    opts.num_rigs, opts.num_cameras_per_rig, opts.num_frames_per_rig, opts.num_points3D = 1, 1, 12, 400
    opts.camera_params = [focal, 512.0 + 10.0, 384.0 - 7.0, 0.0]
    pycolmap.set_random_seed(3)
    with pycolmap.Database.open(str(db_path)) as db:
        pycolmap.synthesize_dataset(opts, db)
        cam = db.read_camera(1)
        cam.params = [1.2 * 1024, 512.0, 384.0, 0.0]
        db.update_camera(cam)


@pytest.mark.parametrize(
    ("focal", "mode", "want", "note"),
    [
        (2600.0, "auto", (522.0, 377.0), "refined"),  # points span 90% of the frame: the true centre is found
        (2600.0, "never", (512.0, 384.0), "kept at the image centre (mapping"),
        (1280.0, "auto", (512.0, 384.0), "kept at the image centre: observations span 45%"),  # bunched points
    ],
)
def test_principal_point_refinement(
    tmp_path: Path, focal: float, mode: str, want: tuple[float, float], note: str
) -> None:
    _offcentre_scene(tmp_path / "database.db", focal)
    (tmp_path / "images").mkdir()
    cfg = MappingConfig(num_threads=1, refine_principal_point=mode)  # type: ignore[arg-type]
    models, _ = mapping.map_database(tmp_path / "database.db", tmp_path / "images", tmp_path / "sp", cfg, 12, [])
    models[0], got = mapping.refine_principal_point(models[0], mode, 1, {1})
    cam = models[0].cameras[1]
    assert models[0].num_reg_images() == 12
    np.testing.assert_allclose((cam.principal_point_x, cam.principal_point_y), want, atol=0.5)
    assert got.startswith(note), got


def test_global_mapper_option(tmp_path: Path) -> None:
    """``mapping.mapper=global`` runs pycolmap's global mapper (GLOMAP) and registers a synthetic scene."""
    _synthetic(tmp_path / "database.db", 4, "")
    (tmp_path / "images").mkdir()
    cfg = MappingConfig(num_threads=1, mapper="global")
    images, sparse = tmp_path / "images", tmp_path / "sparse"
    models, attempts = mapping.map_database(tmp_path / "database.db", images, sparse, cfg, 6, [])
    assert attempts == {"default": 6}
    assert models[0].num_reg_images() == 6 and models[0].num_points3D() > 100
