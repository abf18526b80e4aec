"""Tests of imc_ray.evaluate on hand-made scenes with known answers (numpy only, no network)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from imc_ray.evaluate import (
    EXACT_MAX_CAMERAS,
    SAMPLED_TRIPLETS,
    EvaluationError,
    Pose,
    auc_from_errors,
    evaluate,
    format_table,
    imc2023_maa,
    imc2023_pair_errors,
    imc2024_maa,
    imc2024_registration,
    pose_auc,
    read_labels,
    read_submission,
    read_thresholds,
    read_truth,
    registration_rate,
    relative_thresholds,
    score_clusters,
)
from imc_ray.evaluate.imc2023 import _pair_blocks
from imc_ray.stages import submission

SHARED = Path(__file__).resolve().parents[2] / "shared"
LABELS_HEADER = "image_name,rotation_matrix,translation_vector,calibration_matrix"
K_TEXT = "500.0;0.0;320.0;0.0;500.0;240.0;0.0;0.0;1.0"


# ------------------------------------------------------------------------------------------
# Synthetic scenes
# ------------------------------------------------------------------------------------------


def write_submission(path: Path, poses: dict[tuple[str, str], dict[str, Pose | None]]) -> None:
    """The pipeline's own writer, fed from ``{(dataset, scene): {image: Pose | None}}``."""
    rows = [
        (d, s, n, None if p is None else (p.R.ravel().tolist(), p.t.ravel().tolist()))
        for (d, s), per in poses.items()
        for n, p in per.items()
    ]
    submission.write_submission(path, rows)


def look_at(centre: np.ndarray, target: np.ndarray | None = None) -> Pose:
    """World-to-camera pose (OpenCV axes) of a camera at ``centre`` (3,) looking at ``target``."""
    target = np.zeros(3) if target is None else target
    z = target - centre
    z = z / np.linalg.norm(z)
    x = np.cross(z, np.array([0.0, 0.0, 1.0]))
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    rot = np.stack([x, y, z])
    return Pose(rot, -rot @ centre)


def make_scene(n: int, radius: float = 5.0, seed: int = 0) -> dict[str, Pose]:
    """n cameras on a sphere band (elevation within +-45 degrees) looking at the origin."""
    rng = np.random.default_rng(seed)
    azimuth = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False) + rng.uniform(0, 0.3, n)
    elevation = rng.uniform(-np.pi / 4, np.pi / 4, n)
    centres = radius * np.stack(
        [np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)], axis=1
    )
    return {f"img_{i:03d}.jpg": look_at(c) for i, c in enumerate(centres)}


def rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    """(3, 3) rotation about ``axis`` by ``degrees`` (Rodrigues)."""
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = math.radians(degrees)
    return np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * (k @ k)


def transform_world(poses: dict[str, Pose], q: np.ndarray, s: float, d: np.ndarray) -> dict[str, Pose]:
    """Poses of the same cameras after the world map x' = s Q x + d."""
    return {name: Pose(p.R @ q.T, s * p.t - p.R @ q.T @ d) for name, p in poses.items()}


def with_centres(poses: dict[str, Pose], centres: dict[str, np.ndarray]) -> dict[str, Pose]:
    """Same rotations, camera centres replaced."""
    return {name: Pose(p.R, -p.R @ centres[name]) for name, p in poses.items()}


def n_pairs(n: int) -> int:
    return n * (n - 1) // 2


# ------------------------------------------------------------------------------------------
# Reference implementation of the IMC 2024 triplet search (plain loops, independent code)
# ------------------------------------------------------------------------------------------


def ref_similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """dst ~ s R src + t for (k, 3) points; s = ratio of RMS deviations (the scorer's choice)."""
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    u, _, vt = np.linalg.svd(b.T @ a)
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    rot = u @ d @ vt
    s = math.sqrt((b**2).sum() / (a**2).sum())
    return s, rot, md - s * rot @ ms


