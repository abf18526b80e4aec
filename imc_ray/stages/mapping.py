"""Stage 7: COLMAP database, geometric verification and incremental mapping of one scene.

Files in, files out (:func:`run`): the scene's match shards and ``features.h5`` go in;
``matches.h5``, ``database.db``, ``sparse/<k>/`` (every model, largest first) and ``scene.json``
come out. Intrinsics are always estimated: reference poses are never read here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pycolmap

from imc_ray.config import MappingConfig
from imc_ray.formats import (
    MATCH_SHARD_SCHEMA,
    Features,
    SceneLayout,
    atomic_path,
    matches_from_table,
    read_features_h5,
    read_pairs,
    read_shards,
    write_matches_h5,
    write_text_atomic,
)
from imc_ray.stages import cameras, geo, join, pairs

logger = logging.getLogger(__name__)


@dataclass
class SceneResult:
    """What mapping produced for one scene (JSON-ready; also written as ``scene.json``)."""

    dataset: str
    scene: str
    num_images: int
    num_pairs: int = 0
    num_verified_pairs: int = 0
    model_sizes: list[int] = field(default_factory=list)
    """Registered images per model, largest first (``sparse/0`` is the largest)."""
    poses: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    """image name -> (R row-major (9,), t (3,)), world-to-camera, from the largest model
    (cluster mode: from the model of the image's cluster)."""
    clusters: dict[str, int] | None = None
    """Cluster mode only: image name -> index of its model (its cluster)."""
    seconds: dict[str, float] = field(default_factory=dict)
    rotated: dict[str, int] = field(default_factory=dict)
    """Images found turned and matched again upright (image -> degrees, see ``stages/orientation``)."""
    rolled: dict[str, int] = field(default_factory=dict)
    """Images of the largest model whose camera is rolled by about 90, 180 or 270 degrees against the scene's
    up (:func:`camera_turns`): photos turned in the file that the orientation check missed."""
    upright: list[str] = field(default_factory=list)
    """Images of the largest model whose camera is upright against the scene's up (:func:`camera_turns`): the
    partners the orientation check trusts when it tests ``rolled``."""
    outside: list[list[str]] = field(default_factory=list)
    """Not in clusters mode: the images without a pose when a model exists, one list per model not joined to
    the largest (its images), then one of the images in no model (photos turned together can make a model of
    their own, or none: the orientation check tests them at every turn)."""
    attempts: dict[str, int] = field(default_factory=dict)
    """Images registered in the largest model by each mapping attempt ("default", "relaxed")."""
    principal_point: str = ""
    """What the principal-point refinement did to the largest model (see :func:`refine_principal_point`)."""
    cameras: dict[str, Any] = field(default_factory=dict)
    """How many cameras the scene was mapped with, and why (``stages/cameras.py: describe``)."""
    joined: list[dict[str, Any]] = field(default_factory=list)
    """Models moved into a larger model's frame (``stages/join.py``: :class:`join.Join` as a dict: ``source``,
    ``target``, ``correspondences``, ``inliers``, ``scale``); a joined model's images count as registered in
    its target (in clusters mode: its cluster)."""
    geo: dict[str, Any] = field(default_factory=dict)
    """GPS (``stages/geo.py``): ``fixes`` (photos with one), and when the largest model was geo-registered
    ``frame`` ("ENU"), ``origin`` [lat, lon, alt] and its fit (``images``, ``rms_m``, ``scale``)."""
    pairs: dict[str, int] = field(default_factory=dict)
    """Where every pair went (:func:`pair_accounting`): ``screened`` (of the N (N - 1) / 2 pairs, those pair
    selection kept from LightGlue), ``candidates`` (chosen for matching, both rounds),
    ``second_round`` (of which the second round added), ``matched``
    (LightGlue ran on it), ``verified`` (at least ``mapping.min_num_inliers`` geometric inliers), ``used``
    (verified, and its two images share a 3D point of the largest model) and ``wasted`` (matched, not
    verified)."""
    error: str | None = None
    note: str = ""
    """Why a scene has no model, or that a fallback made its poses."""
    key: str = ""
    """Stage key and inputs digest the model was built from (see :func:`run`)."""
    reused: bool = False
    """True when this run reused the model of an earlier run."""

    @property
    def num_registered(self) -> int:
        return len(self.poses)


def build_database(
    db_path: Path,
    features: dict[str, Features],
    matches: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]],
    groups: list[cameras.CameraGroup],
    camera_model: str,
    min_matches: int,
) -> int:
    """Write one camera and rig per group (setting each group's ``camera_id``), then frames, images,
    keypoints and raw matches; return the number of pairs written.

    Keypoints get COLMAP's +0.5 pixel origin. Pairs with fewer than ``min_matches`` matches are left out.
    """
    if db_path.exists():
        db_path.unlink()
    written = 0
    with pycolmap.Database.open(str(db_path)) as db, pycolmap.DatabaseTransaction(db):
        rig_of: dict[str, tuple[pycolmap.sensor_t, int]] = {}
        for group in groups:  # in order of their first image, as the images below
            group.camera_id = db.write_camera(cameras.make_camera(group, camera_model))
            sensor = pycolmap.sensor_t(type=pycolmap.SensorType.CAMERA, id=group.camera_id)
            rig = pycolmap.Rig()
            rig.add_ref_sensor(sensor)
            rig_of.update(dict.fromkeys(group.images, (sensor, db.write_rig(rig))))
        image_ids: dict[str, int] = {}
        for name in sorted(rig_of):
            sensor, rig_id = rig_of[name]
            image_ids[name] = image_id = db.write_image(pycolmap.Image(name=name, camera_id=sensor.id))
            frame = pycolmap.Frame(rig_id=rig_id)
            frame.add_data_id(pycolmap.data_t(sensor_id=sensor, id=image_id))
            db.write_frame(frame)
            db.write_keypoints(image_id, features[name].keypoints.astype(np.float32) + 0.5)
        for (a, b), (idx, _scores) in sorted(matches.items()):
            if len(idx) >= min_matches and a in image_ids and b in image_ids:
                db.write_matches(image_ids[a], image_ids[b], idx.astype(np.uint32))
                written += 1
    return written


