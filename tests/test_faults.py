"""Faults: the driver killed with SIGKILL at several points, then the same command run again, must give
the outputs of an uninterrupted run and never trust a half-written file."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from imc_ray.formats import FEATURE_SHARD_SCHEMA, MATCH_SHARD_SCHEMA, read_shards

from .conftest import QUICK_CONFIG, assert_same_poses, config_args, read_poses

Run = tuple[Path, dict[str, Any]]
SCENE = ("odd", "mixed")
"""The scene used: 6 unusual but readable lego views and 5 bad files (15 pairs), small on purpose."""

pytestmark = pytest.mark.slow


def _cli(input_root: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "imc_ray", "run", str(input_root), str(out), *config_args(QUICK_CONFIG)]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    return env


def _kill_when(cmd: list[str], ready: Any, timeout: float = 420.0) -> None:
    """Start ``cmd`` in its own process group; SIGKILL the whole group as soon as ``ready()`` is true."""
    proc = subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if ready():
                break
            if proc.poll() is not None:
                pytest.fail(f"the run ended (rc={proc.returncode}) before the kill point was reached")
            time.sleep(0.2)
        else:
            pytest.fail("kill point not reached in time")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


KILL_POINTS = (
    ("extraction", "odd/mixed/shards/features-*/*.parquet"),
    ("matching", "odd/mixed/shards/matches-*/*.parquet"),
    ("mapping", "odd/mixed/database.db"),
)
"""Where the driver is killed: as the first feature shard, the first match shard and the database appear."""


def test_kill_driver_then_resume(sample_input: Path, odd_run: Run, tmp_path: Path) -> None:
    """On the ``odd/mixed`` scene of the sample alone, killed at each point of :data:`KILL_POINTS` in turn
    (each run resuming the one killed before it), then run to the end: the poses of that scene in the
    uninterrupted ``odd_run`` (same settings; a scene's outputs do not depend on the other scenes of a run)."""
    clean_out, _ = odd_run
    clean = read_poses(clean_out / "submission.csv", SCENE)
    assert sum(p is not None for p in clean.values()) >= 5
    scene = tmp_path / "input"
    shutil.copytree(sample_input.joinpath(*SCENE), scene.joinpath(*SCENE))
    out = tmp_path / "out"
    for point, glob in KILL_POINTS:
        _kill_when(_cli(scene, out), lambda glob=glob: any(out.glob(glob)))  # type: ignore[misc]
        assert not (out / "submission.csv").exists(), point
        # every committed shard is whole: readers see complete files or none (temporary names start with '.')
        for shards in out.glob("*/*/shards/*"):
            schema = MATCH_SHARD_SCHEMA if shards.name.startswith("matches") else FEATURE_SHARD_SCHEMA
            read_shards(shards, schema)
    done = subprocess.run(_cli(scene, out), env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 3, done.stderr[-3000:]  # partial: the bad files
    assert_same_poses(read_poses(out / "submission.csv"), clean)