def ref_register(src: np.ndarray, dst: np.ndarray, th: np.ndarray) -> list[int]:
    """Best inlier count per threshold, following the public scorer's loop literally."""
    n = len(src)
    best_n = [0] * len(th)
    best_sum = [math.inf] * len(th)
    for tri in itertools.combinations(range(n), 3):
        s, rot, t = ref_similarity(src[list(tri)], dst[list(tri)])
        err = ((s * src @ rot.T + t - dst) ** 2).sum(1)
        for k in range(len(th)):
            inl = err < th[k] ** 2
            if inl.sum() <= 2:
                continue
            s2, rot2, t2 = ref_similarity(src[inl], dst[inl])
            err2 = ((s2 * src @ rot2.T + t2 - dst) ** 2).sum(1)
            total = err2.sum()
            for q in range(len(th)):
                count = int((err2 < th[q] ** 2).sum())
                if count > best_n[q] or (count == best_n[q] and total < best_sum[q]):
                    best_n[q], best_sum[q] = count, total
    return best_n


# ------------------------------------------------------------------------------------------
# Metrics on synthetic scenes
# ------------------------------------------------------------------------------------------


def test_truth_against_itself_scores_one() -> None:
    truth = make_scene(12)
    th = relative_thresholds(truth)
    assert registration_rate(truth, truth) == 1.0
    assert imc2023_maa(truth, truth) == 1.0
    assert imc2024_maa(truth, truth, th) == 1.0
    for auc in pose_auc(truth, truth).values():
        assert auc == pytest.approx(1.0, abs=1e-5)


def test_similarity_transformed_copy_scores_one() -> None:
    truth = make_scene(14, seed=3)
    q = rotation(np.array([0.3, -1.0, 0.5]), 73.0)
    pred = transform_world(truth, q, 3.7, np.array([10.0, -4.0, 2.5]))
    # the transformed centres really are s Q c + d
    name = next(iter(truth))
    assert np.allclose(pred[name].centre, 3.7 * q @ truth[name].centre + np.array([10.0, -4.0, 2.5]))
    assert imc2023_maa(truth, pred) == 1.0
    assert imc2024_maa(truth, pred, relative_thresholds(truth)) == 1.0
    assert imc2024_maa(truth, pred, (0.025, 0.05, 0.1, 0.2, 0.5, 1.0)) == 1.0
    for auc in pose_auc(truth, pred).values():
        assert auc == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(("n", "k"), [(10, 3), (9, 1), (8, 5), (8, 6)])
def test_dropped_images_give_exact_fractions(n: int, k: int) -> None:
    truth = make_scene(n, seed=n + k)
    names = sorted(truth)
    pred: dict[str, Pose | None] = dict(truth)
    for name in names[1 : 1 + k]:
        pred[name] = None
    th = relative_thresholds(truth)
    kept_pairs = n_pairs(n - k) / n_pairs(n)
    assert registration_rate(truth, pred) == pytest.approx((n - k) / n)
    assert imc2024_maa(truth, pred, th) == pytest.approx(max(0, n - k - 3) / (n - 3))
    assert imc2023_maa(truth, pred) == pytest.approx(kept_pairs)
    # errors are ~1e-6 degrees for the kept pairs and infinite for the others
    for auc in pose_auc(truth, pred).values():
        assert auc == pytest.approx(kept_pairs, abs=1e-5)
    # a missing entry is the same as None
    del pred[names[1]]
    assert imc2023_maa(truth, pred) == pytest.approx(kept_pairs)


def test_camera_rotated_90_degrees_about_its_axis_fails_its_pairs() -> None:
    n = 8
    truth = make_scene(n, seed=5)
    name = sorted(truth)[4]
    spin = rotation(np.array([0.0, 0.0, 1.0]), 90.0)
    pred = dict(truth)
    pred[name] = Pose(spin @ truth[name].R, spin @ truth[name].t)  # same centre, new orientation
    assert np.allclose(pred[name].centre, truth[name].centre)
    good = (n_pairs(n) - (n - 1)) / n_pairs(n)  # 21 / 28
    assert imc2023_maa(truth, pred) == pytest.approx(good)
    assert imc2024_maa(truth, pred, relative_thresholds(truth)) == 1.0  # centres are unchanged
    for auc in pose_auc(truth, pred).values():
        assert auc == pytest.approx(good, abs=1e-5)