def verify(db_path: Path, cfg: MappingConfig) -> int:
    """Geometric verification of every matched pair; return the number of verified pairs."""
    tvg = pycolmap.TwoViewGeometryOptions()
    tvg.min_num_inliers = cfg.min_num_inliers
    tvg.ransac.random_seed = cfg.seed
    verifier = pycolmap.GeometricVerifierOptions()
    verifier.num_threads = cfg.num_threads
    pycolmap.geometric_verification(str(db_path), verifier_options=verifier, two_view_geometry_options=tvg)
    with pycolmap.Database.open(str(db_path)) as db:
        return int(db.num_verified_image_pairs())


def _largest_first(
    mapper: Callable[..., dict[int, pycolmap.Reconstruction]], db_path: Path, image_dir: Path, out_dir: Path, opts: Any
) -> list[pycolmap.Reconstruction]:
    """Run a pycolmap mapper with a scratch folder beside ``out_dir`` (the models are written by
    :func:`write_models`, atomically); return its models, largest first."""
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    recs = mapper(str(db_path), str(image_dir), str(tmp), options=opts)
    shutil.rmtree(tmp, ignore_errors=True)
    return sorted(recs.values(), key=lambda r: r.num_reg_images(), reverse=True)


def incremental(
    db_path: Path,
    image_dir: Path,
    out_dir: Path,
    cfg: MappingConfig,
    fixed: set[int],
    relaxed: bool = False,
    priors: bool = False,
) -> list[pycolmap.Reconstruction]:
    """pycolmap incremental mapping; returns every model, largest first.

    fixed: ids of cameras whose intrinsics bundle adjustment holds constant (known intrinsics).
    relaxed: a second attempt for scenes the defaults leave partly unregistered: a smaller initial
    triangulation angle (8 instead of 16 degrees) and fewer inliers needed to register an image.
    priors: the database holds position priors (``stages/geo.py``) and the mapper uses them.
    """
    opts = pycolmap.IncrementalPipelineOptions()
    opts.use_prior_position = priors
    opts.constant_cameras = set(fixed)
    opts.min_model_size = cfg.min_model_size
    opts.max_num_models = cfg.max_num_models
    opts.num_threads = cfg.num_threads
    opts.random_seed = cfg.seed
    opts.mapper.random_seed = cfg.seed
    if relaxed:
        opts.mapper.init_min_tri_angle = 8.0
        opts.mapper.init_min_num_inliers = 50
        opts.mapper.abs_pose_min_num_inliers = 15
        opts.mapper.abs_pose_min_inlier_ratio = 0.15
        opts.min_num_matches = 10
    return _largest_first(pycolmap.incremental_mapping, db_path, image_dir, out_dir, opts)


