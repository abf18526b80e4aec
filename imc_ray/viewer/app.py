"""The Streamlit app over one run's OUTPUT folder: ``streamlit run app.py -- OUTPUT`` (see ``viewer.launch``).

OUTPUT comes from the environment variable ``IMC_RAY_VIEW_OUTPUT`` when set, else from the first argument
after ``--``. Views (sidebar): the run overview, a scene in 3D, one image with its keypoints, and the pair
browser. Everything is read through :mod:`imc_ray.viewer.data`, which never writes.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from imc_ray.report import RunReport
from imc_ray.viewer import INPUT_ENV, OUTPUT_ENV, data, draw

logger = logging.getLogger(__name__)

VIEWS = ("Overview", "Scene 3D", "Images", "Pairs")
MAX_POINTS = 100_000
SCORE_COLUMNS = {
    "registration_rate": "reg rate",
    "imc2023_maa": "mAA 2023",
    "imc2024_maa": "mAA 2024",
    "auc@1": "AUC@1",
    "auc@5": "AUC@5",
    "auc@10": "AUC@10",
}


def output_folder() -> Path | None:
    """OUTPUT from ``$IMC_RAY_VIEW_OUTPUT``, else the first script argument (``streamlit run app.py -- OUTPUT``)."""
    value = os.environ.get(OUTPUT_ENV) or (sys.argv[1] if len(sys.argv) > 1 else "")
    return Path(value) if value else None


def input_override() -> Path | None:
    """The run's INPUT folder from ``$IMC_RAY_VIEW_INPUT`` (when the photos moved), else None."""
    value = os.environ.get(INPUT_ENV)
    return Path(value) if value else None


# ----------------------------------------------------------------------------- cached loaders


def _stamp(output: str, name: str = "run.json") -> float:
    """The mtime of ``OUTPUT/name`` (0 when absent): caches are refreshed when the file changes."""
    try:
        return (Path(output) / name).stat().st_mtime
    except OSError:
        return 0.0


@st.cache_data(show_spinner=False, max_entries=8)
def cached_report(output: str, stamp: float) -> RunReport:
    """``run.json``."""
    return data.load_report(Path(output))


@st.cache_data(show_spinner=False, max_entries=8)
def cached_evaluation(output: str, stamp: float) -> dict[str, Any] | None:
    """``evaluation.json`` or None."""
    return data.load_evaluation(Path(output))


@st.cache_data(show_spinner=False, max_entries=16)
def cached_status(output: str, stamp: float, dataset: str, scene: str) -> dict[str, bool]:
    """Every image of a scene -> registered."""
    return data.image_status(Path(output), cached_report(output, stamp), dataset, scene)


@st.cache_data(show_spinner="Reading the model...", max_entries=8)
def cached_model(output: str, stamp: float, dataset: str, scene: str, k: int) -> data.Model | None:
    """One sparse model."""
    return data.load_model(Path(output), dataset, scene, k)


@st.cache_data(show_spinner=False, max_entries=8)
def cached_pose_model(output: str, stamp: float, dataset: str, scene: str) -> data.Model | None:
    """Cameras posed by ``scene.json`` for a scene without a sparse model."""
    return data.model_from_poses(Path(output), dataset, scene)


@st.cache_data(show_spinner=False, max_entries=16)
def cached_pairs(output: str, stamp: float, dataset: str, scene: str) -> list[data.PairInfo]:
    """Matched pairs, most matches first."""
    return data.list_pairs(Path(output), dataset, scene)


@st.cache_data(show_spinner=False, max_entries=16)
def cached_image_names(output: str, stamp: float, dataset: str, scene: str) -> list[str]:
    """Images with features."""
    return data.scene_image_names(Path(output), dataset, scene)


@st.cache_data(show_spinner=False, max_entries=32)
def cached_photo(output: str, stamp: float, dataset: str, scene: str, name: str, override: str) -> np.ndarray:
    """A decoded photo (raises ViewerError when it cannot be shown)."""
    report = cached_report(output, stamp)
    return data.load_photo(report, dataset, scene, name, Path(override) if override else None)


# ----------------------------------------------------------------------------- views


def _run_metrics(report: RunReport, scenes: list[data.SceneSummary], num_errors: int) -> None:
    """The four numbers on top of the overview: scenes, registered images, errors, total time."""
    total = sum(s.num_images for s in scenes)
    reg = sum(s.num_registered for s in scenes)
    cols = st.columns(4)
    cols[0].metric("Scenes", len(scenes))
    cols[1].metric("Images registered", f"{reg} / {total}")
    cols[2].metric("Errors", num_errors)
    cols[3].metric("Total time", f"{report.seconds_total:.1f} s")


