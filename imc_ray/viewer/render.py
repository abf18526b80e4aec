"""PNG pictures of a run that a person can open without the app (``imc-ray render OUTPUT``, ``run --pictures``).

Per scene, under ``DEST/<dataset>/<scene>/`` (``DEST`` defaults to ``OUTPUT/pictures``):

  * ``overview.png``  the reconstruction seen from above and from the side (points and camera centres) with
    registered / total images, points and reprojection error; or a note saying why the scene has no model;
  * ``best-<i>.png``  the ``top`` pairs with the most verified inliers;
  * ``worst-<i>.png`` the ``top`` matched pairs with the fewest verified inliers;
    both as the two photos side by side with verified inlier matches in green and rejected matches in red.

Uses matplotlib's Agg canvas directly (no pyplot state, no display). This is the viewer's only writer,
and it writes only below ``dest``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from imc_ray.formats import atomic_path
from imc_ray.report import RunReport
from imc_ray.viewer import data
from imc_ray.viewer.draw import INLIER_RGB, REJECTED_RGB, match_lines, placeholder, side_by_side

logger = logging.getLogger(__name__)

DEFAULT_DIR = "pictures"
"""Default destination folder, inside OUTPUT."""

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _rgb(c: tuple[int, int, int]) -> tuple[float, float, float]:
    return (c[0] / 255.0, c[1] / 255.0, c[2] / 255.0)


def _safe_name(text: str) -> str:
    """A file or folder name made of safe characters only (never empty, never '.' or '..')."""
    name = _SAFE.sub("_", text).strip("._") or "_"
    return name[:100]


def _save(fig: Figure, path: Path, dpi: int = 100) -> Path:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, facecolor="white")
    return path


def _photo(report: RunReport, dataset: str, scene: str, name: str, size: tuple[int, int]) -> np.ndarray:
    """The photo, or a grey stand-in of its size when the input images are gone."""
    try:
        return data.load_photo(report, dataset, scene, name)
    except data.ViewerError as exc:
        logger.warning("%s", exc)
        return placeholder(size)


def pair_figure(
    report: RunReport,
    output: Path,
    dataset: str,
    scene: str,
    pair: data.PairInfo,
    title: str,
    max_lines: int = 500,
) -> Figure:
    """A figure of one pair: photos side by side, inlier lines green, rejected lines red (at most ``max_lines``)."""
    pm = data.load_pair(output, dataset, scene, pair.name0, pair.name1)
    feats = {n: data.load_keypoints(output, dataset, scene, n) for n in (pair.name0, pair.name1)}
    p0 = _photo(report, dataset, scene, pair.name0, feats[pair.name0].image_size)
    p1 = _photo(report, dataset, scene, pair.name1, feats[pair.name1].image_size)
    canvas = side_by_side(p0, p1, max_height=700)
    h, w = canvas.image.shape[:2]
    dpi = 100
    fig = Figure(figsize=(w / dpi, h / dpi + 0.8), dpi=dpi)
    ax = fig.add_axes((0.0, 0.0, 1.0, h / (h + 0.8 * dpi)))
    ax.imshow(canvas.image, extent=(0, w, h, 0), interpolation="antialiased")
    good, bad = match_lines(canvas, pm)
    shown = ""
    if len(good) + len(bad) > max_lines:  # an even sample keeps a dense pair readable
        keep = max_lines / (len(good) + len(bad))
        good = good[np.linspace(0, len(good) - 1, max(1, round(len(good) * keep))).astype(int)] if len(good) else good
        bad = bad[np.linspace(0, len(bad) - 1, max(1, round(len(bad) * keep))).astype(int)] if len(bad) else bad
        shown = f"; {len(good) + len(bad)} lines shown"
    lw = max(0.6, h / 900)
    if len(bad):
        ax.add_collection(LineCollection(list(bad), colors=[_rgb(REJECTED_RGB)], linewidths=lw, alpha=0.6))
    if len(good):
        ax.add_collection(LineCollection(list(good), colors=[_rgb(INLIER_RGB)], linewidths=lw, alpha=0.8))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_axis_off()
    n = len(pm.matches)
    share = f" ({100.0 * pm.num_inliers / n:.0f}%)" if n else ""
    counts = f"{n} matches, {pm.num_inliers} verified inliers{share}" if pair.checked else f"{n} matches, not verified"
    fig.text(
        0.01,
        1 - 0.35 / (h / dpi + 0.8),
        f"{title}  {dataset}/{scene}:  {pair.name0}  -  {pair.name1}\n{counts}{shown}",
        fontsize=11,
        va="center",
    )
    fig.legend(
        handles=[
            Line2D([], [], color=_rgb(INLIER_RGB), label="verified inlier"),
            Line2D([], [], color=_rgb(REJECTED_RGB), label="rejected"),
        ],
        loc="upper right",
        fontsize=9,
        frameon=False,
        ncols=2,
    )
    return fig


def _view_axes(model: data.Model, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two horizontal axes and the up axis of a model.

    Up is the mean of the cameras' up directions (image y points down), else the points' least-variance
    axis; the horizontal axes are the principal axes of the points (or cameras) in the plane orthogonal to it.
    """
    stack = pts if len(pts) >= 3 else np.stack([c.centre for c in model.cameras]) if model.cameras else pts
    up = data.up_direction(model)
    if len(stack) >= 2:
        flat = (stack - stack.mean(axis=0)) - np.outer((stack - stack.mean(axis=0)) @ up, up)
        _, _, vt = np.linalg.svd(flat, full_matrices=False)
        a = vt[0] - (vt[0] @ up) * up
    else:
        a = np.cross(up, [1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.cross(up, [0.0, 1.0, 0.0])
    a = a / np.linalg.norm(a)
    b = np.cross(up, a)
    return a, b, up


def overview_figure(output: Path, summary: data.SceneSummary) -> Figure:
    """Top-down and side views of the scene's largest model (points coloured, cameras red with view
    directions), or a text panel saying why there is none."""
    dataset, scene = summary.dataset, summary.scene
    model = data.load_model(output, dataset, scene, 0) if data.list_models(output, dataset, scene) else None
    source = "largest model (sparse/0)"
    if model is None:
        model = data.model_from_poses(output, dataset, scene)  # e.g. a two-view fallback: cameras only
        source = "no sparse model: cameras posed by scene.json"
    fig = Figure(figsize=(12, 6.2), dpi=100)
    head = f"{dataset}/{scene}: {summary.num_registered} / {summary.num_images} images registered"
    if model is None or not model.cameras:
        fig.text(0.5, 0.6, head, ha="center", fontsize=14)
        why = summary.error or summary.note or "no model"
        fig.text(0.5, 0.45, why, ha="center", fontsize=11, wrap=True, color="darkred")
        return fig
    keep = data.inlier_point_mask(model.points)
    pts, cols = model.points[keep], model.colors[keep]
    a, b, up = _view_axes(model, pts)
    centres = np.stack([c.centre for c in model.cameras])
    looks = np.stack([c.rotation[2] for c in model.cameras])  # camera z axis in world coordinates
    arrow = data.scene_scale(model)
    detail = f"{source}, {len(model.points)} points"
    if len(model.errors):
        detail += f", mean reprojection error {float(np.mean(model.errors)):.2f} px"
    if len(summary.model_sizes) > 1:
        detail += "; model sizes " + ", ".join(map(str, summary.model_sizes))
    fig.suptitle(f"{head}\n{detail}", fontsize=12)
    for i, (h_axis, v_axis, label) in enumerate(((a, b, "top-down"), (a, up, "side"))):
        ax = fig.add_subplot(1, 2, i + 1)
        if len(pts):
            size = float(np.clip(4000.0 / len(pts), 0.5, 6.0))
            ax.scatter(pts @ h_axis, pts @ v_axis, s=size, c=cols / 255.0, linewidths=0, rasterized=True)
        cx, cy = centres @ h_axis, centres @ v_axis
        ax.scatter(cx, cy, s=30, c="red", marker="^", label="camera centre", zorder=3)
        ends = centres + looks * arrow
        segs = np.stack([np.stack([cx, cy], 1), np.stack([ends @ h_axis, ends @ v_axis], 1)], axis=1)
        ax.add_collection(LineCollection(list(segs), colors="red", linewidths=1.0, zorder=3))
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_title(f"{label} ({len(model.cameras)} cameras)")
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        if i == 0:
            ax.legend(loc="best", fontsize=8)
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.07, top=0.88, wspace=0.15)
    return fig


def best_and_worst(pairs: list[data.PairInfo], top: int) -> tuple[list[data.PairInfo], list[data.PairInfo]]:
    """The ``top`` pairs with the most verified inliers and the ``top`` others with the fewest (no pair twice)."""
    ranked = sorted(pairs, key=lambda p: (-p.num_inliers, -p.num_matches, p.name0, p.name1))
    best = ranked[:top]
    rest = ranked[len(best) :]
    worst = list(reversed(rest))[:top]
    return best, worst


def render(output: Path, dest: Path | None = None, top: int = 3) -> list[Path]:
    """Write the PNGs of a run (layout in the module docstring); return their paths.

    Args:
        output: the OUTPUT folder of ``imc-ray run``; only read.
        dest: where to write (default ``OUTPUT/pictures``); created when missing.
        top: how many best and how many worst pairs per scene.

    Raises:
        ViewerError: ``output`` is not a run's output folder.
    """
    out = data.check_output(output)
    report = data.load_report(out)
    dest = (out / DEFAULT_DIR) if dest is None else Path(dest)
    dest = dest.expanduser().resolve()
    written: list[Path] = []
    for summary in data.list_scenes(report):
        folder = data.resolve_inside(dest, _safe_name(summary.dataset), _safe_name(summary.scene))
        try:
            fig = overview_figure(out, summary)
            written.append(_save(fig, folder / "overview.png"))
            pairs = data.list_pairs(out, summary.dataset, summary.scene)
            best, worst = best_and_worst(pairs, top)
            for kind, chosen in (("best", best), ("worst", worst)):
                for i, pair in enumerate(chosen, 1):
                    fig = pair_figure(report, out, summary.dataset, summary.scene, pair, f"{kind} #{i}")
                    written.append(_save(fig, folder / f"{kind}-{i}.png"))
        except (data.ViewerError, OSError, KeyError) as exc:
            logger.warning("scene %s: pictures incomplete: %s", summary.key, exc)
    logger.info("wrote %d picture(s) to %s", len(written), dest)
    return written
