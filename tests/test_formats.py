from __future__ import annotations

import subprocess
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imc_ray.formats import (
    FEATURE_SHARD_SCHEMA,
    GLOBAL_SHARD_SCHEMA,
    MATCH_SHARD_SCHEMA,
    Features,
    FormatError,
    atomic_path,
    check_writable,
    done_keys,
    feature_rows,
    features_from_table,
    global_rows,
    globals_from_table,
    match_rows,
    matches_from_table,
    pair_key,
    read_features_h5,
    read_matches_h5,
    read_pairs,
    read_shards,
    scene_dir,
    write_features_h5,
    write_matches_h5,
    write_pairs,
    write_shard,
)


def _features(n: int, seed: int) -> Features:
    rng = np.random.default_rng(seed)
    return Features(
        keypoints=rng.uniform(0, 500, (n, 2)).astype(np.float32),
        scores=rng.uniform(0, 1, n).astype(np.float32),
        descriptors=rng.normal(size=(n, 128)).astype(np.float32),
        image_size=(640, 480),
    )


def test_pair_key_is_hlocs() -> None:
    assert pair_key("a.jpg", "b.jpg") == "a.jpg/b.jpg"
    assert pair_key("sub/a.jpg", "b.jpg") == "sub-a.jpg/b.jpg"


def test_features_h5_round_trip_and_hloc_layout(tmp_path: Path) -> None:
    feats = {"a.jpg": _features(7, 0), "sub/b.png": _features(3, 1), "c.jpg": _features(0, 2)}
    path = tmp_path / "features.h5"
    write_features_h5(path, feats)
    back = read_features_h5(path)
    assert set(back) == set(feats)
    for name, f in feats.items():
        np.testing.assert_array_equal(back[name].keypoints, f.keypoints)
        np.testing.assert_array_equal(back[name].descriptors, f.descriptors)
        np.testing.assert_array_equal(back[name].scores, f.scores)
        assert back[name].image_size == (640, 480)
    with h5py.File(path, "r") as h:  # hloc: descriptors stored (D, N), nested groups for '/' in names
        assert h["a.jpg"]["descriptors"].shape == (128, 7)
        assert h["sub"]["b.png"]["keypoints"].shape == (3, 2)
        assert h.attrs["imc_ray_format"] == 1 and h.attrs["kind"] == "features"


def test_matches_h5_round_trip(tmp_path: Path) -> None:
    idx = np.array([[0, 4], [2, 1], [5, 0]], np.int32)
    scores = np.array([0.9, 0.5, 0.7], np.float32)
    path = tmp_path / "matches.h5"
    write_matches_h5(path, {("a.jpg", "b.jpg"): (idx, scores)}, {"a.jpg": 6})
    with h5py.File(path, "r") as h:
        m0 = h["a.jpg"]["b.jpg"]["matches0"][()]
    np.testing.assert_array_equal(m0, [4, -1, 1, -1, -1, 0])
    back_idx, back_scores = read_matches_h5(path, "a.jpg", "b.jpg")
    np.testing.assert_array_equal(back_idx, idx[np.argsort(idx[:, 0])])
    np.testing.assert_allclose(back_scores, scores[np.argsort(idx[:, 0])])


def test_wrong_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "features.h5"
    write_features_h5(path, {"a.jpg": _features(2, 0)})
    with h5py.File(path, "a") as h:
        h.attrs["imc_ray_format"] = 99
    with pytest.raises(FormatError, match="delete the file"):
        read_features_h5(path)


