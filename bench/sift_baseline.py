"""Reference: pycolmap's own SIFT pipeline with its default options, on the CPU.

Per scene: ``pycolmap.extract_features`` (SIFT, ``CameraMode.AUTO``, default reader and extraction options:
at most 8192 features, images read at full size), ``pycolmap.match_exhaustive`` (every pair, default
matching options; this call also runs COLMAP's geometric verification, so its time covers both),
``pycolmap.incremental_mapping`` (default options: models need at least 10 images), and the largest
model's poses go into the submission CSV (``imc_ray.stages.submission.write_submission``).

Decoding differs from imc-ray: COLMAP reads the image files itself and converts them to grey, and it
ignores the alpha channel. An RGBA PNG with a transparent background (nerf_synthetic/lego, where
RGB is about 0 under alpha = 0) is therefore seen on a **black** background, whereas imc-ray (and the
sequential baseline) composite it onto white (``images.background``). EXIF orientation is not applied
by COLMAP either.

Usage::

    python bench/sift_baseline.py ROOT OUT

Writes ``OUT/submission.csv``, ``OUT/timings.json`` and ``OUT/<dataset>/<scene>/{database.db,sparse/}``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from common import TIMINGS_FILE, StageTimer, machine_info, package_versions, setup_logging, write_json

logger = logging.getLogger(__name__)


def run(root: Path, out: Path, verbose: bool = False) -> dict[str, Any]:
    """Run the SIFT pipeline on every scene under ``root``; write outputs to ``out``; return the report."""
    t_start = time.perf_counter()
    timer = StageTimer()
    with timer("imports"):
        import numpy as np
        import pycolmap

        from imc_ray.stages.catalog import find_scenes
        from imc_ray.stages.submission import write_submission

    if not verbose:
        pycolmap.logging.minloglevel = 2
    device = pycolmap.Device.cuda if pycolmap.has_cuda else pycolmap.Device.cpu
    scenes = [s for s in find_scenes(root) if s.images]
    out.mkdir(parents=True, exist_ok=True)
    report_scenes: dict[str, dict[str, Any]] = {}
    all_poses: dict[tuple[str, str], dict[str, tuple[list[float], list[float]]]] = {}
    n_images = n_pairs = n_keypoints = 0

    for scene in scenes:
        key = f"{scene.dataset}/{scene.name}"
        st = StageTimer()
        scene_out = out / scene.dataset / scene.name
        scene_out.mkdir(parents=True, exist_ok=True)
        db_path = scene_out / "database.db"
        if db_path.exists():
            db_path.unlink()
        names = [r.name for r in scene.images]
        logger.info("scene %s: %d images", key, len(names))

        with st("features"):
            pycolmap.extract_features(db_path, scene.image_dir, image_names=names, device=device)
        with st("matching"):
            pycolmap.match_exhaustive(db_path, device=device)
        with pycolmap.Database.open(str(db_path)) as db:
            n_read = int(db.num_images())
            kps = int(db.num_keypoints())
            matched = int(db.num_matched_image_pairs())
            verified = int(db.num_verified_image_pairs())
        sparse = scene_out / "sparse"
        shutil.rmtree(sparse, ignore_errors=True)
        sparse.mkdir(parents=True)
        with st("mapping"):
            recs = pycolmap.incremental_mapping(db_path, scene.image_dir, sparse) if verified else {}
        models = sorted(recs.values(), key=lambda r: r.num_reg_images(), reverse=True)
        poses: dict[str, tuple[list[float], list[float]]] = {}
        if models:
            for image in models[0].images.values():
                if image.has_pose:
                    pose = image.cam_from_world()
                    poses[image.name] = (
                        pose.rotation.matrix().ravel().tolist(),
                        np.asarray(pose.translation).ravel().tolist(),
                    )
        all_poses[(scene.dataset, scene.name)] = poses
        n_images += n_read
        n_pairs += n_read * (n_read - 1) // 2
        n_keypoints += kps
        for stage, sec in st.seconds.items():
            timer.add(stage, sec)
        report_scenes[key] = {
            "num_images": len(names),
            "num_features": n_read,
            "pairs_method": "exhaustive",
            "num_pairs_matched": n_read * (n_read - 1) // 2,
            "num_pairs": matched,
            "num_verified_pairs": verified,
            "keypoints": kps,
            "model_sizes": [m.num_reg_images() for m in models],
            "num_registered": len(poses),
            "seconds": st.seconds,
        }
        logger.info(
            "scene %s: %d images read, %d keypoints, %d matched pairs, %d verified, models %s; %s",
            key,
            n_read,
            kps,
            matched,
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
        "pipeline": "sift",
        "device": str(device),
        "machine": machine_info(),
        "versions": package_versions(),
        "stages": timer.seconds,
        "images": n_images,
        "keypoints": n_keypoints,
        "pairs": n_pairs,
        "registered": registered,
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
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging, and COLMAP's own log lines")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    rep = run(args.root, args.out, args.verbose)
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in rep["stages"].items())
    print(f"SIFT baseline: {rep['registered']}/{rep['images']} registered; {stages}; total {rep['seconds_total']:.1f}s")
    return 0 if rep["registered"] else 1


if __name__ == "__main__":
    sys.exit(main())
