"""Stage 7a (inside the mapping task): which images share a camera, and what is known of it before mapping.

COLMAP can share a camera only between images of one pixel size. Within that, ``mapping.camera_mode``:

* ``auto``: images whose EXIF names a camera share one camera by EXIF make, model, lens, body serial, focal
  length and digital zoom (and size); the EXIF focal length is the camera's prior (pycolmap's EXIF rules:
  the 35 mm equivalent, else the focal length with the sensor width from EXIF or COLMAP's camera database).
  Images without EXIF share one camera per size only if the sharing is earned: a test mapping gives each of
  them a camera of its own (:func:`unshare`); if their estimated focal lengths agree, the scene is mapped
  with the shared camera, else (:func:`split_by_focal`) with one camera per group of agreeing focal lengths
  (and one per image for images the test mapping did not register), unless one focal length fits the test
  model nearly as well as one each (:func:`held_focal_costs`: weakly constrained estimates); when one focal
  length fits clearly worse although the estimates show no gap, the two-means cut of them is tried (:func:`regroup`).
* ``single``: one camera per image size; ``per_folder``: one per subfolder of ``images/`` and size;
  ``per_image``: one camera each (with its EXIF prior, if any).

A file of known intrinsics (``mapping.cameras_file``, format in :mod:`imc_ray.formats`) overrides all of
this for the images its globs match: one camera per entry and scene, with the file's parameters, held fixed
in bundle adjustment when ``mapping.known_intrinsics=fixed``. Images the orientation stage turned upright
are not matched by the file (their intrinsics are those of a turned sensor): they get estimated cameras.
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pycolmap
from PIL import ExifTags, Image

from imc_ray.config import ConfigError

FOCAL_GAP = 0.12
"""Images without EXIF keep one shared camera unless their focal lengths, each estimated with a camera of its
own, fall into groups whose nearest values differ by more than this share (see :func:`split_by_focal`)."""
FOCAL_NOISE_FACTOR = 5.0
"""... and by more than this many times the spread of the estimates within the groups (median absolute
deviation of log focal length), so that a scene whose single-image estimates are noisy is not split ..."""
ONE_FOCAL_MAX_COST = 1.1
"""... and unless holding all their focal lengths at one value raises the test model's mean reprojection
error, after bundle adjustment, by more than this factor (:func:`held_focal_costs`): estimates that differ only
because the geometry constrains them weakly fit one focal length as well (measurements: bench/RESULTS.md)."""


class CameraFileError(ConfigError):
    """The file of known intrinsics cannot be used (the message names the file, the entry and the fix)."""


@dataclass(frozen=True)
class ExifCamera:
    """What EXIF says about the camera that took a photo (empty strings and zeros when a tag is absent)."""

    make: str = ""
    model: str = ""
    lens: str = ""
    serial: str = ""
    focal_mm: float = 0.0
    focal_35mm: float = 0.0
    digital_zoom: float = 0.0

    @property
    def has_focal(self) -> bool:
        return self.focal_mm > 0 or self.focal_35mm > 0


@dataclass(frozen=True)
class KnownCamera:
    """One entry of the known-intrinsics file: COLMAP camera ``model`` with ``params`` for images of
    ``width`` x ``height`` whose ``<dataset>/<scene>/<image name>`` matches the glob ``images``."""

    images: str
    model: str
    width: int
    height: int
    params: tuple[float, ...]

    @property
    def focal(self) -> float:
        return float(self.camera().mean_focal_length())

    def camera(self) -> pycolmap.Camera:
        cam = pycolmap.Camera.create_from_model_name(0, self.model, 1.0, self.width, self.height)
        cam.params = list(self.params)
        cam.has_prior_focal_length = True
        return cam


@dataclass
class CameraGroup:
    """Images that share one COLMAP camera.

    source: ``known`` (the file), ``exif``, ``size`` (no EXIF: one size), ``folder``, ``image`` (one
    image), or ``focal`` (a group found by :func:`split_by_focal`).
    """

    images: list[str]
    size: tuple[int, int]
    source: str
    prior_focal: float | None = None
    known: KnownCamera | None = None
    earn: bool = False
    """Sharing must be earned by the data (``auto`` without EXIF focal length, more than one image)."""
    fixed: bool = False
    """Bundle adjustment holds the intrinsics constant (known intrinsics with ``known_intrinsics=fixed``)."""
    note: str = ""
    camera_id: int = field(default=0, compare=False)
    """Set when the camera is written to the database."""


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value).strip().strip("\x00").strip() if value is not None else ""


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return 0.0
    return number if math.isfinite(number) and number > 0 else 0.0


def read_exif(path: Path) -> ExifCamera | None:
    """The camera EXIF names for the photo at ``path``; None when it names none (no make, model or focal
    length) or cannot be read. Only the file's header is read."""
    tags = ExifTags.Base
    try:
        with Image.open(path) as image:
            exif = image.getexif()
            sub = exif.get_ifd(ExifTags.IFD.Exif)
        cam = ExifCamera(
            make=_text(exif.get(tags.Make)),
            model=_text(exif.get(tags.Model)),
            lens=_text(sub.get(tags.LensModel)),
            serial=_text(sub.get(tags.BodySerialNumber)),
            focal_mm=_number(sub.get(tags.FocalLength)),
            focal_35mm=_number(sub.get(tags.FocalLengthIn35mmFilm)),
            digital_zoom=_number(sub.get(tags.DigitalZoomRatio)),
        )
    except Exception:  # noqa: BLE001 - EXIF is optional metadata: any unreadable block means "none"
        return None
    return cam if (cam.make or cam.model or cam.has_focal) else None