PP_MIN_IMAGES = 10
"""``refine_principal_point=auto`` refines principal points only in models of at least this many registered
images ..."""
PP_MIN_CAMERA_IMAGES = 5
"""... and only of shared cameras (that earned their sharing: ``stages/cameras.py``) with at least this many
registered images (a camera's principal point is fitted to its own images' observations, in a structure
that every image of the model holds in place)."""
PP_MIN_SPREAD = 0.7
"""``auto`` needs the observations to span the frame: the median over images of the 5-95 percentile range of
their observed keypoints must cover this share of the width and of the height. Points bunched in the middle
(an object on a plain background) cannot tell the principal point from a small turn of the camera
(the threshold's measurements: bench/RESULTS.md)."""
PP_MAX_SHIFT = 0.02
"""``auto`` keeps a refined principal point only within this share of the image's long side from the centre.
Real cameras' principal points lie within about 1% of the centre; a larger move means bundle adjustment used
it to absorb something else (weak geometry: seen on 10 object-centred renders, whose true centre moved 4%)."""


def observation_spread(rec: pycolmap.Reconstruction, camera_ids: set[int]) -> float:
    """How much of the frame the observations of 3D points span: the median over registered images of
    ``camera_ids`` of the 5-95 percentile range of their observed keypoints, as a share of the image, in the
    narrower axis."""
    spans = []
    for image in rec.images.values():
        if not image.has_pose or image.camera_id not in camera_ids:
            continue
        xy = np.array([p.xy for p in image.points2D if p.has_point3D()], np.float64).reshape(-1, 2)
        if len(xy) < 10:
            continue
        cam = rec.cameras[image.camera_id]
        lo, hi = np.percentile(xy, [5, 95], axis=0)
        spans.append(min((hi[0] - lo[0]) / cam.width, (hi[1] - lo[1]) / cam.height))
    return float(np.median(spans)) if spans else 0.0


def _adjust_principal_points(rec: pycolmap.Reconstruction, refine: set[int], num_threads: int) -> float:
    """Bundle adjustment of ``rec`` in place refining the principal point (and the other intrinsics) of the
    cameras ``refine``; every other camera's intrinsics are held constant. Returns the largest principal
    point move of a refined camera, as a share of its image's long side."""
    cameras.bundle_adjust(rec, refine, num_threads, principal_point=True)
    cams = [rec.cameras[c] for c in refine]
    return max(
        max(abs(c.principal_point_x - c.width / 2), abs(c.principal_point_y - c.height / 2)) / max(c.width, c.height)
        for c in cams
    )


def refine_principal_point(
    rec: pycolmap.Reconstruction, mode: str, num_threads: int, shared: set[int]
) -> tuple[pycolmap.Reconstruction, str]:
    """A final bundle adjustment that also refines cameras' principal points (COLMAP keeps them at the
    image centre). shared: ids of the cameras that may be refined (shared cameras that earned their sharing,
    not known intrinsics). ``auto`` refines those of them with at least :data:`PP_MIN_CAMERA_IMAGES`
    registered images in a model of at least :data:`PP_MIN_IMAGES`, when the observations of their images
    span at least :data:`PP_MIN_SPREAD` of the frame, and keeps the result only if no principal point moves
    more than :data:`PP_MAX_SHIFT` of the long side; ``always`` refines and keeps every camera of ``shared``;
    ``never`` leaves the model as it is.

    Returns the model to keep and a note for the scene report.
    """
    if mode == "never":
        return rec, "kept at the image centre (mapping.refine_principal_point=never)"
    per_camera = Counter(im.camera_id for im in rec.images.values() if im.has_pose)
    small = mode == "auto" and sum(per_camera.values()) < PP_MIN_IMAGES
    least = 1 if mode == "always" else PP_MIN_CAMERA_IMAGES
    refine = set() if small else {c for c in shared & set(per_camera) if per_camera[c] >= least}
    if not refine:
        return rec, (
            f"kept at the image centre: no shared camera with {PP_MIN_CAMERA_IMAGES} registered images "
            f"in a model of {PP_MIN_IMAGES}"
        )
    spread = observation_spread(rec, refine)
    if mode == "auto" and spread < PP_MIN_SPREAD:
        return rec, f"kept at the image centre: observations span {100 * spread:.0f}% of the frame (weak geometry)"
    refined = pycolmap.Reconstruction(rec)
    shift = _adjust_principal_points(refined, refine, num_threads)
    if mode == "auto" and shift > PP_MAX_SHIFT:
        return rec, f"kept at the image centre: refining moved it {100 * shift:.1f}% of the image (weak geometry)"
    return refined, f"refined for {len(refine)} camera(s) (moved up to {100 * shift:.1f}% of the image from the centre)"


