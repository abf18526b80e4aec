"""IMC 2024 camera-centre registration: similarity alignment by triplet search, per-scene mAA."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from imc_ray.evaluate.poses import BoolArray, FloatArray, IntArray, Pose, camera_centres, stack_poses

#: IMC 2024 default thresholds in metres.
IMC2024_TH_M: tuple[float, ...] = (0.025, 0.05, 0.1, 0.2, 0.5, 1.0)
#: IMC 2024 thresholds relative to the spread of the true centres.
RELATIVE_FACTORS: tuple[float, ...] = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
#: The IMC 2024 triplet search is exact up to this many registered cameras (C(60, 3) = 34220).
EXACT_MAX_CAMERAS = 60
#: Number of distinct random triplets searched above :data:`EXACT_MAX_CAMERAS`.
SAMPLED_TRIPLETS = 10_000
#: Seed of the triplet sample (``numpy.random.default_rng``).
SAMPLE_SEED = 0

_CHUNK_FLOATS = 1 << 22  # floats per vectorised chunk (32 MiB of float64)


@dataclass(frozen=True)
class Imc2024Result:
    """Outcome of the IMC 2024 registration of one scene.

    Attributes:
        maa: the scene's mAA in [0, 1].
        inliers: (T,) best-model inlier count for each threshold.
        mode: ``"exact"`` (all triplets) or ``"sampled"`` (a fixed-seed random sample).
        n_triplets: number of triplets searched.
        n_images: number of ground-truth images (the denominator's ``n``).
        n_registered: number of ground-truth images with a finite predicted pose.
    """

    maa: float
    inliers: tuple[int, ...]
    mode: str
    n_triplets: int
    n_images: int
    n_registered: int


def relative_thresholds(truth: Mapping[str, Pose]) -> tuple[float, ...]:
    """IMC 2024 thresholds for a scene without metric scale.

    ``spread * (0.002, 0.005, 0.01, 0.02, 0.05, 0.1)`` with ``spread = median |c_i - mean(c)|``
    over the true camera centres.
    """
    return tuple(centre_spread(truth) * f for f in RELATIVE_FACTORS)


def centre_spread(truth: Mapping[str, Pose]) -> float:
    """Median distance of the true camera centres from their mean (0.0 for no images)."""
    if not truth:
        return 0.0
    centres = np.stack([p.centre for p in truth.values()])
    return float(np.median(np.linalg.norm(centres - centres.mean(axis=0), axis=1)))


def _fit_similarity(
    src: FloatArray, dst: FloatArray, weights: FloatArray | None = None
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Batched similarity fit ``dst ~ scale * rot @ src + shift`` (public IMC scorer's variant).

    Rotation from the SVD of the weighted cross-covariance with the reflection fix (Kabsch /
    Umeyama; Horn's quaternion gives the same rotation); scale = ratio of the RMS deviations
    from the (weighted) centroids, as in ``affine_matrix_from_points`` of the scorer.

    Args:
        src, dst: (B, k, 3) corresponding points.
        weights: (B, k) 0/1 weights selecting the points of each fit; None for all.

    Returns:
        scale (B,), rot (B, 3, 3), shift (B, 3); non-finite where ``src`` has no spread.
    """
    if weights is None:
        weights = np.ones(src.shape[:2])
    w_sum = weights.sum(axis=1)
    mu_s = np.einsum("bk,bki->bi", weights, src) / w_sum[:, None]
    mu_d = np.einsum("bk,bki->bi", weights, dst) / w_sum[:, None]
    src_c = (src - mu_s[:, None, :]) * weights[:, :, None]
    dst_c = (dst - mu_d[:, None, :]) * weights[:, :, None]
    cov = np.einsum("bki,bkj->bij", dst_c, src_c)
    u, _, vt = np.linalg.svd(cov)
    sign = np.where(np.linalg.det(u @ vt) < 0.0, -1.0, 1.0)
    u[:, :, 2] *= sign[:, None]
    rot = u @ vt
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.sqrt(np.sum(dst_c**2, axis=(1, 2)) / np.sum(src_c**2, axis=(1, 2)))
    shift = mu_d - scale[:, None] * np.einsum("bij,bj->bi", rot, mu_s)
    return scale, rot, shift


def _alignment_sq_errors(
    scale: FloatArray, rot: FloatArray, shift: FloatArray, src: FloatArray, dst: FloatArray
) -> FloatArray:
    """Squared distances after applying B similarities to all m points.

    Args:
        scale (B,), rot (B, 3, 3), shift (B, 3); src, dst (m, 3).

    Returns:
        (B, m) squared errors; +inf for models that are not finite.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        moved = scale[:, None, None] * np.einsum("bij,mj->bmi", rot, src) + shift[:, None, :]
        err = np.sum((moved - dst[None]) ** 2, axis=-1)
    return np.asarray(np.where(np.isfinite(err), err, np.inf), dtype=np.float64)


def _all_triplets(m: int) -> IntArray:
    """All (C(m, 3), 3) index triplets i < j < k in lexicographic order."""
    if m < 3:
        return np.zeros((0, 3), dtype=np.int64)
    return np.array(list(itertools.combinations(range(m), 3)), dtype=np.int64)


def _sample_triplets(m: int, count: int, seed: int = SAMPLE_SEED) -> IntArray:
    """``count`` distinct random triplets i < j < k of range(m), sorted lexicographically.

    Uniform over triplets: rows of 3 uniform indices, rows with repeats rejected, duplicates
    dropped keeping the first draw; the first ``count`` distinct triplets drawn are kept.
    Deterministic for a given (m, count, seed). Requires C(m, 3) >= count.
    """
    total = math.comb(m, 3)
    if total < count:
        raise ValueError(f"only {total} triplets exist among {m} cameras, asked for {count}")
    rng = np.random.default_rng(seed)
    found = np.zeros((0, 3), dtype=np.int64)
    while found.shape[0] < count:
        draw = np.sort(rng.integers(0, m, size=(2 * count, 3)), axis=1)
        draw = draw[(draw[:, 0] != draw[:, 1]) & (draw[:, 1] != draw[:, 2])]
        both = np.concatenate([found, draw])
        _, first = np.unique(both, axis=0, return_index=True)
        found = both[np.sort(first)]
    chosen = found[:count]
    order = np.lexsort((chosen[:, 2], chosen[:, 1], chosen[:, 0]))
    return np.asarray(chosen[order], dtype=np.int64)


def _candidate_masks(src: FloatArray, dst: FloatArray, th_sq: FloatArray, triplets: IntArray) -> BoolArray:
    """Inlier sets (more than 2 inliers) of the triplet models, distinct, in first-seen order.

    The order is the public scorer's: triplets in the given order, thresholds in order.

    Args:
        src, dst: (m, 3) predicted and true centres; th_sq: (T,) squared thresholds;
        triplets: (N, 3).

    Returns:
        (K, m) boolean inlier masks.
    """
    m = src.shape[0]
    chunk = max(1, _CHUNK_FLOATS // (3 * m * max(1, th_sq.size)))
    packed: list[NDArray[np.uint8]] = []
    order: list[IntArray] = []
    for start in range(0, triplets.shape[0], chunk):
        tri = triplets[start : start + chunk]
        scale, rot, shift = _fit_similarity(src[tri], dst[tri])
        err = _alignment_sq_errors(scale, rot, shift, src, dst)  # (B, m)
        inl = err[:, :, None] < th_sq[None, None, :]  # (B, m, T)
        good = inl.sum(axis=1) > 2  # (B, T)
        b_idx, t_idx = np.nonzero(good)  # row-major: triplet first, then threshold
        if b_idx.size == 0:
            continue
        packed.append(np.packbits(inl[b_idx, :, t_idx], axis=1))
        order.append((start + b_idx) * th_sq.size + t_idx)
    if not packed:
        return np.zeros((0, m), dtype=bool)
    all_packed = np.concatenate(packed)
    all_order = np.concatenate(order)
    _, first = np.unique(all_packed, axis=0, return_index=True)
    first = first[np.argsort(all_order[first], kind="stable")]
    masks = np.unpackbits(all_packed[first], axis=1, count=m).astype(bool)
    return np.asarray(masks, dtype=bool)


def _best_inlier_counts(src: FloatArray, dst: FloatArray, thresholds: FloatArray) -> tuple[IntArray, str, int]:
    """The public IMC scorer's ``register_by_Horn`` (``inl_cf=0, strict_cf=-1``), vectorised.

    For every triplet, fit a similarity; for every threshold with more than 2 inliers, refit on
    those inliers and recount at every threshold; per threshold keep the refit with the most
    inliers, ties to the smaller sum of squared errors over all cameras, then to the first seen.

    Args:
        src, dst: (m, 3) predicted and true centres of the registered cameras.
        thresholds: (T,) distances.

    Returns:
        inliers (T,), mode ("exact" or "sampled"), number of triplets searched.
    """
    m = src.shape[0]
    th_sq = np.asarray(thresholds, dtype=np.float64) ** 2
    if m > EXACT_MAX_CAMERAS:
        triplets = _sample_triplets(m, SAMPLED_TRIPLETS)
        mode = "sampled"
    else:
        triplets = _all_triplets(m)
        mode = "exact"
    counts = np.zeros(th_sq.size, dtype=np.int64)
    if m < 3:
        return counts, mode, 0
    masks = _candidate_masks(src, dst, th_sq, triplets)
    if masks.shape[0] == 0:
        return counts, mode, int(triplets.shape[0])
    chunk = max(1, _CHUNK_FLOATS // (3 * m))
    cand_counts: list[IntArray] = []
    cand_sums: list[FloatArray] = []
    for start in range(0, masks.shape[0], chunk):
        w = masks[start : start + chunk].astype(np.float64)
        b = w.shape[0]
        scale, rot, shift = _fit_similarity(np.broadcast_to(src, (b, m, 3)), np.broadcast_to(dst, (b, m, 3)), w)
        err = _alignment_sq_errors(scale, rot, shift, src, dst)
        cand_counts.append((err[:, :, None] < th_sq[None, None, :]).sum(axis=1))
        cand_sums.append(err.sum(axis=1))
    all_counts = np.concatenate(cand_counts)  # (K, T)
    all_sums = np.concatenate(cand_sums)  # (K,)
    first_seen = np.arange(all_sums.size)
    for k in range(th_sq.size):
        best = np.lexsort((first_seen, all_sums, -all_counts[:, k]))[0]
        counts[k] = all_counts[best, k]
    return counts, mode, int(triplets.shape[0])


def imc2024_registration(
    truth: Mapping[str, Pose], pred: Mapping[str, Pose | None], thresholds: Sequence[float] | FloatArray
) -> Imc2024Result:
    """IMC 2024 camera-centre registration of one scene (see the package docstring).

    ``mAA = sum_th max(0, inliers_th - 3) / (len(th) * (n - 3))`` with n the number of
    ground-truth images; 0.0 when ``n <= 3``.
    """
    th = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if th.size == 0 or not np.all(np.isfinite(th)) or np.any(th <= 0):
        raise ValueError(f"IMC 2024 thresholds must be positive and finite, got {thresholds}")
    _, r_gt, t_gt, r_pr, t_pr, registered = stack_poses(truth, pred)
    n = len(truth)
    src = camera_centres(r_pr[registered], t_pr[registered])
    dst = camera_centres(r_gt[registered], t_gt[registered])
    inliers, mode, n_triplets = _best_inlier_counts(src, dst, th)
    maa = 0.0
    if n > 3:
        maa = float(np.sum(np.maximum(inliers - 3, 0)) / (th.size * (n - 3)))
    return Imc2024Result(
        maa=maa,
        inliers=tuple(int(v) for v in inliers),
        mode=mode,
        n_triplets=n_triplets,
        n_images=n,
        n_registered=int(registered.sum()),
    )


def imc2024_maa(
    truth: Mapping[str, Pose], pred: Mapping[str, Pose | None], thresholds: Sequence[float] | FloatArray
) -> float:
    """IMC 2024 mAA of one scene (0.0 when the scene has 3 or fewer ground-truth images)."""
    return imc2024_registration(truth, pred, thresholds).maa
