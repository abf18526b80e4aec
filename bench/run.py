"""The benchmark: imc-ray against a sequential notebook-style baseline and pycolmap's SIFT pipeline.

One command::

    python bench/run.py [ROOT] [--preset default] [--only imc-ray,sequential,sift] [--out DIR]

runs, one after another on the same scenes of ROOT (default ``<repo>/../shared/data``), each in its own
subprocess so that imports, model loading and (for imc-ray) Ray start-up are part of its time:

1. ``imc-ray``: ``python -m imc_ray run ROOT OUT/imc-ray --preset P`` (a private local Ray cluster);
2. ``sequential``: ``python bench/sequential_baseline.py ROOT OUT/sequential --preset P``;
3. ``sift``: ``python bench/sift_baseline.py ROOT OUT/sift`` (pycolmap defaults; no preset).

For each it records the wall seconds of the subprocess, the seconds per stage (from ``run.json`` or
``timings.json``), images/s, matching pairs/s, the peak of system-wide used memory above the level
before the run (sampled every 0.2 s, so Ray's worker processes count), and the accuracy of its
``submission.csv`` from ``imc_ray.evaluate.evaluate`` per scene. It prints markdown tables and the
ratios imc-ray / sequential and imc-ray vs SIFT, writes ``OUT/results.json`` and appends a dated section
to ``bench/RESULTS.md`` (``--no-append`` skips that).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    DEFAULT_ROOT,
    REPO_ROOT,
    TIMINGS_FILE,
    ResourceSampler,
    busy_fraction,
    git_revision,
    machine_info,
    now_iso,
    package_versions,
    setup_logging,
    wait_for_idle,
    write_json,
)

from imc_ray import report
from imc_ray.formats import SceneLayout
from imc_ray.stages import mapping

logger = logging.getLogger(__name__)

PIPELINES = ("imc-ray", "sequential", "sift")
BENCH_DIR = Path(__file__).resolve().parent
RESULTS_MD = BENCH_DIR / "RESULTS.md"
STAGES = ("features", "pairs", "matching", "mapping")
"""Common stage names of the tables; ``other`` is the subprocess wall time not in any of them."""


@dataclass
class PipelineRun:
    """One pipeline's run: what was run, how long it took, its stages and its scores."""

    name: str
    command: list[str]
    out_dir: Path
    log: Path
    returncode: int = -1
    wall_seconds: float = 0.0
    peak_mem_bytes: int = 0
    cpu_seconds: float = 0.0
    """User + system CPU seconds of the pipeline's process tree (Ray workers included)."""
    other_cpu_seconds: float = 0.0
    """Busy CPU seconds of the machine during the run that were not the pipeline's (other users)."""
    busy_before: float = 0.0
    """Share of the CPU used by other processes just before the run (0..1)."""
    stages: dict[str, float] = field(default_factory=dict)
    images: int = 0
    pairs: int = 0
    scenes: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per scene (``dataset/scene``): counts and seconds from the pipeline's own report."""
    evaluation: dict[str, Any] | None = None
    raw_report: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def other_seconds(self) -> float:
        """Wall time outside the common stages: imports, model loading, Ray start and stop, CSV."""
        return max(0.0, self.wall_seconds - sum(self.stages.get(s, 0.0) for s in STAGES))

    @property
    def images_per_second(self) -> float:
        """Images per end-to-end wall second."""
        return self.images / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def pairs_per_second(self) -> float:
        """Matched pairs per second of the matching stage."""
        sec = self.stages.get("matching", 0.0)
        return self.pairs / sec if sec > 0 else 0.0

    def scene_scores(self) -> dict[str, dict[str, Any]]:
        """``dataset/scene`` -> the evaluator's row for it (empty without an evaluation)."""
        if not self.evaluation:
            return {}
        return {f"{s['dataset']}/{s['scene']}": s for s in self.evaluation["scenes"]}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the pipeline's own report is kept under ``report``)."""
        return {
            "name": self.name,
            "command": self.command,
            "out_dir": str(self.out_dir),
            "log": str(self.log),
            "returncode": self.returncode,
            "error": self.error,
            "wall_seconds": self.wall_seconds,
            "stages": self.stages,
            "other_seconds": self.other_seconds,
            "images": self.images,
            "pairs": self.pairs,
            "images_per_second": self.images_per_second,
            "pairs_per_second": self.pairs_per_second,
            "peak_mem_bytes": self.peak_mem_bytes,
            "cpu_seconds": self.cpu_seconds,
            "other_cpu_seconds": self.other_cpu_seconds,
            "busy_before": self.busy_before,
            "scenes": self.scenes,
            "evaluation": self.evaluation,
            "report": self.raw_report,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PipelineRun:
        """Inverse of :meth:`to_dict` (derived values are recomputed)."""
        run = cls(name=data["name"], command=data["command"], out_dir=Path(data["out_dir"]), log=Path(data["log"]))
        for key in (
            "returncode", "error", "wall_seconds", "stages", "images", "pairs", "peak_mem_bytes", "cpu_seconds",
            "other_cpu_seconds", "busy_before", "scenes", "evaluation",
        ):  # fmt: skip
            setattr(run, key, data[key])
        run.raw_report = data.get("report", {})
        return run


# ------------------------------------------------------------------------------------------ running


def command_for(
    name: str, root: Path, out: Path, preset: str, overrides: list[str], pairs_from: Path | None
) -> list[str]:
    """The subprocess command line of pipeline ``name``."""
    py = sys.executable
    sets = [arg for item in overrides for arg in ("--set", item)]
    if name == "imc-ray":
        return [py, "-m", "imc_ray", "run", str(root), str(out), "--preset", preset, *sets]
    if name == "sequential":
        extra = ["--pairs-from", str(pairs_from)] if pairs_from is not None else []
        return [py, str(BENCH_DIR / "sequential_baseline.py"), str(root), str(out), "--preset", preset, *sets, *extra]
    if name == "sift":
        return [py, str(BENCH_DIR / "sift_baseline.py"), str(root), str(out)]
    raise ValueError(f"unknown pipeline {name!r}; choose from {', '.join(PIPELINES)}")


def run_pipeline(name: str, command: list[str], out: Path, log: Path, busy_before: float = 0.0) -> PipelineRun:
    """Run one pipeline's subprocess, timing it and sampling memory and CPU; then read its report."""
    run = PipelineRun(name=name, command=command, out_dir=out, log=log, busy_before=busy_before)
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # imc-ray must start its own private local cluster
    env["PYTHONUNBUFFERED"] = "1"
    if out.exists():  # imc-ray resumes from what an output folder holds: always start from nothing
        logger.warning("%s: removing the earlier outputs in %s", name, out)
        shutil.rmtree(out)
    logger.info("%s: %s (log: %s)", name, shlex.join(command), log)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as logf, ResourceSampler(0.2) as res:
        t0 = time.perf_counter()
        proc = subprocess.Popen(command, stdout=logf, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)
        res.watch(proc.pid)
        run.returncode = proc.wait()
        run.wall_seconds = time.perf_counter() - t0
    run.peak_mem_bytes = res.peak_bytes
    run.cpu_seconds = res.tree_cpu_seconds
    run.other_cpu_seconds = res.other_cpu_seconds
    logger.info(
        "%s: exit %d after %.1f s, peak memory +%.2f GiB (%d samples), CPU %.0f s (other processes %.0f s)",
        name,
        run.returncode,
        run.wall_seconds,
        run.peak_mem_bytes / 2**30,
        res.samples,
        run.cpu_seconds,
        run.other_cpu_seconds,
    )
    try:
        read_report(run)
    except (OSError, ValueError, KeyError) as exc:
        run.error = f"no usable report: {type(exc).__name__}: {exc}"
        logger.error("%s: %s; see %s", name, run.error, log)
    if run.returncode not in (0, 3) and run.error is None:  # imc-ray's 3 = partial success
        run.error = f"exit status {run.returncode}; see {log}"
    return run


def _imc_scene(folder: Path, sc: report.SceneReport) -> dict[str, Any]:
    """bench's record of one imc-ray scene (``run.json`` entry, ``pairs.txt``, ``orientation.json``)."""
    r = sc.result or mapping.SceneResult("", "", sc.num_images, note=sc.note)
    layout = SceneLayout(folder)
    pairs_txt, orientation = layout.pairs_txt, layout.orientation_json
    return {
        "num_pairs_matched": len(pairs_txt.read_text().splitlines()) if pairs_txt.is_file() else 0,
        "num_images": sc.num_images,
        "pairs_method": sc.pairs_method,
        "num_pairs": r.num_pairs,
        "num_verified_pairs": r.num_verified_pairs,
        "pairs": r.pairs,
        "model_sizes": r.model_sizes,
        "attempts": r.attempts,
        "note": r.note,
        "orientation": json.loads(orientation.read_text()) if orientation.is_file() else None,
        "rolled": r.rolled,
        "num_registered": sc.num_registered,
        "error": sc.error,
        "seconds": {"mapping": sum(float(v) for v in r.seconds.values()), **r.seconds},
    }


def read_report(run: PipelineRun) -> None:
    """Fill the stages, counts and per-scene entries of ``run`` from its ``run.json`` / ``timings.json``."""
    if run.name == "imc-ray":
        typed = report.read_report(run.out_dir / "run.json")
        rep = typed.to_json()
        st = typed.stages
        run.stages = {
            "features": float(st["features"]["seconds"]),
            "pairs": float(st["pairs"]["seconds"]),
            "matching": float(st["matching"]["seconds"]),
            # mapping tasks overlap matching; this is the wall time mapping added after matching ended
            "mapping": float(st["mapping"]["seconds_after_matching"]),
        }
        run.images = int(st["features"]["images"])
        run.pairs = int(st["matching"]["pairs"])
        for key, sc in typed.scenes.items():
            run.scenes[key] = _imc_scene(run.out_dir / key, sc)
    else:
        rep = json.loads((run.out_dir / TIMINGS_FILE).read_text())
        st = rep["stages"]
        mapping_keys = ("database", "verification", "mapping")
        run.stages = {
            "features": float(st.get("features", 0.0)),
            "pairs": 0.0,
            "matching": float(st.get("matching", 0.0)),
            "mapping": sum(float(st.get(k, 0.0)) for k in mapping_keys),
        }
        run.images = int(rep["images"])
        run.pairs = int(rep["pairs"])
        for key, sc in rep["scenes"].items():
            secs = dict(sc.get("seconds", {}))
            secs["mapping"] = sum(float(secs.get(k, 0.0)) for k in mapping_keys)
            run.scenes[key] = {**sc, "seconds": secs}
    run.raw_report = {k: v for k, v in rep.items() if k not in ("config", "machine", "versions")}
    if "config" in rep:
        run.raw_report["config"] = rep["config"]


def score(run: PipelineRun, truth_root: Path) -> None:
    """Evaluate ``run``'s submission against ``truth_root`` (sets ``evaluation`` or ``error``)."""
    from imc_ray.evaluate import evaluate, format_table

    sub = run.out_dir / "submission.csv"
    if not sub.is_file():
        run.error = run.error or f"no submission at {sub}"
        return
    try:
        run.evaluation = evaluate(sub, truth_root)
    except (OSError, ValueError) as exc:
        run.error = f"evaluation failed: {type(exc).__name__}: {exc}"
        logger.error("%s: %s", run.name, run.error)
        return
    logger.info("%s accuracy:\n%s", run.name, format_table(run.evaluation))


# ------------------------------------------------------------------------------------------ tables


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100.0 * float(value):.1f}"


