"""Reading the evaluator's CSV files: submissions, reference labels and thresholds."""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from imc_ray.evaluate.poses import FloatArray, Pose
from imc_ray.stages.submission import HEADER

logger = logging.getLogger(__name__)

SUBMISSION_HEADER: tuple[str, ...] = HEADER
LABELS_HEADER: tuple[str, ...] = (
    "image_name",
    "rotation_matrix",
    "translation_vector",
    "calibration_matrix",
)
THRESHOLDS_HEADER: tuple[str, ...] = ("dataset", "scene", "thresholds")

_ROTATION_TOL_TRUTH = 1e-4
_ROTATION_TOL_SUBMISSION = 1e-3


class EvaluationError(ValueError):
    """Bad evaluation input; the message names the file (and line) and says how to fix it."""


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
