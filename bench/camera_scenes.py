"""Build two-camera test scenes from a real scene with reference poses (``labels.csv``).

A digital zoom by ``s`` (crop the central ``1/s`` of the frame, resize back to the full size) is an exact
pinhole camera with the focal length and the principal point's offset from the centre multiplied by ``s``,
the same pose and the same distortion in normalised coordinates. So every ``every``-th photo of a real
single-camera scene, zoomed, gives a scene that mixes two cameras at one pixel size, with exact reference
poses and intrinsics. Zoomed photos are renamed ``<stem>_zoom<ext>`` so that outputs of the original scene
are never mistaken for theirs.

With ``--exif``, the photos get EXIF make, model and focal length (35 mm equivalent, from the reference
focal length): the originals as one camera, the zoomed photos as another.

Usage::

    python bench/camera_scenes.py SOURCE_SCENE DEST_SCENE [--zoom 1.43] [--every 3] [--exif]

SOURCE_SCENE holds ``images/`` and ``labels.csv``; DEST_SCENE gets the same.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
from pathlib import Path

from PIL import Image
from PIL.TiffImagePlugin import IFDRational

EXIF_IFD = 0x8769
MAKE, MODEL = 0x010F, 0x0110
FOCAL_LENGTH, FOCAL_35MM = 0x920A, 0xA405
CAMERAS = {False: ("FoxPhone", "Wide 1"), True: ("ZoomCorp", "Tele 2")}
"""EXIF make and model of the original and of the zoomed photos."""


def zoom_image(image: Image.Image, s: float) -> Image.Image:
    """The central ``1/s`` of ``image`` resized back to its full size (a digital zoom by ``s``)."""
    w, h = image.size
    cw, ch = w / s, h / s
    box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
    return image.resize((w, h), Image.Resampling.LANCZOS, box=box)


def zoom_calibration(k: list[float], wh: tuple[int, int], s: float) -> list[float]:
    """Row-major K (9,) of the zoomed image: focal lengths times ``s``, principal point offset times ``s``."""
    w, h = wh
    fx, cx, fy, cy = k[0], k[2], k[4], k[5]
    return [s * fx, 0.0, s * (cx - w / 2) + w / 2, 0.0, s * fy, s * (cy - h / 2) + h / 2, 0.0, 0.0, 1.0]


def focal_35mm(k: list[float], wh: tuple[int, int]) -> float:
    """35 mm equivalent focal length of K for an image of size ``wh`` (the diagonal rule: 43.27 mm)."""
    return 0.5 * (k[0] + k[4]) * 43.27 / math.hypot(*wh)


def exif_for(zoomed: bool, k: list[float], wh: tuple[int, int]) -> Image.Exif:
    """EXIF with the make and model of :data:`CAMERAS` and the focal length of ``k``."""
    exif = Image.Exif()
    exif[MAKE], exif[MODEL] = CAMERAS[zoomed]
    f35 = focal_35mm(k, wh)
    exif[EXIF_IFD] = {FOCAL_35MM: round(f35), FOCAL_LENGTH: IFDRational(round(f35 * 10), 10)}
    return exif


def with_exif(jpeg: bytes, exif: Image.Exif) -> bytes:
    """The JPEG file ``jpeg`` with ``exif`` as an APP1 segment after its SOI marker (pixels untouched)."""
    payload = exif.tobytes()  # starts with b"Exif\0\0"
    if not jpeg.startswith(b"\xff\xd8"):
        raise ValueError("not a JPEG file")
    return jpeg[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def build(source: Path, dest: Path, zoom: float = 1.43, every: int = 3, exif: bool = False) -> list[str]:
    """Write the mixed scene (JPEG photos only); return the names of the zoomed photos. Photo ``i`` (sorted
    order) is zoomed when ``i % every == 1``. Originals are copied byte for byte, so their pixels (and
    features) are those of ``source``; EXIF is added without re-encoding."""
    with open(source / "labels.csv", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: r["image_name"])
    (dest / "images").mkdir(parents=True, exist_ok=True)
    zoomed_names, out_rows = [], []
    for i, row in enumerate(rows):
        name, path = row["image_name"], source / "images" / row["image_name"]
        data = path.read_bytes()
        k = [float(v) for v in row["calibration_matrix"].split(";")]
        with Image.open(path) as image:
            wh = image.size
            if i % every == 1:
                stem, _, ext = name.rpartition(".")
                name = f"{stem}_zoom.{ext}"
                buf = io.BytesIO()
                zoom_image(image.convert("RGB"), zoom).save(buf, "JPEG", quality=95)
                data = buf.getvalue()
                k = zoom_calibration(k, wh, zoom)
                zoomed_names.append(name)
        if exif:
            data = with_exif(data, exif_for(name in zoomed_names, k, wh))
        (dest / "images" / name).write_bytes(data)
        out_rows.append({**row, "image_name": name, "calibration_matrix": ";".join(map(repr, k))})
    with open(dest / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(out_rows)
    return zoomed_names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--zoom", type=float, default=1.43)
    parser.add_argument("--every", type=int, default=3)
    parser.add_argument("--exif", action="store_true")
    args = parser.parse_args()
    names = build(args.source, args.dest, args.zoom, args.every, args.exif)
    print(f"{args.dest}: {len(names)} photos zoomed by {args.zoom}")


if __name__ == "__main__":
    main()
