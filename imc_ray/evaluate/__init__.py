"""Score reconstructions against reference poses: IMC 2023, IMC 2024, IMC 2025 and pose AUC.

The rules follow ``shared/metrics.md`` (facts gathered from public copies of the official
Image Matching Challenge scorers). Conventions everywhere in this package:

* poses are world-to-camera, ``x_cam = R @ x_world + t``; the camera centre is ``c = -R.T @ t``;
* an image without a pose (``None``, or non-finite numbers in a submission) is *unregistered*
  and still counts in every denominator;
* ``truth`` is ``{image_name: Pose}``, ``pred`` is ``{image_name: Pose | None}``; images of
  ``pred`` that are not in ``truth`` are ignored, images of ``truth`` missing from ``pred``
  are unregistered.

Metrics
-------
IMC 2023 (:func:`imc2023_maa`)
    Relative pose of every unordered pair of ground-truth images; accuracy at 10 paired
    (rotation, translation) thresholds, averaged. The rotation error uses the scorer's
    quaternion formula ``arccos(1 - 2 max(eps, 1 - (q.q_gt)^2))``, computed here through the
    identity ``(q.q_gt)^2 = (trace(dR_gt^T dR) + 1) / 4`` (no quaternion conversion needed).
    As in the public scorer, a pair counts when both errors are *strictly* below the thresholds.
IMC 2024 (:func:`imc2024_maa`, :func:`imc2024_registration`)
    Camera centres after a similarity alignment found by an exhaustive triplet search with
    one refit on the inliers, per threshold. The search is vectorised and returns exactly what
    the public scorer's triple loop returns (the refined models are deduplicated by inlier
    set, which cannot change the result; triplet fits use the SVD rotation where the scorer uses
    Horn's quaternion, which agree except for the rotation about the line through exactly
    collinear centres, which is arbitrary in both). As in the public scorer, the similarity's scale is
    the ratio of the RMS deviations from the centroids, and a camera is an inlier when its
    distance is strictly below the threshold. Scenes with ``n <= 3`` ground-truth images
    score 0.0 (the formula's denominator ``n - 3`` is not positive). When more than
    :data:`EXACT_MAX_CAMERAS` cameras are registered, a fixed-seed random sample of
    :data:`SAMPLED_TRIPLETS` distinct triplets is searched instead; the result says so
    (``mode == "sampled"``); its inlier counts can only be lower than or equal to those of the
    exact search (its candidate models are a subset).
Pose AUC (:func:`pose_auc`)
    Scale-free: the error of a pair is ``max(rotation error, angle between the true and the
    predicted relative translation directions)`` in degrees (the sign of the translation is
    known in SfM, so a flipped direction is an error of 180 degrees); pairs with an
    unregistered image have an infinite error. The AUC is the one of SuperGlue / LightGlue /
    glue-factory: recall curve over the sorted errors, trapezoid integration up to each
    threshold, divided by the threshold.
IMC 2025 (:func:`score_clusters`)
    Clustering plus registration for one dataset: each true scene picks the predicted cluster
    with the largest overlap (ties: higher mAA, then the cluster that comes first), then
    ``score = harmonic_mean(pooled mAA, clusterness)``.

Thresholds for scenes without metric scale (:func:`relative_thresholds`)
    ``spread = median |c_i - mean(c)|`` of the true centres and
    ``th = spread * (0.002, 0.005, 0.01, 0.02, 0.05, 0.1)`` for IMC 2024. :func:`evaluate`
    scales the IMC 2023 translation thresholds the same way:
    ``spread * geomspace(0.02, 0.5, 10)``, i.e. the competition's metre thresholds
    ``geomspace(0.2, 5, 10)`` for a scene whose spread is 10 m, the spread at which the
    IMC 2024 relative thresholds (mostly) equal the competition's metre defaults.

Modules
-------
``poses`` (:class:`Pose`, aligned pose stacks), ``io`` (CSV readers, :class:`EvaluationError`),
``imc2023`` (pair errors, AUC, IMC 2023 mAA), ``imc2024`` (triplet registration, IMC 2024 mAA,
relative thresholds), ``clusters`` (IMC 2025), ``scoring`` (:func:`score_scene`, :func:`evaluate`,
:func:`evaluate_clusters`) and ``tables`` (:func:`format_table`, :func:`format_clusters_table`).
This package re-exports their public names.
"""

from __future__ import annotations

from imc_ray.evaluate.clusters import OUTLIERS, score_clusters
from imc_ray.evaluate.imc2023 import (
    AUC_THRESHOLDS_DEG,
    IMC2023_EPS,
    IMC2023_RELATIVE_T_FACTORS,
    IMC2023_TH_DEG,
    IMC2023_TH_T,
    auc_from_errors,
    auc_pair_errors,
    imc2023_maa,
    imc2023_pair_errors,
    pose_auc,
)
from imc_ray.evaluate.imc2024 import (
    EXACT_MAX_CAMERAS,
    IMC2024_TH_M,
    RELATIVE_FACTORS,
    SAMPLE_SEED,
    SAMPLED_TRIPLETS,
    Imc2024Result,
    imc2024_maa,
    imc2024_registration,
    relative_thresholds,
)
from imc_ray.evaluate.io import (
    LABELS_HEADER,
    SUBMISSION_HEADER,
    THRESHOLDS_HEADER,
    EvaluationError,
    read_labels,
    read_submission,
    read_thresholds,
    read_truth,
)
from imc_ray.evaluate.poses import BoolArray, FloatArray, IntArray, Pose, camera_centres
from imc_ray.evaluate.scoring import METRICS, evaluate, evaluate_clusters, registration_rate, score_scene
from imc_ray.evaluate.tables import format_clusters_table, format_table

__all__ = [
    "AUC_THRESHOLDS_DEG",
    "EXACT_MAX_CAMERAS",
    "IMC2023_EPS",
    "IMC2023_RELATIVE_T_FACTORS",
    "IMC2023_TH_DEG",
    "IMC2023_TH_T",
    "IMC2024_TH_M",
    "LABELS_HEADER",
    "METRICS",
    "OUTLIERS",
    "RELATIVE_FACTORS",
    "SAMPLED_TRIPLETS",
    "SAMPLE_SEED",
    "SUBMISSION_HEADER",
    "THRESHOLDS_HEADER",
    "BoolArray",
    "EvaluationError",
    "FloatArray",
    "Imc2024Result",
    "IntArray",
    "Pose",
    "auc_from_errors",
    "auc_pair_errors",
    "camera_centres",
    "evaluate",
    "evaluate_clusters",
    "format_clusters_table",
    "format_table",
    "imc2023_maa",
    "imc2023_pair_errors",
    "imc2024_maa",
    "imc2024_registration",
    "pose_auc",
    "read_labels",
    "read_submission",
    "read_thresholds",
    "read_truth",
    "registration_rate",
    "relative_thresholds",
    "score_clusters",
    "score_scene",
]
