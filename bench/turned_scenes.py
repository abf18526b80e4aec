"""Build copies of one scene with photos turned in the file (issue 18's test scenes) for ``imc-ray run``.

    python bench/turned_scenes.py SOURCE DEST [--variants upright,thirds,group180,group90]

SOURCE is a scene folder (``images/`` and ``labels.csv``); DEST/<dataset>/<variant>/ gets the copies, with
``labels.csv`` holding the reference pose of each photo as stored (a turned photo's camera is rolled with it):
  * ``upright``: the photos as they are;
  * ``thirds``: every third photo in name order turned by 90, 180 and 270 degrees in turn;
  * ``group180`` / ``group90``: a contiguous run of 30% of the photos (from the 10th percent on) turned by 180 /
    90 degrees, all the same way.
Turned copies are saved losslessly (PNG bytes under the original name), so they hold exactly the upright
pixels turned.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image

VARIANTS = ("upright", "thirds", "group180", "group90")


def turns(names: list[str], variant: str) -> dict[str, int]:
    """Image -> degrees counter-clockwise for one variant (names sorted)."""
    if variant == "thirds":
        return {n: (90, 180, 270)[k % 3] for k, n in enumerate(names[::3])}
    if variant in ("group180", "group90"):
        start, size = len(names) // 10, max(2, round(0.3 * len(names)))
        return dict.fromkeys(names[start : start + size], int(variant[5:]))
    return {}


def turned_row(row: list[str], degrees: int) -> list[str]:
    """The labels.csv row (image, R, t, K) of the camera whose photo was turned counter-clockwise by ``degrees``
    (R and t ';'-joined, world-to-camera; K unchanged)."""
    rz = np.linalg.matrix_power(np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), degrees // 90)
    R = rz @ np.array(row[1].split(";"), float).reshape(3, 3)
    t = rz @ np.array(row[2].split(";"), float)
    return [row[0], ";".join(repr(float(v)) for v in R.ravel()), ";".join(repr(float(v)) for v in t), *row[3:]]


def build(source: Path, dest: Path, variant: str) -> dict[str, int]:
    """Write DEST/<variant>/ (images and labels.csv) from scene ``source``; returns its turns."""
    with open(source / "labels.csv", newline="") as f:
        header, *rows = list(csv.reader(f))
    rows.sort()
    turned = turns([r[0] for r in rows], variant)
    out = dest / variant
    (out / "images").mkdir(parents=True, exist_ok=True)
    for name, *_ in rows:
        with Image.open(source / "images" / name) as image:
            image.load()
            k = turned.get(name, 0) // 90
            (image.rotate(90 * k, expand=True) if k else image).save(out / "images" / name, format="PNG")
    with open(out / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(turned_row(r, turned[r[0]]) if r[0] in turned else r for r in rows)
    return turned


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path)
    ap.add_argument("dest", type=Path, help="the copies go to DEST/<variant>/ (DEST: a dataset folder)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            raise SystemExit(f"--variants: unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
        turned = build(args.source, args.dest, variant)
        print(f"{args.dest / variant}: {len(turned)} turned")


if __name__ == "__main__":
    main()
