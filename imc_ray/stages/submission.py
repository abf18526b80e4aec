"""Stage 8: the IMC submission CSV.

``dataset,scene,image,rotation_matrix,translation_vector``: world-to-camera ``x_cam = R x + t``,
R row-major 9 numbers and t 3 numbers, each ``;``-joined; ``nan`` for every number of an image that
was not registered. Every input image is listed, registered or not. A row with a carriage return
in a name (Python 3.11's csv writer quotes only a line feed when lines end with one) is written with
every field quoted, so ``csv.reader`` reads back the exact names.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from imc_ray.formats import write_text_atomic

HEADER = ("dataset", "scene", "image", "rotation_matrix", "translation_vector")
OUTLIERS = "outliers"
"""The reserved cluster name of images that belong to no cluster (IMC 2025)."""

Pose = tuple[list[float], list[float]]


def _join(values: Iterable[float]) -> str:
    return ";".join(repr(float(v)) for v in values)  # repr: read back exactly


def write_submission(path: Path, rows: Iterable[tuple[str, str, str, Pose | None]]) -> int:
    """Write ``(dataset, scene, image, pose or None)`` rows; return how many have poses.

    pose: (R row-major (9,), t (3,)), world-to-camera. ``scene`` is a cluster name in cluster mode.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    quoted = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writerow(HEADER)
    registered = 0
    for dataset, scene, name, pose in rows:
        out = quoted if "\r" in dataset + scene + name else writer
        if pose is None:
            out.writerow([dataset, scene, name, ";".join(["nan"] * 9), ";".join(["nan"] * 3)])
        else:
            out.writerow([dataset, scene, name, _join(pose[0]), _join(pose[1])])
            registered += 1
    write_text_atomic(path, buf.getvalue())
    return registered


def scene_rows(
    dataset: str,
    scene: str,
    names: Iterable[str],
    poses: Mapping[str, Pose],
    clusters: Mapping[str, int] | None = None,
) -> Iterator[tuple[str, str, str, Pose | None]]:
    """Submission rows of one scene. With ``clusters`` (image -> model index, cluster mode), the scene
    column is ``cluster<k>`` for images in model k and ``outliers`` for the rest."""
    for name in names:
        if clusters is None:
            yield dataset, scene, name, poses.get(name)
        elif name in clusters:
            yield dataset, f"cluster{clusters[name]}", name, poses.get(name)
        else:
            yield dataset, OUTLIERS, name, None
