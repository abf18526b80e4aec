"""Stage 6: find images turned by 90, 180 or 270 degrees (no EXIF) and match them again upright.

ALIKED and LightGlue are not rotation invariant: a photo stored sideways matches almost nothing.
Rule (:func:`run`), per scene, after its pairs are matched:
  1. suspects: images whose best pair has fewer than ``matching.rotation_min_matches`` matches, or
     fewer than ``matching.rotation_min_ratio`` times the scene's median best-pair count (a photo
     turned by 180 degrees keeps almost no matches), and images whose matches say they are rolled by about
     90, 180 or 270 degrees against most of their partners (:func:`relative_roll`, :func:`roll_suspects`:
     a photo turned by 90 degrees keeps about half its matches, and those show the turn);
     a scene without suspects costs only reading its matches (no model is loaded);
  2. each suspect is extracted again turned by 90, 180 and 270 degrees (a rolled one: by the turn its
     matches show only) and matched against its partners: the ``rotation_partners`` non-suspect images
     with the most matches with it (at least ``rotation_min_matches``: its neighbours), then with the
     most matches in the scene. A cheap pre-test comes first (:func:`reorient.pretest_turns`: the suspect
     small, upright and turned, few keypoints, against the partners' strongest keypoints); only turns that
     beat the upright image there are extracted and matched at full settings;
  2b. groups (:func:`turn_groups`): images turned together match each other, so none of them looks
     suspect. Every connected component of the well-matched pairs but the largest (a group turned by 180
     degrees), and every set of images whose matches, propagated along the strongest pairs, show the same
     turn against the rest of their component (90 or 270 degrees), is tested like one suspect: its
     :data:`GROUP_PROBES` best-matched members turned, against the images outside every group with the
     most matches to them (:func:`plan_groups`: photos turned by other angles match it better than upright
     ones); a turn that wins turns every member, and each member is then also matched with those partners
     (its pairs may all have been inside the group);
  3. the turn with the most matches wins if it has at least 1.5 times (rolled: 1.1 times) the matches of
     the upright image and at least ``rotation_min_matches``; the suspect's features are replaced by
     those of the image set upright (keypoints and ``image_size`` in the upright image's pixels, so it
     shares the camera of upright photos of its size) and its pairs with images that overlap it are matched
     again (:func:`rematch_pairs`; the test's own matches are reused); its other pairs are stored empty.
     The COLMAP model holds the upright image too; the mapping stage turns its pose back to the photo
     as stored for the submission (:func:`mapping.stored_pose`).
  4. hints (:func:`run`, :func:`plan_hinted`): a group turned together on an object seen from above can keep
     hundreds of matches, and the rule misses it; the model then shows those cameras rolled against the
     scene's up (:func:`mapping.camera_turns`), and the mapping task tests exactly those turns (step 3 with
     ``ROLL_ACCEPT_FACTOR``, against the nearest cameras the model shows upright) and maps again when one wins;
  5. the images outside the largest model (:func:`plan_outside`: a model of their own, or none) that steps
     1-3 did not test are tested in groups at every turn, against the model's upright cameras with the most
     matches to them (a group turned by 180 degrees on a low-texture ring can match too few to be a suspect
     and too many to be a component of its own), in the same second look.
Replacements are written as override shards in ``shards/<kind>-<key>/rotated/`` (read after the
regular shards, see :func:`formats.read_shards_with_overrides`), and ``orientation.json`` records the
decision; a rerun with the same key reuses it.

This module decides from the matches alone (numpy); steps 2 and 3, the model work, are
:mod:`imc_ray.stages.reorient`, imported only for a scene with suspects.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from imc_ray.config import RunConfig
from imc_ray.formats import (
    MATCH_SHARD_SCHEMA,
    Features,
    SceneLayout,
    consolidate_features,
    feature_names_h5,
    matches_from_table,
    read_features_h5,
    read_shards,
    write_text_atomic,
)
from imc_ray.stages import pairs

logger = logging.getLogger(__name__)

RULE_VERSION = "v11"
"""Part of the decision's key: a rerun never reuses the decision (and override shards) of an older rule.
v2: roll suspects; overrides hold the upright image (v1 mapped keypoints back to the stored photo).
v3: the pre-test of the turns (:func:`pretest_turns`). v4: groups turned together (:func:`turn_groups`).
v5: a component of well-matched pairs is split by the turns its pairs show. v6: a suspect's partners are its
neighbours first (the scene's best-matched images may not overlap it). v7: hints from the model (the decision
records ``hinted``; override shards sort in the order written). v8: a hinted group's partners are the cameras
the model shows upright nearest to its own (its best-matched images made the test fail). v9: images outside the
largest model are tested at every turn (the decision records ``outside``). v10: a rolled image an earlier test
left as it is is tested on its own, not in a group (an upright render matching turned look-alikes was turned
along with them). v11: no image of a group is a partner of another group or of a suspect (fox-25 with every
third photo turned: the 180-degree group was tested against photos turned by 90 and 270 and left turned)."""
ROTATIONS = (90, 180, 270)
ACCEPT_FACTOR = 1.5
"""A turn is kept when it gives at least this many times the upright image's matches with the partners
(turning an upright photo loses matches, so a gain is the sign of a turned one)."""
ROLL_ACCEPT_FACTOR = 1.1
"""The same for an image whose matches already show the turn (:func:`roll_suspects`): only that turn is
tried, and a smaller gain is enough (a turned photo keeps part of its matches: bench/RESULTS.md)."""


def rotate_image(image: np.ndarray, degrees: int) -> np.ndarray:
    """Turn (H, W, 3) counter-clockwise by ``degrees`` (a multiple of 90)."""
    return np.ascontiguousarray(np.rot90(image, k=degrees // 90))


def suspects_and_partners(
    names: list[str],
    matches: dict[tuple[str, str], int],
    min_matches: int,
    num_partners: int,
    min_ratio: float = 0.0,
    also: set[str] | None = None,
    exclude: set[str] | None = None,
) -> dict[str, list[str]]:
    """Images whose best pair has fewer than max(``min_matches``, ``min_ratio`` x the median over the
    scene's images of their best pair) matches, and the images of ``also``, each with its partners: the
    non-suspects outside ``exclude`` (images thought turned) paired with it, first those with at least
    ``min_matches`` matches with it, most first (its true neighbours: a photo turned by 90 degrees keeps about
    half its matches, and in a sequence the scene's best-matched images may not overlap it at all), then those
    with the most matches in the scene.

    matches: (name0, name1) -> number of matches.
    """
    paired: dict[str, dict[str, int]] = {n: {} for n in names}  # image -> partner -> matches
    for (a, b), n in matches.items():
        for x, y in ((a, b), (b, a)):
            if x in paired:
                paired[x][y] = n
    best = {n: max(paired[n].values(), default=0) for n in names}
    total = {n: sum(paired[n].values()) for n in names}
    limit = max(float(min_matches), min_ratio * float(np.median(list(best.values()))) if best else 0.0)
    suspects = [n for n in names if best[n] < limit or n in (also or set())]
    skip = set(suspects) | (exclude or set())
    good = sorted((n for n in names if n not in skip), key=lambda n: -total[n])
    rank = {n: i for i, n in enumerate(good)}

    def partners(s: str) -> list[str]:
        near = {p: n if n >= min_matches else 0 for p, n in paired[s].items() if p in rank}
        return sorted(near, key=lambda p: (-near[p], rank[p]))[:num_partners]

    return {s: partners(s) for s in suspects if good}


ROLL_TOLERANCE = 25.0
"""Degrees from a multiple of 90 within which a pair's estimated roll counts as that turn."""


def relative_roll(kp0: np.ndarray, kp1: np.ndarray, idx: np.ndarray) -> float:
    """In-plane rotation (degrees, in (-180, 180]) that best maps the matched keypoints of image 0 onto
    those of image 1 (the rotation of a least-squares 2D similarity about the medians).

    Args:
        kp0: (N0, 2) and kp1: (N1, 2) keypoints; idx: (M, 2) matches into them.
    """
    if len(idx) < 3:
        return float("nan")
    p = kp0[idx[:, 0]].astype(np.float64)
    q = kp1[idx[:, 1]].astype(np.float64)
    p -= np.median(p, axis=0)
    q -= np.median(q, axis=0)
    cross = float(np.sum(p[:, 0] * q[:, 1] - p[:, 1] * q[:, 0]))
    dot = float(np.sum(p[:, 0] * q[:, 0] + p[:, 1] * q[:, 1]))
    return float(np.degrees(np.arctan2(cross, dot)))


ROLL_PARTNERS = 3
"""Each image's roll is judged on its pairs with the most matches: close views, where a 2D similarity
describes the motion well (wide-baseline pairs of an upright scene can show any apparent roll)."""


def roll_suspects(rolls: dict[tuple[str, str], float], counts: dict[tuple[str, str], int]) -> dict[str, int]:
    """Images rolled by about 90, 180 or 270 degrees against their closest partners, each with the turn
    (degrees, counter-clockwise, as :func:`rotate_image`) that would set it upright.

    rolls: (name0, name1) -> :func:`relative_roll` of the pair; counts: (name0, name1) -> matches.
    An image is a suspect when over half of its :data:`ROLL_PARTNERS` best pairs put it within
    :data:`ROLL_TOLERANCE` of the same non-zero turn; its upright partners (turned against it only)
    are not.
    """
    by_image: dict[str, list[tuple[int, float, bool]]] = defaultdict(list)
    for (a, b), angle in rolls.items():
        if np.isfinite(angle):
            n = counts.get((a, b), 0)
            by_image[a].append((n, angle, True))
            by_image[b].append((n, angle, False))
    out: dict[str, int] = {}
    for name, items in by_image.items():
        best = sorted(items, key=lambda item: -item[0])[:ROLL_PARTNERS]
        turns = []
        for _, angle, first in best:
            near = abs(angle - 90.0 * round(angle / 90.0)) <= ROLL_TOLERANCE
            turn = round(angle / 90.0) % 4 if first else round(-angle / 90.0) % 4
            turns.append(turn if near else -1)
        for t in (1, 2, 3):  # the image is turned by t quarter turns: turning it by 4 - t undoes that
            if 2 * turns.count(t) > len(turns):
                out[name] = 90 * (4 - t)
    return out


def _components(names: list[str], edges: list[tuple[str, str]]) -> list[list[str]]:
    """Connected components of the graph (``names``, ``edges``), largest first (ties: by first name)."""
    parent = {n: n for n in names}

    def root(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        parent[root(a)] = root(b)
    groups: dict[str, list[str]] = defaultdict(list)
    for n in names:
        groups[root(n)].append(n)
    return sorted(groups.values(), key=lambda g: (-len(g), g[0]))


def _tree_turns(names: list[str], strong: list[tuple[int, str, str, int]]) -> dict[str, tuple[str, int]]:
    """The root of each image's tree and its quarter turns relative to that root, propagated along the
    strongest pairs first (a maximum spanning forest; weighted union-find). strong: (matches, a, b, q) with
    turn(a) - turn(b) = q quarter turns (mod 4), the convention of :func:`roll_suspects`. Turns compare only
    within one tree."""
    parent = {n: n for n in names}
    offset = dict.fromkeys(names, 0)  # turn(x) - turn(parent[x])

    def find(x: str) -> tuple[str, int]:
        turn = 0
        while parent[x] != x:
            turn, x = turn + offset[x], parent[x]
        return x, turn % 4

    for _, a, b, q in sorted(strong, key=lambda e: (-e[0], e[1], e[2])):
        (ra, oa), (rb, ob) = find(a), find(b)
        if ra != rb:
            parent[rb], offset[rb] = ra, (oa - ob - q) % 4
    return {n: find(n) for n in names}


def turn_groups(
    names: list[str], counts: dict[tuple[str, str], int], rolls: dict[tuple[str, str], float], min_matches: int
) -> list[tuple[list[str], int | None]]:
    """Groups of two or more images that look turned together, each with the turn (degrees, as
    :func:`rotate_image`) that would set it upright, or None when their matches cannot tell.

    1. A group turned by 180 degrees matches itself but hardly the rest: every connected component of the
       pairs with at least ``min_matches`` matches, but the largest, is a group (turn unknown); split by the
       turns its pairs show (images turned by different angles can match each other too).
    2. A group turned by 90 or 270 degrees keeps matches with the rest, and they show the turn: in each
       component, turns are propagated along its strongest pairs whose roll is near a multiple of 90 degrees
       (:func:`relative_roll`); images off the component's most common turn form a group per turn.
    Single images are :func:`suspects_and_partners`' and :func:`roll_suspects`' work.
    """
    strong = []
    for (a, b), angle in rolls.items():
        if np.isfinite(angle) and abs(angle - 90.0 * round(angle / 90.0)) <= ROLL_TOLERANCE:
            strong.append((counts.get((a, b), 0), a, b, round(angle / 90.0) % 4))
    turns = _tree_turns(names, [e for e in strong if e[0] >= min_matches])
    out: list[tuple[list[str], int | None]] = []
    for part in _components(names, [(a, b) for (a, b), n in counts.items() if n >= min_matches])[1:]:
        same_turn: dict[tuple[str, int], list[str]] = defaultdict(list)
        for name in part:
            same_turn[turns[name]].append(name)
        out.extend((g, None) for g in same_turn.values() if len(g) >= 2)
    trees: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for name, (root, turn) in turns.items():
        trees[root].append((name, turn))
    for tree in sorted(trees.values()):
        common = max(range(4), key=lambda t: (sum(turn == t for _, turn in tree), -t))
        for t in (1, 2, 3):
            off = [n for n, turn in tree if (turn - common) % 4 == t]
            if len(off) >= 2 and len(off) < len(tree) / 2:
                out.append((off, 90 * (4 - t)))
    return out


def _totals(counts: dict[tuple[str, str], int]) -> dict[str, int]:
    """Image -> its matches summed over its pairs (images in no pair count 0)."""
    total: dict[str, int] = defaultdict(int)
    for (a, b), n in counts.items():
        total[a] += n
        total[b] += n
    return total


@dataclasses.dataclass(frozen=True)
class Group:
    """Images tested (and turned) together: one suspect, or a group of :func:`turn_groups`.

    probes: the members whose turned copies are matched against ``partners`` (upright images);
    turn: the only turn tried (their matches show it), or None: every turn that passes the pre-test."""

    members: tuple[str, ...]
    probes: tuple[str, ...]
    partners: tuple[str, ...]
    turn: int | None = None


def plan_groups(
    names: list[str],
    counts: dict[tuple[str, str], int],
    rolls: dict[tuple[str, str], float],
    cfg: RunConfig,
) -> list[Group]:
    """What the check tests in a scene, in order: each group of :func:`turn_groups`, probed by its
    :data:`GROUP_PROBES` members with the most matches, then each suspect image outside the groups. No image
    of a group is another group's or a suspect's partner: photos turned by different angles match each other
    better than the upright ones (a group turned by 180 degrees against groups turned by 90 and 270)."""
    m = cfg.matching
    total = _totals(counts)
    plan: list[Group] = []
    groups = turn_groups(names, counts, rolls, m.rotation_min_matches)
    grouped = {n for members, _ in groups for n in members}
    for members, turn in groups:
        group = sorted(members, key=lambda n: (-total[n], n))
        probes = group[:GROUP_PROBES]
        if partners := _group_partners(probes, grouped, names, counts, total, m.rotation_partners):
            plan.append(Group(tuple(group), tuple(probes), tuple(partners), turn))
    single = suspects_and_partners(
        names,
        counts,
        m.rotation_min_matches,
        m.rotation_partners,
        m.rotation_min_ratio,
        also=set(roll_suspects(rolls, counts)),
        exclude=grouped,
    )
    # a suspect's turn is read from its pairs with images that are not suspects: two photos turned by
    # different angles match each other, and their roll is the difference of the turns
    rolled = roll_suspects({pair: a for pair, a in rolls.items() if not set(pair) <= single.keys()}, counts)
    planned = {n for g in plan for n in g.members}
    plan += [Group((s,), (s,), tuple(p), rolled.get(s)) for s, p in single.items() if p and s not in planned]
    return plan


def rematch_pairs(
    pairs: list[tuple[str, str]],
    anchors: dict[str, set[str]],
    counts: dict[tuple[str, str], int],
    min_matches: int,
) -> set[tuple[str, str]]:
    """The pairs of the turned images (the keys of ``anchors``) that are matched again once they are upright:
    every pair of two turned images, and a turned image X with an upright image Y when Y overlaps X: X's
    matches showed it (at least ``min_matches`` before the turn: a photo turned by 90 degrees keeps about
    half), or Y is one of X's anchors (upright partners that matched X turned upright in the test) or has at
    least ``min_matches`` with one of them. Other pairs of a turned image (photos that share nothing with X
    or its anchors, e.g. the far end of a walk) are not matched again: the caller stores them empty."""
    turned = set(anchors)
    near: dict[str, set[str]] = {x: set(a) for x, a in anchors.items()}
    for (a, b), n in counts.items():
        if n < min_matches or a in turned or b in turned:
            continue
        for x, found in anchors.items():
            if a in found:
                near[x].add(b)
            if b in found:
                near[x].add(a)
    out = set()
    for a, b in pairs:
        if a in turned and b in turned:
            out.add((a, b))
        elif a in turned or b in turned:
            x, y = (a, b) if a in turned else (b, a)
            if counts.get((a, b), 0) >= min_matches or y in near[x]:
                out.add((a, b))
    return out


GROUP_PROBES = 2
"""Members of a group whose turned copies are matched in the group's test."""


def _group_partners(
    probes: list[str],
    exclude: set[str],
    names: list[str],
    counts: dict[tuple[str, str], int],
    total: dict[str, int],
    k: int,
) -> list[str]:
    """The ``k`` images outside the group with the most matches to its probes (the group's true neighbours
    keep a few matches even when turned), then those with the most matches in the scene."""
    to_probes: dict[str, int] = defaultdict(int)
    for (a, b), n in counts.items():
        if a in probes and b not in exclude:
            to_probes[b] += n
        elif b in probes and a not in exclude:
            to_probes[a] += n
    outside = [n for n in names if n not in exclude]
    return sorted(outside, key=lambda n: (-to_probes[n], -total[n], n))[:k]


@dataclasses.dataclass(frozen=True)
class Hints:
    """What the largest model of a scene shows (:func:`mapping.camera_turns`), for :func:`plan_hinted`.

    rolled: image -> the turn that sets its features upright; upright: images whose camera is upright;
    centers: image -> camera centre (3,) in the model's frame, for its registered images; outside: the images
    without a pose, by model (:attr:`mapping.SceneResult.outside`)."""

    rolled: dict[str, int]
    upright: frozenset[str] = frozenset()
    centers: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    outside: tuple[tuple[str, ...], ...] = ()


def _nearest_upright(probes: tuple[str, ...], hints: Hints, k: int) -> list[str]:
    """The ``k`` images the model shows upright whose cameras are nearest to a probe's (none without centres)."""
    if any(p not in hints.centers for p in probes):
        return []
    near = [n for n in hints.upright if n in hints.centers and n not in hints.rolled]
    gap = {n: min(float(np.linalg.norm(hints.centers[n] - hints.centers[p])) for p in probes) for n in near}
    return sorted(near, key=lambda n: (gap[n], n))[:k]


def plan_hinted(
    names: list[str],
    counts: dict[tuple[str, str], int],
    hints: Hints,
    rotated: dict[str, int],
    cfg: RunConfig,
    alone: frozenset[str] = frozenset(),
) -> list[Group]:
    """What the check tests for the images a model shows rolled (``hints.rolled``), on top of the turns
    already made (``rotated``: image -> degrees from the stored photo). Hinted images with the same turn from
    the stored photo that match each other form one group (turned together; the images of ``alone``, which
    an earlier test left as they are, are tested on their own: an upright photo that matches turned
    look-alikes must not be turned along with them), probed by its
    :data:`GROUP_PROBES` best-matched members against the cameras the model shows upright nearest to theirs
    (the images with the most matches to them can be views from elsewhere that look like the turned photo,
    or turned photos the model did not flag; without centres: the images outside the hints with the most
    matches). Each group's turn is the one tested (from the stored photo, as :func:`rotate_image`); an image
    whose turns cancel out is left as it is."""
    m = cfg.matching
    total = _totals(counts)
    turn = {n: (rotated.get(n, 0) + t) % 360 for n, t in hints.rolled.items() if n in names}
    plan: list[Group] = []
    for deg in sorted(set(turn.values()) - {0}):
        same = sorted(n for n, t in turn.items() if t == deg)
        edges = [
            (a, b)
            for (a, b), n in counts.items()
            if n >= m.rotation_min_matches and a in same and b in same and a not in alone and b not in alone
        ]
        for part in _components(same, edges):
            group = sorted(part, key=lambda n: (-total[n], n))
            probes = tuple(group[:GROUP_PROBES])
            partners = _nearest_upright(probes, hints, m.rotation_partners) or _group_partners(
                list(probes), set(hints.rolled), names, counts, total, m.rotation_partners
            )
            if partners:
                plan.append(Group(tuple(group), probes, tuple(partners), deg))
    return plan


def plan_outside(
    names: list[str],
    counts: dict[tuple[str, str], int],
    hints: Hints,
    skip: set[str],
    cfg: RunConfig,
) -> list[Group]:
    """What the check tests for the images outside the largest model (``hints.outside``) that it has not
    tested before (``skip``): photos turned together match each other and make a model of their own, or none.
    The images of each part that match each other (at least ``rotation_min_matches``) form one group, tested
    at every turn that passes the pre-test, probed by its :data:`GROUP_PROBES` best-matched members against
    the cameras the model shows upright with the most matches to them (a turned group's true neighbours keep
    a few), then the best-connected of those."""
    m = cfg.matching
    total = _totals(counts)
    exclude = set(names) - (set(hints.upright) - set(hints.rolled))  # partners: upright cameras only
    plan: list[Group] = []
    for part in hints.outside:
        left = {n for n in part if n in total and n not in skip}
        edges = [(a, b) for (a, b), n in counts.items() if n >= m.rotation_min_matches and a in left and b in left]
        for component in _components(sorted(left), edges):
            group = sorted(component, key=lambda n: (-total[n], n))
            probes = group[:GROUP_PROBES]
            if partners := _group_partners(probes, exclude, names, counts, total, m.rotation_partners):
                plan.append(Group(tuple(group), tuple(probes), tuple(partners)))
    return plan


def decision_key(scene: SceneLayout, cfg: RunConfig) -> str:
    """The key of a scene's decision: the rule, the matches' key, the pairs matched and the check's settings.
    Hints (:func:`run`) are not part of it: a rerun reuses the decision they extended."""
    assert scene.keys is not None
    m = cfg.matching
    chosen_files = [f.read_bytes() for f in (scene.pairs_txt, scene.pairs_round2_txt) if f.is_file()]
    digest = hashlib.sha1(b"\0".join(chosen_files)).hexdigest()[:12]  # the decision depends on the pairs
    settings = f"{m.rotation_min_matches}-{m.rotation_min_ratio}-{m.rotation_partners}"
    return f"{RULE_VERSION}-{scene.keys.matches}-{digest}-{settings}"


Matches = dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]
"""(name0, name1) with name0 < name1 -> (indices (M, 2), scores (M,)), as :func:`matching.match_pair` gives."""
State = tuple[dict[str, Features], Matches, dict[tuple[str, str], int]]
"""A scene's features, matches and number of matches per pair (:func:`_scene_now`)."""


def _scene_now(scene: SceneLayout, cfg: RunConfig) -> State:
    """The scene's features and matches now (the override shards of earlier turns included), restricted to
    this run's pairs, and the number of matches of each pair."""
    feats = read_features_h5(scene.features_h5)
    chosen = pairs.chosen_pairs(scene, feats)  # this run's pairs, not those of earlier pair settings
    matches = matches_from_table(read_shards(scene.match_shards, MATCH_SHARD_SCHEMA))
    matches = {pair: v for pair, v in matches.items() if chosen is None or pair in chosen}
    return feats, matches, {pair: len(idx) for pair, (idx, _) in matches.items()}


def _fix(scene: SceneLayout, image_dir: Path, cfg: RunConfig, state: State, plan: list[Group]) -> dict[str, int]:
    """:func:`reorient.fix` of ``plan`` (nothing when empty); a failure is logged and turns nothing."""
    if not plan:
        return {}
    feats, matches, counts = state
    try:
        from imc_ray.stages import reorient  # torch and the models: only for a scene with suspects

        return reorient.fix(scene, image_dir, cfg, sorted(matches), feats, counts, plan)
    except Exception:
        logger.exception("%s: orientation check failed; mapping goes on without it", scene.root)
        return {}


def _drop_overrides(scene: SceneLayout) -> None:
    """Remove the override shards of another orientation decision (they never survive a new one) and, when
    there were any, merge ``features.h5`` again without them (same images)."""
    had = (scene.shards("features") / "rotated").exists()
    names = set(feature_names_h5(scene.features_h5)) if had and scene.features_h5.exists() else None
    for kind in ("features", "matches"):
        shutil.rmtree(scene.shards(kind) / "rotated", ignore_errors=True)
    if had:
        consolidate_features(scene, names)


def _first_check(scene: SceneLayout, image_dir: Path, cfg: RunConfig, key: str) -> dict[str, Any]:
    """Steps 1-3 of the rule on a scene with no decision of this key; writes and returns the decision."""
    t0 = time.perf_counter()
    _drop_overrides(scene)
    feats, matches, counts = state = _scene_now(scene, cfg)
    m = cfg.matching
    rolls = {
        (a, b): relative_roll(feats[a].keypoints, feats[b].keypoints, idx)
        for (a, b), (idx, _) in matches.items()
        if a in feats and b in feats and len(idx) >= m.rotation_min_matches
    }
    plan = plan_groups(sorted(feats), counts, rolls, cfg)
    rotated = _fix(scene, image_dir, cfg, state, plan)
    suspects = sorted(g.members[0] for g in plan if len(g.members) == 1)
    groups = [list(g.members) for g in plan if len(g.members) > 1]
    decision: dict[str, Any] = {"key": key, "suspects": suspects, "groups": groups, "rotated": rotated}
    decision.update(hinted={}, outside=[], seconds=round(time.perf_counter() - t0, 3))
    write_text_atomic(scene.orientation_json, json.dumps(decision))
    return decision


def _tested(decision: dict[str, Any]) -> set[str]:
    """The images a decision has tested: suspects, group members, hinted and outside images."""
    groups = {n for g in decision["groups"] for n in g}
    return {*decision["suspects"], *groups, *decision["hinted"], *decision["outside"], *decision["rotated"]}


def _hint_check(
    scene: SceneLayout,
    image_dir: Path,
    cfg: RunConfig,
    decision: dict[str, Any],
    hints: Hints,
) -> dict[str, Any]:
    """Test the turns of ``hints`` (:func:`plan_hinted`, :func:`plan_outside`) on top of ``decision``; writes
    and returns it extended."""
    t0 = time.perf_counter()
    state = _scene_now(scene, cfg)
    rotated = {k: int(v) for k, v in decision["rotated"].items()}
    tested = _tested(decision)
    plan = plan_hinted(sorted(state[0]), state[2], hints, rotated, cfg, frozenset(tested - set(rotated)))
    plan += plan_outside(sorted(state[0]), state[2], hints, tested, cfg)
    rotated.update(_fix(scene, image_dir, cfg, state, plan))
    decision = {**decision, "rotated": rotated}
    decision["hinted"] = {**decision["hinted"], **hints.rolled}
    decision["outside"] = sorted({*decision["outside"], *(n for part in hints.outside for n in part)})
    decision["seconds"] = round(decision["seconds"] + time.perf_counter() - t0, 3)
    write_text_atomic(scene.orientation_json, json.dumps(decision))
    return decision


def run(
    scene: SceneLayout,
    image_dir: Path,
    cfg: RunConfig,
    hints: Hints | None = None,
) -> dict[str, int]:
    """Files in, files out for one scene (rule in the module docstring; its pairs: those matched).
    hints: what a model of the scene shows (:class:`Hints`): the rolled images not hinted before are tested
    with their turn (:func:`plan_hinted`), and the images outside the model not tested before at every turn
    (:func:`plan_outside`), after the decision of the rule.
    Returns image -> degrees for the images that were turned (empty for most scenes)."""
    key = decision_key(scene, cfg)
    decision = None
    if scene.orientation_json.exists():
        decision = json.loads(scene.orientation_json.read_text())
        decision = decision if decision.get("key") == key else None
    if decision is None:
        decision = _first_check(scene, image_dir, cfg, key)
    if hints:
        tested = _tested(decision)
        rolled = {n: int(t) for n, t in hints.rolled.items() if n not in decision["hinted"]}
        outside = tuple(g for g in (tuple(n for n in part if n not in tested) for part in hints.outside) if g)
        if rolled or outside:
            hints = dataclasses.replace(hints, rolled=rolled, outside=outside)
            decision = _hint_check(scene, image_dir, cfg, decision, hints)
    return {k: int(v) for k, v in decision["rotated"].items()}