def _scene_row(s: data.SceneSummary, evaluation: dict[str, Any] | None) -> dict[str, Any]:
    """One row of the scenes table, with the scene's scores in percent when the run was evaluated."""
    row: dict[str, Any] = {
        "scene": s.key,
        "images": s.num_images,
        "registered": s.num_registered,
        "pairs": s.num_pairs,
        "verified pairs": s.num_verified_pairs,
        "models": ", ".join(map(str, s.model_sizes)),
        "pairs by": s.pairs_method,
        "note": s.error or s.note,
    }
    scores = data.scene_scores(evaluation, s.dataset, s.scene)
    if scores:
        row.update({label: round(100.0 * float(scores.get(k, 0.0)), 2) for k, label in SCORE_COLUMNS.items()})
    return row


def _overall_scores(evaluation: dict[str, Any] | None) -> None:
    """The overall scores of ``evaluation.json``, or how to get them."""
    if evaluation:
        overall = evaluation.get("overall", {})
        st.caption("Scores from evaluation.json, in percent.")
        ocols = st.columns(len(SCORE_COLUMNS))
        for col, (k, label) in zip(ocols, SCORE_COLUMNS.items(), strict=True):
            col.metric(f"overall {label}", f"{100.0 * float(overall.get(k, 0.0)):.2f}")
    else:
        st.caption(
            "No scores: this run was not evaluated. Save `imc-ray evaluate OUTPUT/submission.csv --truth ROOT --json` "
            f"as `{data.EVALUATION_FILE}` in the output folder to see them here."
        )


def _stage_timings(report: RunReport) -> None:
    """Seconds per stage as a horizontal bar chart."""
    st.subheader("Stage timings")
    seconds = data.stage_seconds(report)
    if not seconds:
        st.info("run.json has no stage timings.")
        return
    values = list(seconds.values())
    fig = go.Figure(go.Bar(x=values, y=list(seconds), orientation="h", text=[f"{v:.1f} s" for v in values]))
    fig.update_layout(
        height=80 + 40 * len(seconds),
        margin={"l": 10, "r": 10, "t": 10, "b": 10},
        xaxis_title="seconds",
        yaxis={"autorange": "reversed"},
    )
    st.plotly_chart(fig, key="timings")


def show_overview(output: Path, report: RunReport, scenes: list[data.SceneSummary], stamp: float) -> None:
    """Scenes with registered / total images and scores, stage timings, per-image errors."""
    st.header("Run overview")
    evaluation = cached_evaluation(str(output), _stamp(str(output), data.EVALUATION_FILE))
    errors = data.image_errors(report)
    _run_metrics(report, scenes, len(errors))
    st.subheader("Scenes")
    st.dataframe(pd.DataFrame([_scene_row(s, evaluation) for s in scenes]), hide_index=True, width="stretch")
    _overall_scores(evaluation)
    _stage_timings(report)
    st.subheader("Errors")
    if errors:
        st.dataframe(pd.DataFrame(errors), hide_index=True, width="stretch")
    else:
        st.success("No image or pair errors.")
    with st.expander("Run settings and versions"):
        st.json({"input": report.input, "config": report.config, "versions": report.versions})


def _xyz(points: np.ndarray) -> dict[str, np.ndarray]:
    """``x``, ``y``, ``z`` of (N, 3) points, as plotly's keyword arguments."""
    return {"x": points[:, 0], "y": points[:, 1], "z": points[:, 2]}


def _shown_points(model: data.Model, max_points: int) -> np.ndarray:
    """Indices of the points drawn: no far outliers, at most ``max_points`` (a fixed random subset)."""
    keep = np.nonzero(data.inlier_point_mask(model.points))[0]
    if len(keep) > max_points:
        keep = np.sort(np.random.default_rng(0).choice(keep, max_points, replace=False))
    return keep


def _points_trace(model: data.Model, keep: np.ndarray, point_size: float) -> go.Scatter3d:
    """The sparse points ``keep`` in their colours."""
    return go.Scatter3d(
        **_xyz(model.points[keep]),
        mode="markers",
        marker={"size": point_size, "color": [f"rgb({r},{g},{b})" for r, g, b in model.colors[keep]]},
        name=f"points ({len(model.points)})",
        hoverinfo="skip",
    )


def _frusta_trace(model: data.Model) -> go.Scatter3d:
    """The camera frusta as red line segments (NaN rows break the line between segments)."""
    segs = data.frustum_segments(model)
    xyz = np.full((len(segs) * 3, 3), np.nan)
    xyz[0::3], xyz[1::3] = segs[:, 0], segs[:, 1]
    return go.Scatter3d(**_xyz(xyz), mode="lines", line={"color": "red", "width": 3}, name="cameras", hoverinfo="skip")


