"""The one orchestrator: the same Ray pipeline runs on a laptop (a private local cluster) and on EC2.

:func:`run` reads as its steps::

    staging      storage.Staging: a URI INPUT copied in, the local OUTPUT or work directory set up and locked
    catalog      stages/catalog.py: scenes and images (the driver holds paths only)
    stream       distributed/stream.py: decode -> [DINOv2] -> ALIKED -> scene gate (features merged, pairs
                 chosen) -> LightGlue; driven by distributed/driver.py, which counts the rows
    per scene    distributed/scheduler.py, as soon as the scene's pairs are matched: orientation check,
                 mapping (pycolmap), upload to a URI OUTPUT; the stream goes on with the other scenes
    outputs      submission.csv, run.json (report.py), the summary table
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
from ray.data import DataContext

from imc_ray import report, storage
from imc_ray.config import RunConfig, stage_keys
from imc_ray.distributed import driver, guard
from imc_ray.distributed.stream import use_gpu
from imc_ray.report import RunReport, SceneReport
from imc_ray.stages import cameras, mapping
from imc_ray.stages.catalog import Scene, catalog_errors, find_scenes
from imc_ray.stages.submission import scene_rows, write_submission

logger = logging.getLogger(__name__)


@contextmanager
def ray_cluster(address: str | None = None) -> Iterator[bool]:
    """Attach to ``address`` (or $RAY_ADDRESS, as under ``ray job submit``; it must answer within
    ``guard.CONNECT_TIMEOUT_S``), else start a private local cluster; shut down only what this call started.
    Yields whether this call started a private local cluster (a fixed-size one)."""
    target = address or os.environ.get("RAY_ADDRESS") or "local"
    guard.probe_address(target)  # also for a caller already connected: a wrong address is an error
    if ray.is_initialized():
        yield False
        return
    with guard.deferred_signals():  # Ctrl-C during start-up: start, then shut down below
        ray.init(address=target, logging_level=logging.WARNING, log_to_driver=True)
    try:
        yield target == "local"
    finally:
        ray.shutdown()


def run(
    input_root: Path | str, output: Path | str, cfg: RunConfig, address: str | None = None, work_dir: Path | None = None
) -> RunReport:
    """Run every stage on every scene under ``input_root``; write outputs to ``output``; return ``run.json``.

    ``input_root`` and ``output`` are local paths or URIs (``s3://bucket/prefix``, see :mod:`imc_ray.storage`).
    With a URI OUTPUT the run works in ``work_dir`` (default :func:`storage.default_work_dir`); a URI INPUT is
    copied into ``work_dir`` (default: the local OUTPUT, or that work directory). Every node must see it.
    The local OUTPUT (or work directory) is locked for the run (:mod:`imc_ray.lock`).
    """
    t_start = time.perf_counter()
    known = cameras.read_cameras_file(Path(cfg.mapping.cameras_file)) if cfg.mapping.cameras_file else ()
    staging = storage.Staging(input_root, output, work_dir)
    found = find_scenes(staging.input_folder(), exclude=staging.never_input()) if staging.src is None else []
    with staging as out:
        rep = RunReport(staging.input_label, staging.output_label, cfg.to_dict())
        rep.work_dir = str(out) if staging.dst is not None else ""
        rep.stage_keys = stage_keys(cfg).to_dict()
        logger.info("resolved config: %s", cfg.to_dict())
        with ray_cluster(address) as private:
            if staging.src is not None:
                rep.stages["input"] = staging.fetch_input(_ray_parallel)
                found = find_scenes(staging.input_folder())
            _catalog(found, rep)
            cfg = _fit_resources(cfg, private, rep)
            scenes = [s for s in found if s.images]
            results = driver.stream_and_map(scenes, out, cfg, rep, known, staging.upload_to) if scenes else []
        _write_outputs(found, results, out, cfg, rep, t_start)
        staging.finish()
    return rep


def _ray_parallel(fn: Callable[..., tuple[int, str]], args: list[tuple[Any, ...]]) -> list[tuple[int, str]]:
    """:data:`storage.ParallelMap` on Ray: one small task per argument tuple."""
    task = ray.remote(num_cpus=0.25)(fn)
    return ray.get([task.remote(*a) for a in args])


def _catalog(found: list[Scene], rep: RunReport) -> None:
    """Every scene and every unusable file of the catalog into the report."""
    rep.errors.extend(catalog_errors(found))
    for s in found:
        note = "" if s.images else f"no images in {s.image_dir}; skipped"
        rep.scenes[f"{s.dataset}/{s.name}"] = SceneReport(len(s.images), note)


def _fit_resources(cfg: RunConfig, private: bool, rep: RunReport) -> RunConfig:
    """Quiet Ray Data's own progress output, and fit the config's resource requests to the cluster
    (never wait forever for a node that does not exist)."""
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    # model actors hold a model each; Ray Data would warn about their memory every 30 s
    ctx.issue_detectors_config.high_memory_detector_config.detection_time_interval_s = -1
    gpus = float(ray.cluster_resources().get("GPU", 0))
    cfg, rep.resources_lowered = guard.fit_resources(cfg, use_gpu(cfg, gpus), fixed=private)
    return cfg


def _write_outputs(
    found: list[Scene], results: list[mapping.SceneResult], out: Path, cfg: RunConfig, rep: RunReport, t_start: float
) -> None:
    """``submission.csv`` (a row for every input photo) and ``run.json``, which is written last."""
    by_scene = {(r.dataset, r.scene): r for r in results}
    t0 = time.perf_counter()
    empty = mapping.SceneResult("", "", 0, clusters={} if cfg.mapping.clusters else None)  # scenes not mapped
    rows = [
        row
        for s in found
        for r in [by_scene.get((s.dataset, s.name), empty)]
        for row in scene_rows(s.dataset, s.name, s.row_names(), r.poses, r.clusters)
    ]
    n_reg = write_submission(out / "submission.csv", rows)
    rep.stages["submission"] = {"seconds": time.perf_counter() - t0, "registered": n_reg}
    for r in results:
        rep.scenes[f"{r.dataset}/{r.scene}"].mapped(r)
    rep.seconds_total = time.perf_counter() - t_start
    # the driver holds metadata only (paths, names, counts): this stays flat as the dataset grows
    rep.driver_peak_rss_mb = report.peak_rss_mb()
    report.write_report(out / "run.json", rep)
