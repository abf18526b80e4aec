"""Thin Ray Data actors: build the model once in ``__init__``, call a stage's pure function in ``__call__``.

Batches are dicts of numpy arrays (Ray Data's ``numpy`` batch format). Rows whose ``error`` is not
empty pass through untouched, so one bad image never fails a batch.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import ray
import torch

from imc_ray.config import ComputeConfig, RunConfig
from imc_ray.formats import Features, feature_rows, global_rows, match_rows, scene_dir, shard_dir, write_shard
from imc_ray.stages import features, matching, retrieval

logger = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]
T = TypeVar("T")


def select_device(compute: ComputeConfig) -> torch.device:
    """The torch device of a model actor, and its thread count."""
    torch.set_num_threads(max(1, compute.threads_per_actor))
    if compute.device == "cuda" or (compute.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("compute.device=cuda but this worker has no CUDA device; use compute.device=auto")
        return torch.device("cuda")
    return torch.device("cpu")


def _retry(attempts: int, fn: Callable[[], T]) -> T:
    """Call ``fn`` up to ``attempts`` times; re-raise the last error."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception:
            if attempt == attempts - 1:
                raise
            logger.warning("attempt %d failed; retrying", attempt + 1, exc_info=True)
    raise AssertionError("unreachable")


def _node_id() -> str:
    """The Ray node this actor runs on; "" outside Ray (``get_runtime_context`` would start a Ray instance)."""
    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


ATTEMPTS = 2
"""Tries per item inside an actor before the item is recorded as a per-item error."""


def _scene_of(batch: Batch, i: int) -> tuple[str, str]:
    return str(batch["dataset"][i]), str(batch["scene"][i])


class GlobalDescriptorActor:
    """DINOv2 (stage 2) on a batch of decoded images; writes one global-descriptor shard per scene.

    Passes the batch on unchanged; rows whose ``error`` is set, or with ``need_global`` false, are skipped.
    """

    def __init__(self, cfg: RunConfig, output: str, key: str) -> None:
        self.cfg = cfg
        self.output = Path(output)
        self.key = key
        self.device = select_device(cfg.compute)
        self.model = retrieval.load_dinov2(cfg.retrieval, self.device)

    def __call__(self, batch: Batch) -> Batch:
        todo = [i for i, e in enumerate(batch["error"]) if not e and batch["need_global"][i]]
        if todo:
            desc = retrieval.describe(
                self.model, [batch["image"][i] for i in todo], self.cfg.retrieval.image_size, self.device
            )
            by_scene: dict[tuple[str, str], list[tuple[str, np.ndarray]]] = defaultdict(list)
            for j, i in enumerate(todo):
                by_scene[_scene_of(batch, i)].append((str(batch["name"][i]), desc[j]))
            for (dataset, scene), items in by_scene.items():
                shards = shard_dir(scene_dir(self.output, dataset, scene), "global", self.key)
                write_shard(shards, global_rows(dataset, scene, items))
        return batch


class FeatureActor:
    """ALIKED (stage 4) on a batch; writes one feature shard per scene in the batch and returns
    only small metadata rows (no pixels, no features, plus the Ray node that did the work) to the driver."""

    def __init__(self, cfg: RunConfig, output: str, key: str) -> None:
        self.cfg = cfg
        self.output = Path(output)
        self.key = key
        self.device = select_device(cfg.compute)
        self.model = features.load_aliked(cfg.features, self.device)
        self.node = _node_id()

    def _extract(self, batch: Batch, i: int) -> Features:
        size = (int(batch["width"][i]), int(batch["height"][i]))
        return features.extract(self.model, [batch["image"][i]], [size], self.device)[0]

    def __call__(self, batch: Batch) -> Batch:
        n = len(batch["error"])
        errors = [str(e) for e in batch["error"]]
        num_kp = np.zeros(n, np.int32)
        by_scene: dict[tuple[str, str], list[tuple[str, Features]]] = defaultdict(list)
        for i in range(n):
            if errors[i] or not batch["need_features"][i]:
                continue
            try:
                f = _retry(ATTEMPTS, lambda i=i: self._extract(batch, i))  # type: ignore[misc]
            except Exception as exc:  # noqa: BLE001 - a per-image failure is recorded, the batch goes on
                errors[i] = f"{batch['path'][i]}: feature extraction failed ({type(exc).__name__}: {exc})"
                continue
            num_kp[i] = len(f.keypoints)
            by_scene[_scene_of(batch, i)].append((str(batch["name"][i]), f))
        for (dataset, scene), items in by_scene.items():
            shards = shard_dir(scene_dir(self.output, dataset, scene), "features", self.key)
            write_shard(shards, feature_rows(dataset, scene, items))
        return {
            "dataset": batch["dataset"],
            "scene": batch["scene"],
            "name": batch["name"],
            "num_keypoints": num_kp,
            "error": np.asarray(errors, dtype=object),
            "node": np.full(n, self.node, dtype=object),
        }


class MatcherActor:
    """LightGlue (stage 5) on a batch of pairs; writes one match shard per scene in the batch.

    A pair that fails twice gets an ``error`` and is left out of the shard (a rerun retries it)."""

    def __init__(self, cfg: RunConfig, output: str, key: str) -> None:
        self.cfg = cfg
        self.output = Path(output)
        self.key = key
        self.device = select_device(cfg.compute)
        self.model = matching.load_lightglue(cfg.matching, self.device)
        self.cache = matching.FeatureCache()
        self.node = _node_id()

    def _match(self, h5: Path, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray]:
        return matching.match_pair(self.model, self.cache.get(h5, name0), self.cache.get(h5, name1), self.device)

    def __call__(self, batch: Batch) -> Batch:
        n = len(batch["name0"])
        num_matches = np.zeros(n, np.int32)
        errors = [""] * n
        by_scene: dict[tuple[str, str], list[tuple[str, str, np.ndarray, np.ndarray]]] = defaultdict(list)
        for i in range(n):
            dataset, scene = _scene_of(batch, i)
            name0, name1 = str(batch["name0"][i]), str(batch["name1"][i])
            h5 = scene_dir(self.output, dataset, scene) / "features.h5"
            try:
                idx, scores = _retry(ATTEMPTS, lambda h5=h5, a=name0, b=name1: self._match(h5, a, b))  # type: ignore[misc]
            except Exception as exc:  # noqa: BLE001 - a per-pair failure is recorded, the batch goes on
                errors[i] = f"{dataset}/{scene}: matching {name0} with {name1} failed ({type(exc).__name__}: {exc})"
                continue
            num_matches[i] = len(idx)
            by_scene[(dataset, scene)].append((name0, name1, idx, scores))
        for (dataset, scene), items in by_scene.items():
            shards = shard_dir(scene_dir(self.output, dataset, scene), "matches", self.key)
            write_shard(shards, match_rows(dataset, scene, items))
        return {
            "dataset": batch["dataset"],
            "scene": batch["scene"],
            "name0": batch["name0"],
            "name1": batch["name1"],
            "num_matches": num_matches,
            "error": np.asarray(errors, dtype=object),
            "node": np.full(n, self.node, dtype=object),
        }
