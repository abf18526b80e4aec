"""The viewer: read-only loaders and PNG pictures over a real run, and the Streamlit app through ``AppTest``."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from imc_ray.formats import (
    Features,
    feature_names_h5,
    match_counts_h5,
    read_features_h5,
    read_matches_h5,
    write_features_h5,
    write_matches_h5,
)
from imc_ray.report import RunReport, SceneReport
from imc_ray.stages.mapping import SceneResult
from imc_ray.viewer import OUTPUT_ENV, ViewerError, data, launch, streamlit_command
from imc_ray.viewer.draw import INLIER_RGB, REJECTED_RGB, draw_keypoints, draw_matches
from imc_ray.viewer.render import best_and_worst, render

APP = Path(__file__).resolve().parents[1] / "imc_ray" / "viewer" / "app.py"
LEGO = ("nerf_synthetic", "lego")

Run = tuple[Path, dict[str, Any]]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file below ``folder`` -> (size, mtime in ns): what a read-only reader must leave unchanged."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def run_copy(sample_run: Run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the sample run's output (tests that add files, e.g. evaluation.json, use it)."""
    dst = tmp_path_factory.mktemp("viewer_run") / "out"
    shutil.copytree(sample_run[0], dst)
    return dst


def colour_share(img: np.ndarray, rgb: tuple[int, int, int], tol: int = 40) -> float:
    """Share of pixels within ``tol`` of ``rgb``."""
    diff = np.abs(img[..., :3].astype(int) - np.asarray(rgb)[None, None, :]).max(axis=2)
    return float(np.mean(diff <= tol))


# ----------------------------------------------------------------------------- paths and loaders


def test_resolve_inside_refuses_names_that_leave(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "outside.txt").write_text("x")
    (tmp_path / "a" / "link").symlink_to(tmp_path / "outside.txt")
    assert data.resolve_inside(tmp_path / "a", "b", "c.png") == (tmp_path / "a" / "b" / "c.png").resolve()
    for bad in (("..", "outside.txt"), ("b", "..", "..", "x"), ("/etc/passwd",), ("link",), ("",)):
        with pytest.raises(ViewerError):
            data.resolve_inside(tmp_path / "a", *bad)


def test_check_output_needs_a_run(tmp_path: Path) -> None:
    with pytest.raises(ViewerError, match=r"run\.json"):
        data.check_output(tmp_path)
    with pytest.raises(ViewerError, match="not a folder"):
        data.check_output(tmp_path / "missing")
    with pytest.raises(ViewerError):
        streamlit_command(tmp_path)
    with pytest.raises(ViewerError):
        launch(tmp_path)


def test_hostile_run_json_names_stay_inside(tmp_path: Path) -> None:
    """Scene keys and image names from the run's own files never lead out of OUTPUT or the images folder."""
    (tmp_path / "secret").mkdir()
    out = tmp_path / "out"
    out.mkdir()
    rep = {"input": str(tmp_path), "scenes": {"../secret": {"num_images": 1}}, "stages": {}, "errors": []}
    (out / "run.json").write_text(json.dumps(rep))
    (summary,) = data.list_scenes(data.load_report(out))
    with pytest.raises(ViewerError):
        data.list_pairs(out, summary.dataset, summary.scene)
    with pytest.raises(ViewerError):
        data.load_model(out, summary.dataset, summary.scene)
    images = tmp_path / "ds" / "sc" / "images"
    images.mkdir(parents=True)
    with pytest.raises(ViewerError):
        data.image_path(RunReport.from_json(rep), "ds", "sc", "../../../secret")
    (tmp_path / "secret" / "images").mkdir()
    (tmp_path / "secret" / "images" / "x.png").write_bytes(b"not shown")
    with pytest.raises(ViewerError):
        data.image_path(RunReport(input=str(images.parent)), "..", "..", "secret/images/x.png")
    with pytest.raises(ViewerError):
        data.image_path(RunReport(input=str(images.parent)), "..", "secret", "x.png")


