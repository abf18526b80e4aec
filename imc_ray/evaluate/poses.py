"""Pose type and the array helpers shared by the metrics: aligned pose stacks and camera centres."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
IntArray = NDArray[np.int64]


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


def stack_poses(
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
