"""Read-only loaders over the OUTPUT folder of ``imc-ray run`` (layout in :mod:`imc_ray.formats`).

Nothing here writes: HDF5 files are read through :mod:`imc_ray.formats` (read-only, without locks), COLMAP's
``database.db`` is read with ``pycolmap.Database`` from a private temporary copy (pycolmap opens a database
read-write and rewrites its header, so the run's own file is only copied; this also works on read-only
media), and models are read with ``pycolmap.Reconstruction``.

Every file name that comes from the run's own files (scene keys of ``run.json``, image names) is
resolved and checked to lie inside OUTPUT, or, for photos, inside the scene's input images folder:
a name never leads out of them (``..``, absolute names and symlinks pointing outside are refused with
:class:`ViewerError`).

Nothing here imports Streamlit, so :mod:`imc_ray.viewer.render` and the tests use it on a lean install.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import logging
import math
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from imc_ray import formats
from imc_ray.config import ImagesConfig
from imc_ray.formats import (
    Features,
    FormatError,
    SceneLayout,
    feature_names_h5,
    match_counts_h5,
    read_features_h5,
    read_matches_h5,
)
from imc_ray.report import RunReport, read_report

if TYPE_CHECKING:
    import pycolmap

logger = logging.getLogger(__name__)

EVALUATION_FILE = "evaluation.json"
"""Optional: the JSON of ``imc-ray evaluate --json`` saved into OUTPUT; the viewer shows its scores."""


class ViewerError(ValueError):
    """The output folder (or one file or name in it) cannot be shown."""


# ----------------------------------------------------------------------------- paths


def resolve_inside(base: Path, *parts: str) -> Path:
    """``base/parts...`` resolved, refused unless it lies inside the resolved ``base``.

    Raises:
        ViewerError: a part is absolute, climbs out with ``..``, or a symlink leads outside ``base``.
    """
    root = Path(base).resolve()
    for part in parts:
        if not part or Path(part).is_absolute() or "\\" in part or "\0" in part:
            raise ViewerError(f"refusing the name {part!r}: not a plain relative name")
    path = root.joinpath(*parts).resolve()
    if path != root and root not in path.parents:
        raise ViewerError(f"refusing {'/'.join(parts)!r}: it leads outside {root}")
    return path


def check_output(output: Path) -> Path:
    """The resolved OUTPUT folder of a run (a folder holding ``run.json``).

    Raises:
        ViewerError: not a folder, or no ``run.json`` in it.
    """
    out = Path(output).expanduser().resolve()
    if not out.is_dir():
        raise ViewerError(f"{output}: not a folder; pass the OUTPUT folder of 'imc-ray run INPUT OUTPUT'")
    if not _run_file(out, "report").is_file():
        raise ViewerError(f"{output}: no run.json in it; pass the OUTPUT folder of 'imc-ray run INPUT OUTPUT'")
    return out


def _inside(base: Path, path: Path) -> Path:
    """``path`` (``base`` joined with relative parts) resolved and checked by :func:`resolve_inside`."""
    return resolve_inside(base, *path.relative_to(base).parts)


def _scene_folder(output: Path, dataset: str, scene: str) -> Path:
    """:func:`imc_ray.formats.scene_dir` of OUTPUT, resolved and checked to lie inside OUTPUT.

    Raises:
        ViewerError: the names cannot be a scene folder, or it leads outside OUTPUT (a symlink).
    """
    try:
        path = formats.scene_dir(Path(output), dataset, scene)
    except ValueError as exc:
        raise ViewerError(str(exc)) from None
    return _inside(Path(output), path)


_RunFile = Literal["report", "evaluation", "submission"]

# Where each file of OUTPUT itself lies; a scene's files come from formats.SceneLayout.
_RUN_FILES: dict[_RunFile, str] = {"report": "run.json", "evaluation": EVALUATION_FILE, "submission": "submission.csv"}


def _run_file(out: Path, kind: _RunFile) -> Path:
    """A file of OUTPUT itself: ``run.json``, ``evaluation.json`` or ``submission.csv``."""
    return out / _RUN_FILES[kind]


# ----------------------------------------------------------------------------- run level


def load_report(output: Path) -> RunReport:
    """``run.json``, through the one reader (:func:`imc_ray.report.read_report`).

    Raises:
        ViewerError: missing, not JSON, or not a run report.
    """
    path = _run_file(check_output(output), "report")
    try:
        return read_report(path)
    except FormatError as exc:
        raise ViewerError(f"{exc} (is the run still writing it?)") from None


@dataclass(frozen=True)
class SceneSummary:
    """One scene of a run, as ``run.json`` reports it."""

    dataset: str
    scene: str
    num_images: int
    num_registered: int
    num_pairs: int
    num_verified_pairs: int
    model_sizes: tuple[int, ...]
    pairs_method: str
    note: str
    error: str | None

    @property
    def key(self) -> str:
        """``dataset/scene``."""
        return f"{self.dataset}/{self.scene}"


def list_scenes(report: RunReport) -> list[SceneSummary]:
    """The scenes of ``run.json``'s ``scenes`` (keys ``dataset/scene``), in the report's order."""
    out = []
    for key, s in report.scenes.items():
        dataset, _, scene = key.partition("/")
        r = s.result
        out.append(
            SceneSummary(
                dataset=dataset,
                scene=scene,
                num_images=s.num_images,
                num_registered=s.num_registered,
                num_pairs=r.num_pairs if r else 0,
                num_verified_pairs=r.num_verified_pairs if r else 0,
                model_sizes=tuple(int(v) for v in r.model_sizes) if r else (),
                pairs_method=s.pairs_method,
                note=s.reason,
                error=s.error,
            )
        )
    return out


def stage_seconds(report: RunReport) -> dict[str, float]:
    """Seconds per pipeline stage (``run.json``'s ``stages``), in run order."""
    out = {}
    for name, st in report.stages.items():
        if isinstance(st, dict):
            value = st.get("seconds", st.get("seconds_after_matching"))
            if isinstance(value, int | float) and math.isfinite(value):
                out[str(name)] = float(value)
    return out


def image_errors(report: RunReport) -> list[dict[str, str]]:
    """Per-image (or per-pair) errors of the run: dataset, scene, what (image or pair) and error."""
    out = []
    for e in report.errors:
        what = e.get("image") or " / ".join(e.get("pair", [])) or ""
        out.append(
            {
                "dataset": str(e.get("dataset", "")),
                "scene": str(e.get("scene", "")),
                "what": str(what),
                "error": str(e.get("error", "")),
            }
        )
    return out


def load_evaluation(output: Path) -> dict[str, Any] | None:
    """Scores from ``OUTPUT/evaluation.json`` (``imc-ray evaluate --json``), or None when absent or unreadable."""
    path = _run_file(check_output(output), "evaluation")
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        logger.warning("%s: not readable (%s); scores are not shown", path, exc)
        return None
    return result if isinstance(result, dict) and "scenes" in result else None


def scene_scores(evaluation: dict[str, Any] | None, dataset: str, scene: str) -> dict[str, Any] | None:
    """The evaluation row of one scene, or None."""
    if not evaluation:
        return None
    for row in evaluation.get("scenes", []):
        if row.get("dataset") == dataset and row.get("scene") == scene:
            return dict(row)
    return None


def submission_images(output: Path) -> dict[tuple[str, str], dict[str, bool]]:
    """Every image of ``submission.csv`` per (dataset, scene): name -> registered (a finite pose)."""
    path = _run_file(check_output(output), "submission")
    out: dict[tuple[str, str], dict[str, bool]] = {}
    if not path.is_file():
        return out
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            rot = row.get("rotation_matrix", "nan")
            registered = "nan" not in rot.lower() and bool(rot.strip())
            out.setdefault((row["dataset"], row["scene"]), {})[row["image"]] = registered
    return out


def images_config(report: RunReport) -> ImagesConfig:
    """The run's image decoding settings (``config.images`` of ``run.json``), defaults where absent."""
    section = report.config.get("images", {})
    default = ImagesConfig()
    bg = section.get("background", default.background)
    return ImagesConfig(
        background=(int(bg[0]), int(bg[1]), int(bg[2])),
        max_pixels=int(section.get("max_pixels", default.max_pixels)),
        min_side=int(section.get("min_side", default.min_side)),
    )


# ----------------------------------------------------------------------------- scene level


def scene_image_names(output: Path, dataset: str, scene: str) -> list[str]:
    """Names of the images that have features (``features.h5``), sorted."""
    path = SceneLayout(_scene_folder(output, dataset, scene)).features_h5
    return feature_names_h5(path) if path.is_file() else []


def _scene_poses(sdir: Path) -> dict[str, Any] | None:
    """``scene.json``'s ``poses`` (image -> [R row-major, t]), None when the file is absent or unreadable."""
    try:
        poses = json.loads(SceneLayout(sdir).scene_json.read_text()).get("poses", {})
    except (OSError, json.JSONDecodeError):
        return None
    return poses if isinstance(poses, dict) else None


def registered_names(output: Path, dataset: str, scene: str) -> set[str]:
    """Images with a pose (from ``scene.json``), empty when the scene has none."""
    return set(_scene_poses(_scene_folder(output, dataset, scene)) or {})


def image_status(output: Path, report: RunReport, dataset: str, scene: str) -> dict[str, bool]:
    """Every image of a scene -> registered, sorted by name.

    The images are those with features (``features.h5``), those the run could not read (``run.json``'s
    errors) and the scene's rows of ``submission.csv``; registered are the images with a pose in
    ``scene.json`` or a finite pose in ``submission.csv``.
    """
    sub = submission_images(output).get((dataset, scene), {})
    names = set(scene_image_names(output, dataset, scene)) | set(sub)
    names |= {
        str(e["image"])
        for e in report.errors
        if e.get("image") and (e.get("dataset"), e.get("scene")) == (dataset, scene)
    }
    names.discard("")
    registered = registered_names(output, dataset, scene) | {n for n, ok in sub.items() if ok}
    return {n: n in registered for n in sorted(names)}


def unregistered_images(output: Path, report: RunReport, dataset: str, scene: str) -> list[str]:
    """Images of the scene without a pose (see :func:`image_status`), sorted."""
    return [n for n, ok in image_status(output, report, dataset, scene).items() if not ok]


def load_keypoints(output: Path, dataset: str, scene: str, name: str) -> Features:
    """Features of one image from ``features.h5`` (keypoints in original pixels, pixel-centre origin).

    Raises:
        ViewerError: no features file, or no such image in it.
    """
    path = SceneLayout(_scene_folder(output, dataset, scene)).features_h5
    if not path.is_file():
        raise ViewerError(f"{dataset}/{scene}: no features.h5")
    try:
        return read_features_h5(path, [name])[name]
    except KeyError:
        raise ViewerError(f"{dataset}/{scene}: no features for image {name!r}") from None


@dataclass(frozen=True)
class PairInfo:
    """One matched pair: LightGlue matches (``matches.h5``) and verified inliers (``database.db``)."""

    name0: str
    name1: str
    num_matches: int
    num_inliers: int
    checked: bool = True
    """False when the pair never reached geometric verification (fewer than ``matching.min_matches``)."""

    @property
    def label(self) -> str:
        """A one-line description for a list."""
        verdict = f"{self.num_inliers} inliers" if self.checked else "not verified"
        return f"{self.name0} - {self.name1}: {self.num_matches} matches, {verdict}"


@contextlib.contextmanager
def open_database(path: Path) -> Iterator[pycolmap.Database]:
    """COLMAP's ``database.db`` as a ``pycolmap.Database``, opened on a private temporary copy.

    pycolmap opens a database read-write (it rewrites the file header and keeps a journal beside it), so
    the run's file is only copied, never opened; the copy is deleted when the block ends.

    Raises:
        ViewerError: the file is missing or not a COLMAP database (pycolmap cannot open or read it).
    """
    import pycolmap

    if not path.is_file():
        raise ViewerError(f"{path}: no such database")
    with tempfile.TemporaryDirectory(prefix="imc-ray-view-") as tmp:
        copy = Path(tmp) / "database.db"
        shutil.copyfile(path, copy)
        try:
            db = pycolmap.Database.open(copy)
        except (RuntimeError, ValueError) as exc:
            raise ViewerError(f"{path}: not a COLMAP database ({exc})") from None
        try:
            yield db
        except RuntimeError as exc:  # pycolmap's error for a table it cannot read
            raise ViewerError(f"{path}: not a COLMAP database ({exc})") from None
        finally:
            db.close()


def _image_ids(db: pycolmap.Database) -> dict[str, int]:
    return {str(image.name): int(image.image_id) for image in db.read_all_images()}


def _inlier_counts(path: Path, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """Verified inliers of each pair that went through geometric verification (its raw matches are in
    ``database.db``): 0 when verification rejected it. Pairs not in the database are left out."""
    import pycolmap

    if not path.is_file():
        return {}
    out = {}
    with open_database(path) as db:
        ids = _image_ids(db)
        rows = dict(zip(*db.read_two_view_geometry_num_inliers(), strict=True))
        for a, b in pairs:
            if a in ids and b in ids:
                pid = pycolmap.image_pair_to_pair_id(ids[a], ids[b])
                if pid in rows or db.exists_matches(ids[a], ids[b]):
                    out[(a, b)] = int(rows.get(pid, 0))
    return out


def list_pairs(output: Path, dataset: str, scene: str) -> list[PairInfo]:
    """Matched pairs of a scene (the groups of ``matches.h5``), most matches first (ties: most inliers, names)."""
    sdir = _scene_folder(output, dataset, scene)
    if not SceneLayout(sdir).matches_h5.is_file():
        return []
    counts = match_counts_h5(SceneLayout(sdir).matches_h5, scene_image_names(output, dataset, scene))
    inliers = _inlier_counts(SceneLayout(sdir).database, list(counts))
    out = [PairInfo(a, b, n, inliers.get((a, b), 0), (a, b) in inliers) for (a, b), n in counts.items()]
    out.sort(key=lambda p: (-p.num_matches, -p.num_inliers, p.name0, p.name1))
    return out


@dataclass(frozen=True)
class PairMatches:
    """The matches of one pair with the verified ones marked.

    keypoints0, keypoints1: (N0, 2), (N1, 2) float32, original pixels, pixel-centre origin.
    matches: (M, 2) int32 indices into keypoints0 / keypoints1 (every LightGlue match).
    inlier: (M,) bool, True for the matches that geometric verification kept.
    inliers_only: (K, 2) int32 verified matches that are not among ``matches`` (normally empty).
    """

    name0: str
    name1: str
    keypoints0: np.ndarray
    keypoints1: np.ndarray
    matches: np.ndarray
    inlier: np.ndarray
    inliers_only: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int32))

    @property
    def num_inliers(self) -> int:
        """Number of verified matches."""
        return int(self.inlier.sum()) + len(self.inliers_only)