def global_sfm(
    db_path: Path, image_dir: Path, out_dir: Path, cfg: MappingConfig, fixed_all: bool
) -> list[pycolmap.Reconstruction]:
    """pycolmap's global mapper (GLOMAP: rotation averaging, then global positioning); every model,
    largest first. It can hold intrinsics constant only for every camera at once (``fixed_all``)."""
    opts = pycolmap.GlobalPipelineOptions()
    if fixed_all:
        ba = opts.mapper.bundle_adjustment
        ba.refine_focal_length = ba.refine_principal_point = ba.refine_extra_params = False
    opts.min_model_size = cfg.min_model_size
    opts.num_threads = cfg.num_threads
    opts.random_seed = cfg.seed
    return _largest_first(pycolmap.global_mapping, db_path, image_dir, out_dir, opts)


def map_database(
    db_path: Path,
    image_dir: Path,
    out_dir: Path,
    cfg: MappingConfig,
    num_images: int,
    groups: list[cameras.CameraGroup],
    retry: bool = True,
    priors: bool = False,
) -> tuple[list[pycolmap.Reconstruction], dict[str, int]]:
    """Mapping (``cfg.mapper``: incremental or global), then (with ``retry``, not in clusters mode) a relaxed
    incremental second attempt when the largest model registers fewer than ``cfg.retry_below * num_images``
    images.

    Returns the models of the better attempt (largest first) and the images registered in the largest
    model of each attempt. priors: the database holds position priors for the incremental mapper."""
    fixed = {g.camera_id for g in groups if g.fixed}
    if cfg.mapper == "global":
        models = global_sfm(db_path, image_dir, out_dir, cfg, fixed_all=bool(groups) and len(fixed) == len(groups))
    else:
        models = incremental(db_path, image_dir, out_dir, cfg, fixed, priors=priors)
    attempts = {"default": models[0].num_reg_images() if models else 0}
    if retry and not cfg.clusters and cfg.retry_below > 0 and attempts["default"] < cfg.retry_below * num_images:
        again = incremental(db_path, image_dir, out_dir, cfg, fixed, relaxed=True, priors=priors)
        attempts["relaxed"] = again[0].num_reg_images() if again else 0
        if attempts["relaxed"] > attempts["default"]:
            models = again
    return models, attempts


@dataclass(frozen=True)
class SceneInputs:
    """What one scene's mapping task is given: where its files are, its photos, and its names."""

    layout: SceneLayout
    image_dir: Path
    dataset: str
    scene: str
    num_images: int
    """Usable images in the catalog (some may have failed feature extraction)."""


@dataclass(frozen=True)
class SceneData:
    """A scene's features and matches in memory, with where its outputs go."""

    layout: SceneLayout
    image_dir: Path
    features: dict[str, Features]
    matches: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]
    """(name0, name1) -> (indices (M, 2) int32, scores (M,) float32)."""
    priors: dict[str, np.ndarray] = field(default_factory=dict)
    """Position priors (3,) in ENU metres by image (``mapping.gps=prior``; ``stages/geo.py``)."""


def _database_and_models(
    data: SceneData,
    groups: list[cameras.CameraGroup],
    cfg: MappingConfig,
    min_matches: int,
    result: SceneResult,
    test: bool = False,
) -> tuple[list[pycolmap.Reconstruction], dict[str, int]]:
    """``database.db`` with the cameras of ``groups``, its verification and :func:`map_database`; counts
    and seconds go into ``result``. test: the camera test's mapping (no relaxed retry; its seconds are
    ``camera_test``)."""
    db_path = data.layout.database
    t0 = time.perf_counter()
    result.num_pairs = build_database(db_path, data.features, data.matches, groups, cfg.camera_model, min_matches)
    priors = bool(data.priors) and geo.write_priors(db_path, data.priors) > 0
    t1 = time.perf_counter()
    result.num_verified_pairs = verify(db_path, cfg) if result.num_pairs else 0
    t2 = time.perf_counter()
    models: list[pycolmap.Reconstruction] = []
    attempts: dict[str, int] = {}
    if result.num_verified_pairs:
        models, attempts = map_database(
            db_path, data.image_dir, data.layout.sparse, cfg, len(data.features), groups, not test, priors
        )
    if test:
        result.seconds["camera_test"] = time.perf_counter() - t0
    else:
        result.seconds.update(database=t1 - t0, verification=t2 - t1, mapping=time.perf_counter() - t2)
    return models, attempts