def test_loaders_on_a_real_run(sample_run: Run) -> None:
    out, rep = sample_run
    before = snapshot(out)
    report = data.load_report(out)
    scenes = {s.key: s for s in data.list_scenes(report)}
    assert set(scenes) == set(rep["scenes"])
    lego = scenes["nerf_synthetic/lego"]
    assert lego.num_registered == rep["scenes"]["nerf_synthetic/lego"]["num_registered"] >= 3
    assert set(data.stage_seconds(report)) >= {"features", "matching", "mapping"}
    assert any(e["what"] == "broken.jpg" for e in data.image_errors(report))
    assert data.load_evaluation(out) is None

    status = data.image_status(out, report, *LEGO)
    assert len(status) == lego.num_images
    assert sum(status.values()) == lego.num_registered
    assert "broken.jpg" in data.unregistered_images(out, report, *LEGO)

    pairs = data.list_pairs(out, *LEGO)
    assert pairs and [p.num_matches for p in pairs] == sorted((p.num_matches for p in pairs), reverse=True)
    assert all(0 <= p.num_inliers <= p.num_matches for p in pairs)
    best = pairs[0]
    pm = data.load_pair(out, *LEGO, best.name0, best.name1)
    assert len(pm.matches) == best.num_matches and pm.num_inliers == best.num_inliers > 0
    assert pm.matches[:, 0].max() < len(pm.keypoints0) and pm.matches[:, 1].max() < len(pm.keypoints1)

    model = data.load_model(out, *LEGO)
    assert model is not None
    assert len(model.cameras) == lego.model_sizes[0] and len(model.points) > 100
    assert model.colors.dtype == np.uint8 and model.points.shape[1] == 3
    assert data.frustum_segments(model).shape == (8 * len(model.cameras), 2, 3)

    feats = data.load_keypoints(out, *LEGO, best.name0)
    photo = data.load_photo(report, *LEGO, best.name0)
    assert photo.shape[1::-1] == feats.image_size
    with pytest.raises(ViewerError):
        data.load_keypoints(out, *LEGO, "no-such.png")
    assert snapshot(out) == before, "the loaders wrote into OUTPUT"


def test_inliers_agree_with_pycolmap(sample_run: Run, tmp_path: Path) -> None:
    """``read_inlier_matches`` (pycolmap on a private copy) returns what pycolmap's ``read_two_view_geometry``
    returns on a copy of the run's database, in both orders of a pair, and leaves the run's file untouched."""
    import pycolmap

    out, _ = sample_run
    db_path = out / "nerf_synthetic" / "lego" / "database.db"
    shutil.copy(db_path, tmp_path / "database.db")
    db = pycolmap.Database.open(str(tmp_path / "database.db"))
    try:
        ids = {im.name: im.image_id for im in db.read_all_images()}
        checked = 0
        for p in data.list_pairs(out, *LEGO)[:6]:
            for a, b in ((p.name0, p.name1), (p.name1, p.name0)):
                want = np.asarray(db.read_two_view_geometry(ids[a], ids[b]).inlier_matches)
                got = data.read_inlier_matches(db_path, a, b)
                np.testing.assert_array_equal(got, want.reshape(-1, 2))
            checked += 1
        assert checked
    finally:
        db.close()
    con = sqlite3.connect(db_path)  # the file is still a healthy database, untouched
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()


def test_database_errors(tmp_path: Path) -> None:
    with pytest.raises(ViewerError, match="no such database"):
        data.read_inlier_matches(tmp_path / "database.db", "a.png", "b.png")
    (tmp_path / "database.db").write_bytes(b"not a database" * 100)
    with pytest.raises(ViewerError, match="not a COLMAP database"):
        data.read_inlier_matches(tmp_path / "database.db", "a.png", "b.png")