def read_inlier_matches(path: Path, name0: str, name1: str) -> np.ndarray:
    """Verified inlier matches of a pair from ``database.db``: (K, 2) int32 indices (image 0, image 1).

    pycolmap's ``read_two_view_geometry`` gives them in the order of the two images asked for. Empty when
    the pair was not verified.
    """
    with open_database(path) as db:
        ids = _image_ids(db)
        if name0 not in ids or name1 not in ids or not db.exists_two_view_geometry(ids[name0], ids[name1]):
            return np.zeros((0, 2), np.int32)
        inliers = np.asarray(db.read_two_view_geometry(ids[name0], ids[name1]).inlier_matches)
    return np.ascontiguousarray(inliers.reshape(-1, 2).astype(np.int32))


def _mark_inliers(matches: np.ndarray, inl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(M,) bool: which ``matches`` are among the verified ``inl``; and the verified ones not among ``matches``."""
    if not len(inl):
        return np.zeros(len(matches), bool), np.zeros((0, 2), np.int32)
    code = matches[:, 0].astype(np.int64) * (1 << 32) + matches[:, 1]
    inl_code = inl[:, 0].astype(np.int64) * (1 << 32) + inl[:, 1]
    return np.isin(code, inl_code), inl[~np.isin(inl_code, code)]


def load_pair(output: Path, dataset: str, scene: str, name0: str, name1: str) -> PairMatches:
    """Keypoints, matches and the verified-inlier mask of one pair.

    Raises:
        ViewerError: the pair has no matches in ``matches.h5``.
    """
    sdir = _scene_folder(output, dataset, scene)
    path = SceneLayout(sdir).matches_h5
    if not path.is_file():
        raise ViewerError(f"{dataset}/{scene}: no matches.h5")
    try:
        matches, _ = read_matches_h5(path, name0, name1)
    except KeyError:
        raise ViewerError(f"{dataset}/{scene}: no matches for {name0} / {name1}") from None
    feats = read_features_h5(SceneLayout(sdir).features_h5, [name0, name1])
    db = SceneLayout(sdir).database
    inl = read_inlier_matches(db, name0, name1) if db.is_file() else np.zeros((0, 2), np.int32)
    inlier, extra = _mark_inliers(matches, inl)
    return PairMatches(
        name0=name0,
        name1=name1,
        keypoints0=feats[name0].keypoints,
        keypoints1=feats[name1].keypoints,
        matches=matches,
        inlier=inlier,
        inliers_only=extra,
    )


# ----------------------------------------------------------------------------- 3D model


@dataclass(frozen=True)
class CameraView:
    """One registered image of a model.

    centre: (3,) camera centre in world coordinates.
    rotation: (3, 3) world-to-camera rotation (x_cam = R x_world + t).
    K: (3, 3) calibration matrix (distortion ignored); width, height in pixels.
    """

    name: str
    centre: np.ndarray
    rotation: np.ndarray
    K: np.ndarray
    width: int
    height: int


@dataclass(frozen=True)
class Model:
    """A sparse model: points (N, 3) float64, colors (N, 3) uint8, errors (N,) reprojection px, cameras."""

    points: np.ndarray
    colors: np.ndarray
    errors: np.ndarray
    cameras: list[CameraView]

    @property
    def registered(self) -> list[str]:
        """Names of the registered images."""
        return [c.name for c in self.cameras]


def list_models(output: Path, dataset: str, scene: str) -> list[int]:
    """The model indices ``k`` of ``sparse/<k>/`` (0 is the largest), sorted."""
    sparse = SceneLayout(_scene_folder(output, dataset, scene)).sparse
    if not sparse.is_dir():
        return []
    return sorted(int(p.name) for p in sparse.iterdir() if p.name.isdigit() and p.is_dir())


def load_model(output: Path, dataset: str, scene: str, k: int = 0) -> Model | None:
    """Model ``sparse/<k>`` of a scene (None when the scene has none).

    Raises:
        ViewerError: the model files cannot be read.
    """
    import pycolmap

    sdir = _scene_folder(check_output(output), dataset, scene)
    path = _inside(sdir, SceneLayout(sdir).sparse / str(int(k)))
    if not path.is_dir():
        return None
    try:
        rec = pycolmap.Reconstruction(str(path))
    except (RuntimeError, ValueError) as exc:
        raise ViewerError(f"{path}: cannot read the model ({exc})") from None
    pts = rec.points3D
    n = len(pts)
    points = np.zeros((n, 3), np.float64)
    colors = np.zeros((n, 3), np.uint8)
    errors = np.zeros(n, np.float64)
    for i, p in enumerate(pts.values()):
        points[i] = p.xyz
        colors[i] = p.color
        errors[i] = p.error
    cameras = []
    for image in sorted(rec.images.values(), key=lambda im: im.name):
        if not image.has_pose:
            continue
        pose = image.cam_from_world()
        rot = np.asarray(pose.rotation.matrix(), np.float64)
        t = np.asarray(pose.translation, np.float64).ravel()
        cam = rec.cameras[image.camera_id]
        cameras.append(
            CameraView(
                name=image.name,
                centre=-rot.T @ t,
                rotation=rot,
                K=np.asarray(cam.calibration_matrix(), np.float64),
                width=int(cam.width),
                height=int(cam.height),
            )
        )
    return Model(points=points, colors=colors, errors=errors, cameras=cameras)


def model_from_poses(output: Path, dataset: str, scene: str) -> Model | None:
    """Cameras only (no points), from the poses of ``scene.json``: for scenes whose poses come from a fallback
    (e.g. a two-view geometry) without a ``sparse/`` model. The intrinsics are COLMAP's initial guess
    (focal 1.2 max(W, H), centred principal point), from the image sizes of ``features.h5``."""
    sdir = _scene_folder(output, dataset, scene)
    poses = _scene_poses(sdir)
    if not poses or not SceneLayout(sdir).features_h5.is_file():
        return None
    known = set(scene_image_names(output, dataset, scene))
    feats = read_features_h5(SceneLayout(sdir).features_h5, [n for n in sorted(poses) if n in known])
    cameras = []
    for name, f in feats.items():
        rot_values, t_values = poses[name]
        rot = np.asarray(rot_values, np.float64).reshape(3, 3)
        t = np.asarray(t_values, np.float64).reshape(3)
        w, h = f.image_size
        focal = 1.2 * max(w, h)
        K = np.array([[focal, 0.0, w / 2.0], [0.0, focal, h / 2.0], [0.0, 0.0, 1.0]])
        cameras.append(CameraView(name=name, centre=-rot.T @ t, rotation=rot, K=K, width=w, height=h))
    if not cameras:
        return None
    return Model(points=np.zeros((0, 3)), colors=np.zeros((0, 3), np.uint8), errors=np.zeros(0), cameras=cameras)


def inlier_point_mask(points: np.ndarray, quantile: float = 0.98, margin: float = 2.0) -> np.ndarray:
    """(N,) bool: points within ``margin`` times the ``quantile`` distance from the median (drops far outliers
    that would shrink the rest of the view to a dot)."""
    if len(points) == 0:
        return np.zeros(0, bool)
    d = np.linalg.norm(points - np.median(points, axis=0), axis=1)
    limit = float(np.quantile(d, quantile)) * margin
    return np.asarray(d <= max(limit, 1e-12), dtype=bool)


def scene_scale(model: Model) -> float:
    """A length for drawing cameras: a fifth of the median distance of camera centres (else points) to their median."""
    if len(model.cameras) >= 2:
        c = np.stack([cam.centre for cam in model.cameras])
        spread = float(np.median(np.linalg.norm(c - np.median(c, axis=0), axis=1)))
        if spread > 0:
            return 0.2 * spread
    pts = model.points[inlier_point_mask(model.points)]
    if len(pts):
        spread = float(np.median(np.linalg.norm(pts - np.median(pts, axis=0), axis=1)))
        if spread > 0:
            return 0.2 * spread
    return 1.0


def up_direction(model: Model) -> np.ndarray:
    """(3,) unit vector: the mean of the cameras' up directions (image y points down), else the points'
    least-variance axis, else +z."""
    if model.cameras:
        up = -np.mean([c.rotation[1] for c in model.cameras], axis=0)
        if np.linalg.norm(up) > 1e-6:
            return np.asarray(up / np.linalg.norm(up), np.float64)
    pts = model.points[inlier_point_mask(model.points)]
    if len(pts) >= 3:
        _, _, vt = np.linalg.svd(pts - pts.mean(axis=0), full_matrices=False)
        return np.asarray(vt[-1], np.float64)
    return np.array([0.0, 0.0, 1.0])


def frustum_segments(model: Model, size: float | None = None) -> np.ndarray:
    """Camera frusta as line segments: (8 * cameras, 2, 3) world points (4 edges from the centre to the
    image corners at depth ``size`` and the 4 edges of the image rectangle)."""
    size = scene_scale(model) if size is None else size
    segs = []
    for cam in model.cameras:
        w, h = cam.width, cam.height
        corners_px = np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]], np.float64)
        rays = corners_px @ np.linalg.inv(cam.K).T  # (4, 3) camera coordinates, z = 1
        rays *= size / max(float(np.linalg.norm(rays[:, :2], axis=1).max()), 1.0)  # keep frusta a fixed size
        world = rays @ cam.rotation + cam.centre  # R^T x + C
        for i in range(4):
            segs.append((cam.centre, world[i]))
            segs.append((world[i], world[(i + 1) % 4]))
    if not segs:
        return np.zeros((0, 2, 3), np.float64)
    return np.asarray(segs, np.float64)


# ----------------------------------------------------------------------------- photos


@functools.lru_cache(maxsize=16)
def _input_scenes(input_root: str) -> dict[tuple[str, str], str]:
    from imc_ray.stages.catalog import CatalogError, find_scenes

    try:
        return {(s.dataset, s.name): str(s.image_dir) for s in find_scenes(Path(input_root))}
    except (CatalogError, OSError) as exc:
        logger.warning("input %s: %s; photos are not shown", input_root, exc)
        return {}


def input_root(report: RunReport, override: Path | None = None) -> Path | None:
    """The run's INPUT folder: ``override``, else ``run.json``'s ``input`` (a relative one is taken from the
    current folder, as the run did); None when it does not exist any more."""
    if override is not None:
        return Path(override).expanduser().resolve() if Path(override).is_dir() else None
    value = report.input
    if not value:
        return None
    path = Path(str(value)).expanduser()
    return path.resolve() if path.is_dir() else None


def images_folder(report: RunReport, dataset: str, scene: str, override: Path | None = None) -> Path | None:
    """The input images folder of a scene (``<input>/<dataset>/<scene>/images`` or as the catalog finds it)."""
    root = input_root(report, override)
    if root is None:
        return None
    direct = resolve_inside(root, dataset, scene, "images")  # a hostile scene name never leaves the input
    if direct.is_dir():
        return direct
    found = _input_scenes(str(root)).get((dataset, scene))
    return Path(found).resolve() if found else None


def image_path(report: RunReport, dataset: str, scene: str, name: str, override: Path | None = None) -> Path:
    """The input photo of one image, checked to lie inside its scene's images folder.

    Raises:
        ViewerError: the input folder is gone, the name leads outside, or the file is missing.
    """
    folder = images_folder(report, dataset, scene, override)
    if folder is None:
        raise ViewerError(
            f"{dataset}/{scene}: the input images folder of the run ({report.input}) is not there any more"
        )
    path = resolve_inside(folder, *name.split("/"))
    if not path.is_file():
        raise ViewerError(f"{dataset}/{scene}: photo {name!r} is not in {folder}")
    return path


def load_photo(report: RunReport, dataset: str, scene: str, name: str, override: Path | None = None) -> np.ndarray:
    """The decoded photo (H, W, 3) uint8, as the run used it (EXIF orientation, alpha background, and set
    upright when the orientation stage turned it: its keypoints are in the upright image's pixels).

    Raises:
        ViewerError: see :func:`image_path`; or the photo cannot be decoded.
    """
    from imc_ray.stages.catalog import ImageError, decode_image

    path = image_path(report, dataset, scene, name, override)
    try:
        photo = decode_image(path, images_config(report))
    except ImageError as exc:
        raise ViewerError(str(exc)) from None
    entry = report.scene(dataset, scene)
    turn = int(entry.result.rotated.get(name, 0)) if entry and entry.result else 0
    return np.ascontiguousarray(np.rot90(photo, k=turn // 90)) if turn else photo  # as orientation.rotate_image
