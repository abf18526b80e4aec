"""Stage 6, the model work of the orientation check (:mod:`imc_ray.stages.orientation` decides which
images and groups to test): the pre-test and full test of each turn with ALIKED and LightGlue, and the fix,
features of the images set upright and their pairs matched again, written as override shards."""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imc_ray.config import RunConfig
from imc_ray.formats import Features, SceneLayout, consolidate_features, feature_rows, match_rows, write_shard
from imc_ray.stages import catalog, features, matching, orientation
from imc_ray.stages.orientation import ACCEPT_FACTOR, ROLL_ACCEPT_FACTOR, ROTATIONS, Group, Matches, rotate_image

logger = logging.getLogger(__name__)

PRETEST_SIZE = 512
"""Long side (pixels) of the suspect in the pre-test of the turns (:func:`pretest_turns`)."""
PRETEST_KEYPOINTS = 512
"""Keypoints of the suspect, and strongest keypoints of each partner, in the pre-test."""
PRETEST_FACTOR = 1.2
"""A turn goes on to the full test when its pre-test gives at least this many times the upright image's
matches (looser than :data:`ACCEPT_FACTOR`: the pre-test only spares the full test of hopeless turns)."""


def _strongest(f: Features, k: int) -> Features:
    """The ``k`` keypoints of ``f`` with the highest scores."""
    keep = np.argsort(-f.scores, kind="stable")[:k]
    return Features(f.keypoints[keep], f.scores[keep], f.descriptors[keep], f.image_size)


def pretest_turns(
    image: np.ndarray, size: tuple[int, int], partners: list[Features], models: tuple[Any, Any], device: torch.device
) -> list[int]:
    """Turns of the suspect ``image`` (small, of the photo of ``size`` = (width, height)) whose pre-test, few
    keypoints against the partners' strongest, beats the upright image by :data:`PRETEST_FACTOR`."""
    aliked, glue = models
    few = [_strongest(p, PRETEST_KEYPOINTS) for p in partners]
    counts: dict[int, int] = {}
    for deg in (0, *ROTATIONS):
        wh = (size[1], size[0]) if deg in (90, 270) else size
        f = features.extract(aliked, [rotate_image(image, deg)], [wh], device)[0]
        counts[deg] = sum(len(matching.match_pair(glue, f, p, device)[0]) for p in few)
    logger.debug("pre-test of the turns (degrees: matches): %s", counts)
    return [d for d in ROTATIONS if counts[d] > 0 and counts[d] >= PRETEST_FACTOR * counts[0]]