def _sec(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1f}"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0 else "-"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    aligns = ["---"] + ["---:"] * (len(headers) - 1)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(aligns) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def timing_table(runs: list[PipelineRun]) -> str:
    """One row per pipeline: seconds per stage, total, throughput, peak memory, overall accuracy."""
    headers = [
        "pipeline", "images", "pairs", "features s", "pair sel. s", "matching s", "mapping s", "other s",
        "total s", "images/s", "pairs/s", "peak mem GiB", "CPU s", "others' CPU s", "registered", "AUC@5",
        "mAA-24", "mAA-23",
    ]  # fmt: skip
    rows = []
    for r in runs:
        ev = r.evaluation or {}
        scenes = ev.get("scenes", [])
        reg = f"{sum(s['n_registered'] for s in scenes)}/{sum(s['n_images'] for s in scenes)}" if scenes else "-"
        ov = ev.get("overall", {})
        rows.append(
            [
                r.name + (" (FAILED)" if r.error else ""),
                str(r.images),
                str(r.pairs),
                *[_sec(r.stages.get(s)) for s in STAGES],
                _sec(r.other_seconds),
                _sec(r.wall_seconds),
                f"{r.images_per_second:.3f}",
                f"{r.pairs_per_second:.3f}",
                f"{r.peak_mem_bytes / 2**30:.2f}",
                f"{r.cpu_seconds:.0f}",
                f"{r.other_cpu_seconds:.0f}",
                reg,
                _pct(ov.get("auc@5")),
                _pct(ov.get("imc2024_maa")),
                _pct(ov.get("imc2023_maa")),
            ]
        )
    return _table(headers, rows)


