"""Score reconstructions against reference poses: IMC 2023, IMC 2024, IMC 2025 and pose AUC.

The rules follow ``shared/metrics.md`` (facts gathered from public copies of the official
Image Matching Challenge scorers). Conventions everywhere in this module:

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
"""

from __future__ import annotations

import csv
import itertools
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from imc_ray.stages.submission import HEADER

logger = logging.getLogger(__name__)

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
IntArray = NDArray[np.int64]

SUBMISSION_HEADER: tuple[str, ...] = HEADER
LABELS_HEADER: tuple[str, ...] = (
    "image_name",
    "rotation_matrix",
    "translation_vector",
    "calibration_matrix",
)
THRESHOLDS_HEADER: tuple[str, ...] = ("dataset", "scene", "thresholds")

#: eps of the IMC 2023 scorer (rotation loss floor and translation normalisation).
IMC2023_EPS = 1e-15
#: IMC 2023 default thresholds: rotation in degrees, translation in metres.
IMC2023_TH_DEG: tuple[float, ...] = tuple(float(v) for v in np.linspace(1.0, 10.0, 10))
IMC2023_TH_T: tuple[float, ...] = tuple(float(v) for v in np.geomspace(0.2, 5.0, 10))
#: IMC 2023 translation thresholds relative to the spread of the true centres (see module doc).
IMC2023_RELATIVE_T_FACTORS: tuple[float, ...] = tuple(float(v) for v in np.geomspace(0.02, 0.5, 10))
#: IMC 2024 default thresholds in metres.
IMC2024_TH_M: tuple[float, ...] = (0.025, 0.05, 0.1, 0.2, 0.5, 1.0)
#: IMC 2024 thresholds relative to the spread of the true centres.
RELATIVE_FACTORS: tuple[float, ...] = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
#: Pose AUC thresholds in degrees.
AUC_THRESHOLDS_DEG: tuple[int, ...] = (1, 5, 10)
#: The IMC 2024 triplet search is exact up to this many registered cameras (C(60, 3) = 34220).
EXACT_MAX_CAMERAS = 60
#: Number of distinct random triplets searched above :data:`EXACT_MAX_CAMERAS`.
SAMPLED_TRIPLETS = 10_000
#: Seed of the triplet sample (``numpy.random.default_rng``).
SAMPLE_SEED = 0
#: The reserved IMC 2025 cluster / scene name for images that belong to no scene.
OUTLIERS = "outliers"
#: Metrics that :func:`evaluate` reports per scene and averages per dataset and overall.
METRICS: tuple[str, ...] = (
    "registration_rate",
    "imc2023_maa",
    "imc2024_maa",
    "auc@1",
    "auc@5",
    "auc@10",
)

_ROTATION_TOL_TRUTH = 1e-4
_ROTATION_TOL_SUBMISSION = 1e-3
_CHUNK_FLOATS = 1 << 22  # floats per vectorised chunk (32 MiB of float64)


# --------------------------------------------------------------------------------------------
# Data types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Pose:
    """A world-to-camera pose: ``x_cam = R @ x_world + t``.

    Attributes:
        R: (3, 3) float64 rotation, world to camera.
        t: (3,) float64 translation.
    """

    R: np.ndarray
    t: np.ndarray

    def __post_init__(self) -> None:
        rot = np.asarray(self.R, dtype=np.float64).reshape(3, 3)
        trans = np.asarray(self.t, dtype=np.float64).reshape(3)
        object.__setattr__(self, "R", rot)
        object.__setattr__(self, "t", trans)

    @property
    def centre(self) -> FloatArray:
        """(3,) camera centre in world coordinates, ``-R.T @ t``."""
        return np.asarray(-self.R.T @ self.t, dtype=np.float64)

    def is_finite(self) -> bool:
        """True when all 12 numbers are finite."""
        return bool(np.all(np.isfinite(self.R)) and np.all(np.isfinite(self.t)))


class EvaluationError(ValueError):
    """Bad evaluation input; the message names the file (and line) and says how to fix it."""


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


