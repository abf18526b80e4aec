"""The stream's rows and its model-free steps (no torch here): :class:`SceneGate`, which chooses a scene's
pairs inside the stream, :func:`prepare_scene`, the body of the task between a scene's matching and its
mapping (the second round of pairs, stage 4b, and the orientation check, stage 6), and :func:`map_scene`, the
body of the mapping task (stage 7, with a second look at the orientation when the model asks for it).

After the feature actors (:mod:`imc_ray.distributed.actors`), every row of the stream has the columns of
:data:`ROW` and a ``kind``: ``image`` (one per input image: its keypoint count or error), ``scene`` (one
per scene, from :class:`SceneGate` when the scene's pairs are chosen: how many pairs are left to match)
and ``pair`` (one per pair to match; :class:`~imc_ray.distributed.actors.MatcherActor` fills in
``num_matches``). The driver sees only these small rows: no pixels, features or matches.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from imc_ray.config import MappingConfig, RunConfig
from imc_ray.formats import SceneLayout, StageKeys, done_keys, write_text_atomic
from imc_ray.stages import cameras, mapping, orientation, pairs

logger = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]


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


def scene_of(batch: Batch, i: int) -> tuple[str, str]:
    """(dataset, scene) of row ``i`` of ``batch``."""
    return str(batch["dataset"][i]), str(batch["scene"][i])


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
            key = scene_of(batch, i)
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


def prepare_scene(scene: SceneLayout, image_dir: Path, cfg: RunConfig) -> dict[str, int]:
    """Task body between a scene's first round of matching and its mapping: the second round of pairs
    (:func:`pairs.round_two`, matched here), then the orientation check (:func:`orientation.run`) when
    ``matching.rotation_check`` is on. Returns {image: degrees turned}. Models (and torch) are loaded only
    when there is model work: a second round, or suspects of the check."""
    done = done_keys(scene.match_shards, ("name0", "name1"))
    todo = [p for p in pairs.round_two(scene, cfg.retrieval) if p not in done]
    if todo:
        from imc_ray.distributed.actors import match_second_round  # torch: only for a scene with a second round

        match_second_round(scene, todo, cfg)
    return orientation.run(scene, image_dir, cfg) if cfg.matching.rotation_check else {}


def map_scene(
    scene: mapping.SceneInputs,
    cfg: RunConfig,
    map_cfg: MappingConfig,
    rotated: dict[str, int] | None,
    known: tuple[cameras.KnownCamera, ...],
) -> mapping.SceneResult:
    """Task body of a scene's mapping (:func:`mapping.run` with ``map_cfg``). When the orientation check is on
    and the largest model shows photos rolled against the scene's up (``SceneResult.rolled``: turned photos
    the check missed) or leaves photos out (``SceneResult.outside``), the check tests those turns
    (:func:`orientation.run` with hints) and, when it turns any, the scene is mapped again with them. A rerun
    reuses both (the hints are in ``orientation.json``). What a user should know of the final result is logged
    (:func:`mapping.warn`)."""
    result = mapping.run(scene, map_cfg, cfg.matching.min_matches, rotated, known)
    if cfg.matching.rotation_check and (result.rolled or result.outside) and result.error is None:
        result = _map_turned(scene, cfg, map_cfg, result, known)
    mapping.warn(result, f"{scene.dataset}/{scene.scene}")
    return result


def _map_turned(
    scene: mapping.SceneInputs,
    cfg: RunConfig,
    map_cfg: MappingConfig,
    result: mapping.SceneResult,
    known: tuple[cameras.KnownCamera, ...],
) -> mapping.SceneResult:
    """The second look of :func:`map_scene`: ``result``'s rolled and outside photos tested, and the scene mapped again
    when any is turned (else ``result``)."""
    centers = {n: -np.reshape(R, (3, 3)).T @ np.asarray(t) for n, (R, t) in result.poses.items()}  # any roll
    outside = tuple(tuple(part) for part in result.outside)
    hints = orientation.Hints(result.rolled, frozenset(result.upright), centers, outside)
    turned = orientation.run(scene.layout, scene.image_dir, cfg, hints)
    if turned == result.rotated:
        return result
    logger.info(
        "scene %s/%s: %d photo(s) rolled in or left out of the model turned upright; mapping again",
        scene.dataset,
        scene.scene,
        len(set(turned.items()) - set(result.rotated.items())),
    )
    return mapping.run(scene, map_cfg, cfg.matching.min_matches, turned, known, sum(result.seconds.values()))
