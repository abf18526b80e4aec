"""Text tables of :func:`~imc_ray.evaluate.evaluate` and :func:`~imc_ray.evaluate.evaluate_clusters` results."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from imc_ray.evaluate.imc2024 import SAMPLE_SEED, SAMPLED_TRIPLETS


def format_clusters_table(result: Mapping[str, Any]) -> str:
    """Text table of an :func:`evaluate_clusters` result."""
    lines = [f"{'dataset':<24} {'mAA':>7} {'cluster':>8} {'score':>7}"]
    for d in result["datasets"]:
        lines.append(
            f"{d['dataset']:<24} {100 * d['maa']:>7.2f} {100 * d['clusterness']:>8.2f} {100 * d['score']:>7.2f}"
        )
    lines.append(f"final (100 x mean over datasets): {result['final']:.2f}")
    return "\n".join(lines)


def format_table(result: Mapping[str, Any]) -> str:
    """Fixed-width text table of an :func:`evaluate` result: one row per scene, then overall.

    Metric values are shown in percent. A ``*`` marks an IMC 2024 value from sampled triplets,
    ``(missing)`` a scene absent from the submission.
    """
    headers = ["dataset/scene", "images", "reg", "reg%", "mAA23", "mAA24", "auc@1", "auc@5", "auc@10"]
    metric_keys = ["registration_rate", "imc2023_maa", "imc2024_maa", "auc@1", "auc@5", "auc@10"]
    rows: list[list[str]] = []
    sampled = False
    for sc in result.get("scenes", []):
        name = f"{sc['dataset']}/{sc['scene']}" + (" (missing)" if sc.get("missing") else "")
        values = [f"{100.0 * float(sc[k]):.2f}" for k in metric_keys]
        if sc.get("imc2024_mode") == "sampled":
            values[2] += "*"
            sampled = True
        rows.append([name, str(sc["n_images"]), str(sc["n_registered"]), *values])
    overall = result.get("overall", {})
    total_images = sum(int(sc["n_images"]) for sc in result.get("scenes", []))
    total_reg = sum(int(sc["n_registered"]) for sc in result.get("scenes", []))
    overall_row = [
        "overall",
        str(total_images),
        str(total_reg),
        *[f"{100.0 * float(overall.get(k, 0.0)):.2f}" for k in metric_keys],
    ]
    widths = [len(h) for h in headers]
    for row in [*rows, overall_row]:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def fmt(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest])

    rule = "-" * len(fmt(headers))
    lines = [fmt(headers), rule, *[fmt(r) for r in rows], rule, fmt(overall_row)]
    if sampled:
        lines.append(f"* IMC 2024 mAA from {SAMPLED_TRIPLETS} sampled triplets (seed {SAMPLE_SEED})")
    for item in result.get("skipped", []):
        lines.append(f"skipped {item['dataset']}/{item['scene']}: {item['reason']}")
    return "\n".join(lines)