# --------------------------------------------------------------------------------------------
# Reading and writing CSV files
# --------------------------------------------------------------------------------------------


def _read_rows(path: Path, header: Sequence[str], what: str) -> list[tuple[int, list[str]]]:
    """Read a CSV file whose first row must be ``header``; return ``(line, cells)`` per data row.

    Blank lines are skipped, cells are stripped. Every data row must have ``len(header)`` cells.
    """
    path = Path(path)
    expected = ",".join(header)
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise EvaluationError(f"{path}: cannot open the {what} ({exc.strerror or exc}); check the path") from exc
    rows: list[tuple[int, list[str]]] = []
    with handle:
        reader = csv.reader(handle)
        try:
            first = next(reader, None)
            if first is None or [c.strip() for c in first] != list(header):
                found = "an empty file" if first is None else repr(",".join(first))[:120]
                raise EvaluationError(
                    f"{path}:1: the {what} must start with the header line '{expected}', "
                    f"found {found}; add or fix the header"
                )
            for cells in reader:
                if not cells or all(not c.strip() for c in cells):
                    continue
                if len(cells) != len(header):
                    raise EvaluationError(
                        f"{path}:{reader.line_num}: expected {len(header)} comma-separated "
                        f"columns ({expected}), found {len(cells)}; fix or remove this row "
                        "(a truncated last line also causes this)"
                    )
                rows.append((reader.line_num, [c.strip() for c in cells]))
        except csv.Error as exc:
            raise EvaluationError(
                f"{path}:{reader.line_num}: not valid CSV ({exc}); fix the quoting of this row"
            ) from exc
        except UnicodeDecodeError as exc:
            raise EvaluationError(f"{path}: not UTF-8 text ({exc.reason}); save the {what} as UTF-8 CSV") from exc
    return rows


def _parse_numbers(text: str, count: int, path: Path, line: int, column: str) -> FloatArray:
    """Parse ``count`` ';'-joined numbers (``nan`` / ``inf`` allowed) into a (count,) array."""
    parts = text.split(";")
    if len(parts) != count:
        raise EvaluationError(
            f"{path}:{line}: column '{column}' must hold {count} numbers joined by ';' "
            f"(row-major), found {len(parts)} in {text[:80]!r}; write all {count} numbers"
        )
    try:
        return np.array([float(p) for p in parts], dtype=np.float64)
    except ValueError as exc:
        raise EvaluationError(
            f"{path}:{line}: column '{column}' holds a value that is not a number "
            f"({exc}); write decimal numbers, or 'nan' for an unregistered image"
        ) from exc


def _rotation_defect(rot: FloatArray) -> float:
    """How far a (3, 3) matrix is from a rotation: max |R R^T - I| plus |det R - 1|."""
    ortho = float(np.max(np.abs(rot @ rot.T - np.eye(3))))
    return ortho + abs(float(np.linalg.det(rot)) - 1.0)


def read_submission(path: Path) -> dict[tuple[str, str], dict[str, Pose | None]]:
    """Read a submission CSV.

    Header exactly ``dataset,scene,image,rotation_matrix,translation_vector``; the rotation is 9
    numbers and the translation 3 numbers joined by ';', row-major, world-to-camera. A row with
    any non-finite number (``nan``) is an unregistered image (``None``).

    Returns:
        ``{(dataset, scene): {image: Pose | None}}``, in file order.

    Raises:
        EvaluationError: missing header, wrong column count, non-numeric values, duplicate rows.
    """
    path = Path(path)
    out: dict[tuple[str, str], dict[str, Pose | None]] = {}
    for line, (dataset, scene, image, rot_text, t_text) in _read_rows(path, SUBMISSION_HEADER, "submission"):
        if not dataset or not scene or not image:
            raise EvaluationError(f"{path}:{line}: dataset, scene and image must not be empty; fill them in")
        rot = _parse_numbers(rot_text, 9, path, line, "rotation_matrix")
        trans = _parse_numbers(t_text, 3, path, line, "translation_vector")
        images = out.setdefault((dataset, scene), {})
        if image in images:
            raise EvaluationError(
                f"{path}:{line}: image {image!r} of {dataset}/{scene} appears twice; keep one row per image"
            )
        if np.all(np.isfinite(rot)) and np.all(np.isfinite(trans)):
            pose = Pose(rot.reshape(3, 3), trans)
            if _rotation_defect(pose.R) > _ROTATION_TOL_SUBMISSION:
                logger.warning(
                    "%s:%d: rotation_matrix of %s is not a rotation (|RR^T - I| or det off); scoring it as given",
                    path,
                    line,
                    image,
                )
            images[image] = pose
        else:
            images[image] = None
    return out


