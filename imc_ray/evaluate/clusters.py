"""IMC 2025: clustering plus registration of one dataset (:func:`score_clusters`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from imc_ray.evaluate.imc2024 import Imc2024Result, imc2024_registration, relative_thresholds
from imc_ray.evaluate.poses import Pose

logger = logging.getLogger(__name__)

#: The reserved IMC 2025 cluster / scene name for images that belong to no scene.
OUTLIERS = "outliers"


def _cluster_membership(pred_clusters: Mapping[str, Mapping[str, Pose | None]]) -> dict[str, str]:
    """``{image: cluster}``; raises ValueError when an image has more than one cluster."""
    owner: dict[str, str] = {}
    for cluster, images in pred_clusters.items():
        for image in images:
            if image in owner:
                raise ValueError(
                    f"image {image!r} is in clusters {owner[image]!r} and {cluster!r}; "
                    "give each image exactly one cluster label"
                )
            owner[image] = cluster
    return owner


def score_clusters(
    truth: Mapping[tuple[str, str], Mapping[str, Pose]],
    pred_clusters: Mapping[str, Mapping[str, Pose | None]],
    thresholds: Mapping[tuple[str, str], Sequence[float]],
    *,
    skip_top_thresholds: int = 0,
) -> dict[str, Any]:
    """IMC 2025 score of ONE dataset.

    Args:
        truth: ``{(dataset, scene): {image: Pose}}`` of the dataset's scenes (all keys must share
            the dataset; a scene named ``outliers`` is ignored).
        pred_clusters: ``{cluster: {image: Pose | None}}`` in submission order; the cluster
            ``outliers`` takes part in nothing (its images count in no cluster size).
        thresholds: IMC 2024 thresholds per scene; scenes missing here use
            :func:`relative_thresholds` (with a warning).
        skip_top_thresholds: drop this many leading thresholds (the public 2025 scorer's
            ``skip_top_thresholds``; 0 uses them all, as ``metrics.md`` states).

    Each true scene s picks the non-outlier cluster u with the largest overlap ``|s & u|``,
    ties broken by the higher mAA of s registered within u, then by cluster order. A scene
    whose images are in no cluster picks none (overlap 0, size 0). Then

    * clusterness = sum of chosen overlaps / sum of chosen clusters' sizes (0 if no size);
    * mAA = ``sum_s sum_th max(0, inliers - 3) / sum_s len(th_s) (|s| - 3)`` (0 if the
      denominator is not positive), inliers counted among the images of s in its cluster;
    * score = harmonic mean of mAA and clusterness (0 when both are 0), in [0, 1].

    Returns:
        ``{"dataset", "maa", "clusterness", "score", "imc2024_mode", "per_scene": [...]}``.
    """
    datasets = {d for d, _ in truth}
    if len(datasets) > 1:
        raise ValueError(f"score_clusters scores one dataset, got scenes of {sorted(datasets)}")
    _cluster_membership(pred_clusters)
    clusters = [(name, imgs) for name, imgs in pred_clusters.items() if name != OUTLIERS]
    matches = [
        _match_scene(key, truth[key], clusters, _cluster_thresholds(key, truth[key], thresholds, skip_top_thresholds))
        for key in sorted(k for k in truth if k[1] != OUTLIERS)
    ]
    return _pooled_score(next(iter(datasets)) if datasets else None, matches)


class _SceneMatch(NamedTuple):
    """A true scene and the cluster it picked.

    Attributes:
        row: the scene's entry of ``per_scene``.
        numerator: ``sum_th max(0, inliers - 3)`` within the chosen cluster (0.0 when none).
        denominator: ``len(th) * (|s| - 3)``.
    """

    row: dict[str, Any]
    numerator: float
    denominator: int


def _cluster_thresholds(
    key: tuple[str, str],
    gt: Mapping[str, Pose],
    thresholds: Mapping[tuple[str, str], Sequence[float]],
    skip_top_thresholds: int,
) -> tuple[float, ...]:
    """The scene's IMC 2024 thresholds (relative ones, with a warning, when absent) less the skipped ones."""
    th = thresholds.get(key)
    if th is None:
        logger.warning("no thresholds for %s/%s; using relative thresholds", *key)
        th = relative_thresholds(gt)
    th = tuple(th)[skip_top_thresholds:]
    if not th:
        raise ValueError(f"no thresholds left for {key[0]}/{key[1]}")
    return th


