"""Whole submissions: all metrics of a scene, and the per-dataset and overall means."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imc_ray.evaluate.clusters import score_clusters
from imc_ray.evaluate.imc2023 import (
    AUC_THRESHOLDS_DEG,
    IMC2023_RELATIVE_T_FACTORS,
    IMC2023_TH_DEG,
    IMC2023_TH_T,
    imc2023_maa,
    pose_auc,
)
from imc_ray.evaluate.imc2024 import centre_spread, imc2024_registration, relative_thresholds
from imc_ray.evaluate.io import EvaluationError, read_submission, read_thresholds, read_truth
from imc_ray.evaluate.poses import FloatArray, Pose

logger = logging.getLogger(__name__)

#: Metrics that :func:`evaluate` reports per scene and averages per dataset and overall.
METRICS: tuple[str, ...] = (
    "registration_rate",
    "imc2023_maa",
    "imc2024_maa",
    "auc@1",
    "auc@5",
    "auc@10",
)


def registration_rate(truth: Mapping[str, Pose], pred: Mapping[str, Pose | None]) -> float:
    """Fraction of ground-truth images with a finite predicted pose."""
    if not truth:
        return 0.0
    return _count_registered(truth, pred) / len(truth)


def _count_registered(truth: Mapping[str, Pose], pred: Mapping[str, Pose | None]) -> int:
    """Number of ground-truth images with a finite predicted pose."""
    return sum(1 for name in truth if (p := pred.get(name)) is not None and p.is_finite())


def _auc_key(threshold: float) -> str:
    """Metric name of an AUC threshold: ``auc@5`` for 5 or 5.0, ``auc@2.5`` for 2.5."""
    value = float(threshold)
    return f"auc@{int(value)}" if value.is_integer() else f"auc@{value:g}"


def score_scene(
    truth: Mapping[str, Pose],
    pred: Mapping[str, Pose | None],
    thresholds: Sequence[float],
    th_t_2023: Sequence[float] | FloatArray = IMC2023_TH_T,
) -> dict[str, Any]:
    """All metrics of one scene.

    Returns:
        ``{n_images, n_registered, registration_rate, imc2023_maa, imc2024_maa,
        imc2024_mode, imc2024_inliers, auc@1, auc@5, auc@10}`` (JSON-serialisable).
    """
    reg = imc2024_registration(truth, pred, thresholds)
    out: dict[str, Any] = {
        "n_images": len(truth),
        "n_registered": _count_registered(truth, pred),
        "registration_rate": registration_rate(truth, pred),
        "imc2023_maa": imc2023_maa(truth, pred, IMC2023_TH_DEG, th_t_2023),
        "imc2024_maa": reg.maa,
        "imc2024_mode": reg.mode,
        "imc2024_inliers": list(reg.inliers),
    }
    for th, auc in pose_auc(truth, pred, AUC_THRESHOLDS_DEG).items():
        out[_auc_key(th)] = auc
    return out


def _mean(values: Iterable[float]) -> float:
    """Mean of the values, 0.0 when there are none."""
    vals = list(values)
    return float(sum(vals) / len(vals)) if vals else 0.0


def _scene_thresholds(
    key: tuple[str, str],
    truth: Mapping[str, Pose],
    from_file: Mapping[tuple[str, str], tuple[float, ...]] | None,
) -> tuple[tuple[float, ...], str, tuple[float, ...]]:
    """IMC 2024 thresholds, their kind ("file" | "relative"), and IMC 2023 translation ones."""
    if from_file is not None and key in from_file:
        return tuple(from_file[key]), "file", IMC2023_TH_T
    if from_file is not None:
        logger.warning("scene %s/%s is not in the thresholds file; using relative thresholds", *key)
    spread = centre_spread(truth)
    rel_t = tuple(spread * f for f in IMC2023_RELATIVE_T_FACTORS)
    return relative_thresholds(truth), "relative", rel_t


def evaluate(submission: Path, truth_root: Path, thresholds_file: Path | None = None) -> dict[str, Any]:
    """Score a submission CSV against the reference poses below ``truth_root``.

    Scenes of the truth that the submission lacks score 0 (with a warning); submission rows
    naming images that are not in the truth are ignored (with a warning); scenes of the
    submission that are not in the truth are listed under ``"skipped"``.

    IMC 2024 thresholds come from ``thresholds_file`` where it names the scene ("file": the
    truth is taken to be metric, and IMC 2023 uses its default metre thresholds), otherwise
    they are relative to the spread of the true centres ("relative", IMC 2023 translation
    thresholds scaled the same way; see the package docstring).

    Returns:
        JSON-serialisable ``{"scenes": [...], "datasets": {name: {...}}, "overall": {...},
        "skipped": [...], "metrics": [...]}``; per scene: dataset, scene, n_images,
        n_registered, n_ignored, missing, registration_rate, imc2023_maa, imc2024_maa,
        imc2024_mode, imc2024_inliers, auc@1, auc@5, auc@10, thresholds, threshold_kind,
        imc2023_thresholds_deg, imc2023_thresholds_t. Dataset values are means over the
        dataset's scenes; overall values are means over datasets of those means.
    """
    truth = read_truth(Path(truth_root))
    sub = read_submission(Path(submission))
    from_file = read_thresholds(Path(thresholds_file)) if thresholds_file is not None else None
    scenes = [_evaluate_scene(key, truth[key], sub.get(key), from_file, truth_root) for key in sorted(truth)]
    skipped = _skipped_scenes(sub, truth)
    datasets = _dataset_means(scenes)
    overall: dict[str, Any] = {"n_datasets": len(datasets), "n_scenes": len(scenes)}
    overall.update({m: _mean(d[m] for d in datasets.values()) for m in METRICS})
    return {
        "scenes": scenes,
        "datasets": datasets,
        "overall": overall,
        "skipped": skipped,
        "metrics": list(METRICS),
    }


def _evaluate_scene(
    key: tuple[str, str],
    gt: Mapping[str, Pose],
    pred: Mapping[str, Pose | None] | None,
    from_file: Mapping[tuple[str, str], tuple[float, ...]] | None,
    truth_root: Path,
) -> dict[str, Any]:
    """One row of :func:`evaluate`'s ``"scenes"``; ``pred`` is None when the submission lacks the scene."""
    dataset, scene = key
    missing = pred is None
    if pred is None:
        logger.warning("scene %s/%s is not in the submission; it scores 0", dataset, scene)
        pred = {}
    ignored = sorted(set(pred) - set(gt))
    if ignored:
        logger.warning(
            "%d image(s) of %s/%s are not in the truth and are ignored, e.g. %s",
            len(ignored),
            dataset,
            scene,
            ignored[0],
        )
    th, kind, th_t_2023 = _scene_thresholds(key, gt, from_file)
    if not all(v > 0 for v in th):
        raise EvaluationError(
            f"{truth_root}: scene {dataset}/{scene}: all camera centres in its labels.csv coincide, so "
            "relative thresholds are undefined; give this scene a row in a thresholds file"
        )
    row: dict[str, Any] = {"dataset": dataset, "scene": scene}
    row.update(score_scene(gt, pred, th, th_t_2023))
    row.update(
        {
            "n_ignored": len(ignored),
            "missing": missing,
            "thresholds": [float(v) for v in th],
            "threshold_kind": kind,
            "imc2023_thresholds_deg": [float(v) for v in IMC2023_TH_DEG],
            "imc2023_thresholds_t": [float(v) for v in th_t_2023],
        }
    )
    return row