def scene_table(runs: list[PipelineRun]) -> str:
    """One row per scene and pipeline: registration, models, accuracy and per-scene seconds."""
    headers = [
        "scene", "pipeline", "registered", "models", "verified pairs", "AUC@5", "mAA-24", "mAA-23",
        "features s", "matching s", "mapping s",
    ]  # fmt: skip
    keys = sorted({k for r in runs for k in (*r.scene_scores(), *r.scenes)})
    rows = []
    for key in keys:
        for r in runs:
            sc = r.scene_scores().get(key)
            info = r.scenes.get(key, {})
            secs = info.get("seconds", {})
            models = ",".join(map(str, info.get("model_sizes", []))) or "-"
            verified = f"{info.get('num_verified_pairs', 0)}/{info.get('num_pairs_matched', info.get('num_pairs', 0))}"
            rows.append(
                [
                    key,
                    r.name,
                    f"{sc['n_registered']}/{sc['n_images']}" if sc else "-",
                    models,
                    verified if info else "-",
                    _pct(sc["auc@5"]) if sc else "-",
                    _pct(sc["imc2024_maa"]) if sc else "-",
                    _pct(sc["imc2023_maa"]) if sc else "-",
                    _sec(secs.get("features")),
                    _sec(secs.get("matching")),
                    _sec(secs.get("mapping")),
                ]
            )
    return _table(headers, rows)


