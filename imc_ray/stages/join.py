"""Stage 7b: join the models of one scene that its verified pairs connect (issue 18).

COLMAP's incremental mapper starts a new model when the next image cannot be registered with enough
2D-3D inliers; a weak link in a ring or a street (a turn, a low-texture stretch) then leaves two models of
one scene although verified pairs connect them. For each smaller model, the inlier matches of the pairs
between its images and a larger model's images give 3D-3D correspondences (a keypoint with a 3D point in
each model); a robust similarity fitted to them moves the smaller model into the larger one's frame, and
both then count as one model (``scene.json`` → ``joined``). Models that no similarity fits stay apart
(in clusters mode: separate clusters).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pycolmap

logger = logging.getLogger(__name__)

JOIN_MIN_INLIERS = 30
"""A join needs this many 3D-3D correspondences within :data:`JOIN_MAX_ERROR` after the similarity ..."""
JOIN_MIN_RATIO = 0.5
"""... and this share of all the correspondences found (false matches between unrelated models do not agree
on one similarity)."""
JOIN_MAX_ERROR = 0.02
"""A correspondence agrees when its points lie within this share of the larger model's point spread (the
median distance of its corresponding points from their median) after the similarity."""


@dataclass(frozen=True)
class Join:
    """Model ``source`` was moved into the frame of model ``target`` (indices into the models, largest first)."""

    source: int
    target: int
    correspondences: int
    inliers: int
    scale: float


def _point_ids(rec: pycolmap.Reconstruction) -> dict[int, np.ndarray]:
    """Registered image id -> the 3D point id of each of its keypoints (N,) int64, -1 where none."""
    return {
        i: np.array([p.point3D_id if p.has_point3D() else -1 for p in im.points2D], np.int64)
        for i, im in rec.images.items()
        if im.has_pose
    }


def read_inliers(db_path: Path) -> dict[tuple[int, int], np.ndarray]:
    """(image id 1, image id 2) -> inlier matches (K, 2) of every verified pair of ``db_path``."""
    with pycolmap.Database.open(str(db_path)) as db:
        pair_ids, geometries = db.read_two_view_geometries()
    out = {}
    for pid, geom in zip(pair_ids, geometries, strict=True):
        if len(geom.inlier_matches):
            out[pycolmap.pair_id_to_image_pair(pid)] = np.asarray(geom.inlier_matches)
    return out


def correspondences(
    target: pycolmap.Reconstruction, source: pycolmap.Reconstruction, inliers: dict[tuple[int, int], np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """3D-3D correspondences (target points (M, 3), source points (M, 3)): through the inlier matches of
    verified pairs with one image registered in each model, and through the keypoints of images registered
    in both. Each pair of 3D points counts once."""
    in_t, in_s = _point_ids(target), _point_ids(source)
    links = [np.zeros((0, 2), np.int64)]
    for (i1, i2), matches in inliers.items():
        for a, b, (ca, cb) in ((i1, i2, (0, 1)), (i2, i1, (1, 0))):
            if a in in_t and b in in_s:
                links.append(np.stack([in_t[a][matches[:, ca]], in_s[b][matches[:, cb]]], axis=1))
    for image_id in in_t.keys() & in_s.keys():
        links.append(np.stack([in_t[image_id], in_s[image_id]], axis=1))
    ids = np.unique(np.concatenate(links), axis=0)
    ids = ids[(ids >= 0).all(axis=1)]
    xt = np.array([target.points3D[int(i)].xyz for i in ids[:, 0]], np.float64).reshape(-1, 3)
    xs = np.array([source.points3D[int(i)].xyz for i in ids[:, 1]], np.float64).reshape(-1, 3)
    return xt, xs


def fit_similarity(xt: np.ndarray, xs: np.ndarray, seed: int) -> tuple[pycolmap.Sim3d, int] | None:
    """Robust similarity target_from_source of correspondences (M, 3) and (M, 3), with its inlier count,
    when it passes :data:`JOIN_MIN_INLIERS` and :data:`JOIN_MIN_RATIO`; else None."""
    if len(xt) < JOIN_MIN_INLIERS:
        return None
    spread = float(np.median(np.linalg.norm(xt - np.median(xt, axis=0), axis=1)))
    if spread <= 0:
        return None
    ransac = pycolmap.RANSACOptions()
    ransac.max_error = JOIN_MAX_ERROR * spread
    ransac.random_seed = seed
    # pycolmap 4.2 returns {"tgt_from_src", "num_inliers", "inlier_mask"} or None (its type stub says Sim3d)
    found: Any = pycolmap.estimate_sim3d_robust(xs, xt, ransac)
    if found is None:
        return None
    inliers = int(found["num_inliers"])
    if inliers < JOIN_MIN_INLIERS or inliers < JOIN_MIN_RATIO * len(xt):
        return None
    return found["tgt_from_src"], inliers


def join_models(models: list[pycolmap.Reconstruction], db_path: Path, seed: int = 0) -> list[Join]:
    """Move every model that can be joined into the frame of a larger model (in place), largest first:
    model k is tried against each larger model that was not itself joined, and joins the first that a
    similarity fits. Returns the joins made."""
    if len(models) < 2:
        return []
    inliers = read_inliers(db_path)
    joins: list[Join] = []
    roots = [0]
    for k in range(1, len(models)):
        for r in roots:
            xt, xs = correspondences(models[r], models[k], inliers)
            fit = fit_similarity(xt, xs, seed)
            if fit is None:
                continue
            sim, n = fit
            models[k].transform(sim)
            joins.append(Join(k, r, len(xt), n, float(sim.scale)))
            logger.info(
                "model %d (%d images) joined to model %d: %d of %d 3D correspondences agree",
                k,
                models[k].num_reg_images(),
                r,
                n,
                len(xt),
            )
            break
        else:
            roots.append(k)
    return joins