def test_formats_names_and_match_counts_on_a_real_run(sample_run: Run) -> None:
    """``feature_names_h5`` and ``match_counts_h5`` agree with the full readers on the run's own files."""
    out, _ = sample_run
    sdir = out / "nerf_synthetic" / "lego"
    names = feature_names_h5(sdir / "features.h5")
    assert names == sorted(read_features_h5(sdir / "features.h5")) and "broken.jpg" not in names
    counts = match_counts_h5(sdir / "matches.h5", names)
    assert counts and {a for pair in counts for a in pair} <= set(names)
    for (a, b), n in counts.items():
        assert n == len(read_matches_h5(sdir / "matches.h5", a, b)[0]) > 0


def test_match_counts_map_keys_back_to_names(tmp_path: Path) -> None:
    """Names with ``/`` (group keys with ``-``) come back as names; a key no name gives comes back as it is."""
    feats = {
        n: Features(np.zeros((k, 2), np.float32), np.ones(k, np.float32), np.zeros((k, 4), np.float32), (8, 6))
        for n, k in (("sub/a.png", 5), ("b.png", 3), ("c.png", 4))
    }
    write_features_h5(tmp_path / "features.h5", feats)
    assert feature_names_h5(tmp_path / "features.h5") == ["b.png", "c.png", "sub/a.png"]
    idx = np.array([[0, 2], [3, 0]], np.int32)
    matches = {("sub/a.png", "b.png"): (idx, np.ones(2, np.float32)), ("c.png", "b.png"): (idx[:1], np.ones(1))}
    write_matches_h5(tmp_path / "matches.h5", matches, {n: len(f.keypoints) for n, f in feats.items()})
    counts = match_counts_h5(tmp_path / "matches.h5", ["sub/a.png", "b.png", "c.png"])
    assert counts == {("sub/a.png", "b.png"): 2, ("c.png", "b.png"): 1}
    assert match_counts_h5(tmp_path / "matches.h5", ["b.png"]) == {("sub-a.png", "b.png"): 2, ("c.png", "b.png"): 1}


def test_draw_pictures(sample_run: Run) -> None:
    out, rep = sample_run
    best = data.list_pairs(out, *LEGO)[0]
    pm = data.load_pair(out, *LEGO, best.name0, best.name1)
    p0, p1 = (data.load_photo(RunReport.from_json(rep), *LEGO, n) for n in (best.name0, best.name1))
    img = draw_matches(p0, p1, pm, max_height=400)
    assert img.shape[0] == 400 and img.shape[1] > 800
    assert colour_share(img, INLIER_RGB, 10) > 0.005
    only_rejected = draw_matches(p0, p1, pm, max_height=400, inliers=False)
    assert colour_share(only_rejected, INLIER_RGB, 10) < colour_share(img, INLIER_RGB, 10)
    kp = draw_keypoints(p0, data.load_keypoints(out, *LEGO, best.name0).keypoints)
    assert kp.shape == p0.shape and not np.array_equal(kp, p0)


# ----------------------------------------------------------------------------- render


def test_best_and_worst_never_repeat_a_pair() -> None:
    pairs = [data.PairInfo(f"a{i}", f"b{i}", 100 - i, 90 - 2 * i) for i in range(4)]
    best, worst = best_and_worst(pairs, 3)
    assert [p.name0 for p in best] == ["a0", "a1", "a2"] and [p.name0 for p in worst] == ["a3"]
    assert best_and_worst([], 3) == ([], [])


