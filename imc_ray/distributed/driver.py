"""The driver of the stream: it iterates the stream's small rows, counts them (:mod:`.tally`), moves the
progress bars (:mod:`.progress`) and hands each fully matched scene to the scene scheduler (:mod:`.scheduler`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

import ray

from imc_ray.config import RunConfig, stage_keys
from imc_ray.distributed.progress import stream_progress
from imc_ray.distributed.scheduler import SceneScheduler
from imc_ray.distributed.stream import build_stream, image_items
from imc_ray.distributed.tally import Tally
from imc_ray.formats import SceneLayout
from imc_ray.report import RunReport
from imc_ray.stages import cameras, mapping, pairs
from imc_ray.stages.catalog import Scene

logger = logging.getLogger(__name__)


def _use_dinov2(scenes: list[Scene], cfg: RunConfig, rep: RunReport) -> bool:
    """Whether the stream runs DINOv2: some scene is large enough for retrieval and the weights can be had
    (else the weights-free fallback chooses pairs, and the report says why)."""
    reason = "no scene is paired by nearest neighbours (retrieval.pairing, exhaustive_below, pairs_file)"
    if any(pairs.needs_retrieval(len(s.images), cfg.retrieval) for s in scenes):
        from imc_ray.stages import retrieval  # torch: only when some scene is paired by DINOv2

        try:
            retrieval.resolve_weights(cfg.retrieval)
            reason = ""
        except retrieval.WeightsNotFound as exc:
            reason = str(exc)
            logger.warning("pair selection: DINOv2 unavailable, using the weights-free fallback. %s", reason)
    rep.retrieval = {"dinov2": not reason, "reason": reason}
    return not reason


def _given_pairs(scenes: list[Scene], cfg: RunConfig) -> dict[tuple[str, str], list[pairs.Pair]]:
    """The pairs of each scene's pairs file (``retrieval.pairs_file``; none when unset), checked up front."""
    value = cfg.retrieval.pairs_file
    if not value:
        return {}
    return {
        (s.dataset, s.name): pairs.user_pairs(
            pairs.pairs_file_of(s.folder, value, len(scenes)), [r.name for r in s.images], [p.name for p in s.problems]
        )
        for s in scenes
    }


def _per_node(counts: Counter[str]) -> dict[str, int]:
    """Items per Ray node, keyed ``"<ip>/<first 8 hex digits of the node id>"`` (a node that has left the
    cluster keeps its id)."""
    names = {n["NodeID"]: f"{n['NodeManagerAddress']}/{n['NodeID'][:8]}" for n in ray.nodes()}
    return {names.get(node, node[:8]): n for node, n in sorted(counts.items())}


def _stage_records(tally: Tally, images: int, reused: int, rep: RunReport) -> None:
    """The stream's stages in the report. They overlap: features ends as the last scene leaves extraction;
    matching runs from the first scene's pairs to the last match."""
    t = tally
    rep.stages["features"] = {
        "seconds": max(t.last_scene_done, t.started) - t.started,
        "images": images - reused,
        "reused": reused,
        "keypoints": t.keypoints,
        "images_per_node": _per_node(t.images_per_node),
    }
    rep.stages["pairs"] = {"seconds": t.choose_seconds, "pairs": t.pairs_chosen}
    rep.stages["matching"] = {
        "seconds": max(0.0, time.time() - min(t.first_scene_done, time.time())),
        "pairs": t.pairs_todo,
        "reused": t.pairs_reused,
        "matches": t.num_matches,
        "pairs_per_node": _per_node(t.pairs_per_node),
    }


def stream_and_map(
    scenes: list[Scene],
    output: Path,
    cfg: RunConfig,
    rep: RunReport,
    known: tuple[cameras.KnownCamera, ...] = (),
    upload_to: str | None = None,
) -> list[mapping.SceneResult]:
    """Every image of ``scenes`` through the stream, each scene's tasks as soon as it is matched; fills the
    report's stages, pair methods and errors; returns the scenes' mapping results."""
    keys = stage_keys(cfg)
    given = _given_pairs(scenes, cfg)  # before any work: a bad pairs file fails the run up front
    use_dinov2 = _use_dinov2(scenes, cfg, rep)
    items, reused = image_items(scenes, output, keys, use_dinov2)
    by_key = {(s.dataset, s.name): (s, SceneLayout.of(output, s.dataset, s.name, keys)) for s in scenes}
    gpus = float(ray.cluster_resources().get("GPU", 0))
    expected = {k: len(s.images) for k, (s, _) in by_key.items()}
    ds = build_stream(items, expected, given, output, cfg, keys, gpus, use_dinov2)
    scheduler = SceneScheduler(by_key, cfg, known, upload_to)
    tally = Tally(started=time.time())
    hint = (
        f"each model actor needs compute.cpus_per_actor={cfg.compute.cpus_per_actor:g} CPU (shared by the pools) "
        "or a GPU"
    )
    with stream_progress(output, len(items), cfg.compute.stall_report_s, hint) as bars:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            step = tally.add(batch)
            bars.advance(step.new_pairs, step.matched)
            for key, num_pairs in step.ready:
                scheduler.submit(key, num_pairs)
    if lost := scheduler.missing():  # cannot happen unless Ray Data lost rows; never map half-matched scenes
        names = ", ".join("/".join(k) for k in lost)
        raise RuntimeError(f"the stream ended before these scenes were matched: {names}; run again to resume")
    _stage_records(tally, len(items), reused, rep)
    rep.errors.extend(tally.errors)
    for key, method in tally.pairs_method.items():
        rep.scenes[f"{key[0]}/{key[1]}"].pairs_method = method
    t1 = time.perf_counter()
    results = scheduler.results()
    reused_models = sum(r.reused for r in results)
    rep.stages["mapping"] = {
        "seconds_after_matching": time.perf_counter() - t1,
        "scenes": len(results),
        "reused": reused_models,
    }
    return results
