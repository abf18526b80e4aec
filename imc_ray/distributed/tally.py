"""The driver's tally of the stream's rows: counts for ``run.json`` and the moment each scene is fully matched.

Rows have the columns of :data:`imc_ray.distributed.gate.ROW`. A batch is a dict of numpy arrays (Ray
Data's ``numpy`` batch format); nothing here needs Ray, so the tally is tested on hand-made batches.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]
SceneKey = tuple[str, str]


@dataclass(frozen=True)
class Step:
    """What one batch changed: scenes whose pairs are now all matched (scene, pairs chosen), pairs newly
    announced for matching, and pairs matched."""

    ready: list[tuple[SceneKey, int]]
    new_pairs: int
    matched: int


@dataclass
class Tally:
    """Counts of the rows seen so far.

    A scene row announces how many pair rows follow (``todo``); a scene is ready for mapping when its scene
    row has been seen and as many of its pair rows. ``started`` and the ``done_at`` times are Unix times."""

    started: float
    keypoints: int = 0
    pairs_chosen: int = 0
    pairs_todo: int = 0
    pairs_reused: int = 0
    num_matches: int = 0
    choose_seconds: float = 0.0
    first_scene_done: float = math.inf
    last_scene_done: float = 0.0
    errors: list[dict[str, Any]] = field(default_factory=list)
    pairs_method: dict[SceneKey, str] = field(default_factory=dict)
    images_per_node: Counter[str] = field(default_factory=Counter)
    pairs_per_node: Counter[str] = field(default_factory=Counter)
    _remaining: Counter[SceneKey] = field(default_factory=Counter)
    _announced: dict[SceneKey, int] = field(default_factory=dict)

    def add(self, batch: Batch) -> Step:
        """Count the rows of one batch."""
        touched: set[SceneKey] = set()
        new = matched = 0
        for i, kind in enumerate(batch["kind"]):
            key = (str(batch["dataset"][i]), str(batch["scene"][i]))
            if kind == "image":
                self._image(batch, i, key)
            elif kind == "scene":
                new += self._scene(batch, i, key)
            else:
                self._pair(batch, i, key)
                matched += 1
            touched.add(key)
        ready = []
        for key in sorted(touched):
            if key in self._announced and self._remaining[key] == 0:
                ready.append((key, self._announced.pop(key)))
        return Step(ready, new, matched)

    def _image(self, batch: Batch, i: int, key: SceneKey) -> None:
        self.keypoints += int(batch["num_keypoints"][i])
        if err := str(batch["error"][i]):
            self.errors.append({"dataset": key[0], "scene": key[1], "image": str(batch["name"][i]), "error": err})
            logger.warning("skipped: %s", err)
        if batch["node"][i]:  # empty for images done before (resume)
            self.images_per_node[str(batch["node"][i])] += 1

    def _scene(self, batch: Batch, i: int, key: SceneKey) -> int:
        """Count a scene row; return how many of its pairs are to be matched."""
        done_at = float(batch["done_at"][i])
        self.first_scene_done = min(self.first_scene_done, done_at)
        self.last_scene_done = max(self.last_scene_done, done_at)
        chosen, todo = int(batch["num_pairs"][i]), int(batch["todo"][i])
        self._announced[key] = chosen
        self._remaining[key] += todo
        self.pairs_method[key] = str(batch["method"][i])
        self.pairs_chosen += chosen
        self.pairs_todo += todo
        self.pairs_reused += chosen - todo
        self.choose_seconds += float(batch["seconds"][i])
        return todo

    def _pair(self, batch: Batch, i: int, key: SceneKey) -> None:
        self._remaining[key] -= 1
        self.num_matches += int(batch["num_matches"][i])
        self.pairs_per_node[str(batch["node"][i])] += 1
        if err := str(batch["error"][i]):
            pair = [str(batch["name0"][i]), str(batch["name1"][i])]
            self.errors.append({"dataset": key[0], "scene": key[1], "pair": pair, "error": err})
            logger.warning("%s", err)