def map_scene(
    data: SceneData,
    groups: list[cameras.CameraGroup],
    cfg: MappingConfig,
    min_matches: int,
    result: SceneResult,
) -> list[pycolmap.Reconstruction]:
    """Database, verification and mapping with the planned cameras, after a test mapping when some shared
    camera must earn its sharing (``stages/cameras.py``: its images' focal lengths, each estimated with a
    camera of its own, decide which of them share); last, the principal-point refinement of every model.
    Fills ``result``'s counts, attempts, ``cameras`` and ``principal_point``; returns the models, largest
    first."""
    earning = {n for g in groups if g.earn for n in g.images}
    tested = None
    if earning:  # the test mapping: one camera per image where sharing must be earned
        trial, _ = _database_and_models(data, cameras.unshare(groups), cfg, min_matches, result, test=True)
        tested = trial[0].num_reg_images() if trial else 0
        focals = cameras.model_focals(trial, earning)
        groups = cameras.regroup(groups, focals, trial[0] if trial else None, cfg.num_threads)
    models, result.attempts = _database_and_models(data, groups, cfg, min_matches, result)
    shared = {g.camera_id for g in groups if g.known is None and len(g.images) > 1}
    notes = []
    for k, rec in enumerate(models):
        models[k], note = refine_principal_point(rec, cfg.refine_principal_point, cfg.num_threads, shared)
        notes.append(note)
    result.principal_point = notes[0] if notes else ""
    result.cameras = cameras.describe(groups, cfg.camera_mode, models[0] if models else None)
    if tested is not None:
        result.cameras["test_registered"] = tested
    return models


TWO_VIEW_MIN_INLIERS = 100
"""The two-view fallback trusts a pair only with this many inliers: LightGlue finds spatially coherent
false matches even between random-noise images (80 verified inliers seen), as many as COLMAP's mapper
needs to start a model (``init_min_num_inliers`` = 100)."""


def two_view_fallback(db_path: Path, seed: int) -> tuple[dict[str, tuple[list[float], list[float]]], str]:
    """Poses of the two images of the best verified pair, for scenes where the mappers build no model
    (COLMAP discards 2-image models). The first camera is the world frame; the baseline has length 1.

    Returns (poses, note); empty poses when no verified pair has a usable relative pose.
    """
    with pycolmap.Database.open(str(db_path)) as db:
        pair_ids, geometries = db.read_two_view_geometries()
        ranked = sorted(zip(pair_ids, geometries, strict=True), key=lambda pg: -len(pg[1].inlier_matches))
        for pair_id, geom in ranked:
            if len(geom.inlier_matches) < TWO_VIEW_MIN_INLIERS:
                break
            id1, id2 = pycolmap.pair_id_to_image_pair(pair_id)
            im1, im2 = db.read_image(id1), db.read_image(id2)
            cam1, cam2 = db.read_camera(im1.camera_id), db.read_camera(im2.camera_id)
            kp1, kp2 = db.read_keypoints(id1)[:, :2], db.read_keypoints(id2)[:, :2]
            opts = pycolmap.TwoViewGeometryOptions()
            opts.compute_relative_pose = True
            opts.ransac.random_seed = seed
            tvg = pycolmap.estimate_two_view_geometry(cam1, kp1, cam2, kp2, geom.inlier_matches, opts)
            pose = tvg.cam2_from_cam1
            if pose is None or len(tvg.inlier_matches) < TWO_VIEW_MIN_INLIERS:
                continue
            identity = (np.eye(3).ravel().tolist(), [0.0, 0.0, 0.0])
            second = (pose.rotation.matrix().ravel().tolist(), np.asarray(pose.translation).ravel().tolist())
            n = len(tvg.inlier_matches)
            note = f"no model from the mapper; two-view pose of {im1.name} and {im2.name} ({n} inliers)"
            return {im1.name: identity, im2.name: second}, note
    return {}, "no model: no verified pair with a usable relative pose (do the images overlap?)"


def write_models(models: list[pycolmap.Reconstruction], out_dir: Path) -> None:
    """Write ``out_dir/<k>/`` for every model (k = 0 is the largest), replacing ``out_dir`` atomically."""
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for k, rec in enumerate(models):
            (tmp / str(k)).mkdir()
            rec.write(str(tmp / str(k)))
        if out_dir.exists():
            shutil.rmtree(out_dir)


def poses_of(rec: pycolmap.Reconstruction) -> dict[str, tuple[list[float], list[float]]]:
    """image name -> (R (9,), t (3,)) world-to-camera, for every registered image of ``rec``."""
    out = {}
    for image in rec.images.values():
        if image.has_pose:
            pose = image.cam_from_world()
            out[image.name] = (pose.rotation.matrix().ravel().tolist(), np.asarray(pose.translation).ravel().tolist())
    return out