def test_render_writes_pictures_only_into_dest(sample_run: Run, tmp_path: Path) -> None:
    out, rep = sample_run
    before = snapshot(out)
    paths = render(out, tmp_path / "pics", top=2)
    assert snapshot(out) == before, "render wrote into OUTPUT although dest was elsewhere"
    assert paths and all(p.is_file() and tmp_path / "pics" in p.parents for p in paths)
    lego = tmp_path / "pics" / "nerf_synthetic" / "lego"
    names = {p.name for p in paths if p.parent == lego}
    assert {"overview.png", "best-1.png", "best-2.png", "worst-1.png", "worst-2.png"} <= names
    for scene in rep["scenes"]:
        assert (tmp_path / "pics" / scene / "overview.png").is_file(), scene
    for p in paths:
        img = np.asarray(Image.open(p).convert("RGB"))
        assert p.stat().st_size > 10_000, p
        assert img.shape[0] >= 300 and img.shape[1] >= 600, p
        assert img.std() > 10, f"{p} looks blank"
    best = np.asarray(Image.open(lego / "best-1.png").convert("RGB"))
    assert colour_share(best, INLIER_RGB, 30) > 0.002, "no green inlier lines on the best pair"
    worst = np.asarray(Image.open(lego / "worst-1.png").convert("RGB"))
    worst_pair = best_and_worst(data.list_pairs(out, *LEGO), 2)[1][0]  # what worst-1.png shows
    if worst_pair.num_matches > worst_pair.num_inliers:
        assert colour_share(worst, REJECTED_RGB, 40) > 0.0005, "no red rejected lines on the worst pair"
    overview = np.asarray(Image.open(lego / "overview.png").convert("RGB"))
    assert colour_share(overview, (255, 0, 0), 30) > 0.0002, "no camera centres on the overview"


def test_render_default_dest_is_output_pictures(run_copy: Path) -> None:
    paths = render(run_copy, top=1)
    assert paths and all((run_copy / "pictures") in p.parents for p in paths)
    with pytest.raises(ViewerError):
        render(run_copy / "nerf_synthetic")


# ----------------------------------------------------------------------------- the app (AppTest)


