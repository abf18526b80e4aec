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


NO_MASK = np.zeros((0, 0), bool)
"""The ``mask`` of an image without one (an array, not None: the column crosses Ray Data operators)."""


def _object_array(values: list[Any]) -> np.ndarray:
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


def decode_batch(batch: Batch, cfg: RunConfig) -> Batch:
    """Decode and downscale images (a CPU task, or the first model actor on CPU-only clusters). Adds
    ``image`` (h, w, 3) uint8, ``mask`` (h, w) bool (``catalog.load_mask``; (0, 0) when the image has
    none), ``width``/``height`` of the full-resolution image, and ``error`` ("" when fine). Rows that need
    neither features nor a global descriptor (done before: resume) are not read."""
    images, masks, widths, heights, errors = [], [], [], [], []
    for i, path in enumerate(batch["path"]):
        img, mask, w, h, err = np.zeros((1, 1, 3), np.uint8), NO_MASK, 0, 0, ""
        if batch["need_features"][i] or batch["need_global"][i]:
            try:
                img, (w, h) = catalog.load_image(str(path), cfg.images, cfg.features.resize)
                if batch["mask_file"][i]:
                    mask = catalog.load_mask(
                        str(batch["mask_file"][i]), str(path), (w, h), (img.shape[1], img.shape[0])
                    )
            except catalog.ImageError as exc:
                err = str(exc)
        images.append(img)
        masks.append(mask)
        widths.append(w)
        heights.append(h)
        errors.append(err)
    return {
        **batch,
        "image": _object_array(images),
        "mask": _object_array(masks),
        "width": np.asarray(widths, np.int32),
        "height": np.asarray(heights, np.int32),
        "error": np.asarray(errors, dtype=object),
    }
