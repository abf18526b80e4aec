"""Joining the models of one scene (``stages/join.py``) on pycolmap's synthetic scenes: a real database with
real verified pairs, split into two models the way the incremental mapper leaves a scene with a weak link."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pycolmap

from imc_ray.stages import join

NUM_IMAGES = 12


def _scene(tmp_path: Path) -> tuple[pycolmap.Reconstruction, Path]:
    """A synthetic scene of :data:`NUM_IMAGES` images and its database (keypoints, matches, verified pairs)."""
    opts = pycolmap.SyntheticDatasetOptions()
    opts.num_rigs, opts.num_cameras_per_rig, opts.num_frames_per_rig = 1, 1, NUM_IMAGES
    opts.num_points3D = 400
    db_path = tmp_path / "database.db"
    with pycolmap.Database.open(str(db_path)) as db:
        rec = pycolmap.synthesize_dataset(opts, db)
    return rec, db_path


def _keep(rec: pycolmap.Reconstruction, names: set[str]) -> pycolmap.Reconstruction:
    """A copy of ``rec`` with only the images ``names`` registered."""
    out = pycolmap.Reconstruction(rec)
    for image in rec.images.values():
        if image.name not in names:
            out.deregister_frame(image.frame_id)
    return out


def _split(rec: pycolmap.Reconstruction) -> tuple[pycolmap.Reconstruction, pycolmap.Reconstruction, set[str]]:
    """Two models (the first 7 images, the other 5), the second moved to a frame of its own."""
    names = sorted(im.name for im in rec.images.values())
    second = set(names[7:])
    big, small = _keep(rec, set(names[:7])), _keep(rec, second)
    turn = pycolmap.Rotation3d(np.array([0.2, -0.5, 0.3, 0.79]) / np.linalg.norm([0.2, -0.5, 0.3, 0.79]))
    small.transform(pycolmap.Sim3d(2.5, turn, np.array([3.0, -1.0, 7.0])))
    return big, small, second


def _centres(rec: pycolmap.Reconstruction, names: set[str]) -> np.ndarray:
    by_name = {im.name: im for im in rec.images.values() if im.has_pose}
    return np.stack([by_name[n].projection_center() for n in sorted(names)])


def test_two_models_of_one_scene_are_joined_in_the_larger_ones_frame(tmp_path: Path) -> None:
    rec, db_path = _scene(tmp_path)
    big, small, second = _split(rec)
    assert not np.allclose(_centres(small, second), _centres(rec, second), atol=1e-3)
    [made] = join.join_models([big, small], db_path)
    assert (made.source, made.target) == (1, 0)
    assert made.inliers >= join.JOIN_MIN_INLIERS and abs(made.scale - 1 / 2.5) < 1e-6
    np.testing.assert_allclose(_centres(small, second), _centres(rec, second), atol=1e-6)


def test_models_whose_correspondences_agree_on_no_similarity_stay_apart(tmp_path: Path) -> None:
    """The same verified pairs, but the smaller model's points moved at random (as false matches between
    unrelated models would pair them): no similarity fits, and the model is left where it was."""
    rec, db_path = _scene(tmp_path)
    big, small, second = _split(rec)
    rng = np.random.default_rng(0)
    for point in small.points3D.values():
        point.xyz = rng.normal(size=3) * 5
    before = _centres(small, second)
    xt, _ = join.correspondences(big, small, join.read_inliers(db_path))
    assert len(xt) >= 2 * join.JOIN_MIN_INLIERS  # correspondences enough; they agree on nothing
    assert join.join_models([big, small], db_path) == []
    np.testing.assert_allclose(_centres(small, second), before)


def test_joined_model_counts_in_the_poses_and_in_its_targets_cluster(tmp_path: Path) -> None:
    """What a join changes downstream (``mapping._fill_poses``): the submission's poses cover both models, and
    in clusters mode the joined model's images are in its target's cluster."""
    from dataclasses import asdict

    from imc_ray.config import MappingConfig
    from imc_ray.stages import mapping

    rec, db_path = _scene(tmp_path)
    big, small, second = _split(rec)
    joined = [asdict(j) for j in join.join_models([big, small], db_path)]
    names = sorted(image.name for image in rec.images.values())
    assert len(names) == NUM_IMAGES
    for clusters in (False, True):
        result = mapping.SceneResult("synthetic", "scene", NUM_IMAGES, joined=joined)
        mapping._fill_poses(result, [big, small], names, db_path, MappingConfig(clusters=clusters))
        assert result.model_sizes == [7, 5] and result.num_registered == NUM_IMAGES and result.outside == []
        assert result.clusters is None if not clusters else set(result.clusters.values()) == {0}
    apart = mapping.SceneResult("synthetic", "scene", NUM_IMAGES)  # not joined: the smaller model is outside
    mapping._fill_poses(apart, [big, small], [*names, "lost.png"], db_path, MappingConfig())
    assert apart.num_registered == 7
    assert apart.outside == [sorted(second), ["lost.png"]]
