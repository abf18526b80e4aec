"""Camera planning: EXIF grouping and focal priors, the known-intrinsics file, camera modes, the focal split
rule and the per-camera principal-point refinement (real files, real pycolmap; no Ray)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

from imc_ray.stages import cameras, mapping

from .conftest import SAMPLE_SCENE

LEGO = SAMPLE_SCENE / "images"


def _photo(path: Path, source: str = "r_20.png", **tags: object) -> Path:
    """A JPEG of a bundled view with EXIF tags: make, model (IFD0), focal, f35, plane_res (Exif IFD)."""
    exif = Image.Exif()
    if "make" in tags:
        exif[0x010F] = tags["make"]
    if "model" in tags:
        exif[0x0110] = tags["model"]
    sub: dict[int, object] = {}
    if "focal" in tags:
        sub[0x920A] = IFDRational(float(tags["focal"]))  # type: ignore[arg-type]
    if "f35" in tags:
        sub[0xA405] = tags["f35"]
    if "plane_res" in tags:  # FocalPlaneXResolution in pixels per cm (unit 3)
        sub[0xA20E], sub[0xA210] = IFDRational(float(tags["plane_res"])), 3  # type: ignore[arg-type]
    if sub:
        exif[0x8769] = sub
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.open(LEGO / source).convert("RGB").save(path, exif=exif)
    return path


def test_read_exif_and_the_focal_prior_follow_pycolmaps_rules(tmp_path: Path) -> None:
    a = _photo(tmp_path / "a.jpg", make="Canon", model="EOS 5D", f35=35, focal=35)
    exif = cameras.read_exif(a)
    assert exif == cameras.ExifCamera(make="Canon", model="EOS 5D", focal_mm=35.0, focal_35mm=35.0)
    # 35 mm equivalent, by the diagonal: f = f35 / 43.27 mm * diagonal in pixels
    assert cameras.exif_focal(a, (800, 800)) == pytest.approx(35 / 43.27 * math.hypot(800, 800), rel=1e-3)
    # focal length in mm with the sensor's pixel density from EXIF (FocalPlaneXResolution): 8 mm at 100 px/mm
    b = _photo(tmp_path / "b.jpg", make="X", model="Y", focal=8, plane_res=1000)
    assert cameras.exif_focal(b, (800, 800)) == pytest.approx(800, rel=1e-3)
    assert cameras.read_exif(LEGO / "r_20.png") is None  # no EXIF: no camera named, no prior
    assert cameras.exif_focal(LEGO / "r_20.png", (800, 800)) is None


def test_auto_groups_by_exif_camera_and_zoom_and_leaves_the_rest_to_earn_sharing(tmp_path: Path) -> None:
    d = tmp_path / "images"
    _photo(d / "a.jpg", make="Canon", model="EOS 5D", f35=28, focal=28)
    _photo(d / "b.jpg", "r_28.png", make="Canon", model="EOS 5D", f35=28, focal=28)
    _photo(d / "zoom.jpg", "r_33.png", make="Canon", model="EOS 5D", f35=50, focal=50)  # same body, zoomed
    _photo(d / "phone.jpg", "r_36.png", make="Apple", model="iPhone", f35=28, focal=4.2)  # another camera
    for name in ("c.jpg", "e.jpg"):
        _photo(d / name, "r_43.png")  # no EXIF
    sizes = dict.fromkeys(["a.jpg", "b.jpg", "zoom.jpg", "phone.jpg", "c.jpg", "e.jpg"], (800, 800))
    groups = {tuple(g.images): g for g in cameras.plan(sizes, d, "auto")}
    assert set(groups) == {("a.jpg", "b.jpg"), ("zoom.jpg",), ("phone.jpg",), ("c.jpg", "e.jpg")}
    wide, tele = groups[("a.jpg", "b.jpg")], groups[("zoom.jpg",)]
    assert wide.source == tele.source == "exif" and not wide.earn
    assert tele.prior_focal == pytest.approx(wide.prior_focal * 50 / 28, rel=1e-3)
    assert groups[("c.jpg", "e.jpg")].source == "size" and groups[("c.jpg", "e.jpg")].earn
    assert groups[("c.jpg", "e.jpg")].prior_focal is None
    cam = cameras.make_camera(wide, "SIMPLE_RADIAL")
    assert cam.has_prior_focal_length and cam.mean_focal_length() == pytest.approx(wide.prior_focal)


def test_camera_modes(tmp_path: Path) -> None:
    d = tmp_path / "images"
    _photo(d / "x" / "a.jpg", make="A", model="1", f35=28)
    _photo(d / "x" / "b.jpg", "r_28.png", make="B", model="2", f35=50)
    _photo(d / "y" / "c.jpg", "r_33.png")
    _photo(d / "y" / "d.jpg", "r_36.png")
    sizes = {"x/a.jpg": (800, 800), "x/b.jpg": (800, 800), "y/c.jpg": (800, 800), "y/d.jpg": (600, 800)}

    def images(mode: str) -> list[list[str]]:
        return [g.images for g in cameras.plan(sizes, d, mode)]

    # single: one camera per size (EXIF does not split it; it forces sharing, nothing to earn)
    assert images("single") == [["x/a.jpg", "x/b.jpg", "y/c.jpg"], ["y/d.jpg"]]
    assert not any(g.earn for g in cameras.plan(sizes, d, "single"))
    assert images("per_folder") == [["x/a.jpg", "x/b.jpg"], ["y/c.jpg"], ["y/d.jpg"]]
    per_image = cameras.plan(sizes, d, "per_image")
    assert [g.images for g in per_image] == [[n] for n in sorted(sizes)]
    assert per_image[0].prior_focal is not None and per_image[2].prior_focal is None  # each with its EXIF prior


def _cameras_file(path: Path, **entry: object) -> Path:
    base: dict[str, object] = {
        "images": "ds/sc/*.jpg",
        "model": "PINHOLE",
        "width": 800,
        "height": 800,
        "params": [900.0, 900.0, 401.0, 399.0],
    }
    path.write_text(json.dumps({"imc_ray_cameras": 1, "cameras": [{**base, **entry}]}))
    return path


def test_known_intrinsics_file_matches_by_glob_and_is_held_fixed(tmp_path: Path) -> None:
    d = tmp_path / "images"
    _photo(d / "a.jpg", make="Canon", model="EOS 5D", f35=28)
    _photo(d / "b.jpg", "r_28.png")
    _photo(d / "c.png", "r_33.png")
    known = cameras.read_cameras_file(_cameras_file(tmp_path / "cams.json"))
    sizes = dict.fromkeys(["a.jpg", "b.jpg", "c.png"], (800, 800))
    groups = cameras.plan(sizes, d, "auto", known, "ds/sc", fix_known=True)
    assert [(g.images, g.source, g.fixed) for g in groups] == [
        (["a.jpg", "b.jpg"], "known", True),  # the file wins over EXIF
        (["c.png"], "size", False),  # not matched by the glob
    ]
    cam = cameras.make_camera(groups[0], "SIMPLE_RADIAL")
    assert cam.model.name == "PINHOLE" and list(cam.params) == [900.0, 900.0, 401.0, 399.0]
    # a photo turned upright by the orientation stage is not matched by the file
    turned = cameras.plan(sizes, d, "auto", known, "ds/sc", rotated={"a.jpg": 180})
    assert turned[0].images == ["a.jpg"] and turned[0].source == "exif"
    with pytest.raises(cameras.CameraFileError, match=r"ds/sc/a\.jpg is 600x800 .* entry 0"):
        cameras.plan({**sizes, "a.jpg": (600, 800)}, d, "auto", known, "ds/sc")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"model": "FISHEYE9"}, "not a COLMAP camera model"),
        ({"params": [900.0, 400.0]}, "PINHOLE takes 4 params"),
        ({"width": True}, "'width' must be a positive integer"),
        ({"params": [900.0, float("nan"), 400.0, 400.0]}, "finite numbers"),
        ({"focal": 1.0}, "needs exactly the keys"),
        ({"params": [-900.0, -900.0, 400.0, 400.0]}, "focal length must be positive"),
    ],
)
def test_bad_cameras_files_are_refused_naming_the_entry(tmp_path: Path, entry: dict, message: str) -> None:
    path = _cameras_file(tmp_path / "cams.json", **entry)
    with pytest.raises(cameras.CameraFileError, match=rf"cams\.json: cameras\[0\]: .*{message}"):
        cameras.read_cameras_file(path)


def test_unreadable_cameras_file_is_a_usage_error_before_any_work(tmp_path: Path) -> None:
    bad = tmp_path / "cams.json"
    bad.write_text("[1, 2]")
    with pytest.raises(cameras.CameraFileError, match="cams.json: expected"):
        cameras.read_cameras_file(bad)
    out = subprocess.run(
        [sys.executable, "-m", "imc_ray.cli", "run", str(SAMPLE_SCENE.parents[1]), str(tmp_path / "out"),
         "--set", f"mapping.cameras_file={bad}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "cams.json: expected" in out.stderr and not (tmp_path / "out" / "run.json").exists()


def _group(n: int) -> cameras.CameraGroup:
    return cameras.CameraGroup([f"i{k:02d}" for k in range(n)], (100, 100), "size", earn=True)


def test_split_by_focal_needs_two_real_groups() -> None:
    rng = np.random.default_rng(0)
    noisy = 1000 * np.exp(rng.normal(0, 0.01, 12))  # one camera, 1% noise
    one = cameras.split_by_focal(_group(12), {f"i{k:02d}": f for k, f in enumerate(noisy)})
    assert len(one) == 1 and one[0].note.startswith("shared")
    zoom = {f"i{k:02d}": f * (1.43 if k % 3 == 1 else 1.0) for k, f in enumerate(noisy)}
    del zoom["i11"]  # not registered by the test mapping
    parts = cameras.split_by_focal(_group(12), zoom)
    assert sorted(len(p.images) for p in parts) == [1, 4, 7]
    assert {p.source for p in parts} == {"focal", "image"}
    zoomed = {"i01", "i04", "i07", "i10"}
    want = {frozenset(zoomed), frozenset(set(zoom) - zoomed), frozenset({"i11"})}
    assert {frozenset(p.images) for p in parts} == want
    # one odd estimate is not a second camera; nor are three estimates enough to test
    odd = {f"i{k:02d}": f for k, f in enumerate(noisy)} | {"i00": 1500.0}
    assert len(cameras.split_by_focal(_group(12), odd)) == 1
    few = cameras.split_by_focal(_group(12), {"i00": 1000.0, "i01": 1430.0})
    assert len(few) == 1 and "too few" in few[0].note


def test_model_focals_reads_each_images_own_camera() -> None:
    opts = pycolmap.SyntheticDatasetOptions()
    opts.num_rigs, opts.num_cameras_per_rig, opts.num_frames_per_rig, opts.num_points3D = 2, 1, 4, 100
    pycolmap.set_random_seed(1)
    rec = pycolmap.synthesize_dataset(opts)
    focals = cameras.model_focals([rec], {im.name for im in rec.images.values()})
    assert len(focals) == 8
    for im in rec.images.values():
        assert focals[im.name] == rec.cameras[im.camera_id].mean_focal_length()


def test_principal_point_is_refined_only_for_the_cameras_allowed() -> None:
    opts = pycolmap.SyntheticDatasetOptions()
    opts.num_rigs, opts.num_cameras_per_rig, opts.num_frames_per_rig, opts.num_points3D = 2, 1, 12, 400
    pycolmap.set_random_seed(2)
    rec = pycolmap.synthesize_dataset(opts)
    a, b = sorted(rec.cameras)
    for cam_id in (a, b):  # move each principal point off the truth
        cam = rec.cameras[cam_id]
        cam.params = [*cam.params[:1], cam.params[1] + 6.0, cam.params[2] - 6.0, *cam.params[3:]]
    before = {c: list(rec.cameras[c].params) for c in (a, b)}
    refined, note = mapping.refine_principal_point(rec, "always", 1, {a})
    assert note.startswith("refined for 1 camera")
    assert list(refined.cameras[b].params) == before[b]  # held constant
    assert refined.cameras[a].params[1] != before[a][1]
    kept, note = mapping.refine_principal_point(rec, "auto", 1, set())
    assert kept is rec and "no shared camera" in note


def _one_camera_each(zoomed: int, rng: np.random.Generator, zoom: float = 1.43) -> pycolmap.Reconstruction:
    """A synthetic scene of 12 images with a camera each, all of one focal length but the first ``zoomed``
    images' (``zoom`` times: their observations are projected again with it), observations with 0.5 px of
    noise."""
    opts = pycolmap.SyntheticDatasetOptions()
    opts.num_rigs, opts.num_cameras_per_rig, opts.num_frames_per_rig, opts.num_points3D = 12, 1, 1, 400
    pycolmap.set_random_seed(3)
    rec = pycolmap.synthesize_dataset(opts)
    for k, image in enumerate(sorted(rec.images.values(), key=lambda im: im.name)):
        cam = rec.cameras[image.camera_id]
        if k < zoomed:
            params = np.array(cam.params)
            params[cam.focal_length_idxs()] *= zoom
            cam.params = params.tolist()
        for p in image.points2D:
            if p.has_point3D():
                xyz = image.cam_from_world() * rec.points3D[p.point3D_id].xyz
                p.xy = cam.img_from_cam(xyz) + rng.normal(0, 0.5, 2)
    return rec


def test_one_focal_cost_tells_a_second_camera_from_noisy_estimates() -> None:
    """One true focal length: estimates spread by the test mapping fit one focal length as well (the split is
    vetoed, ``regroup`` keeps the camera shared); two true focal lengths: one focal length fits far worse."""
    rng = np.random.default_rng(0)
    one = _one_camera_each(0, rng)
    names = sorted(im.name for im in one.images.values())
    for k, image in enumerate(sorted(one.images.values(), key=lambda im: im.name)):  # estimates off by up to 20%
        cam = one.cameras[image.camera_id]
        params = np.array(cam.params)
        params[cam.focal_length_idxs()] *= 1.2 if k % 3 == 1 else 1.0
        cam.params = params.tolist()
    assert cameras.held_focal_costs(one, [[names]])[0] <= cameras.ONE_FOCAL_MAX_COST
    two = _one_camera_each(4, rng)
    one_focal, right_cut, wrong_cut = cameras.held_focal_costs(
        two, [[names], [names[:4], names[4:]], [names[:6], names[6:]]]
    )
    assert one_focal > 1.5 and right_cut <= 1.02 and wrong_cut > 1.2
    group = cameras.CameraGroup(names, (100, 100), "size", earn=True)
    focals = {n: 1000.0 * (1.2 if k % 3 == 1 else 1.0) for k, n in enumerate(names)}  # a split by the gap rule
    assert len(cameras.split_by_focal(group, focals)) == 2
    kept = cameras.regroup([group], focals, one)
    assert len(kept) == 1 and "one focal length fits them as well" in kept[0].note and not kept[0].earn
    group.earn = True
    assert len(cameras.regroup([group], focals, two)) == 2


def test_two_zoom_levels_too_close_for_the_gap_rule_are_split_by_reprojection_error() -> None:
    """Focal lengths 1.1x apart (under the gap rule's 12%): the gap rule keeps one camera, one focal length
    fits the test model clearly worse, and the two-means cut of the estimates fits as well as one each."""
    two = _one_camera_each(4, np.random.default_rng(1), zoom=1.1)
    names = sorted(im.name for im in two.images.values())
    focals = cameras.model_focals([two], set(names))
    group = cameras.CameraGroup(names, (100, 100), "size", earn=True)
    assert len(cameras.split_by_focal(group, focals)) == 1
    group.earn = True
    parts = cameras.regroup([group], focals, two)
    assert sorted(sorted(p.images) for p in parts) == [names[:4], names[4:]]
    assert all(p.source == "focal" and "two x1.0" in p.note for p in parts) and not any(p.earn for p in parts)
    assert cameras.best_cut(np.log([1.0, 1.01, 1.5, 1.52, 1.49])) == 2
    assert cameras.best_cut(np.log([1.0, 1.01, 1.5])) is None  # each part needs two