def _centres_trace(model: data.Model) -> go.Scatter3d:
    """The camera centres as red dots; hovering shows the image name."""
    return go.Scatter3d(
        **_xyz(np.stack([cam.centre for cam in model.cameras])),
        mode="markers",
        marker={"size": 3, "color": "red"},
        text=[cam.name for cam in model.cameras],
        hoverinfo="text",
        name="camera centres",
    )


def _view_from_cameras(model: data.Model, pts: np.ndarray) -> dict[str, dict[str, float]]:
    """Plotly's scene camera looking from the cameras' side at the points (else the centres), upright."""
    up = data.up_direction(model)
    centres = np.stack([cam.centre for cam in model.cameras])
    target = np.median(pts, axis=0) if len(pts) else centres.mean(axis=0)
    side = centres.mean(axis=0) - target
    side = side / np.linalg.norm(side) if np.linalg.norm(side) > 1e-9 else up
    eye = 2.2 * side + 0.9 * up
    return {"up": dict(zip("xyz", map(float, up), strict=True)), "eye": dict(zip("xyz", map(float, eye), strict=True))}


def model_figure(model: data.Model, point_size: float, frusta: bool, max_points: int = MAX_POINTS) -> go.Figure:
    """Plotly 3D figure: coloured sparse points, camera frusta as line segments, camera centres (hover: name)."""
    keep = _shown_points(model, max_points)
    traces: list[Any] = [_points_trace(model, keep, point_size)]
    if frusta and model.cameras:
        traces.append(_frusta_trace(model))
    if model.cameras:
        traces.append(_centres_trace(model))
    fig = go.Figure(traces)
    scene: dict[str, Any] = {"aspectmode": "data", "xaxis_title": "x", "yaxis_title": "y", "zaxis_title": "z"}
    if model.cameras:
        scene["camera"] = _view_from_cameras(model, model.points[keep])
    fig.update_layout(
        height=650,
        margin={"l": 0, "r": 0, "t": 0, "b": 0},
        scene=scene,
        legend={"x": 0.01, "y": 0.99},
    )
    return fig


def show_scene(output: Path, scene: data.SceneSummary, stamp: float) -> None:
    """The scene's sparse model in 3D and the images it did not register."""
    st.header(f"Scene {scene.key}")
    models = data.list_models(output, scene.dataset, scene.scene)
    cols = st.columns(3)
    cols[0].metric("Registered", f"{scene.num_registered} / {scene.num_images}")
    cols[1].metric("Models", len(models))
    cols[2].metric(
        "Verified pairs",
        f"{scene.num_verified_pairs} / {scene.num_pairs}",
        help="pairs that passed geometric verification / pairs with at least matching.min_matches matches",
    )
    if scene.error or scene.note:
        st.warning(scene.error or scene.note)
    if not models:
        model = cached_pose_model(str(output), stamp, scene.dataset, scene.scene)
        if model is None:
            st.info("This scene has no sparse model.")
        else:
            st.info(f"No sparse model: the {len(model.cameras)} camera(s) below are posed by scene.json (no points).")
            st.plotly_chart(model_figure(model, 1.5, True), key="model3d")
    else:
        c1, c2, c3 = st.columns(3)
        sizes = scene.model_sizes
        k = c1.selectbox(
            "Model",
            models,
            format_func=lambda i: f"sparse/{i}" + (f" ({sizes[i]} images)" if i < len(sizes) else ""),
            key="model",
        )
        size = c2.slider("Point size", 0.5, 5.0, 1.5, 0.5, key="point_size")
        frusta = c3.checkbox("Camera frusta", value=True, key="frusta")
        model = cached_model(str(output), stamp, scene.dataset, scene.scene, int(k))
        if model is None:
            st.info("This model cannot be read.")
        else:
            err = float(np.mean(model.errors)) if len(model.errors) else float("nan")
            st.caption(
                f"{len(model.points)} points, {len(model.cameras)} cameras, mean reprojection error {err:.2f} px. "
                "Drag to rotate, scroll to zoom; far outlier points are hidden."
            )
            st.plotly_chart(model_figure(model, size, frusta), key="model3d")
    st.subheader("Unregistered images")
    status = cached_status(str(output), stamp, scene.dataset, scene.scene)
    missing = [n for n, ok in status.items() if not ok]
    if missing:
        st.dataframe(pd.DataFrame({"image": missing}), hide_index=True, width="stretch")
    else:
        st.success("Every image is registered.")


def _photo_or_none(output: Path, stamp: float, scene: data.SceneSummary, name: str) -> np.ndarray | None:
    override = input_override()
    try:
        return cached_photo(str(output), stamp, scene.dataset, scene.scene, name, str(override) if override else "")
    except data.ViewerError as exc:
        st.warning(f"Photo not shown: {exc}")
        return None