def exif_focal(path: Path, size: tuple[int, int]) -> float | None:
    """Prior focal length in pixels of an image of ``size`` (w, h) from the EXIF of ``path``, by pycolmap's
    rules (``infer_camera_from_image``); None when they give none."""
    try:
        cam = pycolmap.infer_camera_from_image(str(path))
    except Exception:  # noqa: BLE001 - as read_exif: no usable EXIF
        return None
    if not cam.has_prior_focal_length or max(cam.width, cam.height) <= 0:
        return None
    return float(cam.mean_focal_length()) * max(size) / max(cam.width, cam.height)


ENTRY_KEYS = ("images", "model", "width", "height", "params")


def _known_camera(entry: Any, where: str) -> KnownCamera:
    """One validated entry of the known-intrinsics file (``where`` names it in errors)."""
    if not isinstance(entry, dict) or set(entry) != set(ENTRY_KEYS):
        raise CameraFileError(f"{where}: an entry needs exactly the keys {', '.join(ENTRY_KEYS)}")
    images, model, params = entry["images"], entry["model"], entry["params"]
    if not isinstance(images, str) or not images:
        raise CameraFileError(f"{where}: 'images' must be a glob such as \"dataset/scene/*.jpg\"")
    names = [m.name for m in pycolmap.CameraModelId.__members__.values() if m.name != "INVALID"]
    if model not in names:
        raise CameraFileError(f"{where}: model {model!r} is not a COLMAP camera model ({', '.join(names)})")
    for key in ("width", "height"):
        if type(entry[key]) is not int or entry[key] <= 0:
            raise CameraFileError(f"{where}: {key!r} must be a positive integer (pixels)")
    expected = len(pycolmap.Camera.create_from_model_name(0, model, 1.0, 1, 1).params)
    if not isinstance(params, list) or len(params) != expected:
        raise CameraFileError(f"{where}: {model} takes {expected} params (COLMAP's order), got {params!r}")
    if not all(type(p) in (int, float) and math.isfinite(p) for p in params):
        raise CameraFileError(f"{where}: params must be finite numbers, got {params!r}")
    known = KnownCamera(images, model, entry["width"], entry["height"], tuple(float(p) for p in params))
    if not known.focal > 0:
        raise CameraFileError(f"{where}: the focal length must be positive, got {params!r}")
    return known


