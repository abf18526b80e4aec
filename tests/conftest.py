"""Shared fixtures: the bundled sample scene, a real local Ray cluster, and one real pipeline run."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples"
SAMPLE_SCENE = SAMPLE / "nerf_synthetic" / "lego"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A private local Ray cluster (never attaches to a running one), shut down at the end."""
    import ray

    os.environ.pop("RAY_ADDRESS", None)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def sample_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled scene plus an unreadable file in it, and a one-image scene."""
    root = tmp_path_factory.mktemp("input")
    shutil.copytree(SAMPLE, root, dirs_exist_ok=True)
    (root / "nerf_synthetic" / "lego" / "images" / "broken.jpg").write_bytes(b"")
    single = root / "nerf_synthetic" / "single" / "images"
    single.mkdir(parents=True)
    shutil.copy(SAMPLE_SCENE / "images" / "r_20.png", single)
    return root


@pytest.fixture(scope="session")
def sample_run(
    ray_local: None, sample_input: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Any]]:
    """One real end-to-end run of the Ray pipeline (real models, real pycolmap) on ``sample_input``."""
    from imc_ray.config import build_config
    from imc_ray.distributed import pipeline

    out = tmp_path_factory.mktemp("sample_run")
    rep = pipeline.run(sample_input, out, build_config("fast"))
    return out, rep
