"""The verified pairs of a finished run, scored against the reference poses: how many are false.

For every scene of an imc-ray output with reference poses and intrinsics (``labels.csv``), each pair that the
mapping stage verified (``database.db``: two-view geometries with at least ``--min-inliers`` inliers) is checked
against the true fundamental matrix of the two photos: a pair whose inlier matches lie a median of more than
``--max-error`` off the true epipolar lines (Sampson distance, as a share of the larger photo's long side: keypoints
found at a reduced size are that much coarser in a large photo) is false. Pairs with an image the
orientation stage turned are left out (their keypoints are in the upright image's pixels)::

    python bench/false_pairs.py IMC_RAY_OUTPUT TRUTH_ROOT [--min-inliers 15] [--max-error 0.005] [--show 10]

Prints per scene the verified pairs, the false ones, the inlier counts of both (a threshold on inliers alone
removes false pairs only below the weakest true pair's count) and the worst false pairs with the angle between
the two true viewing directions (false pairs of a turntable object join views from opposite sides).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pycolmap

from imc_ray import evaluate
from imc_ray.formats import SceneLayout


def intrinsics(labels_csv: Path) -> dict[str, np.ndarray]:
    """Image -> its (3, 3) reference calibration matrix (``labels.csv``'s ``calibration_matrix``)."""
    with open(labels_csv, newline="") as f:
        return {
            r["image_name"]: np.array(r["calibration_matrix"].split(";"), float).reshape(3, 3)
            for r in csv.DictReader(f)
        }


def sampson(F: np.ndarray, x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
    """(M,) Sampson distances (pixels) of matched points x0, x1 (M, 2) under fundamental matrix F (3, 3)
    (x1^T F x0 = 0)."""
    p = np.c_[x0, np.ones(len(x0))]
    q = np.c_[x1, np.ones(len(x1))]
    Fp, Ftq = p @ F.T, q @ F
    num = np.sum(q * Fp, axis=1) ** 2
    return np.sqrt(num / (Fp[:, 0] ** 2 + Fp[:, 1] ** 2 + Ftq[:, 0] ** 2 + Ftq[:, 1] ** 2))


def true_fundamental(a: evaluate.Pose, b: evaluate.Pose, Ka: np.ndarray, Kb: np.ndarray) -> np.ndarray:
    """The (3, 3) fundamental matrix from photo a to photo b of their world-to-camera poses and intrinsics."""
    R = b.R @ a.R.T
    t = b.t - R @ a.t
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    return np.linalg.inv(Kb).T @ tx @ R @ np.linalg.inv(Ka)


def view_angle(a: evaluate.Pose, b: evaluate.Pose) -> float:
    """Degrees between the two cameras' viewing directions."""
    c = float(np.dot(a.R[2], b.R[2]))
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def score_scene(scene: SceneLayout, labels_csv: Path, min_inliers: int, max_error: float) -> list[dict]:
    """One row per verified pair of ``scene``'s database with both photos in ``labels_csv`` and neither turned."""
    labels, K = evaluate.read_labels(labels_csv), intrinsics(labels_csv)
    turned = (
        set(json.loads(scene.orientation_json.read_text())["rotated"]) if scene.orientation_json.exists() else set()
    )
    db = pycolmap.Database.open(str(scene.database))
    try:
        images = db.read_all_images()
        names = {im.image_id: im.name for im in images}
        cams = {c.camera_id: c for c in db.read_all_cameras()}
        side = {im.image_id: float(max(cams[im.camera_id].width, cams[im.camera_id].height)) for im in images}
        keypoints = {i: db.read_keypoints(i)[:, :2] for i in names}
        rows = []
        for pair_id, geometry in zip(*db.read_two_view_geometries(), strict=True):
            a, b = pycolmap.pair_id_to_image_pair(pair_id)
            na, nb, m = names[a], names[b], geometry.inlier_matches
            if len(m) < min_inliers or {na, nb} & turned or na not in labels or nb not in labels:
                continue
            F = true_fundamental(labels[na], labels[nb], K[na], K[nb])
            dist = sampson(F, keypoints[a][m[:, 0]], keypoints[b][m[:, 1]]) / max(side[a], side[b])
            error, share = float(np.median(dist)), float(np.mean(dist <= max_error))
            rows.append(
                {
                    "pair": (na, nb),
                    "inliers": len(m),
                    "error": error,
                    "share": share,
                    "false": error > max_error,
                    "angle": view_angle(labels[na], labels[nb]),
                }
            )
        return rows
    finally:
        db.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="a finished imc-ray output folder")
    parser.add_argument("truth", type=Path, help="the run's IMC-style input root, with labels.csv")
    parser.add_argument("--min-inliers", type=int, default=15, help="a pair counts as verified from this many")
    parser.add_argument("--max-error", type=float, default=0.005, help="a true pair's median error / long side")
    parser.add_argument("--show", type=int, default=10, help="false pairs listed per scene, most inliers first")
    args = parser.parse_args(argv)
    for dataset, name in sorted(evaluate.read_truth(args.truth)):
        scene = SceneLayout.of(args.output, dataset, name)
        if not scene.database.is_file():
            continue
        rows = score_scene(scene, args.truth / dataset / name / "labels.csv", args.min_inliers, args.max_error)
        bad = sorted((r for r in rows if r["false"]), key=lambda r: -r["inliers"])
        good = sorted(r["inliers"] for r in rows if not r["false"])
        print(f"{dataset}/{name}: {len(rows)} verified pairs, {len(bad)} false")
        print(
            f"  inliers of true pairs: min {good[0] if good else '-'}, median {good[len(good) // 2] if good else '-'}"
        )
        print(
            f"  inliers of false pairs: max {bad[0]['inliers'] if bad else '-'}, "
            f"{sum(r['inliers'] >= (good[0] if good else 0) for r in bad)} at or above the weakest true pair"
        )
        for r in bad[: args.show]:
            print(
                f"  {r['pair'][0]} {r['pair'][1]}: {r['inliers']} inliers, {100 * r['error']:.1f}% of the side off, "
                f"views {r['angle']:.0f} deg apart"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