def read_cameras_file(path: Path) -> tuple[KnownCamera, ...]:
    """The entries of a known-intrinsics file (format in :mod:`imc_ray.formats`), validated."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CameraFileError(f"cannot read the cameras file {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("cameras"), list) or not data["cameras"]:
        raise CameraFileError(f'{path}: expected {{"imc_ray_cameras": 1, "cameras": [{{...}}, ...]}}')
    if data.get("imc_ray_cameras", 1) != 1 or set(data) - {"imc_ray_cameras", "cameras"}:
        raise CameraFileError(f'{path}: only the keys "imc_ray_cameras" (= 1) and "cameras" are allowed')
    return tuple(_known_camera(e, f"{path}: cameras[{i}]") for i, e in enumerate(data["cameras"]))


def known_for(known: Sequence[KnownCamera], path: str) -> tuple[int, KnownCamera] | None:
    """The first entry whose glob matches ``path`` (``<dataset>/<scene>/<image name>``), with its index."""
    for i, entry in enumerate(known):
        if fnmatch.fnmatchcase(path, entry.images):
            return i, entry
    return None


def _group_key(
    name: str, size: tuple[int, int], mode: str, exif: ExifCamera | None
) -> tuple[tuple[Any, ...], str, bool]:
    """(grouping key, source, whether sharing must be earned) of an image not in the known-intrinsics file."""
    if mode == "per_image":
        return ("image", name), "image", False
    if mode == "single":
        return ("size", size), "size", False
    if mode == "per_folder":
        return ("folder", PurePosixPath(name).parent.as_posix(), size), "folder", False
    if exif is not None:  # auto: EXIF names the camera; without a focal length, a zoom setting is unknown
        return ("exif", exif, size), "exif", not exif.has_focal
    return ("size", size), "size", True


def _prior_focal(
    group: CameraGroup, exifs: Mapping[str, ExifCamera | None], image_dir: Path, cache: dict[Any, float | None]
) -> float | None:
    """The EXIF focal length (pixels) of a group whose images all carry the same EXIF camera, else None.
    pycolmap reads the whole image to apply its rules, so it runs once per EXIF camera and size."""
    found = {exifs[n] for n in group.images}
    if len(found) != 1 or (exif := found.pop()) is None or not exif.has_focal:
        return None
    key = (exif, max(group.size))
    if key not in cache:
        cache[key] = exif_focal(image_dir / group.images[0], group.size)
    return cache[key]


def plan(
    sizes: Mapping[str, tuple[int, int]],
    image_dir: Path,
    mode: str,
    known: Sequence[KnownCamera] = (),
    scene_path: str = "",
    rotated: Mapping[str, int] | None = None,
    fix_known: bool = True,
) -> list[CameraGroup]:
    """The cameras of a scene before mapping, one :class:`CameraGroup` each, in order of their first image.

    sizes: image name -> (width, height) of the image as mapped (upright); image_dir: the photos (for EXIF);
    scene_path: ``<dataset>/<scene>``, the prefix the known-intrinsics globs see; rotated: images the
    orientation stage turned (never matched by the file); fix_known: hold known intrinsics constant.
    """
    exifs = {n: read_exif(image_dir / n) for n in sizes}
    groups: dict[tuple[Any, ...], CameraGroup] = {}
    for name in sorted(sizes):
        size = sizes[name]
        match = None if (rotated or {}).get(name) else known_for(known, f"{scene_path}/{name}")
        if match is not None:
            index, entry = match
            if (entry.width, entry.height) != size:
                raise CameraFileError(
                    f"{scene_path}/{name} is {size[0]}x{size[1]} pixels but cameras file entry {index} "
                    f"({entry.images!r}) is for {entry.width}x{entry.height}: fix the entry's size or its glob"
                )
            group = groups.setdefault(
                ("known", index), CameraGroup([], size, "known", entry.focal, entry, fixed=fix_known)
            )
        else:
            key, source, earn = _group_key(name, size, mode, exifs[name])
            group = groups.setdefault(key, CameraGroup([], size, source, earn=earn))
        group.images.append(name)
    cache: dict[Any, float | None] = {}
    for group in groups.values():
        group.earn = group.earn and len(group.images) > 1
        if group.known is None:
            group.prior_focal = _prior_focal(group, exifs, image_dir, cache)
    return list(groups.values())


def make_camera(group: CameraGroup, model: str) -> pycolmap.Camera:
    """The COLMAP camera a group starts mapping with: the known intrinsics, else ``model`` with the EXIF
    prior focal length, else COLMAP's guess (1.2 times the long side, no prior)."""
    if group.known is not None:
        return group.known.camera()
    width, height = group.size
    cam = pycolmap.Camera.create_from_model_name(0, model, group.prior_focal or 1.2 * max(width, height), width, height)
    cam.has_prior_focal_length = group.prior_focal is not None
    return cam