def test_camera_rotated_4_5_degrees_passes_only_loose_levels() -> None:
    n = 8
    truth = make_scene(n, radius=0.05, seed=6)  # tiny scene: translation errors far below 0.2
    name = sorted(truth)[2]
    spin = rotation(np.array([0.0, 0.0, 1.0]), 4.5)
    pred = dict(truth)
    pred[name] = Pose(spin @ truth[name].R, spin @ truth[name].t)
    p, bad = n_pairs(n), n - 1
    # pairs with the rotated camera pass the levels with thR in {5, ..., 10}: 6 of 10
    assert imc2023_maa(truth, pred) == pytest.approx((p - bad + 0.6 * bad) / p)
    aucs = pose_auc(truth, pred)
    # sorted errors: p - bad at ~0, bad at 4.5 degrees; trapezoid area by hand
    a0, a1 = (p - bad) / p, (p - bad + 1) / p
    ramp = 4.5 * (a0 + a1) / 2
    assert aucs[1] == pytest.approx(a0, abs=1e-5)
    assert aucs[5] == pytest.approx((ramp + 0.5) / 5, abs=1e-5)  # then recall 1 from 4.5 to 5
    assert aucs[10] == pytest.approx((ramp + 5.5) / 10, abs=1e-5)


def quaternion(rot: np.ndarray) -> np.ndarray:
    """Unit quaternion of a (3, 3) rotation: eigenvector of the symmetric K matrix (Bar-Itzhack)."""
    m = rot
    k = np.array(
        [
            [m[0, 0] - m[1, 1] - m[2, 2], 0.0, 0.0, 0.0],
            [m[0, 1] + m[1, 0], m[1, 1] - m[0, 0] - m[2, 2], 0.0, 0.0],
            [m[0, 2] + m[2, 0], m[1, 2] + m[2, 1], m[2, 2] - m[0, 0] - m[1, 1], 0.0],
            [m[2, 1] - m[1, 2], m[0, 2] - m[2, 0], m[1, 0] - m[0, 1], m[0, 0] + m[1, 1] + m[2, 2]],
        ]
    )
    w, v = np.linalg.eigh(k / 3.0)
    return v[:, np.argmax(w)]


