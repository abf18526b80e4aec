"""Stage 1: find scenes and images, and decode images.

Input layouts (``find_scenes``); exactly one applies, else the tree is refused with a message:
  * ``ROOT/<dataset>/<scene>/images/*``  (IMC style; ``labels.csv`` beside ``images/`` is ignored here);
  * ``ROOT/<scene>/images/*``            (dataset = ROOT's name);
  * ``ROOT/images/*``                    (one scene: dataset = ROOT's parent name, scene = ROOT's name);
  * ``ROOT/*``                           (one plain folder of images: dataset = scene = ROOT's name).
Photos at the root beside scene folders, or scene folders beside ``ROOT/images``, are a
:class:`CatalogError` that names them (never a silent merge). The OUTPUT folder, and any folder holding
imc-ray's output marker (``formats.OUTPUT_MARKER``), is never read as input.

Every file below an images folder ends in one place: an :class:`ImageRef` (decoded later), or a
:class:`Problem` that says why it is not used (``Scene.problems``; the pipeline lists them in
``run.json`` → ``errors``). A problem file that is a photo (an undecodable format, a name with a line
break, a name whose HDF5 key another image has) still gets a ``nan`` row in ``submission.csv``.
Symlinked folders are followed, each real folder once.

Masks (COLMAP's convention): ``masks/<image name>.png`` beside a scene's ``images/`` folder, zero where
keypoints are dropped (:func:`load_mask`; ``ImageRef.mask_file``). A mask is in the pixels of the image as decoded
here (EXIF orientation applied); a mask with the stored size of a photo that EXIF turns by 90 degrees is
turned with it. Files in ``masks/`` that belong to no image are named in a warning. A plain folder of photos
has no masks: its ``masks/`` folder is not read (a :class:`Problem`, not photos).

Decoding (``decode_image``) applies the EXIF orientation, composites alpha onto a fixed background,
expands grayscale, scales 16-bit data to 8 bits, and refuses decompression bombs and tiny images
with an :class:`ImageError` that names the file and the fix.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from imc_ray.config import ImagesConfig
from imc_ray.formats import OUTPUT_MARKER, image_key

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif"})
UNDECODABLE_PHOTOS = frozenset(
    {".heic", ".heif", ".avif", ".jxl", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf", ".rw2", ".raf", ".raw"}
)
"""Photo formats Pillow cannot decode here: listed with a ``nan`` row and an error saying to convert them."""


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
    mask_file: str = ""
    """Path of the image's mask (``masks/<name>.png``), or empty."""


@dataclass(frozen=True)
class Problem:
    """A file (or, with an empty ``name``, the scene itself) that is not used, and why.

    ``row``: the file is a photo, so ``submission.csv`` still lists it (with ``nan``)."""

    name: str
    error: str
    row: bool = False


@dataclass(frozen=True)
class Scene:
    """One scene: a folder of images to reconstruct together."""

    dataset: str
    name: str
    image_dir: Path
    images: tuple[ImageRef, ...]
    problems: tuple[Problem, ...] = ()

    @property
    def folder(self) -> Path:
        """The scene's folder: the one holding ``images/`` (and ``masks/``), or the plain folder of photos."""
        return self.image_dir.parent if self.image_dir.name == "images" else self.image_dir

    def row_names(self) -> list[str]:
        """The image names ``submission.csv`` lists: every usable image, then every problem photo."""
        return [r.name for r in self.images] + [p.name for p in self.problems if p.row]


def _is_output(folder: Path, exclude: frozenset[Path]) -> bool:
    """Whether ``folder`` is an OUTPUT (named in ``exclude``, or holding imc-ray's output marker)."""
    return folder.resolve() in exclude or (folder / OUTPUT_MARKER).is_file()


