"""IMC 2023 pairwise mAA and the scale-free pose AUC, both over all pairs of ground-truth images."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from imc_ray.evaluate.poses import FloatArray, IntArray, Pose, stack_poses

#: eps of the IMC 2023 scorer (rotation loss floor and translation normalisation).
IMC2023_EPS = 1e-15
#: IMC 2023 default thresholds: rotation in degrees, translation in metres.
IMC2023_TH_DEG: tuple[float, ...] = tuple(float(v) for v in np.linspace(1.0, 10.0, 10))
IMC2023_TH_T: tuple[float, ...] = tuple(float(v) for v in np.geomspace(0.2, 5.0, 10))
#: IMC 2023 translation thresholds relative to the spread of the true centres (see the package docstring).
IMC2023_RELATIVE_T_FACTORS: tuple[float, ...] = tuple(float(v) for v in np.geomspace(0.02, 0.5, 10))
#: Pose AUC thresholds in degrees.
AUC_THRESHOLDS_DEG: tuple[int, ...] = (1, 5, 10)


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
    _, r_gt, t_gt, r_pr, t_pr, registered = stack_poses(truth, pred)
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