def unshare(groups: Sequence[CameraGroup]) -> list[CameraGroup]:
    """The cameras of the test mapping: every group that must earn sharing as one camera per image (with
    no prior), the others as they are."""
    out: list[CameraGroup] = []
    for group in groups:
        if group.earn:
            out += [CameraGroup([n], group.size, "image", note="test: one camera per image") for n in group.images]
        else:
            out.append(group)
    return out


def model_focals(models: Sequence[pycolmap.Reconstruction], names: set[str]) -> dict[str, float]:
    """Focal length (pixels) of the camera of each image of ``names`` registered in a model (the first
    model that holds it): with one camera per image, each image's own estimate after bundle adjustment."""
    out: dict[str, float] = {}
    for rec in models:
        for image in rec.images.values():
            if image.name in names and image.name not in out and image.has_pose:
                focal = float(rec.cameras[image.camera_id].mean_focal_length())
                if math.isfinite(focal) and focal > 0:
                    out[image.name] = focal
    return out


def _estimates(group: CameraGroup, focals: Mapping[str, float]) -> list[tuple[float, str]]:
    """(focal length, image) of the group's images with an estimate, by focal length."""
    mine = set(group.images)
    return sorted((f, n) for n, f in focals.items() if n in mine)


def split_by_focal(group: CameraGroup, focals: Mapping[str, float]) -> list[CameraGroup]:
    """The cameras a group that must earn sharing becomes, from its images' focal lengths estimated with one
    camera per image (:func:`model_focals` of a mapping with the cameras of :func:`unshare`).

    Sorted by focal length, the estimates are cut where neighbours differ by more than :data:`FOCAL_GAP`;
    the cut stands only when at least two parts hold two images or more and each gap exceeds
    :data:`FOCAL_NOISE_FACTOR` times the spread within the parts. Then each part becomes a camera (with no
    prior, as before the test), and each image without an estimate a camera of its own (:func:`_focal_parts`);
    else the group stays shared, which it has then earned. The decision is in each group's ``note``.
    """
    est = _estimates(group, focals)
    if len(est) < 3:
        group.note = f"shared: {len(est)} image(s) with a focal estimate, too few to test"
        return [group]
    logf = np.log([f for f, _ in est])  # (K,)
    cuts = [i + 1 for i in range(len(est) - 1) if logf[i + 1] - logf[i] > math.log1p(FOCAL_GAP)]
    parts = np.split(np.arange(len(est)), cuts)
    spread = float(np.median(np.concatenate([np.abs(logf[p] - np.median(logf[p])) for p in parts])))
    big = sum(len(p) >= 2 for p in parts)
    if not cuts or big < 2 or min(logf[c] - logf[c - 1] for c in cuts) <= FOCAL_NOISE_FACTOR * spread:
        lo, hi = est[0][0], est[-1][0]
        group.note = f"shared: {len(est)} images, a camera each, agree on focal length ({lo:.0f}-{hi:.0f} px)"
        return [group]
    return _focal_parts(group, est, parts)


def _focal_parts(
    group: CameraGroup, est: list[tuple[float, str]], parts: Sequence[np.ndarray], why: str = ""
) -> list[CameraGroup]:
    """A camera (source ``focal``, no prior) per part of ``est`` ((focal, image) sorted by focal; parts: index
    arrays into it), and one per image of ``group`` without an estimate."""
    out = []
    for p in parts:
        focal = float(np.exp(np.median(np.log([est[i][0] for i in p]))))
        note = f"split by focal length{why}: {len(p)} image(s) near {focal:.0f} px"
        out.append(CameraGroup([est[i][1] for i in p], group.size, "focal", note=note))
    have = {n for _, n in est}
    out += [
        CameraGroup([n], group.size, "image", note="split: no focal estimate (not registered by the test mapping)")
        for n in group.images
        if n not in have
    ]
    return out