def read_labels(path: Path) -> dict[str, Pose]:
    """Read a scene's ``labels.csv`` (reference poses).

    Header exactly ``image_name,rotation_matrix,translation_vector,calibration_matrix``; 9, 3 and
    9 numbers joined by ';', row-major, world-to-camera. The calibration is checked for being 9
    numbers but otherwise ignored.

    Returns:
        ``{image_name: Pose}`` in file order.

    Raises:
        EvaluationError: missing header, wrong column count, non-numeric or non-finite values,
            a rotation that is not a rotation, duplicate images, no rows.
    """
    path = Path(path)
    out: dict[str, Pose] = {}
    for line, (image, rot_text, t_text, k_text) in _read_rows(path, LABELS_HEADER, "labels file"):
        if not image:
            raise EvaluationError(f"{path}:{line}: empty image_name; fill it in")
        rot = _parse_numbers(rot_text, 9, path, line, "rotation_matrix")
        trans = _parse_numbers(t_text, 3, path, line, "translation_vector")
        _parse_numbers(k_text, 9, path, line, "calibration_matrix")
        if not (np.all(np.isfinite(rot)) and np.all(np.isfinite(trans))):
            raise EvaluationError(
                f"{path}:{line}: reference pose of {image!r} is not finite; "
                "remove the image from labels.csv or give it a pose"
            )
        if image in out:
            raise EvaluationError(f"{path}:{line}: image {image!r} appears twice; keep one row per image")
        pose = Pose(rot.reshape(3, 3), trans)
        if _rotation_defect(pose.R) > _ROTATION_TOL_TRUTH:
            raise EvaluationError(
                f"{path}:{line}: rotation_matrix of {image!r} is not a rotation "
                "(R R^T != I or det R != 1); project it onto SO(3) (SVD) and write it row-major"
            )
        out[image] = pose
    if not out:
        raise EvaluationError(f"{path}: no images after the header; add one row per image")
    return out


def read_truth(root: Path) -> dict[tuple[str, str], dict[str, Pose]]:
    """Read every ``<root>/<dataset>/<scene>/labels.csv``.

    A ``root`` that directly holds ``labels.csv`` is one scene, named
    ``(root.parent.name, root.name)``.

    Returns:
        ``{(dataset, scene): {image_name: Pose}}``, sorted by (dataset, scene).

    Raises:
        EvaluationError: ``root`` missing, or no labels.csv found, or a bad labels.csv.
    """
    root = Path(root)
    if not root.is_dir():
        raise EvaluationError(
            f"{root}: truth folder not found; pass the folder that holds <dataset>/<scene>/labels.csv"
        )
    direct = root / "labels.csv"
    if direct.is_file():
        resolved = root.resolve()
        return {(resolved.parent.name, resolved.name): read_labels(direct)}
    files = sorted(root.glob("*/*/labels.csv"))
    if not files:
        raise EvaluationError(
            f"{root}: no <dataset>/<scene>/labels.csv found below this folder; pass the folder "
            "that holds the dataset folders (or a scene folder that holds labels.csv)"
        )
    return {(f.parent.parent.name, f.parent.name): read_labels(f) for f in files}