def app_test(output: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    st_testing = pytest.importorskip("streamlit.testing.v1")
    pytest.importorskip("plotly")
    monkeypatch.setenv(OUTPUT_ENV, str(output))
    at = st_testing.AppTest.from_file(str(APP), default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def metrics(at: Any) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_app_overview_scenes_counts_and_scores(
    run_copy: Path, sample_input: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imc_ray import evaluate

    rep = data.load_report(run_copy).to_json()
    at = app_test(run_copy, monkeypatch)
    total = sum(s["num_images"] for s in rep["scenes"].values())
    reg = sum(s.get("num_registered", 0) for s in rep["scenes"].values())
    assert metrics(at)["Scenes"] == str(len(rep["scenes"]))
    assert metrics(at)["Images registered"] == f"{reg} / {total}"
    table = at.dataframe[0].value
    assert set(table["scene"]) == set(rep["scenes"])
    lego_row = table[table["scene"] == "nerf_synthetic/lego"].iloc[0]
    assert lego_row["registered"] == rep["scenes"]["nerf_synthetic/lego"]["num_registered"]
    assert "mAA 2023" not in table.columns
    assert any("not evaluated" in c.value for c in at.caption)
    assert at.get("plotly_chart"), "no stage timings chart"
    errors = at.dataframe[1].value
    assert "broken.jpg" in set(errors["what"])

    result = evaluate.evaluate(run_copy / "submission.csv", sample_input)
    (run_copy / data.EVALUATION_FILE).write_text(json.dumps(result))
    at = app_test(run_copy, monkeypatch)
    table = at.dataframe[0].value
    score = table[table["scene"] == "nerf_synthetic/lego"].iloc[0]["mAA 2023"]
    lego_eval = next(r for r in result["scenes"] if (r["dataset"], r["scene"]) == LEGO)
    assert score == pytest.approx(100.0 * lego_eval["imc2023_maa"], abs=0.01)
    assert "overall mAA 2023" in metrics(at)


def test_app_scene_images_and_pairs(sample_run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    out, rep = sample_run
    before = snapshot(out)
    at = app_test(out, monkeypatch)
    at.sidebar.selectbox(key="scene").set_value("nerf_synthetic/lego")
    lego = rep["scenes"]["nerf_synthetic/lego"]

    at.sidebar.radio(key="view").set_value("Scene 3D").run()
    assert not at.exception
    assert metrics(at)["Registered"] == f"{lego['num_registered']} / {lego['num_images']}"
    assert at.get("plotly_chart"), "no 3D view"
    assert "broken.jpg" in set(at.dataframe[0].value["image"]), "unregistered images are not listed"

    at.sidebar.radio(key="view").set_value("Images").run()
    assert not at.exception
    assert "broken.jpg" not in at.selectbox(key="image").options  # no features: not browsable
    assert at.get("image"), "no photo"
    assert any("keypoints" in c.value for c in at.caption)

    at.sidebar.radio(key="view").set_value("Pairs").run()
    assert not at.exception
    pairs = data.list_pairs(out, *LEGO)
    box = at.selectbox(key="pair")
    assert box.options == [p.label for p in pairs]  # sorted by match count
    assert at.get("image"), "no match image"
    box.set_value(len(pairs) - 1).run()
    assert not at.exception
    assert any(f"{pairs[-1].num_matches} matches" in c.value for c in at.caption)
    assert snapshot(out) == before, "the app wrote into OUTPUT"


def test_app_every_view_of_every_scene(sample_run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scenes without a model, without pairs or without images render a note, never an exception."""
    out, rep = sample_run
    at = app_test(out, monkeypatch)
    for key in rep["scenes"]:
        at.sidebar.selectbox(key="scene").set_value(key)
        for view in ("Scene 3D", "Images", "Pairs"):
            at.sidebar.radio(key="view").set_value(view).run()
            assert not at.exception, (key, view, [e.value for e in at.exception])
            assert at.header[0].value.endswith(key), (key, view)


def test_app_without_output(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    st_testing = pytest.importorskip("streamlit.testing.v1")
    monkeypatch.setenv(OUTPUT_ENV, str(tmp_path))
    at = st_testing.AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    assert not at.exception
    assert at.error and "run.json" in at.error[0].value


def test_streamlit_command(sample_run: Run) -> None:
    out, _ = sample_run
    cmd = streamlit_command(out, port=8765, address="127.0.0.1")
    assert cmd[1:4] == ["-m", "streamlit", "run"] and Path(cmd[4]) == APP
    assert cmd[cmd.index("--server.port") + 1] == "8765"
    assert cmd[cmd.index("--server.headless") + 1] == "true"
    assert cmd[-2:] == ["--", str(out.resolve())]
    assert os.path.isfile(cmd[4])


def test_render_and_loaders_do_not_import_streamlit() -> None:
    """The core install stays lean: ``render`` and the loaders need neither Streamlit nor plotly."""
    import subprocess
    import sys

    code = (
        "import sys, imc_ray.viewer, imc_ray.viewer.render, imc_ray.viewer.data, imc_ray.viewer.draw; "
        "bad = [m for m in ('streamlit', 'plotly') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_photo_of_a_turned_image_is_shown_upright(tmp_path: Path) -> None:
    """The orientation stage set a photo upright (``scenes.*.rotated``): the viewer shows it as the run
    used it, so its keypoints (in the upright image's pixels) fall on the right places."""
    images = tmp_path / "in" / "ds" / "sc" / "images"
    images.mkdir(parents=True)
    stored = np.zeros((40, 60, 3), np.uint8)
    stored[0, 0] = (255, 0, 0)  # top-left of the stored photo
    Image.fromarray(stored).save(images / "a.png")
    turned = SceneResult("ds", "sc", 1, rotated={"a.png": 90})
    report = RunReport(input=str(tmp_path / "in"), scenes={"ds/sc": SceneReport(1, result=turned)})
    photo = data.load_photo(report, "ds", "sc", "a.png")
    assert photo.shape == (60, 40, 3)  # turned 90 degrees counter-clockwise: top-left goes to bottom-left
    assert tuple(photo[59, 0]) == (255, 0, 0)
    turned.rotated = {}
    assert data.load_photo(report, "ds", "sc", "a.png").shape == (40, 60, 3)