def _skipped_scenes(
    sub: Mapping[tuple[str, str], object], truth: Mapping[tuple[str, str], object]
) -> list[dict[str, Any]]:
    """``{dataset, scene, reason}`` of each submission scene that the truth lacks (with a warning)."""
    skipped = [
        {"dataset": d, "scene": s, "reason": "not in the truth"} for (d, s) in sorted(sub) if (d, s) not in truth
    ]
    for item in skipped:
        logger.warning("scene %s/%s of the submission is not in the truth; skipped", item["dataset"], item["scene"])
    return skipped


def _dataset_means(scenes: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{dataset: {n_scenes, <metric>: mean over its scenes}}`` of :func:`evaluate`'s scene rows."""
    datasets: dict[str, dict[str, Any]] = {}
    for name in sorted({row["dataset"] for row in scenes}):
        rows = [row for row in scenes if row["dataset"] == name]
        entry: dict[str, Any] = {"n_scenes": len(rows)}
        entry.update({m: _mean(row[m] for row in rows) for m in METRICS})
        datasets[name] = entry
    return datasets


def evaluate_clusters(submission: Path, truth_root: Path, thresholds_file: Path | None = None) -> dict[str, Any]:
    """IMC 2025 scores of a clustered submission (``imc-ray run --cluster``).

    The submission's ``scene`` column names clusters (``outliers`` is reserved); the truth holds the
    true scenes of each dataset as ``<truth_root>/<dataset>/<scene>/labels.csv``. Each dataset of the
    truth is scored with :func:`score_clusters`; the final score is 100 x the mean over datasets.
    """
    truth = read_truth(Path(truth_root))
    sub = read_submission(Path(submission))
    from_file = read_thresholds(Path(thresholds_file)) if thresholds_file is not None else {}
    datasets: list[dict[str, Any]] = []
    for dataset in sorted({d for d, _ in truth}):
        scenes = {k: v for k, v in truth.items() if k[0] == dataset}
        clusters = {scene: dict(images) for (d, scene), images in sub.items() if d == dataset}
        thresholds = {k: from_file.get(k) or relative_thresholds(v) for k, v in scenes.items()}
        datasets.append(score_clusters(scenes, clusters, thresholds))
    final = 100.0 * float(np.mean([d["score"] for d in datasets])) if datasets else 0.0
    return {"datasets": datasets, "final": final}