def best_cut(logf: np.ndarray, min_part: int = 2) -> int | None:
    """The index that cuts sorted values ``logf`` (K,) into two parts of at least ``min_part`` with the least
    squared spread about the parts' means (a 1-D two-means), or None when K < 2 ``min_part``."""
    costs = {
        k: float(np.sum((logf[:k] - logf[:k].mean()) ** 2) + np.sum((logf[k:] - logf[k:].mean()) ** 2))
        for k in range(min_part, len(logf) - min_part + 1)
    }
    return min(costs, key=lambda k: costs[k]) if costs else None


def bundle_adjust(
    rec: pycolmap.Reconstruction, refine: set[int], num_threads: int, focal: bool = True, principal_point: bool = False
) -> None:
    """Bundle adjustment of ``rec`` in place (every registered image; the gauge fixed by three points) with the
    intrinsics of every camera outside ``refine`` held constant; of those in it, the focal length is refined
    when ``focal``, the principal point when ``principal_point``, the other parameters always."""
    config = pycolmap.BundleAdjustmentConfig()
    for image in rec.images.values():
        if image.has_pose:
            config.add_image(image.image_id)
    for camera_id in rec.cameras:
        if camera_id not in refine:
            config.set_constant_cam_intrinsics(camera_id)
    config.fix_gauge(pycolmap.BundleAdjustmentGauge.THREE_POINTS)
    opts = pycolmap.BundleAdjustmentOptions()
    opts.refine_focal_length = focal
    opts.refine_principal_point = principal_point
    opts.print_summary = False
    opts.ceres.solver_options.num_threads = num_threads
    pycolmap.create_default_bundle_adjuster(opts, config, rec).solve()


def _adjusted_error(rec: pycolmap.Reconstruction, cameras: set[int], focal: bool, num_threads: int) -> float:
    """:func:`bundle_adjust` of ``rec`` refining ``cameras`` (their focal lengths only when ``focal``); its
    mean reprojection error (pixels) after."""
    bundle_adjust(rec, cameras, num_threads, focal=focal)
    rec.update_point_3d_errors()
    return float(rec.compute_mean_reprojection_error())


def held_focal_costs(
    rec: pycolmap.Reconstruction, partitions: Sequence[Sequence[Sequence[str]]], num_threads: int = 1
) -> list[float]:
    """How much worse each partition of images (a list of parts, each a list of image names) fits ``rec`` (a
    test model: a camera per image) with one focal length per part than with a focal length per image: the
    mean reprojection error after bundle adjustment with each part's cameras' focal lengths held at the part's
    median, over the same with them all free (1.0 when fewer than two of the images are registered)."""
    camera_of = {im.name: im.camera_id for im in rec.images.values() if im.has_pose}
    chosen = {camera_of[n] for partition in partitions for part in partition for n in part if n in camera_of}
    if len(chosen) < 2:
        return [1.0] * len(partitions)
    free = _adjusted_error(pycolmap.Reconstruction(rec), chosen, True, num_threads)
    out = []
    for partition in partitions:
        held = pycolmap.Reconstruction(rec)
        for part in partition:
            ids = {camera_of[n] for n in part if n in camera_of}
            median = float(np.median([held.cameras[c].mean_focal_length() for c in ids])) if ids else 0.0
            for c in ids:
                params = np.array(held.cameras[c].params)
                params[held.cameras[c].focal_length_idxs()] = median
                held.cameras[c].params = params.tolist()
        out.append(_adjusted_error(held, chosen, False, num_threads) / max(free, 1e-9))
    return out


