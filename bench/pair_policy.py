"""Pairs by need, measured without matching again: pair-selection settings replayed on an exhaustive run.

LightGlue's result for a pair does not depend on which other pairs are matched, so a finished run that
matched every pair of a scene holds the answer of every policy: this script chooses each policy's pairs
(``stages/pairs.py``: nearest neighbours by the run's global descriptors, DINOv2 or the weights-free
fallback, then the second round for weakly connected images, fed with the recorded match counts), maps
the scene on those pairs only (``bench/remap.py``) and scores it::

    python bench/pair_policy.py IMC_RAY_OUTPUT TRUTH_ROOT [--policy NAME:key=value,...] [--out DIR]

``--policy`` takes ``retrieval.*`` settings, e.g. ``--policy k8:exhaustive_below=0,num_neighbors=8``.
Printed per scene and policy: LightGlue calls (pairs matched in both rounds), the share wasted (matched
but fewer than ``mapping.min_num_inliers`` verified inliers), pairs the model uses, and accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from remap import remap_scene

from imc_ray import evaluate, report
from imc_ray.config import RetrievalConfig, build_config
from imc_ray.formats import SceneLayout, StageKeys, match_counts_h5, read_features_h5
from imc_ray.stages import pairs

Pair = tuple[str, str]


def policy_pairs(layout: SceneLayout, cfg: RetrievalConfig) -> tuple[set[Pair], int, str]:
    """The pairs ``cfg`` would match (both rounds), how many the second round adds, and the first
    round's method; every one must have been matched by the run."""
    feats = read_features_h5(layout.features_h5)
    names = sorted(feats)
    desc = pairs.fallback_descriptors(feats, names)
    first, method = pairs.select_pairs(names, cfg, desc, dinov2=False)
    counts = match_counts_h5(layout.matches_h5, names)
    if missing := [p for p in first if p not in counts]:
        raise SystemExit(
            f"{layout.root}: the run did not match {len(missing)} of the policy's pairs (e.g. {missing[0]})"
        )
    extra: list[Pair] = []
    if method != "exhaustive":
        extra = pairs.second_round(names, pairs.similarity(desc), {p: counts[p] for p in first}, cfg)
    return set(first) | set(extra), len(extra), method


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="a finished imc-ray output folder whose scenes matched every pair")
    parser.add_argument("truth", type=Path, help="the run's IMC-style input root, with labels.csv")
    parser.add_argument("--policy", action="append", default=[], metavar="NAME:key=value,...")
    parser.add_argument("--out", type=Path, default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="imc-ray-pairs-"))
    run = report.read_report(args.output / "run.json")
    keys = StageKeys(retrieval="", features="", matches=run.stage_keys["matches"], mapping="")
    rows = []
    for spec in args.policy or ["run:"]:
        tag, _, sets = spec.partition(":")
        cfg = build_config("default", [f"retrieval.{s}" for s in sets.split(",") if s]).retrieval
        for scene in sorted(evaluate.read_truth(args.truth)):
            layout = SceneLayout.of(args.output, *scene, keys)
            if not layout.features_h5.is_file():
                continue
            chosen, added, method = policy_pairs(layout, cfg)
            row = remap_scene(args.output, args.truth, scene, (tag, ["num_threads=1"]), out / tag, chosen)
            acc = row.pop("pairs")
            rows.append({**row, "method": method, "calls": len(chosen), "second_round": added, "accounting": acc})
            print(json.dumps(rows[-1]), flush=True)
    print("\n| scene | policy | LightGlue calls | 2nd round | wasted | used | registered | AUC@1 | AUC@5 | mAA-24 |")
    print("|---|---|---:|---:|---:|---:|---|---:|---:|---:|")
    for r in rows:
        a = r["accounting"]
        wasted = f"{a.get('wasted', 0)} ({a.get('wasted', 0) / max(r['calls'], 1):.0%})"
        print(
            f"| {r['scene']} | {r['variant']} | {r['calls']} | {r['second_round']} | {wasted} | {a.get('used', '-')} "
            f"| {r['registered']} | {r['auc@1']} | {r['auc@5']} | {r['imc2024_maa']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
