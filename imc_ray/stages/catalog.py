"""Stage 1: find scenes and images, and decode images.

Input layouts (``find_scenes``):
  * ``ROOT/<dataset>/<scene>/images/*``  (IMC style; ``labels.csv`` beside ``images/`` is ignored here);
  * ``ROOT/<scene>/images/*``            (dataset = ROOT's name);
  * ``ROOT/images/*``                    (one scene: dataset = ROOT's parent name, scene = ROOT's name);
  * ``ROOT/*``                           (one plain folder of images: dataset = scene = ROOT's name).

Decoding (``decode_image``) applies the EXIF orientation, composites alpha onto a fixed background,
expands grayscale, scales 16-bit data to 8 bits, and refuses decompression bombs and tiny images
with an :class:`ImageError` that names the file and the fix.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imc_ray.config import ImagesConfig

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


class CatalogError(ValueError):
    """The input tree cannot be used at all."""


class ImageError(ValueError):
    """One image cannot be used; the run goes on without it."""


@dataclass(frozen=True)
class ImageRef:
    """One input image. ``name`` is its path relative to the scene's image folder (POSIX)."""

    dataset: str
    scene: str
    name: str
    path: str


@dataclass(frozen=True)
class Scene:
    """One scene: a folder of images to reconstruct together."""

    dataset: str
    name: str
    image_dir: Path
    images: tuple[ImageRef, ...]


def _list_images(image_dir: Path) -> list[Path]:
    """Image files below ``image_dir`` (recursive, no symlinked folders: loops are impossible)."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(image_dir, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            p = Path(dirpath) / fn
            if not fn.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS:
                found.append(p)
    return found


def _has_images(folder: Path) -> bool:
    return any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.iterdir())


def _scene(dataset: str, name: str, image_dir: Path) -> Scene:
    refs = tuple(
        ImageRef(dataset=dataset, scene=name, name=p.relative_to(image_dir).as_posix(), path=str(p))
        for p in _list_images(image_dir)
    )
    return Scene(dataset=dataset, name=name, image_dir=image_dir, images=refs)


def find_scenes(root: Path) -> list[Scene]:
    """Find the scenes of an input tree (layouts in the module docstring), sorted by (dataset, scene)."""
    root = Path(root)
    if not root.is_dir():
        raise CatalogError(f"input {root} is not a folder; pass an IMC-style tree or a folder of images")
    if (root / "images").is_dir():
        scenes = [_scene(root.resolve().parent.name, root.resolve().name, root / "images")]
    elif _has_images(root):
        scenes = [_scene(root.resolve().name, root.resolve().name, root)]
    else:
        scenes = []
        for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if (child / "images").is_dir():
                scenes.append(_scene(root.resolve().name, child.name, child / "images"))
                continue
            for sub in sorted(p for p in child.iterdir() if p.is_dir() and not p.name.startswith(".")):
                if (sub / "images").is_dir():
                    scenes.append(_scene(child.name, sub.name, sub / "images"))
    if not scenes:
        raise CatalogError(
            f"no scenes found under {root}: expected <dataset>/<scene>/images/*, <scene>/images/* "
            "or a folder of image files (" + ", ".join(sorted(IMAGE_EXTENSIONS)) + ")"
        )
    for s in scenes:
        if not s.images:
            logger.warning("scene %s/%s: no images in %s; it is skipped", s.dataset, s.name, s.image_dir)
    return scenes


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale integer or float image data to uint8."""
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    top = 65535.0 if arr.max(initial=0) > 255 else 255.0
    return (arr.astype(np.float32) * (255.0 / top) + 0.5).clip(0, 255).astype(np.uint8)


def decode_image(path: str | Path, cfg: ImagesConfig) -> np.ndarray:
    """Decode one image to RGB.

    Returns:
        (H, W, 3) uint8, EXIF orientation applied, alpha composited onto ``cfg.background``.

    Raises:
        ImageError: the file is unreadable, empty, too large or too small (the message names it).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror}); check the file exists and is readable") from None
    if size == 0:
        raise ImageError(f"{path}: empty file (0 bytes); replace it with the real image or delete it")
    bomb = ImageError(
        f"{path}: more than images.max_pixels={cfg.max_pixels} pixels (a decompression bomb?); "
        "downscale the image or raise images.max_pixels"
    )
    Image.MAX_IMAGE_PIXELS = cfg.max_pixels  # PIL's own guard, made to agree with ours (per process)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.size[0] * im.size[1] > cfg.max_pixels:
                    raise bomb
                im.load()
                arr = _pil_to_rgb(ImageOps.exif_transpose(im), cfg.background)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise bomb from None
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageError(f"{path}: not a readable image ({exc}); replace or delete the file") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: corrupt or truncated image ({exc}); replace or delete the file") from None
    if min(arr.shape[:2]) < cfg.min_side:
        raise ImageError(
            f"{path}: {arr.shape[1]}x{arr.shape[0]} is smaller than images.min_side={cfg.min_side}; "
            "use a larger image or delete it"
        )
    return arr


def _pil_to_rgb(im: Image.Image, background: tuple[int, int, int]) -> np.ndarray:
    """(H, W, 3) uint8 from any PIL mode (palette, L, LA, I;16, I, F, RGBA, CMYK, ...)."""
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32)
        alpha = rgba[..., 3:4] / 255.0
        bg = np.asarray(background, dtype=np.float32)[None, None, :]
        return (rgba[..., :3] * alpha + bg * (1.0 - alpha) + 0.5).astype(np.uint8)
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        gray = _to_uint8(np.asarray(im))
        return np.repeat(gray[..., None], 3, axis=2)
    if im.mode != "RGB":
        im = im.convert("RGB")
    arr = np.asarray(im)
    return _to_uint8(arr)


def resize_long_side(image: np.ndarray, long_side: int) -> np.ndarray:
    """Downscale (never upscale) so that max(H, W) <= ``long_side``; 0 keeps the size.

    image: (H, W, 3) uint8 -> (H', W', 3) uint8 (area interpolation).
    """
    h, w = image.shape[:2]
    if long_side <= 0 or max(h, w) <= long_side:
        return image
    scale = long_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))


def load_image(path: str | Path, cfg: ImagesConfig, long_side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode and downscale for the models.

    Returns: (h, w, 3) uint8 with max(h, w) <= ``long_side`` (0: full size), and the decoded
    full-resolution size (W, H) that keypoints are reported in.
    """
    image = decode_image(path, cfg)
    return resize_long_side(image, long_side), (image.shape[1], image.shape[0])