def read_thresholds(path: Path) -> dict[tuple[str, str], tuple[float, ...]]:
    """Read a thresholds CSV: header ``dataset,scene,thresholds``, thresholds ';'-joined.

    The thresholds are IMC 2024 camera-centre distances in the truth's units; they replace the
    relative thresholds for the scenes they name.

    Returns:
        ``{(dataset, scene): thresholds}``.

    Raises:
        EvaluationError: bad header, wrong column count, a threshold that is not a positive
            finite number, duplicate scenes.
    """
    path = Path(path)
    out: dict[tuple[str, str], tuple[float, ...]] = {}
    for line, (dataset, scene, text) in _read_rows(path, THRESHOLDS_HEADER, "thresholds file"):
        try:
            values = tuple(float(v) for v in text.split(";"))
        except ValueError as exc:
            raise EvaluationError(
                f"{path}:{line}: thresholds must be numbers joined by ';' ({exc}); fix this row"
            ) from exc
        if not values or not all(math.isfinite(v) and v > 0 for v in values):
            raise EvaluationError(
                f"{path}:{line}: thresholds must be positive finite numbers, found {text!r}; fix this row"
            )
        if (dataset, scene) in out:
            raise EvaluationError(f"{path}:{line}: scene {dataset}/{scene} appears twice; keep one row per scene")
        out[(dataset, scene)] = values
    return out


# --------------------------------------------------------------------------------------------
# Array helpers
# --------------------------------------------------------------------------------------------


def _stack(
    truth: Mapping[str, Pose], pred: Mapping[str, Pose | None]
) -> tuple[list[str], FloatArray, FloatArray, FloatArray, FloatArray, BoolArray]:
    """Align truth and prediction on the truth's sorted image names.

    Returns:
        names (n,), R_gt (n, 3, 3), t_gt (n, 3), R_pred (n, 3, 3), t_pred (n, 3) and
        registered (n,) bool; rows of unregistered images hold NaN in the prediction arrays.
    """
    names = sorted(truth)
    n = len(names)
    r_gt = np.zeros((n, 3, 3))
    t_gt = np.zeros((n, 3))
    r_pr = np.full((n, 3, 3), np.nan)
    t_pr = np.full((n, 3), np.nan)
    registered = np.zeros(n, dtype=bool)
    for i, name in enumerate(names):
        r_gt[i] = truth[name].R
        t_gt[i] = truth[name].t
        pose = pred.get(name)
        if pose is not None and pose.is_finite():
            r_pr[i] = pose.R
            t_pr[i] = pose.t
            registered[i] = True
    return names, r_gt, t_gt, r_pr, t_pr, registered


def camera_centres(rot: FloatArray, trans: FloatArray) -> FloatArray:
    """Camera centres ``c = -R^T t``: rot (n, 3, 3), trans (n, 3) -> (n, 3)."""
    return np.asarray(-np.einsum("nji,nj->ni", rot, trans), dtype=np.float64)


def _pair_blocks(n: int, max_pairs: int = 1 << 20) -> Iterator[tuple[IntArray, IntArray]]:
    """All unordered pairs i < j of range(n) in ``np.triu_indices`` order, in blocks of whole rows.

    Yields:
        i (P_b,), j (P_b,) with at most ``max_pairs`` pairs per block (or one row, if longer).
    """
    start = 0
    while start < n - 1:
        stop, count = start, 0
        while stop < n - 1 and (count == 0 or count + (n - 1 - stop) <= max_pairs):
            count += n - 1 - stop
            stop += 1
        rows = np.arange(start, stop, dtype=np.int64)
        i = np.repeat(rows, n - 1 - rows)
        j = np.concatenate([np.arange(r + 1, n, dtype=np.int64) for r in rows])
        yield i, j
        start = stop


def _relative_poses(rot: FloatArray, trans: FloatArray, i: IntArray, j: IntArray) -> tuple[FloatArray, FloatArray]:
    """Relative poses of pairs (i, j): ``dR = R_j R_i^T``, ``dt = t_j - dR t_i``.

    Args:
        rot: (n, 3, 3); trans: (n, 3); i, j: (P,) indices.

    Returns:
        dR (P, 3, 3), dt (P, 3).
    """
    d_rot = np.einsum("pab,pcb->pac", rot[j], rot[i])
    d_t = trans[j] - np.einsum("pab,pb->pa", d_rot, trans[i])
    return d_rot, d_t