def _choose_cluster(
    gt: Mapping[str, Pose],
    clusters: Sequence[tuple[str, Mapping[str, Pose | None]]],
    th: tuple[float, ...],
) -> tuple[int | None, int, float, Imc2024Result | None]:
    """The cluster a true scene picks: largest overlap, then higher mAA numerator, then first.

    Returns:
        index into ``clusters`` (None when no cluster holds an image of the scene), the overlap,
        the mAA numerator ``sum_th max(0, inliers - 3)`` (-1.0 when none) and the registration.
    """
    overlaps = [sum(1 for img in imgs if img in gt) for _, imgs in clusters]
    best_overlap = max(overlaps, default=0)
    chosen: int | None = None
    best_num = -1.0
    best_reg: Imc2024Result | None = None
    if best_overlap > 0:
        for idx, ov in enumerate(overlaps):
            if ov != best_overlap:
                continue
            sub_gt = {img: gt[img] for img in clusters[idx][1] if img in gt}
            reg = imc2024_registration(sub_gt, clusters[idx][1], th)
            num = float(np.sum(np.maximum(np.asarray(reg.inliers) - 3, 0)))
            if num > best_num:
                chosen, best_num, best_reg = idx, num, reg
    return chosen, best_overlap, best_num, best_reg


def _match_scene(
    key: tuple[str, str],
    gt: Mapping[str, Pose],
    clusters: Sequence[tuple[str, Mapping[str, Pose | None]]],
    th: tuple[float, ...],
) -> _SceneMatch:
    """Pick the scene's cluster (:func:`_choose_cluster`) and score it there."""
    chosen, overlap, best_num, reg = _choose_cluster(gt, clusters, th)
    num_s = max(best_num, 0.0)
    den_s = len(th) * (len(gt) - 3)
    row = {
        "dataset": key[0],
        "scene": key[1],
        "n_images": len(gt),
        "cluster": clusters[chosen][0] if chosen is not None else None,
        "overlap": overlap,
        "cluster_size": len(clusters[chosen][1]) if chosen is not None else 0,
        "maa": num_s / den_s if den_s > 0 else 0.0,
        "inliers": list(reg.inliers) if reg is not None else [0] * len(th),
        "thresholds": [float(v) for v in th],
        "imc2024_mode": reg.mode if reg is not None else "exact",
    }
    return _SceneMatch(row, num_s, den_s)


def _pooled_score(dataset: str | None, matches: Sequence[_SceneMatch]) -> dict[str, Any]:
    """The dataset's pooled mAA, clusterness and their harmonic mean (see :func:`score_clusters`)."""
    numerator = sum((m.numerator for m in matches), 0.0)
    denominator = sum((m.denominator for m in matches), 0.0)
    overlap_sum = sum(m.row["overlap"] for m in matches)
    size_sum = sum(m.row["cluster_size"] for m in matches)
    maa = numerator / denominator if denominator > 0 else 0.0
    clusterness = overlap_sum / size_sum if size_sum > 0 else 0.0
    score = 2.0 * maa * clusterness / (maa + clusterness) if maa + clusterness > 0 else 0.0
    return {
        "dataset": dataset,
        "maa": float(maa),
        "clusterness": float(clusterness),
        "score": float(score),
        "imc2024_mode": "sampled" if any(m.row["imc2024_mode"] == "sampled" for m in matches) else "exact",
        "per_scene": [m.row for m in matches],
    }
