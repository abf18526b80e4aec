"""Stage 7b: GPS in the photos' EXIF: geo-registration of the models, and position priors for mapping.

Each photo's EXIF GPS fix (latitude, longitude, altitude; :func:`read_gps`) becomes a position in local
east-north-up metres about the scene's first fix (:func:`enu_positions`, WGS84 by
``pycolmap.GPSTransform``). By ``mapping.gps``:
  * ``register`` (default): every model holding at least :data:`MIN_GEO_IMAGES` registered photos with a fix
    is moved into that ENU frame by a robust similarity (:func:`georegister`,
    ``pycolmap.align_reconstruction_to_locations``): metres, east-north-up, so ``sparse/`` and
    ``submission.csv`` are in that frame;
  * ``prior``: the positions are also written as pose priors into ``database.db`` (:func:`write_priors`) and
    the incremental mapper uses them (``use_prior_position``);
  * ``off``: GPS is ignored.
``scene.json`` → ``geo`` records the frame, its origin and how well the fixes fit (:func:`georegister`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pycolmap
from PIL import ExifTags, Image

logger = logging.getLogger(__name__)

MIN_GEO_IMAGES = 3
"""Registered photos with a GPS fix that a model needs to be geo-registered (a similarity has 7 degrees of
freedom: three positions fix it)."""
GPS_MAX_ERROR_M = 10.0
"""A fix further than this from its camera, after alignment, is an outlier (phone GPS is good to a few metres)."""

Fix = tuple[float, float, float]
"""(latitude, longitude: degrees; altitude: metres above the ellipsoid, 0 when the photo has none)."""


def _degrees(dms: Any, ref: Any, negative: str) -> float:
    """EXIF (degrees, minutes, seconds) rationals and their N/S/E/W reference -> signed degrees."""
    d, m, s = (float(v) for v in dms)
    value = d + m / 60.0 + s / 3600.0
    return -value if str(ref).strip().upper().startswith(negative) else value


def read_gps(path: Path) -> Fix | None:
    """The EXIF GPS fix of the photo at ``path``, or None (no fix, an unreadable or impossible one). Only the
    file's header is read."""
    tags = ExifTags.GPS
    try:
        with Image.open(path) as image:
            gps = image.getexif().get_ifd(ExifTags.IFD.GPSInfo)
        if tags.GPSLatitude not in gps or tags.GPSLongitude not in gps:
            return None
        lat = _degrees(gps[tags.GPSLatitude], gps.get(tags.GPSLatitudeRef, "N"), "S")
        lon = _degrees(gps[tags.GPSLongitude], gps.get(tags.GPSLongitudeRef, "E"), "W")
        alt = float(gps.get(tags.GPSAltitude, 0.0))
        if gps.get(tags.GPSAltitudeRef) in (1, b"\x01"):
            alt = -alt
    except Exception:  # noqa: BLE001 - EXIF is optional metadata: any unreadable block means "no fix"
        return None
    if not (np.isfinite([lat, lon, alt]).all() and abs(lat) <= 90 and abs(lon) <= 180) or (lat, lon) == (0, 0):
        return None
    return lat, lon, alt


def scene_fixes(image_dir: Path, names: Iterable[str], mode: str) -> dict[str, Fix]:
    """The GPS fix of each photo ``image_dir/<name>`` that has one (none when ``mode`` is ``off``)."""
    if mode == "off":
        return {}
    found = {n: read_gps(image_dir / n) for n in names}
    return {n: f for n, f in found.items() if f is not None}


def enu_positions(fixes: dict[str, Fix]) -> tuple[dict[str, np.ndarray], Fix | None]:
    """Positions (3,) float64 in east-north-up metres about the first fix in name order, and that origin
    (None when no photo has a fix)."""
    if not fixes:
        return {}, None
    names = sorted(fixes)
    origin = fixes[names[0]]
    lla = np.array([fixes[n] for n in names], np.float64)
    enu = pycolmap.GPSTransform(pycolmap.GPSTransformEllipsoid.WGS84).ellipsoid_to_enu(lla, *origin)
    return {n: np.asarray(p, np.float64) for n, p in zip(names, enu, strict=True)}, origin


def georegister(rec: pycolmap.Reconstruction, positions: dict[str, np.ndarray]) -> dict[str, Any] | None:
    """Move ``rec`` into the ENU frame of ``positions`` (in place) when it holds at least
    :data:`MIN_GEO_IMAGES` registered photos with a fix and a similarity fits them; returns how well
    (``images``: fixes used, ``rms_m``: camera-to-fix distance after alignment) or None."""
    names = [im.name for im in rec.images.values() if im.has_pose and im.name in positions]
    if len(names) < MIN_GEO_IMAGES:
        return None
    ransac = pycolmap.RANSACOptions()
    ransac.max_error = GPS_MAX_ERROR_M
    target = np.stack([positions[n] for n in names])
    sim = pycolmap.align_reconstruction_to_locations(rec, names, target, MIN_GEO_IMAGES, ransac)
    if sim is None:
        return None
    rec.transform(sim)
    by_name = {im.name: im for im in rec.images.values()}
    centres = np.stack([by_name[n].projection_center() for n in names])
    error = np.linalg.norm(centres - target, axis=1)
    return {"images": len(names), "rms_m": float(np.sqrt(np.mean(error**2))), "scale": float(sim.scale)}


def write_priors(db_path: Path, positions: dict[str, np.ndarray]) -> int:
    """Write each photo's ENU position as a pose prior into the COLMAP database (its images must be in it);
    returns how many were written."""
    written = 0
    with pycolmap.Database.open(str(db_path)) as db:
        db.clear_pose_priors()
        for image in db.read_all_images():
            if (p := positions.get(image.name)) is None:
                continue
            prior = pycolmap.PosePrior(
                position=p, coordinate_system=pycolmap.PosePriorCoordinateSystem.CARTESIAN, corr_data_id=image.data_id
            )
            db.write_pose_prior(prior)
            written += 1
    return written


def register_models(
    models: list[pycolmap.Reconstruction], positions: dict[str, np.ndarray], origin: Fix | None
) -> dict[str, Any]:
    """Geo-register every model that can be (:func:`georegister`, in place); ``scene.json`` → ``geo``: the
    photos with a fix and, when the largest model was registered, the frame, its origin and the fit."""
    if origin is None:
        return {}
    fits = [georegister(rec, positions) for rec in models]
    out: dict[str, Any] = {"fixes": len(positions)}
    if fits and fits[0] is not None:
        out.update(frame="ENU", origin=list(origin), **fits[0])
        logger.info("geo-registered to ENU about %s: %d fixes, rms %.2f m", origin, fits[0]["images"], fits[0]["rms_m"])
    return out