def _relative_rotation_trace(rot_a: FloatArray, rot_b: FloatArray) -> FloatArray:
    """``trace(A^T B)`` for (P, 3, 3) stacks -> (P,)."""
    return np.asarray(np.einsum("pab,pab->p", rot_a, rot_b), dtype=np.float64)


def _angle_between_deg(a: FloatArray, b: FloatArray) -> FloatArray:
    """Angle in degrees between (P, 3) vectors (atan2 form, accurate near 0 and 180).

    A zero-length true vector gives 0 (no direction to miss); a zero-length predicted vector
    against a non-zero true one gives infinity.
    """
    cross = np.linalg.norm(np.cross(a, b), axis=-1)
    dot = np.einsum("pa,pa->p", a, b)
    angle = np.degrees(np.arctan2(cross, dot))
    norm_a = np.linalg.norm(a, axis=-1)
    norm_b = np.linalg.norm(b, axis=-1)
    angle = np.where(norm_b == 0, np.inf, angle)
    return np.asarray(np.where(norm_a == 0, 0.0, angle), dtype=np.float64)


def _imc2023_block(
    dr_gt: FloatArray, dt_gt: FloatArray, dr_pr: FloatArray, dt_pr: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """IMC 2023 rotation (degrees) and translation errors of (P,) relative poses."""
    with np.errstate(invalid="ignore"):
        q_dot_sq = np.clip((_relative_rotation_trace(dr_gt, dr_pr) + 1.0) / 4.0, 0.0, 1.0)
        loss = np.maximum(IMC2023_EPS, 1.0 - q_dot_sq)
        err_r = np.degrees(np.arccos(np.clip(1.0 - 2.0 * loss, -1.0, 1.0)))
        norm_gt = np.linalg.norm(dt_gt, axis=-1, keepdims=True)
        norm_pr = np.linalg.norm(dt_pr, axis=-1, keepdims=True)
        scaled = norm_gt * dt_pr / (norm_pr + IMC2023_EPS)
        err_t = np.minimum(np.linalg.norm(dt_gt - scaled, axis=-1), np.linalg.norm(dt_gt + scaled, axis=-1))
    return np.asarray(err_r, dtype=np.float64), np.asarray(err_t, dtype=np.float64)


def _auc_block(dr_gt: FloatArray, dt_gt: FloatArray, dr_pr: FloatArray, dt_pr: FloatArray) -> FloatArray:
    """Scale-free errors (degrees) of (P,) relative poses: max(rotation angle, direction angle)."""
    with np.errstate(invalid="ignore"):
        cos = np.clip((_relative_rotation_trace(dr_gt, dr_pr) - 1.0) / 2.0, -1.0, 1.0)
        err_r = np.degrees(np.arccos(cos))
        err_t = _angle_between_deg(dt_gt, dt_pr)
    return np.asarray(np.maximum(err_r, err_t), dtype=np.float64)


def _pair_errors(
    truth: Mapping[str, Pose], pred: Mapping[str, Pose | None], kind: str
) -> tuple[FloatArray, FloatArray]:
    """Per-pair errors over all ground-truth pairs, computed in bounded-memory blocks.

    Args:
        kind: ``"imc2023"`` (returns err_R, err_t) or ``"auc"`` (returns err, err).

    Returns:
        Two (P,) arrays; +inf for pairs with an unregistered image.
    """
    _, r_gt, t_gt, r_pr, t_pr, registered = _stack(truth, pred)
    first: list[FloatArray] = []
    second: list[FloatArray] = []
    for i, j in _pair_blocks(len(registered)):
        dr_gt, dt_gt = _relative_poses(r_gt, t_gt, i, j)
        dr_pr, dt_pr = _relative_poses(r_pr, t_pr, i, j)
        ok = registered[i] & registered[j]
        if kind == "imc2023":
            a, b = _imc2023_block(dr_gt, dt_gt, dr_pr, dt_pr)
        else:
            a = b = _auc_block(dr_gt, dt_gt, dr_pr, dt_pr)
        first.append(np.where(ok, a, np.inf))
        second.append(np.where(ok, b, np.inf))
    if not first:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(first), np.concatenate(second)


def imc2023_pair_errors(truth: Mapping[str, Pose], pred: Mapping[str, Pose | None]) -> tuple[FloatArray, FloatArray]:
    """IMC 2023 errors of every unordered pair of ground-truth images (sorted names, i < j).

    Returns:
        err_R (P,) in degrees and err_t (P,) in the truth's units; both are +inf for pairs with
        an unregistered image.
    """
    return _pair_errors(truth, pred, "imc2023")


def auc_pair_errors(truth: Mapping[str, Pose], pred: Mapping[str, Pose | None]) -> FloatArray:
    """Scale-free error of every unordered ground-truth pair (sorted names, i < j), in degrees.

    ``max(angle of dR_gt^T dR, angle between dt_gt and dt)``; +inf where an image is unregistered.

    Returns:
        (P,) errors.
    """
    return _pair_errors(truth, pred, "auc")[0]


def auc_from_errors(errors: FloatArray, thresholds: Sequence[float]) -> list[float]:
    """Area under the recall-vs-error curve up to each threshold, divided by the threshold.

    The glue-factory / LightGlue / SuperGlue definition: sort the errors, recall i/N at the
    i-th error, start the curve at (0, 0), integrate with the trapezoid rule up to the
    threshold (holding the last recall below it). Infinite errors never count.

    Args:
        errors: (N,) errors; thresholds: positive thresholds in the errors' units.

    Returns:
        One AUC in [0, 1] per threshold (0.0 for every threshold when N == 0).
    """
    errors = np.sort(np.asarray(errors, dtype=np.float64))
    if errors.size == 0:
        return [0.0 for _ in thresholds]
    recall = np.arange(1, errors.size + 1, dtype=np.float64) / errors.size
    errors = np.concatenate([[0.0], errors])
    recall = np.concatenate([[0.0], recall])
    aucs = []
    for th in thresholds:
        last = int(np.searchsorted(errors, th))
        r = np.concatenate([recall[:last], [recall[last - 1]]])
        e = np.concatenate([errors[:last], [th]])
        area = np.sum(np.diff(e) * (r[1:] + r[:-1]) / 2.0)  # trapezoid rule (numpy-version independent)
        aucs.append(float(area / th))
    return aucs


# --------------------------------------------------------------------------------------------
# Metrics on one scene
# --------------------------------------------------------------------------------------------


def registration_rate(truth: Mapping[str, Pose], pred: Mapping[str, Pose | None]) -> float:
    """Fraction of ground-truth images with a finite predicted pose."""
    if not truth:
        return 0.0
    return _count_registered(truth, pred) / len(truth)


def _count_registered(truth: Mapping[str, Pose], pred: Mapping[str, Pose | None]) -> int:
    """Number of ground-truth images with a finite predicted pose."""
    return sum(1 for name in truth if (p := pred.get(name)) is not None and p.is_finite())


def imc2023_maa(
    truth: Mapping[str, Pose],
    pred: Mapping[str, Pose | None],
    th_deg: Sequence[float] | FloatArray = IMC2023_TH_DEG,
    th_t: Sequence[float] | FloatArray = IMC2023_TH_T,
) -> float:
    """IMC 2023 mAA of one scene: mean over the paired thresholds of the fraction of pairs with
    ``err_R < th_deg[k]`` and ``err_t < th_t[k]`` (``th_t`` in the truth's units).

    Every unordered pair of ground-truth images counts; 0.0 when there are fewer than 2 images.
    """
    th_r = np.asarray(th_deg, dtype=np.float64).reshape(-1)
    th_tr = np.asarray(th_t, dtype=np.float64).reshape(-1)
    if th_r.shape != th_tr.shape or th_r.size == 0:
        raise ValueError("th_deg and th_t must be non-empty and of the same length")
    err_r, err_t = imc2023_pair_errors(truth, pred)
    if err_r.size == 0:
        return 0.0
    hits = (err_r[:, None] < th_r[None, :]) & (err_t[:, None] < th_tr[None, :])
    return float(np.mean(np.mean(hits, axis=0)))


def pose_auc(
    truth: Mapping[str, Pose],
    pred: Mapping[str, Pose | None],
    thresholds_deg: Sequence[float] = AUC_THRESHOLDS_DEG,
) -> dict[int | float, float]:
    """Pose AUC of one scene over all ground-truth pairs (see :func:`auc_pair_errors`).

    Returns:
        ``{threshold: auc}`` with the thresholds as given.
    """
    aucs = auc_from_errors(auc_pair_errors(truth, pred), list(thresholds_deg))
    return {th: auc for th, auc in zip(thresholds_deg, aucs, strict=True)}


def relative_thresholds(truth: Mapping[str, Pose]) -> tuple[float, ...]:
    """IMC 2024 thresholds for a scene without metric scale.

    ``spread * (0.002, 0.005, 0.01, 0.02, 0.05, 0.1)`` with ``spread = median |c_i - mean(c)|``
    over the true camera centres.
    """
    return tuple(_spread(truth) * f for f in RELATIVE_FACTORS)


def _spread(truth: Mapping[str, Pose]) -> float:
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
    """IMC 2024 camera-centre registration of one scene (see the module docstring).

    ``mAA = sum_th max(0, inliers_th - 3) / (len(th) * (n - 3))`` with n the number of
    ground-truth images; 0.0 when ``n <= 3``.
    """
    th = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if th.size == 0 or not np.all(np.isfinite(th)) or np.any(th <= 0):
        raise ValueError(f"IMC 2024 thresholds must be positive and finite, got {thresholds}")
    _, r_gt, t_gt, r_pr, t_pr, registered = _stack(truth, pred)
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


# --------------------------------------------------------------------------------------------
# Whole submissions
# --------------------------------------------------------------------------------------------


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
    spread = _spread(truth)
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
    thresholds scaled the same way; see the module docstring).

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

    scenes: list[dict[str, Any]] = []
    for key in sorted(truth):
        dataset, scene = key
        gt = truth[key]
        pred = sub.get(key)
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
        scenes.append(row)

    skipped = [
        {"dataset": d, "scene": s, "reason": "not in the truth"} for (d, s) in sorted(sub) if (d, s) not in truth
    ]
    for item in skipped:
        logger.warning("scene %s/%s of the submission is not in the truth; skipped", item["dataset"], item["scene"])

    datasets: dict[str, dict[str, Any]] = {}
    for name in sorted({row["dataset"] for row in scenes}):
        rows = [row for row in scenes if row["dataset"] == name]
        entry: dict[str, Any] = {"n_scenes": len(rows)}
        entry.update({m: _mean(row[m] for row in rows) for m in METRICS})
        datasets[name] = entry
    overall: dict[str, Any] = {"n_datasets": len(datasets), "n_scenes": len(scenes)}
    overall.update({m: _mean(d[m] for d in datasets.values()) for m in METRICS})
    return {
        "scenes": scenes,
        "datasets": datasets,
        "overall": overall,
        "skipped": skipped,
        "metrics": list(METRICS),
    }


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