def _walk(image_dir: Path, exclude: frozenset[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Every file below ``image_dir`` (symlinked folders followed once each; hidden folders, OUTPUT folders
    and the ``masks/`` folder of a plain folder of photos not entered), and the folders not entered with the
    reason (OUTPUT folders are not reported)."""
    files: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    seen = {image_dir.resolve()}
    for dirpath, dirnames, filenames in os.walk(image_dir, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            sub = Path(dirpath) / d
            if _is_output(sub, exclude):
                logger.info("%s: an imc-ray output folder, not read as input", sub)
            elif d == MASKS_DIR and sub.parent == image_dir and masks_dir(image_dir) is None:
                why = f"masks beside no images/ folder, not read; to use them, move the photos into {image_dir}/images/"
                skipped.append((sub, why))
            elif d.startswith("."):
                skipped.append((sub, "hidden folder, not read; move the photos out of it to use them"))
            elif sub.resolve() in seen:
                skipped.append((sub, "a link to a folder read already (a loop or a duplicate); not read again"))
            else:
                seen.add(sub.resolve())
                keep.append(d)
        dirnames[:] = keep
        files.extend(Path(dirpath) / f for f in sorted(filenames))
    return files, skipped


def _name_problem(path: Path, name: str) -> Problem | None:
    """Why the file cannot be an input image by its name alone, or None."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        shown = name.encode("utf-8", "backslashreplace").decode()
        return Problem(shown, f"{str(path).encode('utf-8', 'backslashreplace').decode()}: name is not UTF-8; rename it")
    ext = Path(name.rstrip()).suffix.lower()
    if ext in UNDECODABLE_PHOTOS:
        return Problem(name, f"{path}: {ext} photos cannot be decoded here; convert it to JPEG or PNG", row=True)
    if ext not in IMAGE_EXTENSIONS:
        kind = f"'{ext}'" if ext else "no extension"
        return Problem(name, f"{path}: not an image file ({kind}); move it out of the images folder")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return Problem(
            name, f"{str(path)!r}: the file name holds a control character (a line break?); rename it", row=True
        )
    return None


def _scene(dataset: str, name: str, image_dir: Path, exclude: frozenset[Path] = frozenset()) -> Scene:
    """The images of one scene folder, and a :class:`Problem` for every file that cannot be one."""
    files, skipped = _walk(image_dir, exclude)
    refs: list[ImageRef] = []
    problems = [Problem(p.relative_to(image_dir).as_posix(), f"{p}: {why}") for p, why in skipped]
    keys: dict[str, Path] = {}  # hloc key of an image name ('/' -> '-') -> its file: pair keys must not collide
    for p in files:
        rel = p.relative_to(image_dir).as_posix()
        problem = _name_problem(p, rel)
        key = image_key(rel)
        if problem is None and key in keys:
            problem = Problem(rel, f"{p}: same HDF5 key {key!r} as {keys[key]}; rename one of them", row=True)
        if problem is not None:
            problems.append(problem)
            continue
        keys[key] = p
        mask = mask_path(image_dir, rel)
        refs.append(ImageRef(dataset=dataset, scene=name, name=rel, path=str(p), mask_file=str(mask) if mask else ""))
    _warn_unused_masks(image_dir, {r.name for r in refs})
    return Scene(dataset=dataset, name=name, image_dir=image_dir, images=tuple(refs), problems=tuple(problems))


MASKS_DIR = "masks"
"""The folder beside a scene's ``images/`` that holds its masks (module docstring)."""


def masks_dir(image_dir: Path) -> Path | None:
    """The scene's ``masks/`` folder, beside ``image_dir`` when it is an ``images/`` folder; None for a plain
    folder of photos, which has no masks."""
    return image_dir.parent / MASKS_DIR if image_dir.name == "images" else None


def mask_path(image_dir: Path, name: str) -> Path | None:
    """The mask of image ``name`` (``<image_dir>/../masks/<name>.png``), or None when there is none."""
    folder = masks_dir(image_dir)
    path = folder / f"{name}.png" if folder is not None else None
    return path if path is not None and path.is_file() else None


def _warn_unused_masks(image_dir: Path, names: set[str]) -> None:
    """Warn about files in ``masks/`` that are the mask of no image (a wrong name drops no keypoint)."""
    folder = masks_dir(image_dir)
    if folder is None or not folder.is_dir():
        return
    unused = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.relative_to(folder).as_posix().removesuffix(".png") not in names
    )
    if unused:
        logger.warning(
            "%s: %d file(s) are the mask of no image (%s); a mask is named <image name>.png, e.g. masks/%s.png",
            folder,
            len(unused),
            _listing(unused),
            sorted(names)[0] if names else "a.jpg",
        )


@dataclass(frozen=True)
class InputLayout:
    """Which input layout a tree has (module docstring): ``images`` (``ROOT/images``), ``plain`` (photos at the
    root: one plain folder) or ``scenes`` (``folders``: ``<scene>`` or ``<dataset>/<scene>``, each holding
    ``images``)."""

    kind: str
    folders: tuple[str, ...] = ()


def is_photo(name: str) -> bool:
    """Whether a file name looks like a photo (decodable here or not) by its extension."""
    return PurePosixPath(name.rstrip()).suffix.lower() in IMAGE_EXTENSIONS | UNDECODABLE_PHOTOS


def input_layout(entries: Iterable[str], where: str) -> InputLayout:
    """The one layout rule, for a local tree (:func:`find_scenes`) and a URI INPUT (``storage.image_plan``).

    entries: POSIX paths below the root, of files and (with a trailing ``/``) folders; hidden and OUTPUT
    folders already left out. A scene folder is one or two levels deep and holds ``images`` (a folder, or a
    file that the catalog then reports); one level deep wins over the folders inside it.

    Raises:
        CatalogError: ``images`` or photos at the root beside scene folders (named), or no scene at all.
    """
    paths = [(e, e.rstrip("/").split("/")) for e in entries]
    top = {p[0] for _, p in paths if len(p) >= 2 and p[1] == "images"}
    deep = {"/".join(p[:2]) for _, p in paths if len(p) >= 3 and p[2] == "images" and p[0] not in top}
    folders = tuple(sorted(top | deep))
    photos = sorted(e for e, p in paths if len(p) == 1 and not e.endswith("/") and is_photo(e))
    if any(p == ["images"] or (p[0] == "images" and len(p) > 1) for _, p in paths):
        if folders:
            raise CatalogError(
                f"input {where} has both images/ and scene folders ({_listing(list(folders))}); "
                "move images/ into a scene folder of its own, or pass one scene folder as INPUT"
            )
        return InputLayout("images")
    if photos and folders:
        raise CatalogError(
            f"input {where} has photos beside its scene folders ({_listing(photos)}); "
            "move them into a scene's images/ folder, or remove them"
        )
    if photos:
        return InputLayout("plain")
    if not folders:
        raise CatalogError(
            f"no scenes found under {where}: expected <dataset>/<scene>/images/*, <scene>/images/* "
            "or a folder of image files (" + ", ".join(sorted(IMAGE_EXTENSIONS)) + ")"
        )
    return InputLayout("scenes", folders)


def _entries(root: Path, exclude: frozenset[Path]) -> list[str]:
    """The paths :func:`input_layout` needs of a local tree: root files and folders, and two levels of folders
    below (hidden and OUTPUT folders left out)."""

    def visible_dirs(folder: Path) -> list[Path]:
        found = (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        return sorted(p for p in found if not _is_output(p, exclude))

    out = [p.name for p in sorted(root.iterdir()) if not p.is_dir()]
    for child in visible_dirs(root):
        out += [f"{child.name}/"] + [f"{child.name}/images"] * (child / "images").exists()
        for sub in visible_dirs(child):
            out += [f"{child.name}/{sub.name}/"] + [f"{child.name}/{sub.name}/images"] * (sub / "images").exists()
    return out


def _listing(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def find_scenes(root: Path, exclude: Iterable[Path] = ()) -> list[Scene]:
    """Find the scenes of an input tree (layouts in the module docstring), sorted by (dataset, scene).

    ``exclude``: folders never read (the run's OUTPUT and work directory)."""
    root = Path(root)
    if not root.is_dir():
        raise CatalogError(f"input {root} is not a folder; pass an IMC-style tree or a folder of images")
    skip = frozenset(Path(p).resolve() for p in exclude)
    if root.resolve() in skip:
        raise CatalogError(f"input {root} is the OUTPUT folder; write OUTPUT to another folder")
    layout = input_layout(_entries(root, skip), str(root))
    name = root.resolve().name
    if layout.kind == "plain":
        return [_scene(name, name, root, skip)]
    if layout.kind == "images":
        scenes = [_scene_or_problem(root.resolve().parent.name, name, root, skip)]
    else:
        named = [(f.split("/") if "/" in f else [name, f]) for f in layout.folders]
        scenes = [_scene_or_problem(d, s, root / f, skip) for (d, s), f in zip(named, layout.folders, strict=True)]
    _check_unique(scenes)
    for s in scenes:
        if not s.images:
            logger.warning("scene %s/%s: no usable images in %s; it is skipped", s.dataset, s.name, s.image_dir)
    return sorted(scenes, key=lambda s: (s.dataset, s.name))


def _scene_or_problem(dataset: str, name: str, folder: Path, exclude: frozenset[Path]) -> Scene:
    """The scene of ``folder/images``; a scene without images and with a :class:`Problem` when ``images``
    is not a folder."""
    images = folder / "images"
    if images.is_dir():
        return _scene(dataset, name, images, exclude)
    why = f"{images} is not a folder; put the scene's photos in a folder named images"
    return Scene(dataset=dataset, name=name, image_dir=images, images=(), problems=(Problem("", why),))


def _check_unique(scenes: list[Scene]) -> None:
    """Two scene folders must not share a (dataset, scene) name: their outputs would share a folder."""
    seen: dict[tuple[str, str], Path] = {}
    for s in scenes:
        other = seen.setdefault((s.dataset, s.name), s.image_dir)
        if other != s.image_dir:
            raise CatalogError(
                f"{other} and {s.image_dir} are both scene {s.dataset}/{s.name}; rename one of the folders"
            )


def catalog_errors(scenes: Iterable[Scene]) -> list[dict[str, str]]:
    """``run.json`` → ``errors`` entries of every :class:`Problem` (an empty ``image`` is the scene's own)."""
    return [
        {"dataset": s.dataset, "scene": s.name, "image": p.name, "error": p.error} for s in scenes for p in s.problems
    ]


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


def load_mask(path: str | Path, photo: str | Path, size: tuple[int, int], work: tuple[int, int]) -> np.ndarray:
    """A scene mask (module docstring) at the working size.

    size: (W, H) of the decoded photo; work: (w, h) of the image the models see.
    Returns: (h, w) bool, True where keypoints are kept.

    Raises:
        ImageError: the mask is unreadable or its size is not the photo's (the message names both files).
    """
    try:
        with Image.open(path) as im:
            im.load()
            mask = im.convert("L")
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(
            f"{path}: not a readable mask ({exc}); a mask is a PNG, zero where keypoints are dropped"
        ) from None
    if mask.size != size and mask.size == (size[1], size[0]):  # the stored photo's pixels: turn as EXIF says
        with Image.open(photo) as im:
            mask.getexif()[ExifTags.Base.Orientation] = im.getexif().get(ExifTags.Base.Orientation, 1)
        mask = ImageOps.exif_transpose(mask)
    if mask.size != size:
        raise ImageError(
            f"{path}: mask is {mask.size[0]}x{mask.size[1]} but its photo {photo} is {size[0]}x{size[1]}; "
            "make the mask the size of the photo"
        )
    return np.asarray(mask.resize(work, Image.Resampling.NEAREST)) > 0
