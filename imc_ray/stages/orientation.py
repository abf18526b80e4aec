"""Stage 5b: find images turned by 90, 180 or 270 degrees (no EXIF) and match them again upright.

ALIKED and LightGlue are not rotation invariant: a photo stored sideways matches almost nothing.
Rule (:func:`run`), per scene, after its pairs are matched:
  1. suspects: images whose best pair has fewer than ``matching.rotation_min_matches`` matches, or
     fewer than ``matching.rotation_min_ratio`` times the scene's median best-pair count (a photo
     turned by 90 degrees can keep half its matches; one turned by 180 degrees keeps almost none);
     a scene without suspects costs only reading its match counts (no model is loaded);
  2. each suspect is extracted again turned by 90, 180 and 270 degrees and matched against its
     partners: the ``rotation_partners`` non-suspect images with the most matches in the scene;
  3. the turn with the most matches wins if it has at least 1.5 times the matches of the upright image and
     at least ``rotation_min_matches``; the suspect's features are replaced by those extracted on the
     turned image (keypoints mapped back to the original image's pixels, so poses need no change) and
     every pair of the suspect is matched again.
Replacements are written as override shards in ``shards/<kind>-<key>/rotated/`` (read after the
regular shards, see :func:`formats.read_shards_with_overrides`), and ``orientation.json`` records the
decision; a rerun with the same key reuses it.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from imc_ray.config import RunConfig
from imc_ray.formats import (
    MATCH_SHARD_SCHEMA,
    Features,
    feature_rows,
    match_rows,
    read_features_h5,
    read_shards,
    shard_dir,
    write_shard,
    write_text_atomic,
)
from imc_ray.stages import catalog, features, matching

logger = logging.getLogger(__name__)

ROTATIONS = (90, 180, 270)
ACCEPT_FACTOR = 1.5
"""A turn is kept when it gives at least this many times the upright image's matches with the partners
(turning an upright photo loses matches, so a gain is the sign of a turned one)."""


def rotate_image(image: np.ndarray, degrees: int) -> np.ndarray:
    """Turn (H, W, 3) counter-clockwise by ``degrees`` (a multiple of 90)."""
    return np.ascontiguousarray(np.rot90(image, k=degrees // 90))


def unrotate_keypoints(keypoints: np.ndarray, degrees: int, original_wh: tuple[int, int]) -> np.ndarray:
    """Map (N, 2) pixel-centre keypoints of an image turned counter-clockwise by ``degrees`` back to
    the original image of size ``original_wh`` (W, H)."""
    w, h = original_wh
    x, y = keypoints[:, 0].astype(np.float64), keypoints[:, 1].astype(np.float64)
    k = (degrees // 90) % 4
    if k == 0:
        xo, yo = x, y
    elif k == 1:  # rot90 CCW: rotated (x, y) = (y_o, W - 1 - x_o)
        xo, yo = w - 1 - y, x
    elif k == 2:
        xo, yo = w - 1 - x, h - 1 - y
    else:  # rot270 CCW: rotated (x, y) = (H - 1 - y_o, x_o)
        xo, yo = y, h - 1 - x
    return np.stack([xo, yo], axis=1).astype(np.float32)


def suspects_and_partners(
    names: list[str], matches: dict[tuple[str, str], int], min_matches: int, num_partners: int, min_ratio: float = 0.0
) -> dict[str, list[str]]:
    """Images whose best pair has fewer than max(``min_matches``, ``min_ratio`` x the median over the
    scene's images of their best pair) matches, each with its partners.

    matches: (name0, name1) -> number of matches.
    """
    best: dict[str, int] = dict.fromkeys(names, 0)
    total: dict[str, int] = dict.fromkeys(names, 0)
    paired: dict[str, set[str]] = defaultdict(set)
    for (a, b), n in matches.items():
        for x, y in ((a, b), (b, a)):
            if x in best:
                best[x] = max(best[x], n)
                total[x] += n
                paired[x].add(y)
    limit = max(float(min_matches), min_ratio * float(np.median(list(best.values()))) if best else 0.0)
    suspects = [n for n in names if best[n] < limit]
    good = sorted((n for n in names if best[n] >= limit), key=lambda n: -total[n])
    return {s: [p for p in good if p in paired[s]][:num_partners] for s in suspects if good}


def run(
    scene_dir: Path, image_dir: Path, cfg: RunConfig, keys: dict[str, str], pairs: list[tuple[str, str]]
) -> dict[str, int]:
    """Files in, files out for one scene (rule in the module docstring). Returns image -> degrees
    for the images that were turned (empty for most scenes)."""
    record = scene_dir / "orientation.json"
    m = cfg.matching
    key = f"{keys['matches']}-{m.rotation_min_matches}-{m.rotation_min_ratio}-{m.rotation_partners}"
    if record.exists():
        saved = json.loads(record.read_text())
        if saved.get("key") == key:
            return {k: int(v) for k, v in saved["rotated"].items()}
    for kind in ("features", "matches"):  # overrides of another orientation decision never survive
        shutil.rmtree(shard_dir(scene_dir, kind, keys[kind]) / "rotated", ignore_errors=True)
    match_dir = shard_dir(scene_dir, "matches", keys["matches"])
    table = read_shards(match_dir, MATCH_SHARD_SCHEMA).select(["name0", "name1", "num_matches"]).to_pydict()
    counts = {(a, b): n for a, b, n in zip(table["name0"], table["name1"], table["num_matches"], strict=True)}
    feats = read_features_h5(scene_dir / "features.h5")
    plan = suspects_and_partners(
        sorted(feats), counts, m.rotation_min_matches, m.rotation_partners, m.rotation_min_ratio
    )
    rotated: dict[str, int] = {}
    if plan:
        try:
            rotated = _fix(scene_dir, image_dir, cfg, keys, pairs, feats, counts, plan)
        except Exception:
            logger.exception("%s: orientation check failed; mapping goes on without it", scene_dir)
    write_text_atomic(record, json.dumps({"key": key, "suspects": sorted(plan), "rotated": rotated}, indent=1))
    return rotated


def _fix(
    scene_dir: Path,
    image_dir: Path,
    cfg: RunConfig,
    keys: dict[str, str],
    pairs: list[tuple[str, str]],
    feats: dict[str, Features],
    counts: dict[tuple[str, str], int],
    plan: dict[str, list[str]],
) -> dict[str, int]:
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.compute.device != "cpu" else "cpu")
    aliked = features.load_aliked(cfg.features, device)
    glue = matching.load_lightglue(cfg.matching, device)
    dataset, scene = scene_dir.parent.name, scene_dir.name
    rotated: dict[str, int] = {}
    new_feats: list[tuple[str, Features]] = []
    for suspect, partners in plan.items():
        try:
            small, (w, h) = catalog.load_image(image_dir / suspect, cfg.images, cfg.features.resize)
        except catalog.ImageError:
            continue
        upright = max((counts.get((min(suspect, p), max(suspect, p)), 0) for p in partners), default=0)
        best_deg, best_n, best_f = 0, upright, None
        for deg in ROTATIONS:
            turned = rotate_image(small, deg)
            tw, th = (h, w) if deg in (90, 270) else (w, h)
            f = features.extract(aliked, [turned], [(tw, th)], device)[0]
            f = Features(unrotate_keypoints(f.keypoints, deg, (w, h)), f.scores, f.descriptors, (w, h))
            n = sum(len(matching.match_pair(glue, f, feats[p], device)[0]) for p in partners)
            if n > best_n:
                best_deg, best_n, best_f = deg, n, f
        summed_upright = sum(counts.get((min(suspect, p), max(suspect, p)), 0) for p in partners)
        if best_f is not None and best_n >= max(ACCEPT_FACTOR * summed_upright, cfg.matching.rotation_min_matches):
            rotated[suspect] = best_deg
            new_feats.append((suspect, best_f))
            feats[suspect] = best_f
            logger.info(
                "%s/%s: %s is turned by %d degrees (%d matches against %d)",
                dataset,
                scene,
                suspect,
                best_deg,
                best_n,
                summed_upright,
            )
    if rotated:
        fdir = shard_dir(scene_dir, "features", keys["features"]) / "rotated"
        write_shard(fdir, feature_rows(dataset, scene, new_feats))
        items = []
        for a, b in pairs:
            if a in rotated or b in rotated:
                idx, scores = matching.match_pair(glue, feats[a], feats[b], device)
                items.append((a, b, idx, scores))
        write_shard(shard_dir(scene_dir, "matches", keys["matches"]) / "rotated", match_rows(dataset, scene, items))
        features.consolidate(shard_dir(scene_dir, "features", keys["features"]), scene_dir)
    return rotated