def ratios(runs: list[PipelineRun]) -> list[str]:
    """Bullet lines: imc-ray / sequential throughput ratios and imc-ray vs SIFT accuracy."""
    by = {r.name: r for r in runs if not r.error}
    lines: list[str] = []
    imc, seq, sift = by.get("imc-ray"), by.get("sequential"), by.get("sift")
    if imc and seq:
        lines += [
            f"- end-to-end time imc-ray / sequential: **{_ratio(imc.wall_seconds, seq.wall_seconds)}** "
            f"({imc.wall_seconds:.1f} s vs {seq.wall_seconds:.1f} s; "
            f"speed-up {_ratio(seq.wall_seconds, imc.wall_seconds)}x)",
            f"- matching pairs/s imc-ray / sequential: **{_ratio(imc.pairs_per_second, seq.pairs_per_second)}** "
            f"({imc.pairs_per_second:.3f} vs {seq.pairs_per_second:.3f} pairs/s)",
            f"- images/s (end-to-end) imc-ray / sequential: **{_ratio(imc.images_per_second, seq.images_per_second)}** "
            f"({imc.images_per_second:.3f} vs {seq.images_per_second:.3f} images/s)",
            f"- feature stage seconds imc-ray / sequential: {_ratio(imc.stages['features'], seq.stages['features'])} "
            f"({imc.stages['features']:.1f} s vs {seq.stages['features']:.1f} s)",
            f"- CPU seconds imc-ray / sequential: {_ratio(imc.cpu_seconds, seq.cpu_seconds)} "
            f"({imc.cpu_seconds:.0f} vs {seq.cpu_seconds:.0f} CPU s; less sensitive than wall time to other load)",
            f"- peak memory imc-ray / sequential: {_ratio(imc.peak_mem_bytes, seq.peak_mem_bytes)} "
            f"({imc.peak_mem_bytes / 2**30:.2f} vs {seq.peak_mem_bytes / 2**30:.2f} GiB)",
        ]
    if imc and sift and imc.evaluation and sift.evaluation:
        a, b = imc.scene_scores(), sift.scene_scores()
        for key in sorted(set(a) & set(b)):
            x, y = a[key], b[key]
            lines.append(
                f"- {key}, imc-ray vs SIFT: registered {x['n_registered']} vs {y['n_registered']} of {x['n_images']}; "
                f"AUC@5 {_pct(x['auc@5'])} vs {_pct(y['auc@5'])}; mAA-24 {_pct(x['imc2024_maa'])} vs "
                f"{_pct(y['imc2024_maa'])}; mAA-23 {_pct(x['imc2023_maa'])} vs {_pct(y['imc2023_maa'])}"
            )
        oa, ob = imc.evaluation["overall"], sift.evaluation["overall"]
        lines.append(
            f"- overall, imc-ray vs SIFT: AUC@5 {_pct(oa['auc@5'])} vs {_pct(ob['auc@5'])}; mAA-24 "
            f"{_pct(oa['imc2024_maa'])} vs {_pct(ob['imc2024_maa'])}; mAA-23 {_pct(oa['imc2023_maa'])} vs "
            f"{_pct(ob['imc2023_maa'])} ({100 * (oa['imc2024_maa'] - ob['imc2024_maa']):+.1f} mAA-24 points)"
        )
        lines.append(f"- end-to-end time imc-ray / SIFT: {_ratio(imc.wall_seconds, sift.wall_seconds)}")
    return lines


