"""Many scenes stream through one driver that holds metadata only: its peak memory stays flat (within 20%)
from 2 scenes to 8 (copies of two bundled views each), each run a fresh ``imc-ray run`` process.
Small images, few keypoints and no orientation check keep the models' work small: the driver is measured."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import SAMPLE_CONFIG, SAMPLE_SCENE

pytestmark = pytest.mark.slow

VIEWS = ("r_33.png", "r_36.png")
SETTINGS = ["features.resize=320", "features.max_keypoints=256", "matching.rotation_check=false"]


def _input(root: Path, num_scenes: int) -> Path:
    for k in range(num_scenes):
        images = root / "copies" / f"lego{k}" / "images"
        images.mkdir(parents=True)
        for name in VIEWS:
            shutil.copy(SAMPLE_SCENE / "images" / name, images / name)
    return root


def _run(input_root: Path, out: Path) -> dict[str, object]:
    preset, overrides = SAMPLE_CONFIG
    sets = [arg for o in [*overrides, *SETTINGS] for arg in ("--set", o)]
    cmd = [sys.executable, "-m", "imc_ray", "run", str(input_root), str(out), "--preset", preset, *sets]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, object] = json.loads((out / "run.json").read_text())
    return report


def test_driver_memory_flat_from_2_to_8_scenes(tmp_path: Path) -> None:
    small = _run(_input(tmp_path / "in2", 2), tmp_path / "out2")
    large = _run(_input(tmp_path / "in8", 8), tmp_path / "out8")
    assert len(large["scenes"]) == 8 and large["stages"]["matching"]["pairs"] == 8  # type: ignore[index]
    rss2, rss8 = float(small["driver_peak_rss_mb"]), float(large["driver_peak_rss_mb"])  # type: ignore[arg-type]
    print(f"driver peak RSS: 2 scenes {rss2:.0f} MB, 8 scenes {rss8:.0f} MB ({rss8 / rss2:.2f}x)")
    assert rss8 <= 1.2 * rss2


def test_peak_memory_is_the_drivers_own() -> None:
    """A driver exec'd by a process that once held 1.5 GB reports its own peak (``ru_maxrss`` would not)."""
    report = "from imc_ray.report import peak_rss_mb; print(peak_rss_mb())"
    parent = (
        "import os, sys; b = bytearray(1536 * 2**20); b[::4096] = b'x' * len(b[::4096]); "
        f"os.execv(sys.executable, [sys.executable, '-c', {report!r}])"
    )
    done = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert 0 < float(done.stdout.strip()) < 1200