def stored_pose(pose: tuple[list[float], list[float]], turn: int) -> tuple[list[float], list[float]]:
    """World-to-camera pose of a photo as stored, from the pose of its upright version.

    The orientation stage set the photo upright by turning it ``turn`` degrees counter-clockwise
    (``orientation.rotate_image``); the stored photo is that upright image turned back by ``-turn``. With
    the principal point at the centre, turning the pixels by ``s`` degrees counter-clockwise turns the
    camera about its optical axis: ``R_stored = Rz^k R``, ``t_stored = Rz^k t`` with ``k = s / 90`` and
    ``Rz = [[0, 1, 0], [-1, 0, 0], [0, 0, 1]]``.

    pose: (R row-major (9,), t (3,)).
    """
    k = ((360 - turn) % 360) // 90
    if k == 0:
        return pose
    rz = np.linalg.matrix_power(np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), k)
    R = rz @ np.asarray(pose[0], np.float64).reshape(3, 3)
    t = rz @ np.asarray(pose[1], np.float64)
    return R.ravel().tolist(), t.tolist()


ROLL_MAX_ELEVATION = 75.0
"""Degrees: cameras looking closer than this to straight up or down have no roll :func:`camera_turns` trusts."""


UP_CANDIDATES = 2000
"""At most this many directions are tried as the scene's up (:func:`scene_up`): pairs of cameras, in a fixed order."""


def scene_up(R: np.ndarray, tolerance: float = 20.0) -> np.ndarray:
    """The scene's up (3,) from world-to-camera rotations R (N, 3, 3): the direction that the most cameras
    hold level (x-axis within ``tolerance`` degrees of orthogonal to it) and upright (image up pointing at
    it, views near straight down excluded), ties broken by how well image ups point at it; refined over those
    cameras when their x-axes span the level plane. Candidates: the direction orthogonal to the x-axes of two
    cameras, and each camera's image up. Rolled cameras (photos turned in the file) do not sway it."""
    x, image_up = R[:, 0, :], -R[:, 1, :]  # (N, 3) each, in world coordinates
    i, j = np.triu_indices(len(R), 1)
    if len(i) > UP_CANDIDATES:
        keep = np.random.default_rng(0).choice(len(i), UP_CANDIDATES, replace=False)
        i, j = i[keep], j[keep]
    c = np.cross(x[i], x[j])
    norm = np.linalg.norm(c, axis=1, keepdims=True)
    c = c[norm[:, 0] > np.sin(np.radians(10.0))] / norm[norm[:, 0] > np.sin(np.radians(10.0))]
    cand = np.concatenate([c, -c, image_up])  # (M, 3)
    facing = image_up @ cand.T  # (N, M)
    holds = (np.abs(x @ cand.T) < np.sin(np.radians(tolerance))) & (facing > np.cos(np.radians(ROLL_MAX_ELEVATION)))
    best = int(np.lexsort((np.sum(facing * holds, axis=0), holds.sum(axis=0)))[-1])
    up = cand[best]
    sv = np.linalg.svd(x[holds[:, best]])
    if len(sv[1]) == 3 and sv[1][2] < 0.5 * sv[1][1]:  # the level x-axes span a plane: its normal
        up = sv[2][-1] * np.sign(sv[2][-1] @ up)
    return up


def camera_turns(rotations: dict[str, np.ndarray], tolerance: float = 20.0) -> dict[str, int]:
    """Registered images whose camera is within ``tolerance`` degrees of a roll of 0, 90, 180 or 270 degrees
    against the scene's up: image -> the turn that would set it upright (0: upright; else a photo turned in
    the file that the orientation check missed, as in ``SceneResult.rotated``). Empty unless most cameras
    are upright.

    The scene's up: :func:`scene_up` (image rows are level in most photos). A camera's roll is the angle of
    that up in its image; views within ``90 - ROLL_MAX_ELEVATION`` degrees of straight down or up are left out.

    rotations: image name -> world-to-camera rotation (3, 3).
    """
    if len(rotations) < 5:
        return {}
    names = sorted(rotations)
    R = np.stack([np.asarray(rotations[n], np.float64).reshape(3, 3) for n in names])  # (N, 3, 3)
    u = R @ scene_up(R, tolerance)  # (N, 3): the scene's up in each camera's frame
    roll = np.degrees(np.arctan2(u[:, 0], -u[:, 1])) % 360.0
    turn = np.round(roll / 90.0).astype(int) % 4
    off = np.abs((roll + 45.0) % 90.0 - 45.0)
    level = np.degrees(np.arcsin(np.clip(np.abs(u[:, 2]), 0.0, 1.0))) < ROLL_MAX_ELEVATION
    sure = level & (off < tolerance)
    if np.sum(sure & (turn == 0)) <= 0.5 * np.sum(level):
        return {}
    return {n: 90 * int(k) for n, k, ok in zip(names, turn, sure, strict=True) if ok}


