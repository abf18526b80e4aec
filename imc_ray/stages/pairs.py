"""Stage 4: choose which image pairs of a scene to match.

Rule (:func:`select_pairs`, by ``retrieval.pairing``):
  * ``auto``, fewer than ``retrieval.exhaustive_below`` images, or ``exhaustive``: every pair (``"exhaustive"``);
  * ``auto`` with DINOv2 descriptors: the ``num_neighbors`` nearest neighbours of every image by cosine
    similarity (``"dinov2-knn"``);
  * ``auto`` without DINOv2 weights: nearest neighbours by the mean of each image's L2-normalised ALIKED
    descriptors, plus the next ``sequential_window`` images in natural name order (photo collections are
    often shot in sequence) (``"aliked-mean-knn+sequential"``);
  * ``sequential`` (video frames): the next ``sequential_window`` frames in natural name order, plus loop
    closure by the ``num_neighbors`` nearest neighbours (DINOv2, else the weights-free descriptor)
    (``"sequential+dinov2-knn"``, ``"sequential+aliked-mean-knn"``);
  * ``retrieval.pairs_file``: the user's own pairs (:func:`user_pairs`; ``"file"``).
The pair count is O(N k) in the non-exhaustive cases. Pairs are unordered, sorted, ``name0 < name1``.

Second round (:func:`second_round`, run by :func:`round_two` once the first round is matched, before the
orientation check and mapping): in scenes matched by nearest neighbours (:func:`needs_retrieval`), every
image with fewer than ``retrieval.second_round_min_pairs`` pairs of at least ``retrieval.strong_matches``
LightGlue matches is matched with its next ``num_neighbors`` most similar images. Its pairs go to
``pairs-round2.txt``.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from imc_ray.config import RetrievalConfig
from imc_ray.formats import (
    GLOBAL_SHARD_SCHEMA,
    MATCH_SHARD_SCHEMA,
    Features,
    SceneLayout,
    consolidate_features,
    done_keys,
    feature_names_h5,
    globals_from_table,
    matches_from_table,
    read_features_h5,
    read_global_h5,
    read_pairs,
    read_shards,
    write_global_h5,
    write_pairs,
)

logger = logging.getLogger(__name__)

Pair = tuple[str, str]


def _ordered(a: str, b: str) -> Pair:
    return (a, b) if a < b else (b, a)


def exhaustive_pairs(names: list[str]) -> list[Pair]:
    """Every unordered pair: N (N - 1) / 2."""
    return sorted(_ordered(a, b) for a, b in itertools.combinations(names, 2))


def knn_pairs(names: list[str], descriptors: np.ndarray, k: int) -> list[Pair]:
    """Each image with its ``k`` most similar images.

    descriptors: (N, D) float32, L2-normalised (cosine similarity = dot product).
    Returns at most N k unordered pairs.
    """
    n = len(names)
    k = min(k, n - 1)
    if k <= 0:
        return []
    nearest = np.argsort(-similarity(descriptors), axis=1, kind="stable")[:, :k]
    return sorted({_ordered(names[i], names[int(j)]) for i in range(n) for j in nearest[i]})


def natural_key(name: str) -> list[tuple[int, str]]:
    """Sort key that orders ``frame2`` before ``frame10`` (digit runs compare as numbers)."""
    return [(int(part), "") if part.isdigit() else (-1, part) for part in re.split(r"(\d+)", name)]


def sequential_pairs(names: list[str], window: int) -> list[Pair]:
    """Each image with the next ``window`` images in natural name order (:func:`natural_key`)."""
    order = sorted(names, key=natural_key)
    return sorted(
        {_ordered(order[i], order[j]) for i in range(len(order)) for j in range(i + 1, min(len(order), i + 1 + window))}
    )


def mean_local_descriptor(descriptors: np.ndarray) -> np.ndarray:
    """Weights-free global descriptor: (N, D) local descriptors -> (D,) L2-normalised mean."""
    if len(descriptors) == 0:
        return np.zeros(descriptors.shape[1], np.float32)
    d = descriptors / np.maximum(np.linalg.norm(descriptors, axis=1, keepdims=True), 1e-12)
    m = d.mean(axis=0)
    return (m / max(float(np.linalg.norm(m)), 1e-12)).astype(np.float32)


def similarity(descriptors: np.ndarray) -> np.ndarray:
    """(N, D) L2-normalised descriptors -> (N, N) cosine similarity, -inf on the diagonal."""
    sim = (descriptors @ descriptors.T).astype(np.float32)
    np.fill_diagonal(sim, -np.inf)
    return sim


def weak_images(names: list[str], matched: dict[Pair, int], strong: int, min_pairs: int) -> list[str]:
    """Images with fewer than ``min_pairs`` matched pairs of at least ``strong`` matches.

    matched: matches per matched pair (every pair matched so far, weak ones included)."""
    count = dict.fromkeys(names, 0)
    for (a, b), m in matched.items():
        if m >= strong:
            count[a] = count.get(a, 0) + 1
            count[b] = count.get(b, 0) + 1
    return [n for n in names if count[n] < min_pairs]


def second_round(
    names: list[str], similarity: np.ndarray, matched: dict[Pair, int], cfg: RetrievalConfig
) -> list[Pair]:
    """Pairs by need: each weakly connected image (:func:`weak_images`) with its next ``cfg.num_neighbors``
    most similar images that it was not matched with yet.

    similarity: (N, N) in ``names`` order (:func:`similarity`). Returns new unordered pairs, sorted."""
    if cfg.second_round_min_pairs == 0:
        return []
    index = {n: i for i, n in enumerate(names)}
    new: set[Pair] = set()
    for name in weak_images(names, matched, cfg.strong_matches, cfg.second_round_min_pairs):
        i = index[name]
        order = np.argsort(-similarity[i], kind="stable")
        fresh = [names[int(j)] for j in order if j != i and _ordered(name, names[int(j)]) not in matched]
        new.update(_ordered(name, other) for other in fresh[: cfg.num_neighbors])
    return sorted(new)


def needs_retrieval(num_images: int, cfg: RetrievalConfig) -> bool:
    """Whether a scene of ``num_images`` images is paired by nearest neighbours (global descriptors)."""
    if cfg.pairs_file or cfg.pairing == "exhaustive":
        return False
    return cfg.pairing == "sequential" or num_images >= cfg.exhaustive_below


def select_pairs(
    names: list[str], cfg: RetrievalConfig, descriptors: np.ndarray | None, dinov2: bool
) -> tuple[list[Pair], str]:
    """Pairs of one scene (not from a pairs file) and the name of the method that chose them.

    descriptors: (N, D) L2-normalised global descriptors in ``names`` order: DINOv2's (``dinov2``) or the
    weights-free ones (:func:`fallback_descriptors`); needed when :func:`needs_retrieval`.
    """
    if not needs_retrieval(len(names), cfg):
        return exhaustive_pairs(names), "exhaustive"
    if descriptors is None:
        raise ValueError("select_pairs needs global descriptors to pair by nearest neighbours")
    knn = knn_pairs(names, descriptors, cfg.num_neighbors)
    source = "dinov2-knn" if dinov2 else "aliked-mean-knn"
    if cfg.pairing == "sequential":
        return sorted(set(knn) | set(sequential_pairs(names, cfg.sequential_window))), f"sequential+{source}"
    if dinov2:
        return knn, source
    return sorted(set(knn) | set(sequential_pairs(names, cfg.sequential_window))), f"{source}+sequential"


class PairsFileError(ValueError):
    """A user's pairs file (``retrieval.pairs_file``) is missing or names images the scene does not have."""