def findings(runs: list[PipelineRun]) -> list[str]:
    """Things worth a maintainer's look: failures, partial registration, split models, slow stages."""
    notes: list[str] = []
    cores = os.cpu_count() or 1
    for r in runs:
        if r.error:
            notes.append(f"- {r.name} FAILED: {r.error}")
        if r.other_cpu_seconds > 0.1 * r.wall_seconds * cores or r.busy_before >= 0.15:
            notes.append(
                f"- {r.name}: the machine was shared during the run (other processes used {r.other_cpu_seconds:.0f} "
                f"CPU s of {r.wall_seconds * cores:.0f}; {100 * r.busy_before:.0f}% busy before it): "
                "its times are inflated"
            )
    by = {r.name: r for r in runs if not r.error}
    imc = by.get("imc-ray")
    if imc is not None:
        stages = imc.raw_report.get("stages", {})
        reused = {k: v.get("reused") for k, v in stages.items() if isinstance(v, dict) and v.get("reused")}
        if reused:
            notes.append(f"- imc-ray reused earlier outputs ({reused}): its times do not measure a full run")
        errs = imc.raw_report.get("errors", [])
        if errs:
            notes.append(f"- imc-ray: {len(errs)} image error(s) in run.json, e.g. {errs[0]}")
        for key, sc in sorted(imc.scene_scores().items()):
            info = imc.scenes.get(key, {})
            if info.get("error"):
                notes.append(f"- imc-ray {key}: mapping error: {info['error']}")
            if info.get("note"):
                notes.append(f"- imc-ray {key}: {info['note']}")
            orient = info.get("orientation") or {}
            if orient.get("suspects") or orient.get("groups") or "seconds" in orient:
                secs = float(orient.get("seconds", "nan"))
                share = 100 * secs / max(imc.wall_seconds, 1e-9)
                notes.append(
                    f"- imc-ray {key}: orientation check {secs:.1f} s ({share:.1f}% of the run's wall time); "
                    f"suspects {orient.get('suspects') or 'none'}, groups {orient.get('groups') or 'none'}, "
                    f"turned: {orient.get('rotated') or 'none'}"
                )
            if info.get("rolled"):
                notes.append(f"- imc-ray {key}: registered but rolled against the scene's up: {info['rolled']}")
            if "relaxed" in info.get("attempts", {}):
                notes.append(f"- imc-ray {key}: needed the relaxed mapping attempt (registered: {info['attempts']})")
            if sc["n_registered"] < sc["n_images"]:
                notes.append(
                    f"- imc-ray {key}: only {sc['n_registered']}/{sc['n_images']} registered "
                    f"(models {info.get('model_sizes')}, verified pairs "
                    f"{info.get('num_verified_pairs')}/{info.get('num_pairs')})"
                )
            elif len(info.get("model_sizes", [])) > 1:
                notes.append(
                    f"- imc-ray {key}: {len(info['model_sizes'])} models {info['model_sizes']}; "
                    "only the largest is submitted"
                )
            for other in ("sequential", "sift"):
                o = by.get(other)
                osc = o.scene_scores().get(key) if o else None
                if osc and osc["imc2024_maa"] - sc["imc2024_maa"] > 0.05:
                    notes.append(
                        f"- imc-ray {key}: mAA-24 {_pct(sc['imc2024_maa'])} is below "
                        f"{other}'s {_pct(osc['imc2024_maa'])}"
                    )
        seq = by.get("sequential")
        if seq is not None and imc.wall_seconds > seq.wall_seconds:
            notes.append(
                f"- imc-ray took longer end to end than the sequential baseline ({imc.wall_seconds:.0f} s vs "
                f"{seq.wall_seconds:.0f} s); its 'other' (start-up/shut-down) was {imc.other_seconds:.0f} s"
            )
    return notes or ["- nothing flagged"]