def inputs_digest(
    features: dict[str, Features],
    matches: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]],
    groups: list[cameras.CameraGroup],
) -> str:
    """Digest of which images, pairs and planned cameras (EXIF, known intrinsics) a model was built from
    (with the stage key: when to reuse it)."""
    h = hashlib.sha1()
    for name in sorted(features):
        h.update(f"{name}\0{len(features[name].keypoints)}\n".encode())
    for a, b in sorted(matches):
        h.update(f"{a}\0{b}\0{len(matches[(a, b)][0])}\n".encode())
    for g in groups:
        h.update(repr((g.images, g.size, g.source, g.prior_focal, g.known, g.earn, g.fixed)).encode())
    return h.hexdigest()[:12]


def run(
    scene: SceneInputs,
    cfg: MappingConfig,
    min_matches: int,
    rotated: dict[str, int] | None = None,
    known: tuple[cameras.KnownCamera, ...] = (),
    first_mapping: float = 0.0,
) -> SceneResult:
    """Files in, files out for one scene: ``features.h5``, the match shards of the run's key and the photos'
    EXIF in; ``matches.h5``, ``database.db``, ``sparse/<k>/`` and ``scene.json`` out.

    A finished scene whose ``scene.json`` carries the same key (settings and inputs) is reused as is.
    rotated: images the orientation stage set upright (image -> degrees); their features and model hold the
    upright image, and their poses in the result are turned back to the photo as stored.
    known: the entries of ``cfg.cameras_file`` (read once by the driver).
    first_mapping: seconds of the scene's first mapping when this is the mapping after the orientation check's
    second look (``seconds`` → ``first_mapping``).
    """
    if not logger.isEnabledFor(logging.DEBUG):
        pycolmap.logging.minloglevel = 2  # COLMAP's INFO and WARNING lines (glog) are too chatty for a run log
    layout, name = scene.layout, f"{scene.dataset}/{scene.scene}"
    assert layout.keys is not None
    result = SceneResult(scene.dataset, scene.scene, scene.num_images, rotated=dict(rotated or {}))
    if first_mapping:
        result.seconds["first_mapping"] = first_mapping
    try:
        features = read_features_h5(layout.features_h5)
        matches = matches_from_table(read_shards(layout.match_shards, MATCH_SHARD_SCHEMA))
        matches = {(a, b): m for (a, b), m in matches.items() if a in features and b in features}  # images now
        if (chosen := pairs.chosen_pairs(layout, features)) is not None:
            matches = {pair: m for pair, m in matches.items() if pair in chosen}
        sizes = {n: f.image_size for n, f in features.items()}
        fix = cfg.known_intrinsics == "fixed"
        groups = cameras.plan(sizes, scene.image_dir, cfg.camera_mode, known, name, rotated, fix)
        result.key = f"{layout.keys.mapping}-{inputs_digest(features, matches, groups)}"
        previous = _load_result(layout.scene_json)
        if previous is not None and previous.key == result.key and previous.error is None:
            previous.reused = True
            previous.num_images = scene.num_images
            return previous
        write_matches_h5(layout.matches_h5, matches, {n: len(f.keypoints) for n, f in features.items()})
        positions, origin = geo.enu_positions(geo.scene_fixes(scene.image_dir, features, cfg.gps))
        priors = positions if cfg.gps == "prior" else {}
        models = map_scene(
            SceneData(layout, scene.image_dir, features, matches, priors), groups, cfg, min_matches, result
        )
        result.geo = geo.register_models(models, positions, origin)
        result.joined = [asdict(j) for j in join.join_models(models, layout.database, cfg.seed)]
        t0 = time.perf_counter()
        write_models(models, layout.sparse)
        result.seconds["mapping"] = result.seconds.get("mapping", 0.0) + time.perf_counter() - t0
        _fill_poses(result, models, sorted(features), layout.database, cfg)
        result.pairs = pair_accounting(layout, features, len(matches), result.num_verified_pairs, _first(models))
    except Exception as exc:
        logger.exception("scene %s: mapping failed", name)
        result.error = f"{type(exc).__name__}: {exc}"
    write_text_atomic(layout.scene_json, json.dumps(asdict(result), indent=1))
    return result


def warn(result: SceneResult, name: str) -> None:
    """Log what a user should know about a mapped scene (its final result): a fallback's note, photos that
    look turned."""
    if result.note:
        logger.warning("scene %s: %s", name, result.note)
    if result.rolled:
        logger.warning(
            "scene %s: %d registered photo(s) rolled by 90, 180 or 270 degrees against the scene's up (%s): "
            "likely turned photos the orientation check missed, posed from fewer matches (scene.json: rolled); "
            "turning those files upright and running the same command again maps them from more matches",
            name,
            len(result.rolled),
            ", ".join(sorted(result.rolled)),
        )


