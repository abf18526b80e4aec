"""A seeded tree of broken and odd files, names and layouts through a real run, then a rerun (issue 16):
exit 0 or 3, every input file accounted for (a submission row, or an error that names it or its folder),
a submission.csv the evaluator reads, and finished outputs unchanged by the rerun."""

from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imc_ray import cli, evaluate

from .conftest import SAMPLE_SCENE

pytestmark = pytest.mark.slow

SIDE = 160
"""Good images are lego views downscaled to this size: enough to match, quick to extract."""


def _view(k: int) -> Image.Image:
    names = sorted(p.name for p in (SAMPLE_SCENE / "images").iterdir())
    with Image.open(SAMPLE_SCENE / "images" / names[k % len(names)]) as im:
        return im.convert("RGB").resize((SIDE, SIDE), Image.Resampling.BOX)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def _jpeg(k: int) -> bytes:
    buf = io.BytesIO()
    _view(k).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _save(fmt: str, mode: str = "RGB", **kw: object) -> Callable[[Path, int], None]:
    def make(path: Path, k: int) -> None:
        _view(k).convert(mode).save(path, format=fmt, **kw)

    return make


def _exif_rotated(path: Path, k: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = 3
    _view(k).rotate(180).save(path, format="JPEG", exif=exif)


def _bytes(data: bytes | Callable[[int], bytes]) -> Callable[[Path, int], None]:
    return lambda path, k: path.write_bytes(data(k) if callable(data) else data)


BOMB = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
KINDS: dict[str, tuple[str, Callable[[Path, int], None]]] = {
    # kind: (file name pattern, {} = a random stem, maker)
    "png": ("{}.png", _save("PNG")),
    "jpg": ("{}.jpg", _save("JPEG")),
    "upper_ext": ("{}.PNG", _save("PNG")),
    "gray": ("{}.png", _save("PNG", "L")),
    "cmyk": ("{}.jpg", _save("JPEG", "CMYK")),
    "rgba": ("{}.png", _save("PNG", "RGBA")),
    "palette_gif": ("{}.gif", _save("GIF", "P")),
    "bmp": ("{}.bmp", _save("BMP")),
    "tiff": ("{}.tif", _save("TIFF")),
    "webp": ("{}.webp", _save("WEBP")),
    "ppm": ("{}.ppm", _save("PPM")),
    "exif_rotated": ("{}.jpg", _exif_rotated),
    "deep16": ("{}.png", lambda p, k: Image.fromarray(np.asarray(_view(k).convert("L"), np.uint16) * 257).save(p)),
    "dotfile": (".{}.png", _save("PNG")),
    "trailing_space": ("{}.png ", _save("PNG")),
    "inner_spaces": ("a  {} b.png", _save("PNG")),
    "unicode": ("ñandú-{}-日本.png", _save("PNG")),
    "comma_quote": ('{},"q".png', _save("PNG")),
    "carriage_return": ("{}\r.png", _save("PNG")),
    "newline": ("{}\n.jpg", _save("JPEG")),
    "nested": ("sub/{}.png", _save("PNG")),
    "dir_named_png": ("d.png/{}.png", _save("PNG")),
    "empty": ("{}.jpg", _bytes(b"")),
    "text_as_jpg": ("{}.jpg", _bytes(b"this is not a JPEG")),
    "random_bytes": ("{}.png", _bytes(lambda k: random.Random(k).randbytes(500))),
    "truncated_jpg": ("{}.jpg", _bytes(lambda k: _jpeg(k)[: len(_jpeg(k)) // 3])),
    "tiny": ("{}.png", lambda p, k: Image.new("RGB", (1, 1)).save(p)),
    "bomb": ("{}.png", _bytes(BOMB + _png_chunk(b"IEND", b""))),
    "heic": ("{}.HEIC", _bytes(b"\x00\x00\x00\x18ftypheic")),
    "notes": ("{}.txt", _bytes(b"notes")),
    "no_extension": ("{}", _bytes(b"\xff\xd8\xff")),
    "empty_gif": ("{}.gif", _bytes(b"")),
}
"""File kinds (32); layouts (collisions, links, hidden folders, a scene whose images/ is a file, an empty
scene, OUTPUT inside INPUT) are added by :func:`_tree`."""


def _tree(root: Path, rng: random.Random) -> None:
    """Two scenes with 4 good views and a random half of :data:`KINDS` each, plus the odd layouts."""
    for s, scene in enumerate(("alpha", "beta")):
        images = root / "data" / scene / "images"
        images.mkdir(parents=True)
        for k in range(4):
            _view(4 * s + k).save(images / f"good{k}.png")
        for i, kind in enumerate(rng.sample(sorted(KINDS), len(KINDS) // 2 + 2)):
            pattern, make = KINDS[kind]
            path = images / pattern.format(f"{kind}{i}")
            path.parent.mkdir(parents=True, exist_ok=True)
            make(path, rng.randrange(100))
        (images / "sub2").mkdir()  # an hloc key collision: sub2/x.png and sub2-x.png
        _view(1).save(images / "sub2" / "x.png")
        _view(2).save(images / "sub2-x.png")
        (images / ".thumbs").mkdir()  # a hidden folder
        _view(3).save(images / ".thumbs" / "t.png")
        (images / "loop").symlink_to(images, target_is_directory=True)
        (images / "broken_link.png").symlink_to(root / "nowhere.png")
        linked = root / "elsewhere" / scene
        linked.mkdir(parents=True)
        _view(5).save(linked / "linked.png")
        (images / "linked").symlink_to(linked, target_is_directory=True)
        (images.parent / "labels.csv").write_text("image,rotation_matrix,translation_vector\n")  # beside images/
    (root / "data" / "empty" / "images").mkdir(parents=True)
    (root / "data" / "filey").mkdir()
    (root / "data" / "filey" / "images").write_text("a file where the images folder should be")


def _inputs(root: Path) -> set[tuple[str, str, str]]:
    """(scene, relative name, kind of entry) of every file below each images folder, as ``os.walk`` sees it
    without following links (linked folders and loops are entries themselves)."""
    out = set()
    for images in (root / "data").glob("*/images"):
        if not images.is_dir():
            out.add((images.parent.name, "", "images-file"))
            continue
        for p in images.rglob("*"):
            if p.is_symlink() or p.is_file():
                out.add((images.parent.name, p.relative_to(images).as_posix(), "entry"))
    return out


def _digests(out: Path) -> dict[str, str]:
    """sha1 of every finished output file, except those every run rewrites (run.json, the HDF5 files
    merged from the shards, pairs.txt)."""
    rewritten = {"run.json", "features.h5", "global.h5", "matches.h5", "pairs.txt"}
    return {
        p.relative_to(out).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name not in rewritten
    }


def test_fuzzed_tree_every_file_accounted_for_and_rerun_is_stable(ray_local: None, tmp_path: Path) -> None:
    rng = random.Random(1616)
    root = tmp_path / "input"
    _tree(root, rng)
    out = root / "out"  # OUTPUT inside INPUT: never read as input, also on the rerun
    sets = ["mapping.num_threads=1", "features.max_keypoints=256", "matching.rotation_check=false"]
    args = ["run", str(root), str(out), "--preset", "fast", *(a for s in sets for a in ("--set", s))]
    assert cli.main(args) in (cli.EXIT_OK, cli.EXIT_PARTIAL)
    rep = json.loads((out / "run.json").read_text())
    sub = evaluate.read_submission(out / "submission.csv")  # parses, no duplicate rows
    rows = {(scene, name) for (_, scene), images in sub.items() for name in images}
    errors = {(e["scene"], e.get("image", "")) for e in rep["errors"] if "image" in e}
    for scene, name, _ in _inputs(root):
        prefixes = ["/".join(name.split("/")[:k]) for k in range(1, name.count("/") + 2)] if name else [""]
        found = [p for p in prefixes if (scene, p.strip()) in rows or (scene, p) in errors]
        below = [n for s, n in rows | errors if s == scene and n.startswith(f"{name}/")]  # a linked folder
        assert found or below, f"{scene}/{name!r} is in no row and no error"
    assert {scene for scene, _ in rows} == {"alpha", "beta"}  # empty and filey have no images; out is no scene
    assert ("filey", "") in errors and all(not name.startswith("out/") for _, name in rows)
    assert sum(p is not None for images in sub.values() for p in images.values()) >= 4  # some views registered

    before = _digests(out)
    assert cli.main(args) in (cli.EXIT_OK, cli.EXIT_PARTIAL)
    rerun = json.loads((out / "run.json").read_text())
    assert rerun["stages"]["features"]["keypoints"] == 0  # only the unreadable files are tried again
    assert rerun["stages"]["matching"]["pairs"] == 0 and rerun["stages"]["mapping"]["reused"] == 2
    assert sorted(map(json.dumps, rerun["errors"])) == sorted(map(json.dumps, rep["errors"]))
    assert _digests(out) == before
    shutil.rmtree(root / "elsewhere")