def test_shards_use_portable_arrow_types(tmp_path: Path) -> None:
    feats = [("a.jpg", _features(5, 0)), ("b.jpg", _features(2, 1))]
    p = write_shard(tmp_path / "f", feature_rows("ds", "sc", feats))
    plain = pq.read_table(p)  # plain pyarrow, no Ray: the shapes survive
    assert plain.schema.field("keypoints").type == pa.list_(pa.float32())
    back = features_from_table(read_shards(tmp_path / "f", FEATURE_SHARD_SCHEMA))
    np.testing.assert_array_equal(back["a.jpg"].descriptors, feats[0][1].descriptors)
    assert back["b.jpg"].keypoints.shape == (2, 2)
    assert done_keys(tmp_path / "f", ("name",)) == {("a.jpg",), ("b.jpg",)}

    g = np.arange(4, dtype=np.float32)
    write_shard(tmp_path / "g", global_rows("ds", "sc", [("a.jpg", g)]))
    np.testing.assert_array_equal(globals_from_table(read_shards(tmp_path / "g", GLOBAL_SHARD_SCHEMA))["a.jpg"], g)

    m = [("a.jpg", "b.jpg", np.array([[0, 1], [3, 0]], np.int32), np.array([0.5, 0.25], np.float32))]
    write_shard(tmp_path / "m", match_rows("ds", "sc", m))
    out = matches_from_table(read_shards(tmp_path / "m", MATCH_SHARD_SCHEMA))
    np.testing.assert_array_equal(out[("a.jpg", "b.jpg")][0], m[0][2])
    assert len(read_shards(tmp_path / "none", MATCH_SHARD_SCHEMA)) == 0


def test_foreign_parquet_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    pq.write_table(pa.table({"x": [1]}), tmp_path / "m" / "x.parquet")
    with pytest.raises(FormatError, match="x.parquet"):
        read_shards(tmp_path / "m", MATCH_SHARD_SCHEMA)


def test_atomic_path_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("finished work")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "finished work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_scene_dir_stays_inside_output(tmp_path: Path) -> None:
    assert scene_dir(tmp_path, "ds", "scene one") == tmp_path / "ds" / "scene one"
    for bad in ("..", ".", "", "a/../../b", "x\\y"):
        with pytest.raises(ValueError, match="rename it"):
            scene_dir(tmp_path, bad, "s")


def test_check_writable(tmp_path: Path) -> None:
    check_writable(tmp_path / "new" / "out")
    assert (tmp_path / "new" / "out").is_dir() and not list((tmp_path / "new" / "out").iterdir())
    (tmp_path / "file").write_text("x")
    with pytest.raises(PermissionError, match="choose another OUTPUT"):
        check_writable(tmp_path / "file" / "out")


@pytest.mark.parametrize("options", ["ro", "size=64k"])
def test_check_writable_on_read_only_or_full_filesystem(tmp_path: Path, options: str) -> None:
    """A real read-only or tiny (full) filesystem: skipped where mounting is not permitted."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        if options.startswith("size"):
            (mnt / "filler").write_bytes(b"\0" * 60_000)
            with pytest.raises(OSError):
                (mnt / "more").write_bytes(b"\0" * 10_000)
            (mnt / "more").unlink(missing_ok=True)
            with pytest.raises(OSError, match="not enough free space"):  # HDF5 itself would segfault
                write_features_h5(mnt / "features.h5", {"a.jpg": _features(2000, 0)})
            assert sorted(p.name for p in mnt.iterdir()) == ["filler"]
        else:
            with pytest.raises(PermissionError, match="choose another OUTPUT"):
                check_writable(mnt / "out")
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_pairs_file_round_trip_with_spaces_in_names(tmp_path: Path) -> None:
    pairs = [("a.jpg", "b c.jpg"), ("b c.jpg", "d e f.png"), ("a.jpg", "d e f.png")]
    write_pairs(tmp_path / "pairs.txt", pairs)
    assert read_pairs(tmp_path / "pairs.txt", ["a.jpg", "b c.jpg", "d e f.png"]) == pairs
    with pytest.raises(ValueError, match="line 1: cannot tell the two image names apart"):
        read_pairs(tmp_path / "pairs.txt")  # without the names, "a.jpg b c.jpg" is ambiguous
    write_pairs(tmp_path / "plain.txt", [("a.jpg", "b.jpg")])
    assert read_pairs(tmp_path / "plain.txt") == [("a.jpg", "b.jpg")]
