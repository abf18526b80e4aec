from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from imc_ray.config import FeaturesConfig, RetrievalConfig
from imc_ray.stages.pairs import (
    PairsFileError,
    exhaustive_pairs,
    fallback_descriptors,
    has_second_round,
    knn_pairs,
    mean_local_descriptor,
    natural_key,
    pairs_file_of,
    second_round,
    select_pairs,
    sequential_pairs,
    similarity,
    user_pairs,
    weak_images,
)

from . import scenes
from .conftest import SAMPLE_SCENE

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
    small, method = select_pairs(NAMES[:10], cfg, None, dinov2=False)
    assert method == "exhaustive" and len(small) == 45
    big, method = select_pairs(NAMES, cfg, desc, dinov2=True)
    assert method == "dinov2-knn" and len(big) <= 60 * 4
    fb, method = select_pairs(NAMES, cfg, desc, dinov2=False)
    assert method == "aliked-mean-knn+sequential"
    assert len(fb) <= 60 * (4 + 3)
    assert set(sequential_pairs(NAMES, 3)) <= set(fb)
    every, method = select_pairs(NAMES, RetrievalConfig(pairing="exhaustive"), None, dinov2=False)
    assert method == "exhaustive" and len(every) == 60 * 59 // 2


def test_sequential_pairing_is_a_window_plus_loop_closure_at_any_size() -> None:
    frames = [f"frame{i}.jpg" for i in range(12)]  # natural order: frame2 before frame10
    assert sorted(frames, key=natural_key)[:3] == ["frame0.jpg", "frame1.jpg", "frame2.jpg"]
    desc = np.zeros((12, 4), np.float32)
    desc[:, 0] = 1.0
    desc[11] = desc[0] = [0.0, 1.0, 0.0, 0.0]  # the last frame sees the first place again
    cfg = RetrievalConfig(pairing="sequential", sequential_window=2, num_neighbors=1, exhaustive_below=50)
    pairs, method = select_pairs(frames, cfg, desc, dinov2=True)
    assert method == "sequential+dinov2-knn"
    assert ("frame10.jpg", "frame9.jpg") in pairs and ("frame10.jpg", "frame8.jpg") in pairs  # the window
    assert ("frame10.jpg", "frame7.jpg") not in pairs
    assert ("frame0.jpg", "frame11.jpg") in pairs  # the loop closes through retrieval
    assert has_second_round(12, cfg) and not has_second_round(12, RetrievalConfig(exhaustive_below=50))


def test_user_pairs_file_is_checked_against_the_scene(tmp_path: Path) -> None:
    names = ["a.jpg", "b.jpg", "sub/c d.jpg"]
    good = tmp_path / "pairs.txt"
    good.write_text("b.jpg a.jpg\na.jpg sub/c d.jpg\na.jpg b.jpg\n\nbroken.heic a.jpg\n")
    assert user_pairs(good, names, unusable=["broken.heic"]) == [("a.jpg", "b.jpg"), ("a.jpg", "sub/c d.jpg")]
    assert not has_second_round(100, RetrievalConfig(pairs_file="pairs.txt"))
    cases = {
        "a.jpg typo.jpg\n": "pair 1 (a.jpg typo.jpg) names 'typo.jpg', which is not an image of this scene",
        "a.jpg a.jpg\n": "pairs 'a.jpg' with itself",
        "a.jpg\n": "line 1: cannot tell the two image names apart",
    }
    for text, message in cases.items():
        good.write_text(text)
        with pytest.raises(PairsFileError, match=re.escape(message)) as err:
            user_pairs(good, names)
        assert str(good) in str(err.value)
    with pytest.raises(PairsFileError, match="pairs file not found"):
        user_pairs(tmp_path / "missing.txt", names)
    assert pairs_file_of(tmp_path / "scene", "pairs.txt", 3) == tmp_path / "scene" / "pairs.txt"
    assert pairs_file_of(tmp_path / "scene", str(good), 1) == good
    with pytest.raises(PairsFileError, match="one file for 3 scenes"):
        pairs_file_of(tmp_path / "scene", str(good), 3)


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


@pytest.mark.skipif(not scenes.FOX.is_dir(), reason="needs ../shared/data/instant_ngp/fox")
def test_retrieval_screens_out_unrelated_pairs_and_keeps_overlapping_ones() -> None:
    """The screen before LightGlue is pair selection (cheaper per-pair screens were measured and rejected,
    bench/RESULTS.md): on a real pile of 6 fox photos and 6 lego renders, weights-free descriptors keep every
    pair of the fox photos (all overlap) and screen out every fox x lego pair."""
    fox = sorted((scenes.FOX / "images").iterdir())[:6]
    lego = sorted((SAMPLE_SCENE / "images").iterdir())[:6]
    feats = scenes.extract(fox + lego, FeaturesConfig(resize=320, max_keypoints=512))
    names = sorted(feats)
    cfg = RetrievalConfig(exhaustive_below=0, num_neighbors=5, sequential_window=0)
    chosen, method = select_pairs(names, cfg, fallback_descriptors(feats, names), dinov2=False)
    assert method == "aliked-mean-knn+sequential"
    fox_names = {p.name for p in fox}
    assert set(exhaustive_pairs(sorted(fox_names))) <= set(chosen)  # no overlapping pair is screened out
    assert not [(a, b) for a, b in chosen if (a in fox_names) != (b in fox_names)]  # every unrelated one is
    assert len(chosen) < len(exhaustive_pairs(names))
    # the same photos as video frames: the window, plus each frame's nearest neighbour by real descriptors
    frames = sorted(fox_names)
    seq_cfg = RetrievalConfig(pairing="sequential", sequential_window=2, num_neighbors=1)
    seq, method = select_pairs(frames, seq_cfg, fallback_descriptors(feats, frames), dinov2=False)
    assert method == "sequential+aliked-mean-knn"
    assert set(sequential_pairs(frames, 2)) <= set(seq) <= set(exhaustive_pairs(frames))
