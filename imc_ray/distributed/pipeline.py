"""The one orchestrator: the same Ray pipeline runs on a laptop (a local cluster) and on EC2.

Flow::

    catalog (driver: paths only)
      -> one Ray Data stream: decode (CPU tasks) -> DINOv2 actor pool (only if a scene needs retrieval
         and weights exist) -> ALIKED actor pool, writing feature shards -> scene gate: as a scene's last
         image passes, its features.h5 is merged and its pairs chosen -> LightGlue actor pool, writing
         match shards; the driver sees small rows only (``actors.ROW``)
      -> per scene, as soon as its pairs are matched: CPU tasks check orientation, build the database
         and map (pycolmap), while the stream goes on with the other scenes
      -> driver: submission.csv, run.json, summary table

With a URI INPUT (``s3://...``, see :mod:`imc_ray.storage`) the images are first copied into a local
folder, one Ray task per scene folder; with a URI OUTPUT the run works in a local work directory that
starts as a copy of OUTPUT (resume), and a task chained after each scene's mapping uploads that scene.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import ray
from ray.data import ActorPoolStrategy, DataContext
from tqdm.auto import tqdm

from imc_ray import report, storage
from imc_ray.config import RunConfig, stage_keys
from imc_ray.distributed import guard
from imc_ray.distributed.actors import (
    PROGRESS_FILE,
    FeatureActor,
    GlobalDescriptorActor,
    MatcherActor,
    SceneGate,
    check_orientation,
)
from imc_ray.distributed.decode import decode_batch
from imc_ray.formats import (
    check_writable,
    done_keys,
    mark_output,
    remove_partial_files,
    scene_dir,
    shard_dir,
)
from imc_ray.lock import output_lock
from imc_ray.stages import cameras, mapping, retrieval
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


def _use_gpu(cfg: RunConfig, gpus: float) -> bool:
    """Whether the model actors take GPUs (``compute.device``; ``auto``: when the cluster has GPUs)."""
    return cfg.compute.device == "cuda" or (cfg.compute.device == "auto" and gpus > 0)


def _pool(cfg: RunConfig, gpus: float, pools: int) -> dict[str, Any]:
    """Arguments of each of the stream's ``pools`` model-actor pools: one GPU per actor where the cluster
    has GPUs, else CPUs (shared by the pools with ``compute.share_cpus``).

    ``compute.max_actors`` > 0 sets the pool's upper bound even beyond what the cluster has now, so an
    autoscaling cluster grows into it; 0 sizes the pool to the resources present at the start."""
    c = cfg.compute
    if _use_gpu(cfg, gpus):
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


def _node_names() -> dict[str, str]:
    """Ray node id -> ``"<ip>/<first 8 hex digits of the id>"`` for the run report."""
    return {n["NodeID"]: f"{n['NodeManagerAddress']}/{n['NodeID'][:8]}" for n in ray.nodes()}


def _per_node(counts: Counter[str]) -> dict[str, int]:
    """Items per node, keyed by :func:`_node_names` (a node that has left the cluster keeps its id)."""
    names = _node_names()
    return {names.get(node, node[:8]): n for node, n in sorted(counts.items())}


def _dinov2_available(cfg: RunConfig) -> str | None:
    """None when DINOv2 weights can be had, else the reason they cannot."""
    try:
        retrieval.resolve_weights(cfg.retrieval)
    except retrieval.WeightsNotFound as exc:
        return str(exc)
    return None


def run(
    input_root: Path | str, output: Path | str, cfg: RunConfig, address: str | None = None, work_dir: Path | None = None
) -> dict[str, Any]:
    """Run every stage on every scene under ``input_root``; write outputs to ``output``; return run.json's dict.

    ``input_root`` and ``output`` are local paths or URIs (``s3://bucket/prefix``, see :mod:`imc_ray.storage`).
    With a URI OUTPUT the run works in ``work_dir`` (default :func:`storage.default_work_dir`); a URI INPUT is
    copied into ``work_dir`` (default: the local OUTPUT, or that work directory). Every node must see it.
    The local OUTPUT (or work directory) is locked for the run (:mod:`imc_ray.lock`).
    """
    with contextlib.ExitStack() as held:  # what the run holds (the OUTPUT lock), released however it ends
        return _run(input_root, output, cfg, address, work_dir, held)


def _run(
    input_root: Path | str,
    output: Path | str,
    cfg: RunConfig,
    address: str | None,
    work_dir: Path | None,
    held: contextlib.ExitStack,
) -> dict[str, Any]:
    t_start = time.perf_counter()
    src = storage.resolve(input_root) if isinstance(input_root, str) and storage.is_uri(input_root) else None
    dst = storage.resolve(output) if isinstance(output, str) and storage.is_uri(output) else None
    known = cameras.read_cameras_file(Path(cfg.mapping.cameras_file)) if cfg.mapping.cameras_file else ()
    never = [Path(output)] if dst is None else []  # OUTPUT and the work directory are never read as input
    never += [Path(work_dir)] if work_dir else []
    found = find_scenes(Path(input_root), exclude=never) if src is None else []
    plan = storage.image_plan(src) if src is not None else {}  # one listing; the driver holds paths only
    if dst is not None:
        storage.check_writable(dst)
        out = storage.prepare_work_dir(work_dir or storage.default_work_dir(dst), dst)
    else:
        out = Path(output).resolve()
    check_writable(out)
    held.enter_context(output_lock(out))
    held.callback(remove_partial_files, out)  # however the run ends (an interrupt): no partial files left
    mark_output(out)  # never read as input by a later run
    if remove_partial_files(out):  # left by a run that was killed; no other run writes here now
        logger.info("removed the partial files of an interrupted run from %s", out)
    if dst is not None:  # resume; committed shards of the work directory are kept even where OUTPUT lacks them
        n = storage.download_tree(dst, out, keep=lambda rel: "shards" in rel.split("/"))
        logger.info("work directory %s: %d files copied from %s", out, n, dst.where())
    rep = report.new_report(cfg, input_root if src is None else ".", out if dst is None else dst.uri)
    if src is not None:
        rep["input"] = src.uri
    if dst is not None:
        rep["work_dir"] = str(out)
    keys = stage_keys(cfg)
    rep["stage_keys"] = keys
    logger.info("resolved config: %s", cfg.to_dict())
    with ray_cluster(address) as private:
        if src is not None:
            staged = (Path(work_dir).resolve() if work_dir else out) / storage.STAGED_INPUT / src.path.lstrip("/")
            rep["stages"]["input"] = _stage_input(str(input_root), src, plan, staged)
            found = find_scenes(staged)
        scenes = [s for s in found if s.images]
        rep["errors"].extend(catalog_errors(found))
        for s in found:
            rep["scenes"][f"{s.dataset}/{s.name}"] = {"num_images": len(s.images)}
            if not s.images:
                rep["scenes"][f"{s.dataset}/{s.name}"]["note"] = f"no images in {s.image_dir}; skipped"
        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.enable_operator_progress_bars = False
        ctx.print_on_execution_start = False
        # model actors use 1.4-1.8 GiB each (bench/RESULTS.md); Ray Data would say so every 30 s
        ctx.issue_detectors_config.high_memory_detector_config.detection_time_interval_s = -1
        gpus = float(ray.cluster_resources().get("GPU", 0))
        cfg, lowered = guard.fit_resources(cfg, _use_gpu(cfg, gpus), fixed=private)  # never wait forever
        if lowered:
            rep["resources_lowered"] = lowered
        upload_to = str(output) if dst is not None else None
        results = _stream(scenes, out, cfg, keys, gpus, rep, known, upload_to) if scenes else []
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
    rep["stages"]["submission"] = {"seconds": time.perf_counter() - t0, "registered": n_reg}
    for r in results:
        entry = rep["scenes"][f"{r.dataset}/{r.scene}"]
        entry.update({k: v for k, v in asdict(r).items() if k != "poses"})
        entry["num_registered"] = r.num_registered
    rep["seconds_total"] = time.perf_counter() - t_start
    # the driver holds metadata only (paths, names, counts): this stays flat as the dataset grows
    rep["driver_peak_rss_mb"] = report.peak_rss_mb()
    report.write_report(out / "run.json", rep)
    if dst is not None:  # run.json last: it says the run is complete
        storage.upload_file(out / "submission.csv", dst, "submission.csv")
        storage.upload_file(out / "run.json", dst, "run.json")
    return rep


def _stage_scene(uri: str, entries: list[storage.Entry], root: Path) -> tuple[int, str]:
    """Ray task: copy one scene folder's images of a URI INPUT below ``root``; (files copied, error or "")."""
    try:
        return storage.download(storage.resolve(uri), entries, root), ""
    except (storage.StorageError, storage.UriError) as exc:
        return 0, str(exc)


def _stage_input(uri: str, src: storage.Remote, plan: dict[str, list[storage.Entry]], root: Path) -> dict[str, Any]:
    """Copy the images of a URI INPUT into ``root`` (one task per scene folder, in parallel; files already
    there are skipped, files no longer in INPUT are deleted); return the stage's counts for run.json."""
    t0 = time.perf_counter()
    removed = storage.prune(root, (e.rel for entries in plan.values() for e in entries))
    task = ray.remote(num_cpus=0.25)(_stage_scene)
    done = ray.get([task.remote(uri, entries, root) for _, entries in sorted(plan.items())])
    errors = [err for _, err in done if err]
    if errors:
        more = f" (and {len(errors) - 1} more scene folders)" if len(errors) > 1 else ""
        raise storage.StorageError(errors[0] + more)
    files = sum(len(entries) for entries in plan.values())
    copied = sum(n for n, _ in done)
    logger.info("input %s: %d images, %d copied to %s", src.where(), files, copied, root)
    return {"seconds": time.perf_counter() - t0, "images": files, "copied": copied, "removed": removed}


def _upload_scene(result: mapping.SceneResult, scene: Path, uri: str, rel: str) -> mapping.SceneResult:
    """Ray task chained after a scene's mapping: upload its folder to ``rel`` inside the OUTPUT ``uri``
    (``scene.json`` last); a failed upload becomes the scene's error."""
    try:
        storage.upload_tree(scene, storage.resolve(uri).child(rel), last=("scene.json",))
    except (storage.StorageError, storage.UriError) as exc:
        logger.error("scene %s: %s", rel, exc)
        result.error = f"{result.error}; {exc}" if result.error else str(exc)
    return result


def _image_items(
    scenes: list[Scene], output: Path, keys: dict[str, str], use_dinov2: bool
) -> tuple[list[dict[str, Any]], int]:
    """One stream item per input image, saying what it still needs (resume: committed shards count
    as done); and how many need nothing."""
    items: list[dict[str, Any]] = []
    reused = 0
    for s in scenes:
        sd = scene_dir(output, s.dataset, s.name)
        done_feat = {n for (n,) in done_keys(shard_dir(sd, "features", keys["features"]), ("name",))}
        done_glob = (
            {n for (n,) in done_keys(shard_dir(sd, "global", keys["global"]), ("name",))} if use_dinov2 else set()
        )
        for r in s.images:
            need_f, need_g = r.name not in done_feat, use_dinov2 and r.name not in done_glob
            reused += not (need_f or need_g)
            items.append({**dataclasses.asdict(r), "need_features": need_f, "need_global": need_g})
    return items, reused


def _split_blocks(ds: ray.data.Dataset, rows: int) -> ray.data.Dataset:
    """Cut the stream into blocks of at most ``rows`` rows (a scene's pairs leave the gate as one block;
    each block goes to one matcher call), without holding rows back.

    Ray Data's streaming repartition runs as 1-CPU tasks and has no public ``num_cpus``: on a machine
    whose CPUs the two model pools hold, it would wait for feature extraction to end (a whole-dataset
    barrier). Splitting rows is bookkeeping, so it is given 0 CPUs through the logical operator.
    """
    ds = ds.repartition(target_num_rows_per_block=rows)
    op = getattr(getattr(ds, "_logical_plan", None), "dag", None)  # the StreamingRepartition operator
    if isinstance(getattr(op, "ray_remote_args", None), dict):
        op.ray_remote_args["num_cpus"] = 0  # type: ignore[union-attr]
    else:
        logger.warning("this Ray version hides the repartition's resources: matching may wait for features")
    return ds


def _watch_features(progress: Path, bar: Any, stop: threading.Event, stall: guard.StallReporter) -> None:
    """Driver thread: move the features bar from the scene gate's progress file until ``stop``; report a
    stream that makes no progress."""
    while not stop.wait(1.0):
        stall.check()
        try:
            seen = int(json.loads(progress.read_text())["images"])
        except (OSError, ValueError, KeyError):
            continue
        if seen > bar.n:
            bar.update(min(seen, bar.total) - bar.n)
            stall.progress()


def _stream_state(bars: dict[str, Any], cfg: RunConfig) -> str:
    """What the stream waits for, for a stall report."""
    return (
        f"features {bars['image'].n}/{bars['image'].total} images, matching {bars['pair'].n}/{bars['pair'].total} "
        f"pairs; each model actor needs compute.cpus_per_actor={cfg.compute.cpus_per_actor:g} CPU (shared by "
        "the pools) or a GPU"
    )


def _stream(
    scenes: list[Scene],
    output: Path,
    cfg: RunConfig,
    keys: dict[str, str],
    gpus: float,
    rep: dict[str, Any],
    known: tuple[cameras.KnownCamera, ...] = (),
    upload_to: str | None = None,
) -> list[mapping.SceneResult]:
    """Every image through one Ray Data stream, then each scene's mapping as a CPU task.

    images -> decode (CPU tasks; inside the first model actor when no GPU is used) -> [DINOv2 pool]
    -> ALIKED pool -> scene gate (features merged and pairs chosen per scene as its last image passes)
    -> LightGlue pool -> driver. One stream, so the actor pools share the cluster and no scene waits for
    the others' images: matching starts with the first complete scene. As each scene's pairs are all
    matched, its orientation check and mapping start as CPU tasks (followed, when ``upload_to`` is an
    OUTPUT URI, by a task that uploads the scene's folder there).
    """
    wall0 = time.time()
    needs_retrieval = any(len(s.images) >= cfg.retrieval.exhaustive_below for s in scenes)
    reason = _dinov2_available(cfg) if needs_retrieval else "every scene is below retrieval.exhaustive_below"
    use_dinov2 = needs_retrieval and reason is None
    if needs_retrieval and not use_dinov2:
        logger.warning("pair selection: DINOv2 unavailable, using the weights-free fallback. %s", reason)
    rep["retrieval"] = {"dinov2": use_dinov2, "reason": reason or ""}
    items, reused_images = _image_items(scenes, output, keys, use_dinov2)

    by_key = {(s.dataset, s.name): s for s in scenes}
    map_task = ray.remote(num_cpus=cfg.compute.mapping_cpus)(mapping.run)
    map_cfg = cfg.mapping
    if map_cfg.num_threads == -1:  # pycolmap's -1 means every core of the machine, not the task's share
        map_cfg = dataclasses.replace(map_cfg, num_threads=cfg.compute.mapping_cpus)
    orient_task = ray.remote(num_cpus=cfg.compute.mapping_cpus)(check_orientation)
    upload_task = ray.remote(num_cpus=0.25)(_upload_scene)
    futures = []
    submitted: set[tuple[str, str]] = set()

    def submit(key: tuple[str, str], num_pairs: int) -> None:
        submitted.add(key)
        s = by_key[key]
        sd = scene_dir(output, *key)
        ready = None
        if cfg.matching.rotation_check and num_pairs:  # mapping waits for it (an ObjectRef argument)
            ready = orient_task.remote(sd, s.image_dir, cfg, keys)
        result = map_task.remote(  # type: ignore[call-arg]  # ray's stubs type at most 7 arguments
            sd, s.image_dir, s.dataset, s.name, len(s.images), map_cfg, cfg.matching.min_matches, keys, ready, known
        )
        if upload_to is not None:
            result = upload_task.remote(result, sd, upload_to, f"{key[0]}/{key[1]}")
        futures.append(result)

    image_batch, pair_batch = cfg.compute.image_batch_size, cfg.compute.pair_batch_size
    ds: ray.data.Dataset = ray.data.from_items(items, override_num_blocks=-(-len(items) // image_batch))
    if _use_gpu(cfg, gpus):  # CPU decode workers feed the GPU actors; CPU-only, the first model actor decodes
        ds = ds.map_batches(functools.partial(decode_batch, cfg=cfg), batch_size=image_batch, num_cpus=0.5)
    pool = _pool(cfg, gpus, pools=3 if use_dinov2 else 2)
    if use_dinov2:
        args = {"cfg": cfg, "output": str(output), "key": keys["global"]}
        ds = ds.map_batches(GlobalDescriptorActor, fn_constructor_kwargs=args, batch_size=image_batch, **pool)
    args = {"cfg": cfg, "output": str(output), "key": keys["features"]}
    ds = ds.map_batches(FeatureActor, fn_constructor_kwargs=args, batch_size=image_batch, **pool)
    expected = {key: len(s.images) for key, s in by_key.items()}
    gate_args = {"cfg": cfg, "output": str(output), "keys": keys, "use_dinov2": use_dinov2, "expected": expected}
    ds = ds.map_batches(
        SceneGate,
        fn_constructor_kwargs=gate_args,
        batch_size=None,
        compute=ActorPoolStrategy(size=1),
        num_cpus=0,
        label_selector={"ray.io/node-id": ray.get_runtime_context().get_node_id()},  # the driver's node
    )
    ds = _split_blocks(ds, pair_batch)  # spread a scene's pairs over the matchers
    args = {"cfg": cfg, "output": str(output), "key": keys["matches"]}
    ds = ds.map_batches(MatcherActor, fn_constructor_kwargs=args, batch_size=pair_batch, **pool)

    feat = {"images": len(items) - reused_images, "reused": reused_images, "keypoints": 0}
    match = {"pairs": 0, "reused": 0, "matches": 0}
    chosen = {"seconds": 0.0, "pairs": 0}
    images_per_node: Counter[str] = Counter()
    pairs_per_node: Counter[str] = Counter()
    remaining: Counter[tuple[str, str]] = Counter()  # pairs announced by scene rows minus pairs matched
    announced: dict[tuple[str, str], int] = {}  # scene -> pairs chosen
    features_done, first_done = wall0, float("inf")  # Unix times: last and first scene out of extraction
    bars = {
        "image": tqdm(total=len(items), desc="features", unit="img", position=0),
        "pair": tqdm(total=0, desc="matching", unit="pair", position=1),
    }
    progress = output / PROGRESS_FILE
    progress.unlink(missing_ok=True)
    stop = threading.Event()
    stall = guard.StallReporter(cfg.compute.stall_report_s, lambda: _stream_state(bars, cfg))
    watcher = threading.Thread(target=_watch_features, args=(progress, bars["image"], stop, stall), daemon=True)
    watcher.start()
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            stall.progress()
            touched = set()
            for i, kind in enumerate(batch["kind"]):
                key = (str(batch["dataset"][i]), str(batch["scene"][i]))
                err = str(batch["error"][i])
                if kind == "image":
                    feat["keypoints"] += int(batch["num_keypoints"][i])
                    if err:
                        rep["errors"].append(
                            {"dataset": key[0], "scene": key[1], "image": str(batch["name"][i]), "error": err}
                        )
                        logger.warning("skipped: %s", err)
                    if batch["node"][i]:  # empty for images done before (resume)
                        images_per_node[str(batch["node"][i])] += 1
                elif kind == "scene":
                    done_at = float(batch["done_at"][i])
                    features_done, first_done = max(features_done, done_at), min(first_done, done_at)
                    todo = int(batch["todo"][i])
                    announced[key] = int(batch["num_pairs"][i])
                    rep["scenes"][f"{key[0]}/{key[1]}"]["pairs_method"] = str(batch["method"][i])
                    remaining[key] += todo
                    match["pairs"] += todo
                    match["reused"] += announced[key] - todo
                    chosen["seconds"] += float(batch["seconds"][i])
                    chosen["pairs"] += announced[key]
                    bars["pair"].total += todo
                    bars["pair"].refresh()
                else:
                    remaining[key] -= 1
                    match["matches"] += int(batch["num_matches"][i])
                    pairs_per_node[str(batch["node"][i])] += 1
                    if err:
                        pair = [str(batch["name0"][i]), str(batch["name1"][i])]
                        rep["errors"].append({"dataset": key[0], "scene": key[1], "pair": pair, "error": err})
                        logger.warning("%s", err)
                    bars["pair"].update(1)
                touched.add(key)
            for key in sorted(touched):
                if key in announced and remaining[key] == 0:
                    submit(key, announced.pop(key))
    finally:
        stop.set()
        watcher.join()
        progress.unlink(missing_ok=True)
        bars["image"].n = bars["image"].total
        for bar in bars.values():
            bar.close()
    if set(by_key) - submitted:  # cannot happen unless Ray Data lost rows; never map half-matched scenes
        lost = ", ".join("/".join(k) for k in sorted(set(by_key) - submitted))
        raise RuntimeError(f"the stream ended before these scenes were matched: {lost}; run again to resume")
    # stages overlap: features ends as the last scene leaves extraction; matching runs from the first
    # scene's pairs to the last match
    rep["stages"]["features"] = {"seconds": features_done - wall0, **feat}
    rep["stages"]["features"]["images_per_node"] = _per_node(images_per_node)
    rep["stages"]["pairs"] = chosen
    t1 = time.perf_counter()
    seconds = max(0.0, time.time() - min(first_done, time.time()))
    rep["stages"]["matching"] = {"seconds": seconds, **match, "pairs_per_node": _per_node(pairs_per_node)}
    results: list[mapping.SceneResult] = []
    with tqdm(total=len(futures), desc="mapping", unit="scene") as bar:
        pending = list(futures)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=cfg.compute.stall_report_s)
            if not ready:  # a stall report: what waits, and for what
                logger.warning(
                    "mapping: %d scenes not finished after %g s more; each mapping task needs "
                    "compute.mapping_cpus=%d CPUs; cluster free: %s",
                    len(pending),
                    cfg.compute.stall_report_s,
                    cfg.compute.mapping_cpus,
                    guard.free_resources(),
                )
                continue
            results.append(ray.get(ready[0]))
            bar.update(1)
    rep["stages"]["mapping"] = {
        "seconds_after_matching": time.perf_counter() - t1,
        "scenes": len(results),
        "reused": sum(r.reused for r in results),
    }
    return sorted(results, key=lambda r: (r.dataset, r.scene))
