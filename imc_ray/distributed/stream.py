"""The description of the one Ray Data stream: what each image still needs, and the ``map_batches`` chain.

images -> decode (CPU tasks; inside the first model actor when no GPU is used) -> [DINOv2 pool]
-> ALIKED pool -> scene gate (as a scene's last image passes: its features merged and its pairs chosen)
-> blocks of ``compute.pair_batch_size`` rows -> LightGlue pool -> the driver (small rows only,
``gate.ROW``). One stream, so the pools share the cluster and no scene waits for the others' images.
Nothing runs until the driver iterates it (:mod:`imc_ray.distributed.driver`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path
from typing import Any

import ray
from ray.data import ActorPoolStrategy

from imc_ray.config import RunConfig
from imc_ray.distributed.actors import FeatureActor, GlobalDescriptorActor, MatcherActor
from imc_ray.distributed.decode import decode_batch
from imc_ray.distributed.gate import SceneGate
from imc_ray.distributed.ray_internals import split_blocks
from imc_ray.formats import SceneLayout, StageKeys, done_keys
from imc_ray.stages.catalog import Scene

logger = logging.getLogger(__name__)


def use_gpu(cfg: RunConfig, gpus: float) -> bool:
    """Whether the model actors take GPUs (``compute.device``; ``auto``: when the cluster has GPUs)."""
    return cfg.compute.device == "cuda" or (cfg.compute.device == "auto" and gpus > 0)


def pool(cfg: RunConfig, gpus: float, pools: int) -> dict[str, Any]:
    """Arguments of each of the stream's ``pools`` model-actor pools: one GPU per actor where the cluster
    has GPUs, else CPUs (shared by the pools with ``compute.share_cpus``).

    ``compute.max_actors`` > 0 sets the pool's upper bound even beyond what the cluster has now, so an
    autoscaling cluster grows into it; 0 sizes the pool to the resources present at the start."""
    c = cfg.compute
    if use_gpu(cfg, gpus):
        size = max(1, int(gpus / c.gpus_per_actor))
        res: dict[str, Any] = {"num_gpus": c.gpus_per_actor, "num_cpus": c.cpus_per_actor}
    else:
        size = max(1, int(ray.cluster_resources().get("CPU", 1) / c.cpus_per_actor))
        res = {"num_cpus": c.cpus_per_actor / pools if c.share_cpus else c.cpus_per_actor}
    if c.actor_resource:
        units = int(ray.cluster_resources().get(c.actor_resource, 0))
        if units == 0:
            logger.warning("no node has the resource compute.actor_resource=%r yet; waiting for one", c.actor_resource)
        size = max(1, min(size, units))
        res["resources"] = {c.actor_resource: 1}
    if c.max_actors > 0:
        size = c.max_actors
    return {"compute": ActorPoolStrategy(min_size=1, max_size=size), **res}


def image_items(
    scenes: list[Scene], output: Path, keys: StageKeys, use_dinov2: bool
) -> tuple[list[dict[str, Any]], int]:
    """One stream item per input image, saying what it still needs (resume: committed shards count as
    done); and how many need nothing."""
    items: list[dict[str, Any]] = []
    reused = 0
    for s in scenes:
        layout = SceneLayout.of(output, s.dataset, s.name, keys)
        done_feat = {n for (n,) in done_keys(layout.feature_shards, ("name",))}
        done_glob = {n for (n,) in done_keys(layout.global_shards, ("name",))} if use_dinov2 else set()
        for r in s.images:
            need_f, need_g = r.name not in done_feat, use_dinov2 and r.name not in done_glob
            reused += not (need_f or need_g)
            items.append({**dataclasses.asdict(r), "need_features": need_f, "need_global": need_g})
    return items, reused


def build_stream(
    items: list[dict[str, Any]],
    expected: dict[tuple[str, str], int],
    given: dict[tuple[str, str], list[tuple[str, str]]],
    output: Path,
    cfg: RunConfig,
    keys: StageKeys,
    gpus: float,
    use_dinov2: bool,
) -> ray.data.Dataset:
    """The stream over ``items`` (:func:`image_items`); ``expected``: images per scene (the gate's count);
    ``given``: the pairs of scenes with a pairs file (``retrieval.pairs_file``)."""
    image_batch = cfg.compute.image_batch_size
    ds: ray.data.Dataset = ray.data.from_items(items, override_num_blocks=-(-len(items) // image_batch))
    if use_gpu(cfg, gpus):  # CPU decode workers feed the GPU actors; CPU-only, the first model actor decodes
        ds = ds.map_batches(functools.partial(decode_batch, cfg=cfg), batch_size=image_batch, num_cpus=0.5)
    models = pool(cfg, gpus, pools=3 if use_dinov2 else 2)
    args = {"cfg": cfg, "output": str(output), "keys": keys}
    extract = any(item["need_features"] for item in items)  # else the model actors load their models lazily
    if use_dinov2:
        describe = {**args, "load_now": any(item["need_global"] for item in items)}
        ds = ds.map_batches(GlobalDescriptorActor, fn_constructor_kwargs=describe, batch_size=image_batch, **models)
    ds = ds.map_batches(
        FeatureActor, fn_constructor_kwargs={**args, "load_now": extract}, batch_size=image_batch, **models
    )
    ds = ds.map_batches(
        SceneGate,
        fn_constructor_kwargs={**args, "use_dinov2": use_dinov2, "expected": expected, "given": given},
        batch_size=None,
        compute=ActorPoolStrategy(size=1),
        num_cpus=0,
        label_selector={"ray.io/node-id": ray.get_runtime_context().get_node_id()},  # the driver's node
    )
    ds = split_blocks(ds, cfg.compute.pair_batch_size)  # spread a scene's pairs over the matchers
    match = {**args, "load_now": extract}  # new features: new pairs to match
    return ds.map_batches(MatcherActor, fn_constructor_kwargs=match, batch_size=cfg.compute.pair_batch_size, **models)