def markdown_section(
    runs: list[PipelineRun], root: Path, preset: str, overrides: list[str], out: Path, argv: list[str], started: str
) -> str:
    """The dated section that :func:`main` prints and appends to ``bench/RESULTS.md``."""
    m = machine_info()
    v = package_versions()
    cmd = "python bench/run.py " + shlex.join(argv) if argv else "python bench/run.py"
    scenes = sorted({k for r in runs for k in r.scene_scores()})
    parts = [
        f"## {started[:10]}: preset `{preset}`"
        + (f" {' '.join('--set ' + o for o in overrides)}" if overrides else ""),
        "",
        f"- date: {started} (finished {now_iso()})",
        f"- command: `{cmd}`; input: `{root}` ({len(scenes)} scenes: {', '.join(scenes)}); outputs: `{out}`",
        f"- machine: {m['cpu']}, {m['cores']} logical cores, {m['ram_gib']} GiB RAM, GPU: {m['gpu']}; {m['os']}",
        f"- versions: python {m['python']}, "
        + ", ".join(f"{k} {val}" for k, val in v.items())
        + f"; imc-ray commit {git_revision()}",
        "- pipelines ran one after another; times are wall seconds; memory is the peak of system-wide used memory "
        "above its level before the run",
        "",
        "### Time, throughput, memory and overall accuracy",
        "",
        timing_table(runs),
        "",
        "### Per scene",
        "",
        scene_table(runs),
        "",
        "### Ratios",
        "",
        *(ratios(runs) or ["- (need imc-ray with sequential and/or SIFT)"]),
        "",
        "### Flagged",
        "",
        *findings(runs),
        "",
    ]
    return "\n".join(parts)