def pairs_file_of(scene_folder: Path, value: str, num_scenes: int) -> Path:
    """Where ``retrieval.pairs_file`` = ``value`` is for the scene in ``scene_folder`` (see the setting)."""
    path = Path(value).expanduser()
    if path.is_absolute() and num_scenes > 1:
        raise PairsFileError(
            f"retrieval.pairs_file={value} is one file for {num_scenes} scenes; give a relative path that "
            "each scene folder holds (beside images/), or run one scene"
        )
    return path if path.is_absolute() else scene_folder / path


def user_pairs(path: Path, names: Iterable[str], unusable: Iterable[str] = ()) -> list[Pair]:
    """The pairs of a user's hloc pairs file, checked against the scene's image ``names``.

    Pairs with an ``unusable`` image (listed by the catalog) are left out; repeats, either order, count
    once; a pair of an image with itself is an error. Raises :class:`PairsFileError` naming the file."""
    known, skip = set(names), set(unusable)
    if not path.is_file():
        raise PairsFileError(f"{path}: pairs file not found (retrieval.pairs_file); create it or unset the setting")
    try:
        listed = read_pairs(path, known | skip)
    except (ValueError, OSError) as exc:
        raise PairsFileError(f"{exc}; write one pair per line: name0 name1") from None
    for n, (a, b) in enumerate(listed, 1):
        if unknown := [x for x in (a, b) if x not in known | skip]:
            raise PairsFileError(
                f"{path}: pair {n} ({a} {b}) names {unknown[0]!r}, which is not an image of this scene; "
                "names are paths below images/, as in submission.csv"
            )
        if a == b:
            raise PairsFileError(f"{path}: pair {n} pairs {a!r} with itself; remove that line")
    return sorted({_ordered(a, b) for a, b in listed if a not in skip and b not in skip})


