"""Thin Ray Data callables: build the model once in ``__init__``, call a stage's pure function in ``__call__``.

Batches are dicts of numpy arrays (Ray Data's ``numpy`` batch format). Rows whose ``error`` is not
empty pass through untouched, so one bad image never fails a batch.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imc_ray.config import ComputeConfig, RunConfig
from imc_ray.formats import feature_rows, match_rows, scene_dir, write_shard
from imc_ray.stages import catalog, features, matching, retrieval

logger = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]


def select_device(compute: ComputeConfig) -> torch.device:
    """The torch device of a model actor, and its thread count."""
    torch.set_num_threads(max(1, compute.threads_per_actor))
    if compute.device == "cuda" or (compute.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("compute.device=cuda but this worker has no CUDA device; use compute.device=auto")
        return torch.device("cuda")
    return torch.device("cpu")


def _object_array(values: list[Any]) -> np.ndarray:
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


def decode_batch(batch: Batch, cfg: RunConfig) -> Batch:
    """Decode and downscale images (CPU task). Adds ``image`` (h, w, 3) uint8, ``width``/``height``
    of the full-resolution image, and ``error`` ("" when fine)."""
    images, widths, heights, errors = [], [], [], []
    for path in batch["path"]:
        try:
            img, (w, h) = catalog.load_image(str(path), cfg.images, cfg.features.resize)
            err = ""
        except catalog.ImageError as exc:
            img, w, h, err = np.zeros((1, 1, 3), np.uint8), 0, 0, str(exc)
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


class GlobalDescriptorActor:
    """DINOv2 (stage 2) on a batch of decoded images; adds ``global_descriptor`` (B, G)."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.device = select_device(cfg.compute)
        self.model = retrieval.load_dinov2(cfg.retrieval, self.device)

    def __call__(self, batch: Batch) -> Batch:
        ok = [i for i, e in enumerate(batch["error"]) if not e]
        out: list[np.ndarray] = [np.zeros(0, np.float32)] * len(batch["error"])
        if ok:
            desc = retrieval.describe(
                self.model, [batch["image"][i] for i in ok], self.cfg.retrieval.image_size, self.device
            )
            for j, i in enumerate(ok):
                out[i] = desc[j]
        return {**batch, "global_descriptor": _object_array(out)}


class FeatureActor:
    """ALIKED (stage 4) on a batch; writes one feature shard per scene in the batch and returns
    only small metadata rows (no pixels, no features) to the driver."""

    def __init__(self, cfg: RunConfig, output: str) -> None:
        self.cfg = cfg
        self.output = Path(output)
        self.device = select_device(cfg.compute)
        self.model = features.load_aliked(cfg.features, self.device)

    def __call__(self, batch: Batch) -> Batch:
        n = len(batch["error"])
        errors = [str(e) for e in batch["error"]]
        num_kp = np.zeros(n, np.int32)
        by_scene: dict[tuple[str, str], list[tuple[str, Any, Any]]] = defaultdict(list)
        for i in range(n):
            if errors[i]:
                continue
            try:
                f = features.extract(
                    self.model, [batch["image"][i]], [(int(batch["width"][i]), int(batch["height"][i]))], self.device
                )[0]
            except Exception as exc:  # noqa: BLE001 - a per-image failure is recorded, the batch goes on
                errors[i] = f"{batch['path'][i]}: feature extraction failed ({type(exc).__name__}: {exc})"
                continue
            num_kp[i] = len(f.keypoints)
            g = batch["global_descriptor"][i] if "global_descriptor" in batch else None
            by_scene[(str(batch["dataset"][i]), str(batch["scene"][i]))].append(
                (str(batch["name"][i]), f, g if g is not None and len(g) else None)
            )
        for (dataset, scene), items in by_scene.items():
            write_shard(
                scene_dir(self.output, dataset, scene) / "shards" / "features", feature_rows(dataset, scene, items)
            )
        return {
            "dataset": batch["dataset"],
            "scene": batch["scene"],
            "name": batch["name"],
            "num_keypoints": num_kp,
            "error": np.asarray(errors, dtype=object),
        }


class MatcherActor:
    """LightGlue (stage 5) on a batch of pairs; writes one match shard per scene in the batch."""

    def __init__(self, cfg: RunConfig, output: str) -> None:
        self.cfg = cfg
        self.output = Path(output)
        self.device = select_device(cfg.compute)
        self.model = matching.load_lightglue(cfg.matching, self.device)
        self.cache = matching.FeatureCache()

    def __call__(self, batch: Batch) -> Batch:
        n = len(batch["name0"])
        num_matches = np.zeros(n, np.int32)
        by_scene: dict[tuple[str, str], list[tuple[str, str, np.ndarray, np.ndarray]]] = defaultdict(list)
        for i in range(n):
            dataset, scene = str(batch["dataset"][i]), str(batch["scene"][i])
            name0, name1 = str(batch["name0"][i]), str(batch["name1"][i])
            h5 = scene_dir(self.output, dataset, scene) / "features.h5"
            idx, scores = matching.match_pair(
                self.model, self.cache.get(h5, name0), self.cache.get(h5, name1), self.device
            )
            num_matches[i] = len(idx)
            by_scene[(dataset, scene)].append((name0, name1, idx, scores))
        for (dataset, scene), items in by_scene.items():
            write_shard(
                scene_dir(self.output, dataset, scene) / "shards" / "matches", match_rows(dataset, scene, items)
            )
        return {
            "dataset": batch["dataset"],
            "scene": batch["scene"],
            "name0": batch["name0"],
            "name1": batch["name1"],
            "num_matches": num_matches,
        }
