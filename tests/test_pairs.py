from __future__ import annotations

import numpy as np

from imc_ray.config import RetrievalConfig
from imc_ray.stages.pairs import (
    exhaustive_pairs,
    knn_pairs,
    mean_local_descriptor,
    second_round,
    select_pairs,
    sequential_pairs,
    similarity,
    weak_images,
)

NAMES = [f"im{i:03d}.jpg" for i in range(60)]


def _clustered_descriptors(n: int, groups: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(groups, 16))
    d = centres[np.arange(n) % groups] + 0.05 * rng.normal(size=(n, 16))
    return (d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32)


def test_exhaustive() -> None:
    pairs = exhaustive_pairs(["c", "a", "b"])
    assert pairs == [("a", "b"), ("a", "c"), ("b", "c")]
    assert len(exhaustive_pairs(NAMES)) == 60 * 59 // 2


def test_knn_finds_similar_images_and_is_bounded() -> None:
    desc = _clustered_descriptors(60, groups=6)  # image i belongs to group i % 6 (10 images each)
    pairs = knn_pairs(NAMES, desc, k=5)
    assert len(pairs) <= 60 * 5
    for a, b in pairs:
        assert int(a[2:5]) % 6 == int(b[2:5]) % 6  # neighbours come from the same group
    assert knn_pairs(NAMES[:1], desc[:1], k=5) == []


def test_sequential() -> None:
    pairs = sequential_pairs(NAMES[:5], window=2)
    assert pairs == [
        (NAMES[0], NAMES[1]),
        (NAMES[0], NAMES[2]),
        (NAMES[1], NAMES[2]),
        (NAMES[1], NAMES[3]),
        (NAMES[2], NAMES[3]),
        (NAMES[2], NAMES[4]),
        (NAMES[3], NAMES[4]),
    ]


def test_select_pairs_methods() -> None:
    cfg = RetrievalConfig(exhaustive_below=20, num_neighbors=4, sequential_window=3)
    desc = _clustered_descriptors(60, 6)
    small, method = select_pairs(NAMES[:10], cfg, None, None)
    assert method == "exhaustive" and len(small) == 45
    big, method = select_pairs(NAMES, cfg, desc, None)
    assert method == "dinov2-knn" and len(big) <= 60 * 4
    fb, method = select_pairs(NAMES, cfg, None, desc)
    assert method == "aliked-mean-knn+sequential"
    assert len(fb) <= 60 * (4 + 3)
    assert set(sequential_pairs(NAMES, 3)) <= set(fb)


def test_mean_local_descriptor() -> None:
    rng = np.random.default_rng(1)
    local = rng.normal(size=(100, 128)).astype(np.float32)
    g = mean_local_descriptor(local)
    assert g.shape == (128,)
    assert abs(np.linalg.norm(g) - 1) < 1e-5
    assert np.all(mean_local_descriptor(np.zeros((0, 128), np.float32)) == 0)


def test_weak_images_count_strong_pairs_only() -> None:
    names = ["a", "b", "c", "d"]
    matched = {("a", "b"): 500, ("a", "c"): 300, ("b", "c"): 40, ("c", "d"): 99}
    assert weak_images(names, matched, strong=100, min_pairs=2) == ["b", "c", "d"]
    assert weak_images(names, matched, strong=100, min_pairs=1) == ["d"]


def test_second_round_gives_a_weakly_connected_image_more_candidates() -> None:
    names = NAMES[:30]
    desc = _clustered_descriptors(30, groups=2)  # image i in group i % 2: fifteen similar images each
    cfg = RetrievalConfig(exhaustive_below=0, num_neighbors=4, second_round_min_pairs=2, strong_matches=100)
    first = knn_pairs(names, desc, cfg.num_neighbors)
    matched = {p: 500 for p in first}
    weak = names[4]
    for p in [p for p in first if weak in p]:
        matched[p] = 20  # every first-round pair of one image came back weak
    extra = second_round(names, similarity(desc), matched, cfg)
    assert extra and all(weak in p for p in extra)  # only the weak image gets candidates
    assert len(extra) == cfg.num_neighbors and not set(extra) & set(first)
    assert all(int(a[2:5]) % 2 == int(b[2:5]) % 2 for a, b in extra)  # its next most similar images
    off = RetrievalConfig(exhaustive_below=0, num_neighbors=4, second_round_min_pairs=0)
    assert second_round(names, similarity(desc), matched, off) == []
    assert second_round(names, similarity(desc), {p: 500 for p in first}, cfg) == []