def run(
    scene: SceneLayout,
    cfg: RetrievalConfig,
    use_dinov2: bool,
    images: set[str] | None = None,
    given: list[Pair] | None = None,
) -> tuple[list[Pair], str]:
    """Files in, files out for one scene: merge its feature shards into ``features.h5`` (and DINOv2
    shards into ``global.h5``), choose its pairs and write ``pairs.txt``.

    use_dinov2: whether DINOv2 descriptors were computed; images: the scene's
    images in this run (images of earlier runs since removed from INPUT are left out); None: every image
    with features. given: the pairs of the user's pairs file (:func:`user_pairs`), used as they are (pairs
    with an image without features are left out).
    Returns the pairs and the name of the method that chose them.
    """
    feats = consolidate_features(scene, images)
    names = sorted(feats)
    glob: dict[str, np.ndarray] = {}
    if use_dinov2:
        glob = globals_from_table(read_shards(scene.global_shards, GLOBAL_SHARD_SCHEMA))
        write_global_h5(scene.global_h5, {n: glob[n] for n in names if n in glob})
    if given is not None:
        pairs, method = [(a, b) for a, b in given if a in feats and b in feats], "file"
    else:
        dinov2 = bool(names) and set(names) <= set(glob)
        desc = None
        if needs_retrieval(len(names), cfg):
            desc = np.stack([glob[n] for n in names]) if dinov2 else fallback_descriptors(feats, names)
        pairs, method = select_pairs(names, cfg, desc, dinov2)
    write_pairs(scene.pairs_txt, pairs)
    scene.pairs_round2_txt.unlink(missing_ok=True)  # an earlier run's: :func:`round_two` writes this run's
    return pairs, method


def chosen_pairs(layout: SceneLayout, names: Iterable[str]) -> set[Pair] | None:
    """The pairs this run chose for the scene (``pairs.txt``, ``pairs-round2.txt`` and the pairs the
    orientation stage matched, ``stages/orientation.py``): matches of other
    pairs, left in the shards by earlier runs with other pair settings, are not mapped. None without
    ``pairs.txt`` (matches made elsewhere: every match is used)."""
    if not layout.pairs_txt.is_file():
        return None
    known = list(names)
    chosen = {p for f in (layout.pairs_txt, layout.pairs_round2_txt) if f.is_file() for p in read_pairs(f, known)}
    if layout.keys is not None:  # pairs the orientation stage added for a turned group
        chosen |= {(a, b) for a, b in done_keys(layout.match_shards / "rotated", ("name0", "name1"))}
    return chosen


def has_second_round(num_images: int, cfg: RetrievalConfig) -> bool:
    """Whether a scene of ``num_images`` images gets the second round (it is matched by nearest neighbours)."""
    return needs_retrieval(num_images, cfg) and cfg.second_round_min_pairs > 0


def fallback_descriptors(feats: dict[str, Features], names: list[str]) -> np.ndarray:
    """(N, D) weights-free global descriptors of ``names`` (:func:`mean_local_descriptor`)."""
    return np.stack([mean_local_descriptor(feats[n].descriptors) for n in names])


def _global_descriptors(scene: SceneLayout, names: list[str]) -> np.ndarray:
    """(N, D) descriptors that chose the first round: DINOv2's (``global.h5``) when it ran for every image,
    else the weights-free fallback from ``features.h5``."""
    if (found := read_global_h5(scene.global_h5, names)) is not None:
        return found
    return fallback_descriptors(read_features_h5(scene.features_h5, names), names)


def round_two(scene: SceneLayout, cfg: RetrievalConfig) -> list[Pair]:
    """Files in, files out: the second round of a scene whose first round (``pairs.txt``) is matched.

    Writes ``pairs-round2.txt`` (empty for an exhaustive scene or ``second_round_min_pairs=0``) and returns
    its pairs. Deterministic on resume: only first-round pairs decide which images are weak."""
    names = feature_names_h5(scene.features_h5)
    first = read_pairs(scene.pairs_txt, names)
    extra: list[Pair] = []
    if has_second_round(len(names), cfg):
        table = matches_from_table(read_shards(scene.match_shards, MATCH_SHARD_SCHEMA))
        counts = {p: len(table[p][0]) if p in table else 0 for p in first}
        extra = second_round(names, similarity(_global_descriptors(scene, names)), counts, cfg)
    write_pairs(scene.pairs_round2_txt, extra)
    return extra
