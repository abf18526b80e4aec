"""Incremental against global mapping (GLOMAP) on the same matches.

Takes a finished imc-ray output folder (its ``<dataset>/<scene>/database.db``, already verified), maps each
scene again with each mapper into a scratch folder (the run's own models are not touched), and prints
seconds, registered images and accuracy against the reference poses::

    python bench/mappers.py IMC_RAY_OUTPUT TRUTH_ROOT [--out DIR] [--threads N]

``TRUTH_ROOT`` is the IMC-style input with ``labels.csv`` (``../shared/data``). Both mappers get the same
settings as ``imc-ray run`` (``imc_ray.config.MappingConfig``, principal-point refinement included).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from imc_ray import evaluate
from imc_ray.config import MappingConfig
from imc_ray.stages import mapping
from imc_ray.stages.submission import scene_rows, write_submission


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="a finished imc-ray output folder")
    parser.add_argument("truth", type=Path, help="the IMC-style input root with labels.csv")
    parser.add_argument("--out", type=Path, default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="imc-ray-mappers-"))
    truth = evaluate.read_truth(args.truth)
    rows: list[dict[str, object]] = []
    for (dataset, scene), poses_gt in sorted(truth.items()):
        db = args.output / dataset / scene / "database.db"
        if not db.is_file():
            print(f"{dataset}/{scene}: no {db}; skipped", file=sys.stderr)
            continue
        for mapper in ("incremental", "global"):
            cfg = dataclasses.replace(MappingConfig(), mapper=mapper, num_threads=args.threads)
            work = out / mapper / dataset / scene
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            shutil.copy(db, work / "database.db")  # the mapper reads it; the run's copy stays as it was
            t0 = time.perf_counter()
            models, attempts, pp = mapping.map_database(
                work / "database.db", args.truth / dataset / scene / "images", work / "sparse", cfg, len(poses_gt)
            )
            seconds = time.perf_counter() - t0
            poses = mapping.poses_of(models[0]) if models else {}
            sub = work / "submission.csv"
            write_submission(sub, list(scene_rows(dataset, scene, sorted(poses_gt), poses, None)))
            scores = evaluate.evaluate(sub, args.truth)["scenes"]
            [score] = [x for x in scores if (x["dataset"], x["scene"]) == (dataset, scene)]
            rows.append(
                {
                    "scene": f"{dataset}/{scene}",
                    "mapper": mapper,
                    "seconds": round(seconds, 1),
                    "registered": f"{len(poses)}/{len(poses_gt)}",
                    "attempts": attempts,
                    "auc@5": round(score["auc@5"], 3),
                    "auc@10": round(score["auc@10"], 3),
                    "mAA-2024": round(score["imc2024_maa"], 3),
                    "principal_point": pp,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    print("\n| scene | mapper | seconds | registered | AUC@5 | AUC@10 | IMC-2024 mAA |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['scene']} | {r['mapper']} | {r['seconds']} | {r['registered']} | {r['auc@5']} | {r['auc@10']} "
            f"| {r['mAA-2024']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