def regroup(
    groups: Sequence[CameraGroup],
    focals: Mapping[str, float],
    test_model: pycolmap.Reconstruction | None = None,
    num_threads: int = 1,
) -> list[CameraGroup]:
    """The cameras of every group that must earn sharing (the others as they are), judged on ``test_model``
    (the model the estimates ``focals`` come from; without it, :func:`split_by_focal` alone decides).

    A split of :func:`split_by_focal` stands only when one focal length fits its images worse than
    :data:`ONE_FOCAL_MAX_COST` times a focal length each (:func:`held_focal_costs`). A group the gap rule
    keeps shared is split all the same when one focal length fits that much worse and the two-means cut of
    its estimates (:func:`best_cut`) fits within :data:`ONE_FOCAL_MAX_COST`: two zoom levels closer than the
    gap rule sees."""
    out: list[CameraGroup] = []
    for group in groups:
        parts = split_by_focal(group, focals) if group.earn else [group]
        if group.earn and test_model is not None:
            parts = _judge(group, parts, focals, test_model, num_threads)
        out += parts
    for group in out:
        group.earn = False
    return out


def _judge(
    group: CameraGroup,
    parts: list[CameraGroup],
    focals: Mapping[str, float],
    test_model: pycolmap.Reconstruction,
    num_threads: int,
) -> list[CameraGroup]:
    """:func:`regroup`'s verdict on one group, from the gap rule's ``parts`` and the test model."""
    est = _estimates(group, focals)
    cut = best_cut(np.log([f for f, _ in est])) if len(parts) == 1 else None
    if len(parts) == 1 and cut is None:
        return parts
    partitions = [[group.images]]
    if cut is not None:
        partitions.append([[n for _, n in est[:cut]], [n for _, n in est[cut:]]])
    one, *split = held_focal_costs(test_model, partitions, num_threads)
    if len(parts) > 1 and one <= ONE_FOCAL_MAX_COST:
        found = "; ".join(p.note for p in parts if p.source == "focal")
        group.note = f"shared: the focal estimates split ({found}) but one focal length fits them as well (x{one:.2f})"
        return [group]
    if cut is not None and one > ONE_FOCAL_MAX_COST and split[0] <= ONE_FOCAL_MAX_COST:
        why = f" (one focal length fits x{one:.2f} worse than one each, two x{split[0]:.2f})"
        return _focal_parts(group, est, [np.arange(cut), np.arange(cut, len(est))], why)
    if cut is not None:
        group.note += f"; one focal length fits x{one:.2f} worse than one each, the best two x{split[0]:.2f}"
    return parts


SOURCES = {
    "known": "from the cameras file",
    "exif": "by EXIF camera",
    "size": "per image size",
    "folder": "per folder and size",
    "image": "one per image",
    "focal": "by focal length",
}
"""How each :attr:`CameraGroup.source` reads in a scene's camera decision."""


def describe(groups: Sequence[CameraGroup], mode: str, rec: pycolmap.Reconstruction | None) -> dict[str, Any]:
    """The ``cameras`` record of a scene (``scene.json``, ``run.json``): the number of cameras, the decision
    in words, and per camera its images, size, source, prior and estimated focal length (from ``rec``, the
    largest model; None when no image of it is in ``rec``)."""
    counts: dict[str, int] = {}
    for g in groups:
        counts[g.source] = counts.get(g.source, 0) + 1
    decision = f"camera_mode={mode}: {len(groups)} camera(s), " + ", ".join(
        f"{n} {SOURCES[s]}" for s, n in counts.items()
    )
    notes = sorted({g.note for g in groups if g.note and g.source != "image"})
    rows = []
    for g in groups:
        cam = rec.cameras[g.camera_id] if rec is not None and g.camera_id in rec.cameras else None
        rows.append(
            {
                "first_image": g.images[0],
                "images": len(g.images),
                "size": list(g.size),
                "source": g.source,
                "prior_focal": None if g.prior_focal is None else round(g.prior_focal, 2),
                "focal": None if cam is None else round(float(cam.mean_focal_length()), 2),
                "fixed": g.fixed,
                "note": g.note,
            }
        )
    return {"count": len(groups), "decision": "; ".join([decision, *notes]), "groups": rows}
