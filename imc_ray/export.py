"""``imc-ray export OUTPUT --to FORMAT DEST``: a scene's largest model for the tools that come after SfM.

Formats:
  * ``colmap``: ``DEST/images/`` (undistorted, PINHOLE cameras) and ``DEST/sparse/0/`` (binary and text
    model): the layout that 3D Gaussian splatting's ``train.py -s DEST`` and COLMAP's MVS read
    (pycolmap's undistorter);
  * ``nerfstudio``: the ``colmap`` export plus ``DEST/transforms.json`` (nerfstudio's data format: per-frame
    PINHOLE intrinsics, camera-to-world ``transform_matrix`` in OpenGL axes, and the ``applied_transform``
    that ``ns-process-data`` applies to COLMAP's world), ready for ``ns-train ... --data DEST``;
  * ``ply``: ``DEST``, a ``.ply`` file of the model's 3D points with the colour of the photos.
Photos are written as the model sees them: EXIF orientation applied, transparent pixels on
``images.background``, and set upright when the orientation stage turned them (so images and poses agree).
The export reads the run's files only; the photos come from the run's INPUT (``--input`` when they moved).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
import pycolmap
from PIL import Image

from imc_ray.formats import SceneLayout
from imc_ray.report import RunReport
from imc_ray.viewer import data

Format = Literal["colmap", "nerfstudio", "ply"]
FORMATS: tuple[Format, ...] = ("colmap", "nerfstudio", "ply")

APPLIED_TRANSFORM = np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0]])
"""World transform nerfstudio's COLMAP import applies (x, z, -y): (3, 4)."""


class ExportError(ValueError):
    """The export cannot be made (no such scene, no model, photos missing); the message says what to do."""


def pick_scene(report: RunReport, scene: str | None) -> tuple[str, str]:
    """``(dataset, scene)`` named by ``scene`` ("DATASET/SCENE"), or the run's only scene with a model."""
    mapped = [k for k, s in report.scenes.items() if s.num_registered]
    if scene is None:
        if len(mapped) != 1:
            names = ", ".join(mapped) or "none"
            raise ExportError(f"the run has {len(mapped)} scenes with a model ({names}); name one with --scene")
        scene = mapped[0]
    if scene not in report.scenes:
        raise ExportError(f"no scene {scene!r} in the run; its scenes: {', '.join(report.scenes) or 'none'}")
    if scene not in mapped:
        raise ExportError(f"scene {scene!r} has no model to export ({report.scenes[scene].reason or 'no pose'})")
    dataset, _, name = scene.partition("/")
    return dataset, name


def stage_photos(
    report: RunReport, rec: pycolmap.Reconstruction, key: tuple[str, str], dest: Path, input_root: Path | None
) -> None:
    """Write the model's registered photos into ``dest`` under their image names, as the model sees them."""
    for image in rec.images.values():
        if not image.has_pose:
            continue
        try:
            photo = data.load_photo(report, *key, image.name, input_root)
        except data.ViewerError as exc:
            raise ExportError(f"{exc}; pass the folder that holds the photos with --input") from None
        path = dest / image.name
        path.parent.mkdir(parents=True, exist_ok=True)
        fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
        Image.fromarray(photo).save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def export(
    output: Path, fmt: Format, dest: Path, scene: str | None = None, input_root: Path | None = None
) -> tuple[str, str]:
    """Export the largest model of one scene of ``output`` to ``dest`` as ``fmt``; returns the scene."""
    report = data.load_report(output)
    key = pick_scene(report, scene)
    model = SceneLayout.of(output, *key).sparse / "0"
    if not (model / "images.bin").is_file():
        raise ExportError(f"{model}: no COLMAP model there (was the run's output moved or cut short?)")
    rec = pycolmap.Reconstruction(str(model))
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".imc-ray-export-") as tmp:
        photos = Path(tmp) / "photos"
        stage_photos(report, rec, key, photos, input_root)
        if fmt == "ply":
            rec.extract_colors_for_all_images(str(photos))
            rec.export_PLY(str(dest))
            return key
        undistorted = Path(tmp) / "undistorted"
        pycolmap.undistort_images(str(undistorted), str(model), str(photos), output_type="COLMAP")
        sparse = dest / "sparse" / "0"
        shutil.rmtree(dest / "images", ignore_errors=True)
        shutil.rmtree(sparse, ignore_errors=True)
        sparse.mkdir(parents=True)
        shutil.move(str(undistorted / "images"), str(dest / "images"))
        out = pycolmap.Reconstruction(str(undistorted / "sparse"))
        out.write_binary(str(sparse))
        out.write_text(str(sparse))
    if fmt == "nerfstudio":
        write_transforms(out, dest / "transforms.json")
    return key


def write_transforms(rec: pycolmap.Reconstruction, path: Path) -> None:
    """nerfstudio's ``transforms.json`` of an undistorted (PINHOLE) model whose images are in ``images/``."""
    frames = []
    for image in sorted(rec.images.values(), key=lambda im: im.name):
        if not image.has_pose:
            continue
        cam = rec.cameras[image.camera_id]
        fx, fy, cx, cy = cam.params
        w2c = np.eye(4)
        w2c[:3] = image.cam_from_world().matrix()
        c2w = np.linalg.inv(w2c)
        c2w[:3, 1:3] *= -1  # OpenCV camera axes (x right, y down, z forward) -> OpenGL (y up, z back)
        c2w = np.vstack([APPLIED_TRANSFORM @ c2w, [0, 0, 0, 1]])
        frames.append(
            {
                "file_path": f"images/{image.name}",
                "transform_matrix": c2w.tolist(),
                **{"fl_x": fx, "fl_y": fy, "cx": cx, "cy": cy, "w": cam.width, "h": cam.height},
            }
        )
    doc = {"camera_model": "OPENCV", "frames": frames, "applied_transform": APPLIED_TRANSFORM.tolist()}
    path.write_text(json.dumps(doc, indent=1))
