"""``imc-ray export`` on the real sample run, read back without pycolmap: the text model parsed by hand, the
exported photos with PIL, the PLY header and vertices with numpy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from imc_ray import export


def _quat_to_R(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _data_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if not line.startswith("#")]


def read_text_model(sparse: Path) -> tuple[dict[int, Any], dict[int, Any], dict[int, np.ndarray]]:
    """COLMAP's text model (cameras, images with their 2D points, 3D points), parsed from its documented format."""
    cameras = {}
    for line in _data_lines(sparse / "cameras.txt"):
        cid, model, w, h, *params = line.split()
        assert model == "PINHOLE"
        cameras[int(cid)] = (int(w), int(h), np.array(params, float))
    images = {}
    lines = _data_lines(sparse / "images.txt")
    for head, pts in zip(lines[::2], lines[1::2], strict=True):
        iid, qw, qx, qy, qz, tx, ty, tz, cid, name = head.split(" ", 9)
        xy_id = np.array(pts.split(), float).reshape(-1, 3)
        R = _quat_to_R(np.array([qw, qx, qy, qz], float))
        images[int(iid)] = (name, int(cid), R, np.array([tx, ty, tz], float), xy_id)
    points = {int(line.split()[0]): np.array(line.split()[1:4], float) for line in _data_lines(sparse / "points3D.txt")}
    return cameras, images, points


def test_colmap_export_reprojects_into_its_images(sample_run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out, _ = sample_run
    dest = tmp_path / "lego"
    cmd = [sys.executable, "-m", "imc_ray", "export", str(out), "--to", "colmap", str(dest)]
    done = subprocess.run([*cmd, "--scene", "nerf_synthetic/lego"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    cameras, images, points = read_text_model(dest / "sparse" / "0")
    assert len(images) >= 8 and len(points) > 100
    errors = []
    for name, cid, R, t, xy_id in images.values():
        w, h, (fx, fy, cx, cy) = cameras[cid]
        assert Image.open(dest / "images" / name).size == (w, h)
        seen = xy_id[xy_id[:, 2] >= 0]
        X = np.stack([points[int(i)] for i in seen[:, 2]])
        cam = X @ R.T + t
        uv = np.stack([fx * cam[:, 0] / cam[:, 2] + cx, fy * cam[:, 1] / cam[:, 2] + cy], 1)
        errors.append(np.linalg.norm(uv - seen[:, :2], axis=1))
    assert np.median(np.concatenate(errors)) < 1.5  # poses, intrinsics and 2D points agree
    several = subprocess.run(cmd, capture_output=True, text=True)  # the sample run has several scenes
    assert several.returncode == 1 and "--scene" in several.stderr


def _colours(dest: Path, images: dict[int, Any]) -> dict[int, list[tuple[str, np.ndarray]]]:
    """3D point id -> [(image name, RGB at its observation in the exported image)]."""
    out: dict[int, list[tuple[str, np.ndarray]]] = {}
    for name, _, _, _, xy_id in images.values():
        pixels = np.asarray(Image.open(dest / "images" / name).convert("RGB"), float)
        for x, y, pid in xy_id[xy_id[:, 2] >= 0]:
            out.setdefault(int(pid), []).append((name, pixels[round(y), round(x)]))
    return out


def test_exif_rotated_photo_exports_upright(sample_run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    """The EXIF-rotated photo of the odd scene: the colours at its observations match the other views' (an
    export of the stored, upside-down pixels would not)."""
    out, _ = sample_run
    dest = tmp_path / "mixed"
    export.export(out, "colmap", dest, "odd/mixed")
    _, images, _ = read_text_model(dest / "sparse" / "0")
    assert "exif_rotated.jpg" in {v[0] for v in images.values()}
    diffs, control = [], []
    for obs in _colours(dest, images).values():
        ours = [c for n, c in obs if n == "exif_rotated.jpg"]
        others = [c for n, c in obs if n != "exif_rotated.jpg"]
        if ours and others:
            diffs.append(np.abs(ours[0] - others[0]).mean())
    pool = [c for obs in _colours(dest, images).values() for _, c in obs]
    rng = np.random.default_rng(0)
    for _ in range(len(diffs)):
        a, b = rng.choice(len(pool), 2, replace=False)
        control.append(np.abs(pool[a] - pool[b]).mean())
    assert len(diffs) >= 20
    assert np.median(diffs) < 0.5 * np.median(control)


def test_ply_export_holds_the_coloured_points(sample_run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out, _ = sample_run
    ply = tmp_path / "lego.ply"
    export.export(out, "ply", ply, "nerf_synthetic/lego")
    raw = ply.read_bytes()
    head, _, body = raw.partition(b"end_header\n")
    header = head.decode().splitlines()
    assert header[:2] == ["ply", "format binary_little_endian 1.0"]
    n = int(next(line.split()[2] for line in header if line.startswith("element vertex")))
    dtype = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1")])
    names = [line.split()[-1] for line in header if line.startswith("property")]
    assert names == ["x", "y", "z", "red", "green", "blue"]
    v = np.frombuffer(body, dtype, count=n)
    assert n > 100 and len(body) == n * dtype.itemsize
    assert np.isfinite(v["x"]).all() and np.ptp(v["r"].astype(int)) > 50  # real colours, not one value


def test_nerfstudio_transforms_reproject_in_opengl_axes(
    sample_run: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """transforms.json as nerfstudio documents it: camera-to-world in OpenGL axes (the camera looks down -z, y
    up) in the world of ``applied_transform``; the model's points project onto their observations."""
    import json

    out, _ = sample_run
    dest = tmp_path / "ns"
    export.export(out, "nerfstudio", dest, "nerf_synthetic/lego")
    doc = json.loads((dest / "transforms.json").read_text())
    _, images, points = read_text_model(dest / "sparse" / "0")
    A = np.vstack([np.array(doc["applied_transform"]), [0, 0, 0, 1]])
    by_name = {v[0]: v for v in images.values()}
    errors = []
    assert len(doc["frames"]) == len(images)
    for frame in doc["frames"]:
        assert (dest / frame["file_path"]).is_file()
        assert Image.open(dest / frame["file_path"]).size == (frame["w"], frame["h"])
        *_, xy_id = by_name[frame["file_path"].removeprefix("images/")]
        seen = xy_id[xy_id[:, 2] >= 0]
        X = np.stack([points[int(i)] for i in seen[:, 2]])
        Xw = (A @ np.c_[X, np.ones(len(X))].T).T  # world of the export
        cam = (np.linalg.inv(np.array(frame["transform_matrix"])) @ Xw.T).T
        assert (cam[:, 2] < 0).all()  # in front of the camera: along -z
        u = frame["fl_x"] * cam[:, 0] / -cam[:, 2] + frame["cx"]
        v = frame["fl_y"] * -cam[:, 1] / -cam[:, 2] + frame["cy"]
        errors.append(np.hypot(u - seen[:, 0], v - seen[:, 1]))
    assert np.median(np.concatenate(errors)) < 1.5