def _first(models: list[pycolmap.Reconstruction]) -> pycolmap.Reconstruction | None:
    return models[0] if models else None


def used_pairs(rec: pycolmap.Reconstruction, db_path: Path) -> int:
    """Verified pairs of ``db_path`` (a two-view geometry with inliers) whose images share at least one 3D
    point of ``rec`` (a track holding both)."""
    shared: set[tuple[int, int]] = set()
    for point in rec.points3D.values():
        ids = sorted({el.image_id for el in point.track.elements})
        shared.update((a, b) for i, a in enumerate(ids) for b in ids[i + 1 :])
    with pycolmap.Database.open(str(db_path)) as db:  # counts only: the inlier matches are not read
        pair_ids, inliers = db.read_two_view_geometry_num_inliers()
    verified = {
        tuple(sorted(pycolmap.pair_id_to_image_pair(pid))) for pid, n in zip(pair_ids, inliers, strict=True) if n
    }
    return len(shared & verified)


def pair_accounting(
    layout: SceneLayout,
    features: dict[str, Features],
    matched: int,
    verified: int,
    model: pycolmap.Reconstruction | None,
) -> dict[str, int]:
    """The scene's pair counts (:attr:`SceneResult.pairs`); candidates from ``pairs.txt`` and
    ``pairs-round2.txt`` (``matched`` when absent: a mapping run on matches made elsewhere)."""
    rounds = [len(read_pairs(p, features)) if p.is_file() else 0 for p in (layout.pairs_txt, layout.pairs_round2_txt)]
    candidates = sum(rounds) if layout.pairs_txt.is_file() else matched
    used = used_pairs(model, layout.database) if model is not None else 0
    n = len(features)
    return {
        "screened": max(0, n * (n - 1) // 2 - candidates),
        "candidates": candidates,
        "second_round": rounds[1],
        "matched": matched,
        "verified": verified,
        "used": used,
        "wasted": matched - verified,
    }


def _fill_poses(
    result: SceneResult, models: list[pycolmap.Reconstruction], names: list[str], db_path: Path, cfg: MappingConfig
) -> None:
    """The result's model sizes, poses (turned back for rotated photos), clusters, camera turns, images outside
    the largest model and note (``names``: the scene's readable images)."""
    result.model_sizes = [m.num_reg_images() for m in models]
    target = {j["source"]: j["target"] for j in result.joined}
    posed = [poses_of(m) for m in models]
    if cfg.clusters:
        result.clusters = {}
        for k in reversed(range(len(models))):  # larger models last: they win shared images
            result.poses.update(posed[k])
            result.clusters.update(dict.fromkeys(posed[k], target.get(k, k)))
        if not models:
            result.note = "no cluster: every image is an outlier"
    elif models:
        for k in reversed([0, *(s for s, t in target.items() if t == 0)]):
            result.poses.update(posed[k])
        result.outside = _outside(names, posed, target, set(result.poses))
    elif len(names) < 2:
        result.note = f"{len(names)} readable image(s): nothing to reconstruct"
    elif result.num_verified_pairs:
        result.poses, result.note = two_view_fallback(db_path, cfg.seed)
    else:
        result.note = "no model: no image pair passed geometric verification (do the images overlap?)"
    if models:
        turns = camera_turns({n: np.reshape(R, (3, 3)) for n, (R, _) in posed[0].items()})
        result.rolled = {n: t for n, t in turns.items() if t}
        result.upright = sorted(n for n, t in turns.items() if not t)
    result.poses = {n: stored_pose(p, result.rotated.get(n, 0)) for n, p in result.poses.items()}


def _outside(
    names: list[str], posed: list[dict[str, Any]], target: dict[int, int], placed: set[str]
) -> list[list[str]]:
    """:attr:`SceneResult.outside`: the images of each model not joined to the largest that are not in
    ``placed``, then the images in no model; empty lists left out."""
    groups = [sorted(set(p) - placed) for k, p in enumerate(posed) if k and target.get(k) != 0]
    held = {n for p in posed for n in p}
    groups.append([n for n in names if n not in held])
    return [g for g in groups if g]


def _load_result(path: Path) -> SceneResult | None:
    """The ``scene.json`` of an earlier run, or None when absent or unreadable."""
    try:
        data = json.loads(path.read_text())
        data["poses"] = {k: (list(v[0]), list(v[1])) for k, v in data.get("poses", {}).items()}
        return SceneResult(**data)
    except (OSError, ValueError, TypeError):
        return None
