"""Pictures as arrays (numpy + Pillow only): photos with keypoints, pairs side by side with match lines.

Keypoints are in original-image pixels with the origin at the centre of the top-left pixel
(:mod:`imc_ray.formats`); the functions here scale them with the photo they draw on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from imc_ray.viewer.data import PairMatches

logger = logging.getLogger(__name__)

INLIER_RGB = (40, 200, 60)
"""Verified inlier matches: green."""
REJECTED_RGB = (230, 40, 40)
"""Matches that geometric verification rejected: red."""
KEYPOINT_RGB = (255, 200, 0)
"""Keypoints: amber."""
PLACEHOLDER_RGB = (200, 200, 200)


def placeholder(size: tuple[int, int]) -> np.ndarray:
    """A grey (H, W, 3) uint8 stand-in of ``size`` = (width, height) for a photo that cannot be shown."""
    w, h = max(1, int(size[0])), max(1, int(size[1]))
    return np.full((h, w, 3), PLACEHOLDER_RGB, np.uint8)


def fit(photo: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Downscale (never upscale) so that max(H, W) <= ``max_side``; return the image and the scale."""
    h, w = photo.shape[:2]
    if max_side <= 0 or max(h, w) <= max_side:
        return photo, 1.0
    s = max_side / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.BILINEAR)), s


def to_display(xy: np.ndarray, scale: float) -> np.ndarray:
    """Keypoints (N, 2) in original pixels (pixel-centre origin) -> PIL coordinates of an image scaled by ``scale``."""
    return (np.asarray(xy, np.float64) + 0.5) * scale


def draw_keypoints(photo: np.ndarray, keypoints: np.ndarray, max_side: int = 1600, radius: float = 2.0) -> np.ndarray:
    """The photo, downscaled to ``max_side``, with a small circle on every keypoint: (H, W, 3) uint8."""
    img, s = fit(photo, max_side)
    pil = Image.fromarray(np.ascontiguousarray(img)).convert("RGB")
    draw = ImageDraw.Draw(pil)
    r = max(1.0, radius * max(img.shape[:2]) / 1000.0)
    for x, y in to_display(keypoints, s):
        draw.ellipse((x - r, y - r, x + r, y + r), outline=KEYPOINT_RGB, width=1)
    return np.asarray(pil)


@dataclass(frozen=True)
class Canvas:
    """Two photos side by side: the image and where each photo lies in it.

    image: (H, W, 3) uint8; scale0 / scale1: original-pixel -> canvas scale of each photo; offset1: the
    x offset of the second photo (a gap of ``gap`` pixels separates them).
    """

    image: np.ndarray
    scale0: float
    scale1: float
    offset1: float


def side_by_side(photo0: np.ndarray, photo1: np.ndarray, max_height: int = 800, gap: int = 10) -> Canvas:
    """Both photos at the same height (at most ``max_height``), left to right, on a white background."""
    h = min(max_height, max(photo0.shape[0], photo1.shape[0]))
    parts, scales = [], []
    for p in (photo0, photo1):
        s = h / p.shape[0]
        size = (max(1, round(p.shape[1] * s)), h)
        parts.append(np.asarray(Image.fromarray(p).resize(size, Image.Resampling.BILINEAR)))
        scales.append(s)
    w0, w1 = parts[0].shape[1], parts[1].shape[1]
    canvas = np.full((h, w0 + gap + w1, 3), 255, np.uint8)
    canvas[:, :w0] = parts[0]
    canvas[:, w0 + gap :] = parts[1]
    return Canvas(image=canvas, scale0=scales[0], scale1=scales[1], offset1=float(w0 + gap))


def match_lines(canvas: Canvas, pair: PairMatches) -> tuple[np.ndarray, np.ndarray]:
    """Canvas coordinates of the match lines: inliers (K, 2, 2) and rejected (R, 2, 2), each [[x0, y0], [x1, y1]]
    with the PIL convention (pixel corner origin)."""
    p0 = to_display(pair.keypoints0[pair.matches[:, 0]], canvas.scale0)
    p1 = to_display(pair.keypoints1[pair.matches[:, 1]], canvas.scale1)
    p1[:, 0] += canvas.offset1
    lines = np.stack([p0, p1], axis=1) if len(pair.matches) else np.zeros((0, 2, 2))
    extra = np.zeros((0, 2, 2))
    if len(pair.inliers_only):
        e0 = to_display(pair.keypoints0[pair.inliers_only[:, 0]], canvas.scale0)
        e1 = to_display(pair.keypoints1[pair.inliers_only[:, 1]], canvas.scale1)
        e1[:, 0] += canvas.offset1
        extra = np.stack([e0, e1], axis=1)
    return np.concatenate([lines[pair.inlier], extra]), lines[~pair.inlier]


def draw_matches(
    photo0: np.ndarray,
    photo1: np.ndarray,
    pair: PairMatches,
    max_height: int = 800,
    inliers: bool = True,
    rejected: bool = True,
    max_lines: int = 2000,
) -> np.ndarray:
    """Two photos side by side with match lines: verified inliers green, rejected matches red.

    At most ``max_lines`` of each kind are drawn (an even sample), so a huge pair stays readable.
    Returns (H, W, 3) uint8.
    """
    canvas = side_by_side(photo0, photo1, max_height)
    good, bad = match_lines(canvas, pair)
    pil = Image.fromarray(canvas.image)
    draw = ImageDraw.Draw(pil)
    width = max(1, round(canvas.image.shape[0] / 600))
    kinds = [(bad, REJECTED_RGB, rejected), (good, INLIER_RGB, inliers)]  # inliers on top
    for lines, colour, show in kinds:
        if not show or not len(lines):
            continue
        if len(lines) > max_lines:
            lines = lines[np.linspace(0, len(lines) - 1, max_lines).astype(int)]
        for (x0, y0), (x1, y1) in lines:
            draw.line((x0, y0, x1, y1), fill=colour, width=width)
    return np.asarray(pil)
