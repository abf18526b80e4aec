"""The mapping stage again, with other settings, on the features and matches of a finished run.

Takes a finished imc-ray output folder, maps each of its scenes again with each variant of the mapping
settings (``mapping.run``: cameras, database, verification, mapping, principal point) into a scratch folder
(the run's own files are not touched), and prints seconds, cameras, registered images and accuracy against
the reference poses::

    python bench/remap.py IMC_RAY_OUTPUT TRUTH_ROOT [--variant NAME:key=value,...] [--threads N] [--out DIR]

``TRUTH_ROOT`` is the run's IMC-style input with ``labels.csv`` (the mapping stage reads the photos' EXIF
there). Each ``--variant`` names a set of ``mapping.*`` settings, e.g. ``--variant per-image:camera_mode=per_image``
or ``--variant glomap:mapper=global``; default: one variant with the run's own settings. Photos the run's
orientation stage turned are turned again (``run.json``). With ``--threads 1`` the results are reproducible.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from imc_ray import evaluate, report
from imc_ray.config import RunConfig, build_config
from imc_ray.formats import (
    MATCH_SHARD_SCHEMA,
    SceneLayout,
    StageKeys,
    match_rows,
    matches_from_table,
    read_features_h5,
    read_shards,
    write_features_h5,
    write_shard,
)
from imc_ray.stages import cameras, mapping
from imc_ray.stages.submission import scene_rows, write_submission


def scratch_scene(
    run_scene: SceneLayout, image_dir: Path, work: SceneLayout, pairs: set[tuple[str, str]] | None = None
) -> int:
    """``work`` with the run scene's ``features.h5`` and matches, restricted to the photos now in ``image_dir``
    (and to ``pairs``, when given); returns the number of photos."""
    shutil.rmtree(work.root, ignore_errors=True)
    work.root.mkdir(parents=True)
    names = {p.relative_to(image_dir).as_posix() for p in image_dir.rglob("*") if p.is_file()}
    feats = {n: f for n, f in read_features_h5(run_scene.features_h5).items() if n in names}
    write_features_h5(work.features_h5, feats)
    table = read_shards(run_scene.match_shards, MATCH_SHARD_SCHEMA)
    rows = [
        (a, b, m, s)
        for (a, b), (m, s) in sorted(matches_from_table(table).items())
        if a in feats and b in feats and (pairs is None or (a, b) in pairs)
    ]
    write_shard(work.match_shards, match_rows("", "", rows))
    return len(feats)


def run_config(run: report.RunReport, sets: list[str], scratch: Path) -> RunConfig:
    """The run's resolved config (``run.json``) with the variant's ``mapping.*`` settings on top."""
    data = dict(run.config)
    preset = data.pop("preset")
    (scratch / "config.json").write_text(json.dumps(data))
    return build_config(preset, [f"mapping.{s}" for s in sets], scratch / "config.json")


def remap_scene(
    output: Path,
    truth: Path,
    scene: tuple[str, str],
    variant: tuple[str, list[str]],
    work: Path,
    pairs: set[tuple[str, str]] | None = None,
) -> dict:
    """One scene, one variant (only ``pairs`` of the run's matched pairs, when given): map, write a one-scene
    submission, score it; the table's row."""
    run = report.read_report(output / "run.json")
    (dataset, name), (tag, sets) = scene, variant
    image_dir = truth / dataset / name / "images"
    match_key = run.stage_keys["matches"]
    keys = StageKeys(retrieval="", features="", matches=match_key, mapping=tag)
    scratch = SceneLayout(work, keys)
    n = scratch_scene(SceneLayout.of(output, dataset, name, keys), image_dir, scratch, pairs)
    cfg = run_config(run, sets, work)
    known = cameras.read_cameras_file(Path(cfg.mapping.cameras_file)) if cfg.mapping.cameras_file else ()
    entry = run.scene(dataset, name)
    rotated = entry.result.rotated if entry and entry.result else None
    inputs = mapping.SceneInputs(scratch, image_dir, dataset, name, n)
    result = mapping.run(inputs, cfg.mapping, cfg.matching.min_matches, rotated, known)
    labels = evaluate.read_labels(truth / dataset / name / "labels.csv")
    write_submission(work / "submission.csv", list(scene_rows(dataset, name, sorted(labels), result.poses, None)))
    scores = evaluate.evaluate(work / "submission.csv", truth)["scenes"]  # every scene of the truth, others at 0
    [score] = [s for s in scores if (s["dataset"], s["scene"]) == scene]
    return {
        "scene": f"{dataset}/{name}",
        "variant": tag,
        "seconds": round(sum(result.seconds.values()), 1),
        "cameras": result.cameras.get("count", 0),
        "registered": f"{result.num_registered}/{len(labels)}",
        **{k: round(score[k], 3) for k in ("auc@1", "auc@5", "auc@10", "imc2024_maa", "imc2023_maa")},
        "decision": result.cameras.get("decision", ""),
        "principal_point": result.principal_point,
        "pairs": result.pairs,
        "error": result.error,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="a finished imc-ray output folder")
    parser.add_argument("truth", type=Path, help="the run's IMC-style input root, with labels.csv")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:key=value,...")
    parser.add_argument("--threads", type=int, default=1, help="mapping.num_threads (1: reproducible)")
    parser.add_argument("--out", type=Path, default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="imc-ray-remap-"))
    variants = [(v.partition(":")[0], [s for s in v.partition(":")[2].split(",") if s]) for v in args.variant]
    variants = [(tag, [*sets, f"num_threads={args.threads}"]) for tag, sets in variants or [("run", [])]]
    rows = []
    for scene in sorted(evaluate.read_truth(args.truth)):
        if not (args.output / scene[0] / scene[1] / "features.h5").is_file():
            print(f"{scene[0]}/{scene[1]}: not in {args.output}; skipped", file=sys.stderr)
            continue
        for variant in variants:
            rows.append(remap_scene(args.output, args.truth, scene, variant, out / variant[0] / scene[0] / scene[1]))
            print(json.dumps(rows[-1]), flush=True)
    print("\n| scene | variant | cameras | registered | AUC@1 | AUC@5 | AUC@10 | mAA-24 | mAA-23 | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['scene']} | {r['variant']} | {r['cameras']} | {r['registered']} | {r['auc@1']} | {r['auc@5']} "
            f"| {r['auc@10']} | {r['imc2024_maa']} | {r['imc2023_maa']} | {r['seconds']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