RESULTS_HEADER = """# Benchmark results

Sections are appended by `python bench/run.py` (see `bench/README.md` for what each column means),
newest last. Timings on small shared CPU machines vary from run to run: compare runs on the same machine.
"""


def append_results(path: Path, section: str) -> None:
    """Append ``section`` to ``path`` (creating it with a header first)."""
    text = path.read_text() if path.exists() else RESULTS_HEADER
    if not text.endswith("\n"):
        text += "\n"
    path.write_text(text + "\n" + section)


# ------------------------------------------------------------------------------------------ main


def parse_only(value: str) -> list[str]:
    """``imc-ray,sift`` -> the pipelines in canonical order; rejects unknown names."""
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = sorted(set(names) - set(PIPELINES))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown pipeline(s) {unknown}; choose from {','.join(PIPELINES)}")
    return [p for p in PIPELINES if p in names]


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns 0 when every pipeline produced a scored submission."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", nargs="?", type=Path, default=DEFAULT_ROOT, help="IMC-style tree (default: %(default)s)")
    p.add_argument("--preset", default="default", help="imc-ray preset for imc-ray and the sequential baseline")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="imc-ray setting for imc-ray and the sequential baseline (repeatable)")  # fmt: skip
    p.add_argument("--only", type=parse_only, default=list(PIPELINES), help="comma-separated subset of %(default)s")
    p.add_argument("--out", type=Path, help="output folder (default: /tmp/imc-ray-bench/<date-time>)")
    p.add_argument("--results", type=Path, default=RESULTS_MD, help="markdown file to append to (default: %(default)s)")
    p.add_argument("--no-append", action="store_true", help="do not append to the results file")
    p.add_argument("--pause", type=float, default=3.0, help="seconds to let memory settle between runs")
    p.add_argument(
        "--wait-idle",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="before each run, wait up to this long for other processes to leave the CPU idle (default: %(default)s)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="with --out of an interrupted benchmark: keep the pipelines it finished (OUT/<name>.result.json)",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    started = now_iso()
    root = args.root.resolve()
    out = (args.out or Path("/tmp/imc-ray-bench") / time.strftime("%Y%m%d-%H%M%S")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    logger.info("benchmark of %s on %s -> %s", ", ".join(args.only), root, out)

    runs: list[PipelineRun] = []
    for i, name in enumerate(args.only):
        saved = out / f"{name}.result.json"
        if args.resume and saved.is_file():
            run = PipelineRun.from_dict(json.loads(saved.read_text()))
            if not run.error:
                logger.info("%s: measured by an earlier, interrupted benchmark in %s; not run again", name, out)
                runs.append(run)
                continue
        if i:
            time.sleep(args.pause)
        pairs_from = out / "imc-ray" if "imc-ray" in args.only else None
        cmd = command_for(name, root, out / name, args.preset, args.overrides, pairs_from)
        busy = wait_for_idle(args.wait_idle) if args.wait_idle > 0 else busy_fraction()
        run = run_pipeline(name, cmd, out / name, out / f"{name}.log", busy)
        score(run, root)
        write_json(saved, run.to_dict())  # what --resume reads back
        runs.append(run)

    section = markdown_section(runs, root, args.preset, args.overrides, out, argv, started)
    print(section)
    write_json(
        out / "results.json",
        {
            "started": started,
            "root": str(root),
            "preset": args.preset,
            "overrides": args.overrides,
            "machine": machine_info(),
            "versions": package_versions(),
            "commit": git_revision(),
            "runs": [r.to_dict() for r in runs],
        },
    )
    (out / "results.md").write_text(section)
    if not args.no_append:
        append_results(args.results, section)
        logger.info("appended to %s", args.results)
    logger.info("outputs, logs and results.json: %s", out)
    return 0 if all(r.evaluation and not r.error for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
