"""Stage 7: the IMC submission CSV.

``dataset,scene,image,rotation_matrix,translation_vector``: world-to-camera ``x_cam = R x + t``,
R row-major 9 numbers and t 3 numbers, each ``;``-joined; ``nan`` for every number of an image that
was not registered. Every input image is listed, registered or not.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from pathlib import Path

from imc_ray.formats import write_text_atomic

HEADER = ("dataset", "scene", "image", "rotation_matrix", "translation_vector")


def _join(values: Iterable[float]) -> str:
    return ";".join(repr(float(v)) for v in values)  # repr: read back exactly


def write_submission(
    path: Path,
    images: Iterable[tuple[str, str, str]],
    poses: Mapping[tuple[str, str], Mapping[str, tuple[list[float], list[float]]]],
) -> int:
    """Write the CSV for ``images`` ((dataset, scene, name) triples); return how many have poses."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(HEADER)
    registered = 0
    for dataset, scene, name in images:
        pose = poses.get((dataset, scene), {}).get(name)
        if pose is None:
            writer.writerow([dataset, scene, name, ";".join(["nan"] * 9), ";".join(["nan"] * 3)])
        else:
            writer.writerow([dataset, scene, name, _join(pose[0]), _join(pose[1])])
            registered += 1
    write_text_atomic(path, buf.getvalue())
    return registered
