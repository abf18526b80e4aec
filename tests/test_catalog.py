from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imc_ray.config import ImagesConfig
from imc_ray.stages.catalog import CatalogError, ImageError, decode_image, find_scenes, load_image, resize_long_side

from .conftest import SAMPLE, SAMPLE_SCENE

CFG = ImagesConfig()


def _save(path: Path, arr: np.ndarray, **kw: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


def _gradient(h: int = 60, w: int = 80) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 3 % 256, y * 4 % 256, (x + y) % 256], axis=-1).astype(np.uint8)


def test_find_scenes_layouts(tmp_path: Path) -> None:
    scenes = find_scenes(SAMPLE)
    assert [(s.dataset, s.name, len(s.images)) for s in scenes] == [("nerf_synthetic", "lego", 10)]
    assert scenes[0].images[0].name == "r_20.png"

    single = find_scenes(SAMPLE_SCENE)  # <scene>/images
    assert [(s.dataset, s.name) for s in single] == [("nerf_synthetic", "lego")]

    plain = tmp_path / "plain"
    _save(plain / "b.jpg", _gradient())
    _save(plain / "a.png", _gradient())
    (plain / "notes.txt").write_text("not an image")
    s = find_scenes(plain)
    assert [(x.dataset, x.name) for x in s] == [("plain", "plain")]
    assert [r.name for r in s[0].images] == ["a.png", "b.jpg"]

    two_level = tmp_path / "ds_root"
    _save(two_level / "sceneA" / "images" / "x.png", _gradient())
    _save(two_level / "sceneB" / "images" / "sub" / "y.png", _gradient())
    s = find_scenes(two_level)
    assert [(x.dataset, x.name, [r.name for r in x.images]) for x in s] == [
        ("ds_root", "sceneA", ["x.png"]),
        ("ds_root", "sceneB", ["sub/y.png"]),
    ]


def test_find_scenes_errors(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="is not a folder"):
        find_scenes(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CatalogError, match="no scenes found"):
        find_scenes(tmp_path / "empty")


def test_symlink_loop_is_not_followed(tmp_path: Path) -> None:
    images = tmp_path / "s" / "images"
    _save(images / "a.png", _gradient())
    (images / "loop").symlink_to(images, target_is_directory=True)
    [scene] = find_scenes(tmp_path / "s")
    assert [r.name for r in scene.images] == ["a.png"]


def test_rgba_is_composited_on_background() -> None:
    path = SAMPLE_SCENE / "images" / "r_20.png"
    with Image.open(path) as im:
        assert im.mode == "RGBA"
        alpha = np.asarray(im)[..., 3]
    img = decode_image(path, CFG)
    assert img.shape == (800, 800, 3) and img.dtype == np.uint8
    transparent = alpha == 0
    assert transparent.any()
    assert (img[transparent] == 255).all()  # white background, not black
    black = decode_image(path, ImagesConfig(background=(0, 0, 0)))
    assert (black[transparent] == 0).all()


def test_grayscale_16bit_and_cmyk(tmp_path: Path) -> None:
    gray = _save(tmp_path / "g.png", _gradient()[..., 0])
    img = decode_image(gray, CFG)
    assert img.shape == (60, 80, 3)
    assert (img[..., 0] == img[..., 1]).all()

    deep = (np.linspace(0, 65535, 60 * 80).reshape(60, 80)).astype(np.uint16)
    p16 = tmp_path / "deep.png"
    Image.fromarray(deep).save(p16)
    img16 = decode_image(p16, CFG)
    assert img16.dtype == np.uint8 and img16.min() == 0 and img16.max() == 255

    cmyk = tmp_path / "cmyk.jpg"
    Image.fromarray(_gradient()).convert("CMYK").save(cmyk)
    assert decode_image(cmyk, CFG).shape == (60, 80, 3)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    arr = _gradient(60, 80)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rot.jpg"
    Image.fromarray(arr).save(path, exif=exif, quality=95)
    img = decode_image(path, CFG)
    assert img.shape == (80, 60, 3)
    expected = np.rot90(arr, k=-1)
    assert np.abs(img.astype(int) - expected.astype(int)).mean() < 4


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("hello, I am text"), "not a readable image"),
        (lambda p: _save(p, np.zeros((1, 1, 3), np.uint8)), "smaller than images.min_side"),
    ],
)
def test_bad_images_raise_clear_errors(tmp_path: Path, make: object, message: str) -> None:
    path = tmp_path / "bad.jpg"
    make(path)  # type: ignore[operator]
    with pytest.raises(ImageError, match=message) as info:
        decode_image(path, CFG)
    assert str(path) in str(info.value)


def test_truncated_jpeg(tmp_path: Path) -> None:
    good = _save(tmp_path / "good.jpg", _gradient(200, 300), quality=90)
    data = good.read_bytes()
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated.jpg"):
        decode_image(bad, CFG)


def test_decompression_bomb_is_refused(tmp_path: Path) -> None:
    path = _save(tmp_path / "big.png", np.zeros((300, 400, 3), np.uint8))
    with pytest.raises(ImageError, match="more than images.max_pixels=100000"):
        decode_image(path, ImagesConfig(max_pixels=100_000))
    assert decode_image(path, ImagesConfig(max_pixels=200_000)).shape == (300, 400, 3)


def test_load_image_downscales_and_reports_full_size() -> None:
    small, size = load_image(SAMPLE_SCENE / "images" / "r_20.png", CFG, 400)
    assert small.shape == (400, 400, 3)
    assert size == (800, 800)
    same, _ = load_image(SAMPLE_SCENE / "images" / "r_20.png", CFG, 1024)  # never upscaled
    assert same.shape == (800, 800, 3)
    assert resize_long_side(np.zeros((100, 50, 3), np.uint8), 40).shape == (40, 20, 3)


def test_names_differing_in_case_and_non_ascii_are_distinct(tmp_path: Path) -> None:
    images = tmp_path / "s" / "images"
    _save(images / "IMG_1.jpg", _gradient())
    _save(images / "img_1.jpg", _gradient()[::-1].copy())
    _save(images / "façade été.png", _gradient())
    [scene] = find_scenes(tmp_path / "s")
    assert [r.name for r in scene.images] == ["IMG_1.jpg", "façade été.png", "img_1.jpg"]
    assert len({r.path for r in scene.images}) == 3
