"""Thin Ray Data actors: build the model once in ``__init__``, call a stage's pure function in ``__call__``;
and :func:`prepare_scene`, the body of the task between a scene's matching and its mapping (the second
round of pairs, stage 4b, and the orientation check, stage 6).

Batches are dicts of numpy arrays (Ray Data's ``numpy`` batch format). Rows whose ``error`` is not
empty pass through untouched, so one bad image never fails a batch.

After the feature actors, every row of the stream has the columns of :data:`ROW` and a ``kind``:
``image`` (one per input image: its keypoint count or error), ``scene`` (one per scene, from
:class:`SceneGate` when the scene's pairs are chosen: how many pairs are left to match) and ``pair``
(one per pair to match; :class:`MatcherActor` fills in ``num_matches``). The driver sees only these
small rows: no pixels, features or matches.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import ray
import torch

from imc_ray.config import ComputeConfig, RunConfig
from imc_ray.distributed.decode import decode_batch
from imc_ray.formats import (
    Features,
    SceneLayout,
    StageKeys,
    done_keys,
    feature_rows,
    global_rows,
    match_rows,
    write_shard,
    write_text_atomic,
)
from imc_ray.stages import features, matching, orientation, pairs, retrieval

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


def prepare_scene(scene: SceneLayout, image_dir: Path, cfg: RunConfig) -> dict[str, int]:
    """Task body between a scene's first round of matching and its mapping, with one torch thread per CPU the
    task holds (``compute.mapping_cpus``, as the mapping task after it): the second round of pairs
    (:func:`pairs.round_two`, matched here), then the orientation check (:func:`orientation.run`) when
    ``matching.rotation_check`` is on. Returns {image: degrees turned}."""
    torch.set_num_threads(max(1, cfg.compute.mapping_cpus))
    done = done_keys(scene.match_shards, ("name0", "name1"))
    todo = [p for p in pairs.round_two(scene, cfg.retrieval) if p not in done]
    if todo:
        device = select_device(cfg.compute)
        found = matching.match_into_shard(scene, todo, matching.load_lightglue(cfg.matching, device), device)
        logger.info("%s: second round matched %d pairs (%d matches)", scene.root, len(todo), found)
    return orientation.run(scene, image_dir, cfg) if cfg.matching.rotation_check else {}


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


ROW: dict[str, Any] = {
    "kind": "",  # "image", "scene" or "pair"
    "dataset": "",
    "scene": "",
    "name": "",  # image rows: the image
    "name0": "",  # pair rows: the pair
    "name1": "",
    "num_keypoints": 0,  # image rows
    "num_matches": 0,  # pair rows
    "num_pairs": 0,  # scene rows: pairs chosen
    "todo": 0,  # scene rows: pairs not matched before (as many pair rows follow)
    "method": "",  # scene rows: what chose the pairs
    "seconds": 0.0,  # scene rows: time to merge features and choose pairs
    "done_at": 0.0,  # scene rows: when the scene's last image left feature extraction (Unix time)
    "error": "",
    "node": "",  # the Ray node of the actor that did the work
}
"""The columns of the stream after feature extraction, with their defaults."""


def stream_rows(rows: list[dict[str, Any]]) -> Batch:
    """Rows (dicts with some of :data:`ROW`'s keys) -> a numpy batch with every column of :data:`ROW`."""
    out: Batch = {}
    for col, default in ROW.items():
        values = [r.get(col, default) for r in rows]
        if isinstance(default, str):
            arr = np.empty(len(values), dtype=object)
            arr[:] = values
            out[col] = arr
        else:
            out[col] = np.asarray(values, dtype=np.float64 if isinstance(default, float) else np.int64)
    return out


def _decoded(batch: Batch, cfg: RunConfig) -> Batch:
    """The batch with pixels: decoded by a decode task upstream (GPU clusters), else here (CPU-only)."""
    return batch if "image" in batch else decode_batch(batch, cfg)


class GlobalDescriptorActor:
    """DINOv2 (stage 2) on a batch of decoded images; writes one global-descriptor shard per scene.

    Passes the batch on unchanged; rows whose ``error`` is set, or with ``need_global`` false, are skipped.
    """

    def __init__(self, cfg: RunConfig, output: str, keys: StageKeys) -> None:
        self.cfg = cfg
        self.output = Path(output)
        self.keys = keys
        self.device = select_device(cfg.compute)
        self.model = retrieval.load_dinov2(cfg.retrieval, self.device)

    def __call__(self, batch: Batch) -> Batch:
        batch = _decoded(batch, self.cfg)
        todo = [i for i, e in enumerate(batch["error"]) if not e and batch["need_global"][i]]
        if todo:
            desc = retrieval.describe(
                self.model, [batch["image"][i] for i in todo], self.cfg.retrieval.image_size, self.device
            )
            by_scene: dict[tuple[str, str], list[tuple[str, np.ndarray]]] = defaultdict(list)
            for j, i in enumerate(todo):
                by_scene[_scene_of(batch, i)].append((str(batch["name"][i]), desc[j]))
            for (dataset, scene), items in by_scene.items():
                layout = SceneLayout.of(self.output, dataset, scene, self.keys)
                write_shard(layout.global_shards, global_rows(dataset, scene, items))
        return batch


class FeatureActor:
    """ALIKED (stage 3) on a batch; writes one feature shard per scene in the batch and returns one
    ``image`` row (:data:`ROW`) per image: its keypoint count or error, and the Ray node that did the work."""

    def __init__(self, cfg: RunConfig, output: str, keys: StageKeys) -> None:
        self.cfg = cfg
        self.output = Path(output)
        self.keys = keys
        self.device = select_device(cfg.compute)
        self.model = features.load_aliked(cfg.features, self.device)
        self.node = _node_id()

    def _extract(self, batch: Batch, rows: list[int]) -> list[Features]:
        sizes = [(int(batch["width"][i]), int(batch["height"][i])) for i in rows]
        found = features.extract(self.model, [batch["image"][i] for i in rows], sizes, self.device)
        masks = [batch["mask"][i] for i in rows]
        return [features.drop_masked(f, m) if m.size else f for f, m in zip(found, masks, strict=True)]

    def __call__(self, batch: Batch) -> Batch:
        batch = _decoded(batch, self.cfg)
        n = len(batch["error"])
        errors = [str(e) for e in batch["error"]]
        num_kp = [0] * n
        todo = [i for i in range(n) if not errors[i] and batch["need_features"][i]]
        try:  # the whole batch at once (one forward pass per image size) ...
            done = dict(zip(todo, self._extract(batch, todo), strict=True))
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
            by_scene[_scene_of(batch, i)].append((str(batch["name"][i]), f))
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


PROGRESS_FILE = ".stream-progress.json"
"""Written by :class:`SceneGate` in OUTPUT during a run: ``{"images": <images past feature extraction>}``."""


class SceneGate:
    """Stage 4 inside the stream: once every image of a scene has passed, merge the scene's features and
    choose its pairs (:func:`imc_ray.stages.pairs.run`), then emit a ``scene`` row and one ``pair`` row
    per pair not matched before. ``image`` rows pass through.

    One instance, on the driver's node (it counts images, so it must outlive worker nodes). Counting
    names, not rows, makes a batch seen twice (a retried task) harmless. It also writes how many images
    it has seen to :data:`PROGRESS_FILE` in OUTPUT (the driver's live features progress: the rows it
    passes on reach the driver only behind the pairs queued for matching).
    """

    def __init__(
        self,
        cfg: RunConfig,
        output: str,
        keys: StageKeys,
        use_dinov2: bool,
        expected: dict[tuple[str, str], int],
        given: dict[tuple[str, str], list[tuple[str, str]]] | None = None,
    ) -> None:
        self.cfg = cfg
        self.output = Path(output)
        self.keys = keys
        self.use_dinov2 = use_dinov2
        self.expected = expected
        self.given = given or {}
        self.seen: dict[tuple[str, str], set[str]] = defaultdict(set)
        self.emitted: set[tuple[str, str]] = set()
        self.progress = self.output / PROGRESS_FILE
        self.num_seen = 0

    def _scene_rows(self, key: tuple[str, str]) -> list[dict[str, Any]]:
        done_at = time.time()
        t0 = time.perf_counter()
        layout = SceneLayout.of(self.output, *key, self.keys)
        chosen, method = pairs.run(layout, self.cfg.retrieval, self.use_dinov2, self.seen[key], self.given.get(key))
        done = done_keys(layout.match_shards, ("name0", "name1"))
        todo = [p for p in chosen if p not in done]
        logger.info("scene %s/%s: %d pairs chosen by %s, %d to match", *key, len(chosen), method, len(todo))
        head = {"dataset": key[0], "scene": key[1]}
        scene = {**head, "kind": "scene", "num_pairs": len(chosen), "todo": len(todo), "method": method}
        scene.update(seconds=time.perf_counter() - t0, done_at=done_at)
        return [scene, *({**head, "kind": "pair", "name0": a, "name1": b} for a, b in todo)]

    def __call__(self, batch: Batch) -> Batch:
        touched = set()
        for i in range(len(batch["kind"])):
            key = _scene_of(batch, i)
            name = str(batch["name"][i])
            if name not in self.seen[key]:
                self.seen[key].add(name)
                self.num_seen += 1
            touched.add(key)
        write_text_atomic(self.progress, json.dumps({"images": self.num_seen}))
        new: list[dict[str, Any]] = []
        for key in sorted(touched):
            if key not in self.emitted and len(self.seen[key]) >= self.expected[key]:
                self.emitted.add(key)
                new += self._scene_rows(key)
        extra = stream_rows(new)
        return {col: np.concatenate([batch[col], extra[col]]) for col in ROW}


class MatcherActor:
    """LightGlue (stage 5) on the ``pair`` rows of a batch (other rows pass through); writes one match
    shard per scene in the batch.

    A pair that fails twice gets an ``error`` and is left out of the shard (a rerun retries it)."""

    def __init__(self, cfg: RunConfig, output: str, keys: StageKeys) -> None:
        self.cfg = cfg
        self.output = Path(output)
        self.keys = keys
        self.device = select_device(cfg.compute)
        self.model = matching.load_lightglue(cfg.matching, self.device)
        self.cache = matching.FeatureCache()
        self.node = _node_id()

    def _match(self, h5: Path, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray]:
        f0, f1 = self.cache.get(h5, name0), self.cache.get(h5, name1)
        return matching.match_pair(self.model, f0, f1, self.device, keys=((h5, name0), (h5, name1)))

    def __call__(self, batch: Batch) -> Batch:
        out = {col: batch[col].copy() for col in ROW}
        by_scene: dict[tuple[str, str], list[tuple[str, str, np.ndarray, np.ndarray]]] = defaultdict(list)
        for i in map(int, np.flatnonzero(batch["kind"] == "pair")):
            dataset, scene = _scene_of(batch, i)
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
