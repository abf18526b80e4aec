"""Stage 2: DINOv2 global descriptors.

The architecture is kornia's copy of the official DINOv2 ViT (same parameter names as
facebookresearch/dinov2), so the official ``dinov2_vit*14_pretrain.pth`` checkpoints load as they are.

Where the weights come from (:func:`resolve_weights`), in order:
  1. ``retrieval.weights``: a checkpoint file, or a directory holding ``<model>_pretrain.pth``;
  2. the torch hub cache: ``$TORCH_HOME/hub/checkpoints/<model>_pretrain.pth``;
  3. only when ``retrieval.allow_download`` is true: the official URL, fetched into that cache.
Nothing is downloaded otherwise, and :class:`WeightsNotFound` says where to put the file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from kornia.feature.dedode.transformer.dinov2 import DinoVisionTransformer

from imc_ray.config import RetrievalConfig

logger = logging.getLogger(__name__)

OFFICIAL_URL = "https://dl.fbaipublicfiles.com/dinov2/{model}/{model}_pretrain.pth"

ARCHITECTURES: dict[str, dict[str, int]] = {
    "dinov2_vits14": {"embed_dim": 384, "depth": 12},
    "dinov2_vitb14": {"embed_dim": 768, "depth": 12},
    "dinov2_vitl14": {"embed_dim": 1024, "depth": 24},
    "dinov2_vitg14": {"embed_dim": 1536, "depth": 40},
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsNotFound(FileNotFoundError):
    """No DINOv2 checkpoint is available without a download that was not allowed."""


def checkpoint_name(model: str) -> str:
    """File name of the official checkpoint, e.g. ``dinov2_vits14_pretrain.pth``."""
    return f"{model}_pretrain.pth"


def hub_cache_path(model: str) -> Path:
    """Where torch hub keeps the official checkpoint."""
    return Path(torch.hub.get_dir()) / "checkpoints" / checkpoint_name(model)


def resolve_weights(cfg: RetrievalConfig) -> Path:
    """Find (or, if allowed, fetch) the checkpoint of ``cfg.model``; see the module docstring."""
    if cfg.weights:
        p = Path(cfg.weights).expanduser()
        if p.is_dir():
            p = p / checkpoint_name(cfg.model)
        if not p.is_file():
            raise WeightsNotFound(
                f"retrieval.weights={cfg.weights!r}: {p} does not exist; point it at {checkpoint_name(cfg.model)} "
                "or the directory that holds it"
            )
        return p
    cached = hub_cache_path(cfg.model)
    if cached.is_file():
        return cached
    if not cfg.allow_download:
        raise WeightsNotFound(
            f"no DINOv2 weights: {cached} does not exist. Run `imc-ray fetch-weights` on a machine with "
            "internet, set retrieval.weights=PATH, or set retrieval.allow_download=true"
        )
    url = OFFICIAL_URL.format(model=cfg.model)
    logger.info("downloading %s to %s (retrieval.allow_download=true)", url, cached)
    cached.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(cached), progress=False)
    return cached


def build_dinov2(embed_dim: int, depth: int, ffn_layer: str = "mlp", img_size: int = 518) -> DinoVisionTransformer:
    """An uninitialised DINOv2 ViT/14 with the official hub settings (64-dim attention heads)."""
    return DinoVisionTransformer(
        img_size=img_size,
        patch_size=14,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=max(1, embed_dim // 64),
        mlp_ratio=4.0,
        init_values=1.0,
        ffn_layer=ffn_layer,
        block_chunks=0,
    )


def architecture_of(state: dict[str, torch.Tensor]) -> dict[str, int | str]:
    """Read embed_dim, depth, ffn_layer and the training image size off a checkpoint."""
    if "cls_token" not in state or "pos_embed" not in state:
        raise ValueError("not a DINOv2 state dict (no cls_token / pos_embed)")
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    grid = round((state["pos_embed"].shape[1] - 1) ** 0.5)
    return {
        "embed_dim": int(state["cls_token"].shape[-1]),
        "depth": depth,
        "ffn_layer": "swiglufused" if any(".mlp.w12." in k for k in state) else "mlp",
        "img_size": grid * 14,
    }


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint safely (``weights_only=True``: no pickled code runs)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state dict; expected the official DINOv2 checkpoint")
    return state


def load_dinov2(cfg: RetrievalConfig, device: torch.device) -> DinoVisionTransformer:
    """Build the model that fits the checkpoint and load its weights (raises :class:`WeightsNotFound`)."""
    path = resolve_weights(cfg)
    state = load_state(path)
    try:
        arch = architecture_of(state)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}; expected an official DINOv2 checkpoint") from None
    expected = ARCHITECTURES[cfg.model]
    if (arch["embed_dim"], arch["depth"]) != (expected["embed_dim"], expected["depth"]):
        logger.warning(
            "%s: checkpoint has embed_dim=%s depth=%s, not those of %s; using the checkpoint's",
            path,
            arch["embed_dim"],
            arch["depth"],
            cfg.model,
        )
    model = build_dinov2(int(arch["embed_dim"]), int(arch["depth"]), str(arch["ffn_layer"]), int(arch["img_size"]))
    missing, unexpected = model.load_state_dict(state, strict=False)
    unexpected = [k for k in unexpected if k != "mask_token"]
    if missing or unexpected:
        raise ValueError(
            f"{path}: does not fit a DINOv2 ViT/14 (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "check retrieval.model matches the checkpoint"
        )
    logger.info("DINOv2 %s loaded from %s", cfg.model, path)
    return model.eval().to(device)


@torch.inference_mode()
def describe(model: DinoVisionTransformer, images: list[np.ndarray], size: int, device: torch.device) -> np.ndarray:
    """Global descriptors of a batch of images.

    images: B arrays (H, W, 3) uint8 (any sizes); each is resized to (size, size).
    Returns: (B, 2 * C) float32, L2-normalised: [normalised CLS token, normalised max-pooled patch tokens].
    """
    size = max(14, (size // 14) * 14)
    batch = []
    for im in images:
        t = torch.from_numpy(np.array(im, copy=True)).to(device).permute(2, 0, 1)[None].float() / 255.0
        batch.append(F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False))
    x = torch.cat(batch)
    mean = torch.tensor(IMAGENET_MEAN, device=device)[None, :, None, None]
    std = torch.tensor(IMAGENET_STD, device=device)[None, :, None, None]
    out = model.forward_features((x - mean) / std)
    cls = F.normalize(out["x_norm_clstoken"].float(), dim=-1)
    pooled = out["x_norm_patchtokens"].float().max(dim=1).values
    desc = torch.cat([cls, F.normalize(pooled, dim=-1)], dim=-1)
    return F.normalize(desc, dim=-1).cpu().numpy().astype(np.float32)