def format_clusters_table(result: Mapping[str, Any]) -> str:
    """Text table of an :func:`evaluate_clusters` result."""
    lines = [f"{'dataset':<24} {'mAA':>7} {'cluster':>8} {'score':>7}"]
    for d in result["datasets"]:
        lines.append(
            f"{d['dataset']:<24} {100 * d['maa']:>7.2f} {100 * d['clusterness']:>8.2f} {100 * d['score']:>7.2f}"
        )
    lines.append(f"final (100 x mean over datasets): {result['final']:.2f}")
    return "\n".join(lines)


def format_table(result: Mapping[str, Any]) -> str:
    """Fixed-width text table of an :func:`evaluate` result: one row per scene, then overall.

    Metric values are shown in percent. A ``*`` marks an IMC 2024 value from sampled triplets,
    ``(missing)`` a scene absent from the submission.
    """
    headers = ["dataset/scene", "images", "reg", "reg%", "mAA23", "mAA24", "auc@1", "auc@5", "auc@10"]
    metric_keys = ["registration_rate", "imc2023_maa", "imc2024_maa", "auc@1", "auc@5", "auc@10"]
    rows: list[list[str]] = []
    sampled = False
    for sc in result.get("scenes", []):
        name = f"{sc['dataset']}/{sc['scene']}" + (" (missing)" if sc.get("missing") else "")
        values = [f"{100.0 * float(sc[k]):.2f}" for k in metric_keys]
        if sc.get("imc2024_mode") == "sampled":
            values[2] += "*"
            sampled = True
        rows.append([name, str(sc["n_images"]), str(sc["n_registered"]), *values])
    overall = result.get("overall", {})
    total_images = sum(int(sc["n_images"]) for sc in result.get("scenes", []))
    total_reg = sum(int(sc["n_registered"]) for sc in result.get("scenes", []))
    overall_row = [
        "overall",
        str(total_images),
        str(total_reg),
        *[f"{100.0 * float(overall.get(k, 0.0)):.2f}" for k in metric_keys],
    ]
    widths = [len(h) for h in headers]
    for row in [*rows, overall_row]:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def fmt(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest])

    rule = "-" * len(fmt(headers))
    lines = [fmt(headers), rule, *[fmt(r) for r in rows], rule, fmt(overall_row)]
    if sampled:
        lines.append(f"* IMC 2024 mAA from {SAMPLED_TRIPLETS} sampled triplets (seed {SAMPLE_SEED})")
    for item in result.get("skipped", []):
        lines.append(f"skipped {item['dataset']}/{item['scene']}: {item['reason']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# IMC 2025: clustering
# --------------------------------------------------------------------------------------------


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
    per_scene: list[dict[str, Any]] = []
    numerator = 0.0
    denominator = 0.0
    overlap_sum = 0
    size_sum = 0
    modes: set[str] = set()
    for key in sorted(k for k in truth if k[1] != OUTLIERS):
        gt = truth[key]
        th = thresholds.get(key)
        if th is None:
            logger.warning("no thresholds for %s/%s; using relative thresholds", *key)
            th = relative_thresholds(gt)
        th = tuple(th)[skip_top_thresholds:]
        if not th:
            raise ValueError(f"no thresholds left for {key[0]}/{key[1]}")
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
        size = len(clusters[chosen][1]) if chosen is not None else 0
        num_s = max(best_num, 0.0)
        den_s = len(th) * (len(gt) - 3)
        numerator += num_s
        denominator += den_s
        overlap_sum += best_overlap
        size_sum += size
        if best_reg is not None:
            modes.add(best_reg.mode)
        per_scene.append(
            {
                "dataset": key[0],
                "scene": key[1],
                "n_images": len(gt),
                "cluster": clusters[chosen][0] if chosen is not None else None,
                "overlap": best_overlap,
                "cluster_size": size,
                "maa": num_s / den_s if den_s > 0 else 0.0,
                "inliers": list(best_reg.inliers) if best_reg is not None else [0] * len(th),
                "thresholds": [float(v) for v in th],
                "imc2024_mode": best_reg.mode if best_reg is not None else "exact",
            }
        )
    maa = numerator / denominator if denominator > 0 else 0.0
    clusterness = overlap_sum / size_sum if size_sum > 0 else 0.0
    score = 2.0 * maa * clusterness / (maa + clusterness) if maa + clusterness > 0 else 0.0
    return {
        "dataset": next(iter(datasets)) if datasets else None,
        "maa": float(maa),
        "clusterness": float(clusterness),
        "score": float(score),
        "imc2024_mode": "sampled" if "sampled" in modes else "exact",
        "per_scene": per_scene,
    }