class _Models:
    """The models of one scene's check, loaded once: ALIKED at full settings and LightGlue; the pre-test's
    small ALIKED only when a group needs the pre-test (one whose turn its matches do not show)."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        torch.set_num_threads(max(1, cfg.compute.mapping_cpus))  # the CPUs of the task (as its mapping's)
        self.device = torch.device("cuda" if torch.cuda.is_available() and cfg.compute.device != "cpu" else "cpu")
        self.aliked = features.load_aliked(cfg.features, self.device)
        self.glue = matching.load_lightglue(cfg.matching, self.device)

    @functools.cached_property
    def pretest(self) -> tuple[Any, Any]:
        small = dataclasses.replace(self.cfg.features, resize=PRETEST_SIZE, max_keypoints=PRETEST_KEYPOINTS)
        return features.load_aliked(small, self.device), self.glue


def _turned(image_dir: Path, name: str, cfg: RunConfig, models: _Models, turns: list[int]) -> dict[int, Features]:
    """Features of photo ``name`` turned by each of ``turns`` (its mask turned with it)."""
    small, (w, h) = catalog.load_image(image_dir / name, cfg.images, cfg.features.resize)
    mask_file = catalog.mask_path(image_dir, name)
    mask = None
    if mask_file is not None:
        mask = catalog.load_mask(mask_file, image_dir / name, (w, h), (small.shape[1], small.shape[0]))
    out = {}
    for deg in turns:
        size = (h, w) if deg in (90, 270) else (w, h)
        f = features.extract(models.aliked, [rotate_image(small, deg)], [size], models.device)[0]
        out[deg] = f if mask is None else features.drop_masked(f, rotate_image(mask, deg))
    return out


def _test_group(
    g: Group,
    image_dir: Path,
    cfg: RunConfig,
    feats: dict[str, Features],
    counts: dict[tuple[str, str], int],
    models: _Models,
) -> tuple[int, dict[str, Features], Matches]:
    """The turn that sets group ``g`` upright (0: none), its probes' features at that turn and their matches
    with the partners at that turn (each pair in name order, as the pipeline matches it)."""
    turns = [g.turn] if g.turn is not None else []
    if g.turn is None:
        tiny, (w, h) = catalog.load_image(image_dir / g.probes[0], cfg.images, PRETEST_SIZE)
        turns = pretest_turns(tiny, (w, h), [feats[p] for p in g.partners], models.pretest, models.device)
    if not turns:
        return 0, {}, {}
    turned = {name: _turned(image_dir, name, cfg, models, turns) for name in g.probes}
    tested: dict[int, Matches] = {}
    for deg in turns:
        now = {**feats, **{name: turned[name][deg] for name in g.probes}}
        pairs = sorted((min(n, p), max(n, p)) for n in g.probes for p in g.partners)
        tested[deg] = {(a, b): matching.match_pair(models.glue, now[a], now[b], models.device) for a, b in pairs}
    found = {deg: sum(len(idx) for idx, _ in tested[deg].values()) for deg in turns}
    best = max(turns, key=lambda d: (found[d], -d))
    upright = sum(counts.get((min(n, p), max(n, p)), 0) for n in g.probes for p in g.partners)
    factor = ROLL_ACCEPT_FACTOR if g.turn is not None else ACCEPT_FACTOR
    need = max(factor * upright, cfg.matching.rotation_min_matches * len(g.probes))
    logger.debug("turn test of %s: %s matches by turn, %d upright", g.members, found, upright)
    if found[best] < need:
        return 0, {}, {}
    return best, {name: turned[name][best] for name in g.probes}, tested[best]


def fix(
    scene_layout: SceneLayout,
    image_dir: Path,
    cfg: RunConfig,
    pairs: list[tuple[str, str]],
    feats: dict[str, Features],
    counts: dict[tuple[str, str], int],
    plan: list[Group],
) -> dict[str, int]:
    """Test each group of ``plan``; turn the groups that a turn sets upright. Their features and matches are
    written as override shards: the pairs of :func:`orientation.rematch_pairs` matched again, each turned
    group with its partners, and the test's own matches (reused unless one of the two images was turned by a
    later group); a turned image's other pairs are stored empty.
    Returns image -> degrees of the turned images."""
    models = _Models(cfg)
    where = dataset, scene = scene_layout.root.parent.name, scene_layout.root.name
    min_matches = cfg.matching.rotation_min_matches
    rotated: dict[str, int] = {}
    anchors: dict[str, set[str]] = {}
    known: Matches = {}
    extra: set[tuple[str, str]] = set()
    for g in plan:
        try:
            deg, probes, tested = _test_group(g, image_dir, cfg, feats, counts, models)
            if not deg:
                continue
            new = {n: probes[n] if n in probes else _turned(image_dir, n, cfg, models, [deg])[deg] for n in g.members}
        except catalog.ImageError:
            continue
        feats.update(new)
        rotated.update(dict.fromkeys(new, deg))
        known = {pair: m for pair, m in known.items() if not set(pair) & set(new)}  # stale: an image turned since
        known.update(tested)
        found = {p for pair, (idx, _) in tested.items() if len(idx) >= min_matches for p in pair} - set(g.members)
        anchors.update(dict.fromkeys(g.members, found or set(g.partners)))
        logger.info("%s/%s: %s turned by %d degrees", *where, ", ".join(g.members), deg)
        if len(g.members) > 1:
            extra.update((min(n, p), max(n, p)) for n in g.members for p in g.partners)
    if rotated:
        write_shard(
            scene_layout.feature_shards / "rotated", feature_rows(dataset, scene, [(n, feats[n]) for n in rotated])
        )
        todo = orientation.rematch_pairs(pairs, anchors, counts, min_matches) | extra | set(known)
        empty = (np.zeros((0, 2), np.int32), np.zeros(0, np.float32))
        items = []
        for a, b in sorted({p for p in pairs if p[0] in rotated or p[1] in rotated} | extra):
            if (a, b) not in todo:
                idx, scores = empty
            elif (a, b) in known:
                idx, scores = known[(a, b)]
            else:
                idx, scores = matching.match_pair(models.glue, feats[a], feats[b], models.device, keys=(a, b))
            items.append((a, b, idx, scores))
        logger.info(
            "%s/%s: %d pairs of turned images matched again, %d stored empty", *where, len(todo), len(items) - len(todo)
        )
        write_shard(scene_layout.match_shards / "rotated", match_rows(dataset, scene, items))
        consolidate_features(scene_layout)
    return rotated
