"""The decode step of the image stream: a plain Ray Data task function.

Kept apart from the model actors so that decode workers import neither torch nor the models
(about 1 GB less memory per worker).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from imc_ray.config import RunConfig
from imc_ray.stages import catalog

Batch = dict[str, np.ndarray]


def _object_array(values: list[Any]) -> np.ndarray:
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


def decode_batch(batch: Batch, cfg: RunConfig) -> Batch:
    """Decode and downscale images (a CPU task, or the first model actor on CPU-only clusters). Adds
    ``image`` (h, w, 3) uint8, ``width``/``height`` of the full-resolution image, and ``error`` ("" when
    fine). Rows that need neither features nor a global descriptor (done before: resume) are not read."""
    images, widths, heights, errors = [], [], [], []
    for i, path in enumerate(batch["path"]):
        img, w, h, err = np.zeros((1, 1, 3), np.uint8), 0, 0, ""
        if batch["need_features"][i] or batch["need_global"][i]:
            try:
                img, (w, h) = catalog.load_image(str(path), cfg.images, cfg.features.resize)
            except catalog.ImageError as exc:
                err = str(exc)
        images.append(img)
        widths.append(w)
        heights.append(h)
        errors.append(err)
    return {
        **batch,
        "image": _object_array(images),
        "width": np.asarray(widths, np.int32),
        "height": np.asarray(heights, np.int32),
        "error": np.asarray(errors, dtype=object),
    }