def test_imc2023_errors_match_the_quaternion_formula() -> None:
    truth = make_scene(6, seed=9)
    rng = np.random.default_rng(4)
    pred = {
        name: Pose(rotation(rng.normal(size=3), rng.uniform(0, 40)) @ p.R, p.t + rng.normal(scale=0.5, size=3))
        for name, p in truth.items()
    }
    err_r, err_t = imc2023_pair_errors(truth, pred)
    names = sorted(truth)
    for k, (a, b) in enumerate(itertools.combinations(names, 2)):
        eps = 1e-15
        d_gt = truth[b].R @ truth[a].R.T
        d_pr = pred[b].R @ pred[a].R.T
        t_gt = truth[b].t - d_gt @ truth[a].t
        t_pr = pred[b].t - d_pr @ pred[a].t
        loss = max(eps, 1.0 - float(quaternion(d_gt) @ quaternion(d_pr)) ** 2)
        assert err_r[k] == pytest.approx(math.degrees(math.acos(1 - 2 * loss)), abs=1e-6)
        scaled = np.linalg.norm(t_gt) * t_pr / (np.linalg.norm(t_pr) + eps)
        expected_t = min(np.linalg.norm(t_gt - scaled), np.linalg.norm(t_gt + scaled))
        assert err_t[k] == pytest.approx(expected_t, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(("n", "max_pairs"), [(0, 5), (1, 5), (2, 1), (7, 1), (7, 6), (9, 100)])
def test_pair_blocks_cover_all_pairs_in_order(n: int, max_pairs: int) -> None:
    blocks = list(_pair_blocks(n, max_pairs))
    i = np.concatenate([b[0] for b in blocks]) if blocks else np.zeros(0, dtype=int)
    j = np.concatenate([b[1] for b in blocks]) if blocks else np.zeros(0, dtype=int)
    ti, tj = np.triu_indices(n, k=1)
    assert np.array_equal(i, ti) and np.array_equal(j, tj)


def test_auc_from_known_errors() -> None:
    errors = np.array([0.5, 2.0, np.inf, np.inf])
    # curve (0,0) (0.5,.25) (2,.5) then flat: areas by hand
    auc1, auc5 = auc_from_errors(errors, [1.0, 5.0])
    assert auc1 == pytest.approx((0.5 * 0.125 + 0.5 * 0.25) / 1.0)
    assert auc5 == pytest.approx((0.0625 + 1.5 * 0.375 + 3.0 * 0.5) / 5.0)
    assert auc_from_errors(np.array([]), [1.0]) == [0.0]


def test_imc2024_matches_the_scorer_loop_on_noisy_cameras() -> None:
    truth = make_scene(9, seed=11)
    th = np.array(relative_thresholds(truth))
    for seed in range(4):
        rng = np.random.default_rng(seed)
        centres = {}
        for i, (name, pose) in enumerate(sorted(truth.items())):
            noise = rng.normal(scale=th[rng.integers(0, 6)], size=3)
            if i % 4 == seed % 4:
                noise += rng.normal(scale=3 * th[-1], size=3)  # gross outlier
            centres[name] = 2.0 * rotation(np.array([1.0, 2.0, 3.0]), 40.0) @ (pose.centre + noise) + 1.0
        pred = with_centres(truth, centres)
        names = sorted(truth)
        src = np.stack([pred[nm].centre for nm in names])
        dst = np.stack([truth[nm].centre for nm in names])
        reg = imc2024_registration(truth, pred, th)
        assert reg.mode == "exact"
        assert reg.n_triplets == math.comb(9, 3)
        assert list(reg.inliers) == ref_register(src, dst, th)
        expected = sum(max(0, c - 3) for c in reg.inliers) / (6 * (9 - 3))
        assert reg.maa == pytest.approx(expected)


def test_imc2024_small_scenes_score_zero() -> None:
    truth = make_scene(3)
    assert imc2024_maa(truth, truth, relative_thresholds(truth)) == 0.0
    assert imc2024_maa({}, {}, (1.0,)) == 0.0


def test_imc2024_large_scene_uses_labelled_sampling() -> None:
    n = EXACT_MAX_CAMERAS + 4
    truth = make_scene(n, seed=2)
    pred: dict[str, Pose | None] = dict(truth)
    pred[sorted(truth)[0]] = None
    reg = imc2024_registration(truth, pred, relative_thresholds(truth))
    assert reg.mode == "sampled"
    assert reg.n_triplets == SAMPLED_TRIPLETS
    assert reg.maa == pytest.approx((n - 1 - 3) / (n - 3))
    again = imc2024_registration(truth, pred, relative_thresholds(truth))
    assert again == reg  # fixed seed


# ------------------------------------------------------------------------------------------
# Reading and writing
# ------------------------------------------------------------------------------------------


def pose_text(pose: Pose) -> tuple[str, str]:
    return ";".join(repr(float(v)) for v in pose.R.reshape(-1)), ";".join(repr(float(v)) for v in pose.t)


def write_labels(path: Path, poses: dict[str, Pose]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [LABELS_HEADER]
    for name, pose in poses.items():
        r, t = pose_text(pose)
        lines.append(f"{name},{r},{t},{K_TEXT}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_submission_round_trip(tmp_path: Path) -> None:
    a = make_scene(5, seed=1)
    b = make_scene(4, seed=2)
    poses: dict[tuple[str, str], dict[str, Pose | None]] = {
        ("ds1", "a"): {**a, "img_002.jpg": None},
        ("ds2", "b"): dict(b),
    }
    path = tmp_path / "submission.csv"
    write_submission(path, poses)
    back = read_submission(path)
    assert list(back) == list(poses)
    for key, images in poses.items():
        assert list(back[key]) == list(images)
        for name, pose in images.items():
            got = back[key][name]
            if pose is None:
                assert got is None
            else:
                assert got is not None
                assert np.array_equal(got.R, pose.R) and np.array_equal(got.t, pose.t)


def test_submission_nan_rows_are_unregistered(tmp_path: Path) -> None:
    pose = make_scene(1)["img_000.jpg"]
    r, t = pose_text(pose)
    nan9 = ";".join(["nan"] * 9)
    path = tmp_path / "sub.csv"
    path.write_text(
        "dataset,scene,image,rotation_matrix,translation_vector\n"
        f"d,s,a.jpg,{r},{t}\n"
        f"d,s,b.jpg,{nan9},nan;nan;nan\n"
        f"d,s,c.jpg,{r},1.0;NaN;2.0\n"
        "\n"
        f"d,s,d.jpg,{r},inf;0;0\n"
    )
    sub = read_submission(path)[("d", "s")]
    assert sub["a.jpg"] is not None
    assert sub["b.jpg"] is None and sub["c.jpg"] is None and sub["d.jpg"] is None


@pytest.mark.parametrize(
    ("body", "line"),
    [
        (f"{LABELS_HEADER}\na.jpg,1;0;0;0;1;0;0;0;1,0;0;1\n", 2),  # wrong column count
        (f"{LABELS_HEADER}\na.jpg,1;0;0;0;1;0;0;0;one,0;0;1,{K_TEXT}\n", 2),  # non-numeric
        (f"{LABELS_HEADER}\na.jpg,1;0;0;0;1;0;0;0;1,0;0;1,{K_TEXT}\nb.jpg,1;0;0;0;1", 3),  # truncated
        (f"{LABELS_HEADER}\na.jpg,1;0;0;0;1;0;0;0;1,0;0,{K_TEXT}\n", 2),  # 2 translation numbers
        (f"{LABELS_HEADER}\na.jpg,2;0;0;0;1;0;0;0;1,0;0;1,{K_TEXT}\n", 2),  # not a rotation
        (f"a.jpg,1;0;0;0;1;0;0;0;1,0;0;1,{K_TEXT}\n", 1),  # missing header
        ("", 1),  # empty file
        (f"{LABELS_HEADER}\n", None),  # no rows
    ],
)
def test_malformed_labels_raise_with_file_and_line(tmp_path: Path, body: str, line: int | None) -> None:
    path = tmp_path / "broken_labels.csv"
    path.write_text(body)
    with pytest.raises(EvaluationError) as info:
        read_labels(path)
    message = str(info.value)
    assert "broken_labels.csv" in message
    if line is not None:
        assert f"broken_labels.csv:{line}:" in message


def test_malformed_submission_raises(tmp_path: Path) -> None:
    path = tmp_path / "my_sub.csv"
    path.write_text("dataset,scene,image,rotation,translation\n")
    with pytest.raises(EvaluationError, match=r"my_sub\.csv:1:.*header"):
        read_submission(path)
    path.write_text("dataset,scene,image,rotation_matrix,translation_vector\nd,s,a.jpg,1;0;0,0;0;0\n")
    with pytest.raises(EvaluationError, match=r"my_sub\.csv:2:.*rotation_matrix"):
        read_submission(path)
    with pytest.raises(EvaluationError, match=r"missing\.csv"):
        read_submission(tmp_path / "missing.csv")


def test_read_truth_layouts_and_thresholds(tmp_path: Path) -> None:
    write_labels(tmp_path / "gt" / "ds" / "s1" / "labels.csv", make_scene(4, seed=1))
    write_labels(tmp_path / "gt" / "ds" / "s2" / "labels.csv", make_scene(5, seed=2))
    truth = read_truth(tmp_path / "gt")
    assert list(truth) == [("ds", "s1"), ("ds", "s2")]
    assert len(truth[("ds", "s2")]) == 5
    single = read_truth(tmp_path / "gt" / "ds" / "s1")
    assert list(single) == [("ds", "s1")]
    with pytest.raises(EvaluationError, match=r"no <dataset>/<scene>/labels\.csv"):
        read_truth(tmp_path / "gt" / "ds")
    th_path = tmp_path / "th.csv"
    th_path.write_text("dataset,scene,thresholds\nds,s1,0.1;0.2;0.5\n")
    assert read_thresholds(th_path) == {("ds", "s1"): (0.1, 0.2, 0.5)}
    th_path.write_text("dataset,scene,thresholds\nds,s1,0.1;-0.2\n")
    with pytest.raises(EvaluationError, match=r"th\.csv:2:"):
        read_thresholds(th_path)


# ------------------------------------------------------------------------------------------
# evaluate() and format_table()
# ------------------------------------------------------------------------------------------


def test_evaluate_end_to_end(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    a, b, c = make_scene(8, seed=1), make_scene(10, seed=2), make_scene(6, seed=3)
    write_labels(tmp_path / "gt" / "d1" / "a" / "labels.csv", a)
    write_labels(tmp_path / "gt" / "d1" / "b" / "labels.csv", b)
    write_labels(tmp_path / "gt" / "d2" / "c" / "labels.csv", c)
    pred_b: dict[str, Pose | None] = dict(b)
    for name in sorted(b)[:2]:
        pred_b[name] = None
    pred_b["not_in_truth.jpg"] = a["img_000.jpg"]
    sub_path = tmp_path / "submission.csv"
    write_submission(sub_path, {("d1", "a"): dict(a), ("d1", "b"): pred_b, ("zz", "extra"): dict(c)})
    th_path = tmp_path / "th.csv"
    th_path.write_text("dataset,scene,thresholds\nd1,a,0.025;0.05;0.1;0.2;0.5;1.0\n")

    result = evaluate(sub_path, tmp_path / "gt", th_path)
    json.dumps(result)
    scenes = {(s["dataset"], s["scene"]): s for s in result["scenes"]}
    assert list(scenes) == [("d1", "a"), ("d1", "b"), ("d2", "c")]
    sa, sb, sc = scenes[("d1", "a")], scenes[("d1", "b")], scenes[("d2", "c")]
    assert sa["threshold_kind"] == "file" and sa["thresholds"] == [0.025, 0.05, 0.1, 0.2, 0.5, 1.0]
    assert sb["threshold_kind"] == "relative"
    assert sb["thresholds"] == pytest.approx(list(relative_thresholds(b)))
    for key in ("registration_rate", "imc2023_maa", "imc2024_maa"):
        assert sa[key] == 1.0
        assert sc[key] == 0.0
    assert sc["missing"] and sc["n_registered"] == 0
    assert sb["n_registered"] == 8 and sb["n_ignored"] == 1
    assert sb["registration_rate"] == pytest.approx(0.8)
    assert sb["imc2023_maa"] == pytest.approx(n_pairs(8) / n_pairs(10))
    assert sb["imc2024_maa"] == pytest.approx(5 / 7)
    assert sb["auc@5"] == pytest.approx(n_pairs(8) / n_pairs(10), abs=1e-5)
    assert result["skipped"] == [{"dataset": "zz", "scene": "extra", "reason": "not in the truth"}]
    d1 = result["datasets"]["d1"]
    assert d1["n_scenes"] == 2
    assert d1["imc2024_maa"] == pytest.approx((1.0 + 5 / 7) / 2)
    assert result["overall"]["imc2024_maa"] == pytest.approx(((1.0 + 5 / 7) / 2 + 0.0) / 2)
    assert result["overall"]["registration_rate"] == pytest.approx(((1.0 + 0.8) / 2 + 0.0) / 2)
    assert "not in the submission" in caplog.text and "not in the truth" in caplog.text

    table = format_table(result)
    lines = table.splitlines()
    assert lines[0].startswith("dataset/scene")
    assert any(line.startswith("d1/b ") for line in lines)
    assert any("d2/c (missing)" in line for line in lines)
    overall = next(line for line in lines if line.startswith("overall"))
    assert f"{100 * result['overall']['imc2024_maa']:.2f}" in overall
    assert "skipped zz/extra" in table
    widths = {len(line) for line in lines[:6] if not line.startswith("-")}
    assert len(widths) == 1  # fixed width


def test_real_fox_truth_against_itself(tmp_path: Path) -> None:
    scene_dir = SHARED / "data" / "instant_ngp" / "fox"
    if not (scene_dir / "labels.csv").is_file():
        pytest.skip(f"{scene_dir} is not available")
    truth = read_labels(scene_dir / "labels.csv")
    assert len(truth) == 25
    sub = tmp_path / "submission.csv"
    write_submission(sub, {("instant_ngp", "fox"): dict(truth)})
    result = evaluate(sub, scene_dir)
    (scene,) = result["scenes"]
    assert (scene["dataset"], scene["scene"], scene["n_images"]) == ("instant_ngp", "fox", 25)
    assert scene["imc2024_mode"] == "exact" and scene["threshold_kind"] == "relative"
    for key in ("registration_rate", "imc2023_maa", "imc2024_maa"):
        assert scene[key] == 1.0
        assert result["overall"][key] == 1.0
    for key in ("auc@1", "auc@5", "auc@10"):
        assert scene[key] == pytest.approx(1.0, abs=1e-5)


# ------------------------------------------------------------------------------------------
# IMC 2025 clustering
# ------------------------------------------------------------------------------------------


def two_scene_dataset() -> tuple[dict[tuple[str, str], dict[str, Pose]], dict[tuple[str, str], tuple[float, ...]]]:
    a = {f"a_{name}": pose for name, pose in make_scene(10, seed=21).items()}
    q = rotation(np.array([1.0, 0.0, 1.0]), 30.0)
    b = {f"b_{name}": pose for name, pose in transform_world(make_scene(12, seed=22), q, 2.0, np.ones(3)).items()}
    truth = {("ds", "A"): a, ("ds", "B"): b}
    return truth, {key: relative_thresholds(poses) for key, poses in truth.items()}


def test_score_clusters_perfect() -> None:
    truth, th = two_scene_dataset()
    clusters: dict[str, dict[str, Pose | None]] = {
        "c0": dict(truth[("ds", "A")]),
        "c1": dict(truth[("ds", "B")]),
        "outliers": {},
    }
    result = score_clusters(truth, clusters, th)
    assert (result["maa"], result["clusterness"], result["score"]) == (1.0, 1.0, 1.0)
    assert [s["cluster"] for s in result["per_scene"]] == ["c0", "c1"]
    json.dumps(result)


def test_score_clusters_half_a_scene_in_outliers() -> None:
    truth, th = two_scene_dataset()
    a = sorted(truth[("ds", "A")])
    clusters: dict[str, dict[str, Pose | None]] = {
        "c0": {name: truth[("ds", "A")][name] for name in a[:5]},
        "c1": dict(truth[("ds", "B")]),
        "outliers": {name: truth[("ds", "A")][name] for name in a[5:]},
    }
    result = score_clusters(truth, clusters, th)
    # inliers per threshold: A 5 -> 2 counted, B 12 -> 9; denominators (10 - 3) + (12 - 3)
    assert result["maa"] == pytest.approx(11 / 16)
    assert result["clusterness"] == 1.0
    assert result["score"] == pytest.approx(22 / 27)
    per = {s["scene"]: s for s in result["per_scene"]}
    assert (per["A"]["overlap"], per["A"]["cluster_size"]) == (5, 5)
    assert per["A"]["maa"] == pytest.approx(2 / 7)


def test_score_clusters_merged_images_lower_clusterness() -> None:
    truth, th = two_scene_dataset()
    a = sorted(truth[("ds", "A")])
    clusters: dict[str, dict[str, Pose | None]] = {
        "c0": {name: truth[("ds", "A")][name] for name in a[:6]},
        "c1": {**truth[("ds", "B")], **{name: truth[("ds", "A")][name] for name in a[6:]}},
    }
    result = score_clusters(truth, clusters, th)
    maa, clusterness = 12 / 16, 18 / 22
    assert result["maa"] == pytest.approx(maa)
    assert result["clusterness"] == pytest.approx(clusterness)
    assert result["score"] == pytest.approx(2 * maa * clusterness / (maa + clusterness))


def test_score_clusters_overlap_ties_go_to_the_better_registration() -> None:
    truth, th = two_scene_dataset()
    a = sorted(truth[("ds", "A")])
    rng = np.random.default_rng(0)
    scrambled = with_centres(
        {name: truth[("ds", "A")][name] for name in a[:5]}, {name: rng.normal(size=3) * 50 for name in a[:5]}
    )
    clusters: dict[str, dict[str, Pose | None]] = {
        "bad": dict(scrambled),
        "good": {name: truth[("ds", "A")][name] for name in a[5:]},
        "c1": dict(truth[("ds", "B")]),
    }
    result = score_clusters(truth, clusters, th)
    per = {s["scene"]: s for s in result["per_scene"]}
    assert per["A"]["cluster"] == "good"
    assert result["maa"] == pytest.approx(11 / 16)


def test_score_clusters_rejects_bad_input() -> None:
    truth, th = two_scene_dataset()
    pose = next(iter(truth[("ds", "A")].values()))
    with pytest.raises(ValueError, match="exactly one cluster"):
        score_clusters(truth, {"x": {"a_img_000.jpg": pose}, "y": {"a_img_000.jpg": pose}}, th)
    with pytest.raises(ValueError, match="one dataset"):
        score_clusters({**truth, ("other", "C"): {}}, {}, th)