def show_images(output: Path, scene: data.SceneSummary, stamp: float) -> None:
    """One image of the scene with its keypoints."""
    st.header(f"Images of {scene.key}")
    names = cached_image_names(str(output), stamp, scene.dataset, scene.scene)
    if not names:
        st.info("This scene has no features.")
        return
    status = cached_status(str(output), stamp, scene.dataset, scene.scene)
    name = st.selectbox(
        "Image",
        names,
        format_func=lambda n: n + ("" if status.get(n, True) else "  (unregistered)"),
        key="image",
    )
    feats = data.load_keypoints(output, scene.dataset, scene.scene, name)
    w, h = feats.image_size
    registered = status.get(name)
    state = "registered" if registered else "not registered" if registered is not None else ""
    st.caption(f"{name}: {w} x {h} px, {len(feats.keypoints)} keypoints; {state}")
    photo = _photo_or_none(output, stamp, scene, name)
    if photo is None:
        photo = draw.placeholder(feats.image_size)
    st.image(draw.draw_keypoints(photo, feats.keypoints), caption=f"{name} with its keypoints")


def show_pairs(output: Path, scene: data.SceneSummary, stamp: float) -> None:
    """Pair browser: pairs by match count; the two photos with inlier (green) and rejected (red) matches."""
    st.header(f"Pairs of {scene.key}")
    pairs = cached_pairs(str(output), stamp, scene.dataset, scene.scene)
    if not pairs:
        st.info("This scene has no matched pairs.")
        return
    labels = {i: p.label for i, p in enumerate(pairs)}
    i = st.selectbox("Pair (most matches first)", list(labels), format_func=labels.__getitem__, key="pair")
    pair = pairs[int(i)]
    c1, c2, c3 = st.columns(3)
    show_in = c1.checkbox("Verified inliers (green)", value=True, key="show_inliers")
    show_out = c2.checkbox("Rejected matches (red)", value=True, key="show_rejected")
    max_lines = c3.number_input("Most lines of each kind", 10, 10_000, 300, 50, key="max_lines")
    pm = data.load_pair(output, scene.dataset, scene.scene, pair.name0, pair.name1)
    photos = []
    for name in (pair.name0, pair.name1):
        photo = _photo_or_none(output, stamp, scene, name)
        if photo is None:
            photo = draw.placeholder(data.load_keypoints(output, scene.dataset, scene.scene, name).image_size)
        photos.append(photo)
    n = len(pm.matches)
    if pair.checked:
        st.caption(f"{n} matches: {pm.num_inliers} verified inliers, {n - int(pm.inlier.sum())} rejected.")
    else:
        st.caption(
            f"{n} matches, not verified: pairs with fewer than matching.min_matches matches skip geometric "
            "verification (all drawn as rejected)."
        )
    st.image(
        draw.draw_matches(photos[0], photos[1], pm, inliers=show_in, rejected=show_out, max_lines=int(max_lines)),
        caption=f"{pair.name0} (left) and {pair.name1} (right)",
    )
    with st.expander("All pairs"):
        st.dataframe(
            pd.DataFrame(
                [
                    {"image 0": p.name0, "image 1": p.name1, "matches": p.num_matches, "inliers": p.num_inliers}
                    for p in pairs
                ]
            ),
            hide_index=True,
            width="stretch",
        )


def main() -> None:
    """The app's entry point (Streamlit runs this script top to bottom on every interaction)."""
    st.set_page_config(page_title="imc-ray viewer", layout="wide")
    output = output_folder()
    if output is None:
        st.error(f"No output folder: run `imc-ray view OUTPUT` (or set ${OUTPUT_ENV}).")
        return
    try:
        output = data.check_output(output)
        stamp = _stamp(str(output))
        report = cached_report(str(output), stamp)
    except data.ViewerError as exc:
        st.error(str(exc))
        return
    scenes = data.list_scenes(report)
    st.sidebar.title("imc-ray viewer")
    st.sidebar.caption(str(output))
    view = st.sidebar.radio("View", VIEWS, key="view")
    scene = None
    if scenes:
        by_key = {s.key: s for s in scenes}
        key = st.sidebar.selectbox(
            "Scene",
            list(by_key),
            format_func=lambda k: f"{k} ({by_key[k].num_registered}/{by_key[k].num_images})",
            key="scene",
        )
        scene = by_key[key]
    if view == "Overview":
        show_overview(output, report, scenes, stamp)
    elif scene is None:
        st.info("The run has no scenes.")
    elif view == "Scene 3D":
        show_scene(output, scene, stamp)
    elif view == "Images":
        show_images(output, scene, stamp)
    else:
        show_pairs(output, scene, stamp)


main()
