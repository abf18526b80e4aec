"""Typed, frozen run configuration with named presets.

A config is a tree of frozen dataclasses. It is built from a named preset, then
overridden with dotted ``section.key=value`` strings (from the command line) or a
nested mapping (from a JSON file). Unknown sections or keys are errors. The
resolved config is written to ``run.json`` beside the outputs.

Every value is checked when the config is resolved, before any work starts: its type (a JSON
``true`` is not a number, a JSON number is not a string), its choices (``Literal`` fields) and, for
every numeric field, the range in :data:`LIMITS`. A value outside them is a :class:`ConfigError`
that names the key, the value and what is allowed (the CLI exits with code 2).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from imc_ray.formats import StageKeys


class ConfigError(ValueError):
    """A configuration value or key is invalid."""


@dataclass(frozen=True)
class ImagesConfig:
    """Decoding of input images."""

    background: tuple[int, int, int] = (255, 255, 255)
    """RGB colour that transparent pixels are composited onto."""
    max_pixels: int = 200_000_000
    """Images with more pixels are refused (decompression-bomb guard)."""
    min_side: int = 32
    """Images with a shorter side are refused: too small to match."""


@dataclass(frozen=True)
class RetrievalConfig:
    """Global descriptors (DINOv2) and pair selection."""

    model: Literal["dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14", "dinov2_vitg14"] = "dinov2_vits14"
    weights: str = ""
    """Checkpoint file, or a directory holding ``<model>_pretrain.pth``. Empty: the torch hub cache."""
    allow_download: bool = False
    """Fetch the official checkpoint into the torch hub cache when it is missing (needs internet)."""
    image_size: int = 448
    """Images are resized to this square size (a multiple of 14) for DINOv2."""
    exhaustive_below: int = 50
    """Scenes with fewer images than this match every pair (``bench/pair_policy.py``, ``bench/RESULTS.md``:
    fewer pairs folded a 40-view object ring)."""
    num_neighbors: int = 20
    """k nearest neighbours per image when not exhaustive (and per weak image in the second round)."""
    pairing: Literal["auto", "exhaustive", "sequential"] = "auto"
    """auto: every pair below ``exhaustive_below`` images, else nearest neighbours; exhaustive: every pair;
    sequential (video frames): each frame with the next ``sequential_window`` frames in natural name order,
    plus loop closure: its ``num_neighbors`` nearest neighbours (``stages/pairs.py``)."""
    pairs_file: str = ""
    """A pairs file of your own (hloc's pairs.txt: ``name0 name1`` per line, names as in submission.csv)
    instead of ``pairing``. A relative path is looked up in each scene's folder (beside ``images/``); an
    absolute path serves a run of one scene. Pairs with an image that cannot be used are left out."""
    sequential_window: int = 5
    """Pair each image with the next ``w`` images in natural name order: ``sequential`` pairing, and the
    weights-free fallback of ``auto`` (photo collections are often shot in sequence)."""
    second_round_min_pairs: int = 5
    """Scenes matched by nearest neighbours get a second round of pairs before mapping: every image with
    fewer than this many pairs of ``strong_matches`` matches is matched with its next ``num_neighbors``
    most similar images (``stages/pairs.py: second_round``). 0: no second round."""
    strong_matches: int = 100
    """LightGlue matches that make a pair count as strong for :attr:`second_round_min_pairs`."""


@dataclass(frozen=True)
class FeaturesConfig:
    """ALIKED local features."""

    model: Literal["aliked-n16", "aliked-n16rot", "aliked-n32", "aliked-t16"] = "aliked-n16"
    resize: int = 1024
    """Long side the image is resized to before extraction (never upsampled); 0 keeps the size."""
    max_keypoints: int = 2048
    detection_threshold: float = 0.0
    """0 gives exactly ``max_keypoints`` (top-k); > 0 thresholds the score map."""
    nms_radius: int = 2


@dataclass(frozen=True)
class MatchingConfig:
    """LightGlue matching."""

    depth_confidence: float = 0.95
    """Early stopping; -1 disables it."""
    width_confidence: float = 0.99
    """Point pruning; -1 disables it."""
    filter_threshold: float = 0.1
    mixed_precision: bool = False
    """CUDA only: LightGlue under fp16 autocast (upstream's ``mp``); CPU runs ignore it. Off by default:
    neither its speed nor its accuracy has been measured here (no GPU in this project's CI)."""
    min_matches: int = 15
    """Pairs with fewer matches are not written to the COLMAP database."""
    rotation_check: bool = True
    """Find images turned by 90/180/270 degrees and match them again upright (``stages/orientation.py``)."""
    rotation_min_matches: int = 30
    """An image whose best pair has fewer matches is checked for a turn."""
    rotation_min_ratio: float = 0.7
    """An image whose best pair has fewer than this share of the scene's median best-pair matches is
    checked for a turn."""
    rotation_partners: int = 3
    """Images a suspect is matched against at each turn (its neighbours first)."""


@dataclass(frozen=True)
class MappingConfig:
    """COLMAP database, geometric verification and mapping."""

    camera_model: Literal["SIMPLE_RADIAL", "SIMPLE_PINHOLE", "RADIAL", "OPENCV", "PINHOLE"] = "SIMPLE_RADIAL"
    camera_mode: Literal["auto", "single", "per_folder", "per_image"] = "auto"
    """Which images share a camera (COLMAP shares a camera only between images of one size;
    ``stages/cameras.py``). auto: images with EXIF share by make, model, lens, focal length and size, with the
    EXIF focal length as a prior; images without EXIF share one camera per size only when their focal lengths
    agree after a first mapping, else they are split by focal length and mapped again. single: one camera per
    image size. per_folder: one per subfolder of ``images/`` and size. per_image: one camera each."""
    cameras_file: str = ""
    """JSON file of known intrinsics for images matched by glob (format in ``formats.py``); empty: none."""
    known_intrinsics: Literal["fixed", "prior"] = "fixed"
    """fixed: bundle adjustment holds the intrinsics of ``cameras_file`` constant; prior: they are refined."""
    gps: Literal["register", "prior", "off"] = "register"
    """GPS in the photos' EXIF (``stages/geo.py``). register: models with >= 3 registered photos with a fix
    are moved into east-north-up metres about the first fix; prior: also used as position priors in
    incremental mapping; off: ignored."""
    min_model_size: int = 3
    min_num_inliers: int = 15
    """Verified pairs with fewer inliers are not used by the mapper."""
    max_num_models: int = 50
    mapper: Literal["incremental", "global"] = "incremental"
    """incremental: COLMAP's incremental mapper; global: pycolmap's global mapper (GLOMAP). Both measured
    in bench/RESULTS.md; incremental is the default (as accurate on the dev scenes, and the relaxed retry
    and IMC practice are built on it)."""
    refine_principal_point: Literal["auto", "always", "never"] = "auto"
    """A final bundle adjustment refining each camera's principal point (COLMAP's mapper keeps it at the
    image centre). auto: only for cameras shared by >= 10 registered images whose observations span >= 70%
    of the frame, and kept only when it stays within 2% of the image size from the centre
    (``stages/mapping.py: refine_principal_point``)."""
    retry_below: float = 0.9
    """Map again with relaxed initialisation when the largest model registers fewer than this share
    of the scene's readable images (0 disables); the attempt that registers more is kept. Never in clusters
    mode: a pile's largest model is one of its scenes, and the relaxed thresholds glue scenes together."""
    num_threads: int = -1
    """-1 uses the CPUs Ray granted the mapping task."""
    clusters: bool = False
    """IMC-2025 mode (``imc-ray run --cluster``): each scene folder is a pile of images from several
    scenes plus outliers. Every model of at least ``min_model_size`` images becomes a cluster
    (its images are those connected by geometrically verified pairs with >= ``min_num_inliers``
    inliers that the mapper registered); an image in several models goes to the largest; the rest
    are ``outliers``."""
    seed: int = 0


@dataclass(frozen=True)
class ComputeConfig:
    """Ray resources. ``device=auto`` uses GPUs when the cluster has them."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    gpus_per_actor: float = 1.0
    cpus_per_actor: float = 1.0
    threads_per_actor: int = 1
    """torch intra-op threads in each model actor."""
    share_cpus: bool = True
    """Without GPUs, the model pools (DINOv2, ALIKED, LightGlue) share the CPUs: each pool may grow to
    ``CPUs / cpus_per_actor`` actors and each actor asks Ray for ``cpus_per_actor`` divided by the number
    of pools. Extraction and matching mostly take turns (a scene's pairs exist once its images are
    extracted), so whole-CPU actors left one pool's CPUs idle while the other worked. False: each actor
    reserves ``cpus_per_actor``."""
    max_actors: int = 0
    """Upper bound of each actor pool, also beyond the resources present at the start (autoscaling
    clusters grow into it); 0: as many as the cluster's CPUs (or GPUs) allow at the start."""
    actor_resource: str = ""
    """A custom Ray resource each model actor needs one unit of (a node label given with
    ``ray start --resources='{"NAME": 1}'``); pins the model actors to the nodes that have it and sizes
    the pools by its total. Empty: no custom resource."""
    image_batch_size: int = 2
    pair_batch_size: int = 16
    mapping_cpus: int = 2
    resource_wait_s: float = 600.0
    """On a cluster this run attached to (``--address``): how long to wait for a node that can hold
    what a setting asks for (``mapping_cpus``, ``cpus_per_actor``, a GPU, ``actor_resource``) before
    failing with the setting's name; a private local cluster is checked at once."""
    stall_report_s: float = 300.0
    """A stage that makes no progress for this long is reported in the log (what waits, and for what)."""


@dataclass(frozen=True)
class RunConfig:
    """The whole pipeline."""

    preset: str = "default"
    images: ImagesConfig = field(default_factory=ImagesConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    matching: MatchingConfig = field(default_factory=MatchingConfig)
    mapping: MappingConfig = field(default_factory=MappingConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready nested dict."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Limit:
    """The allowed values of a numeric field: ``lo`` to ``hi`` inclusive, plus the ``special`` values
    (such as -1 for "disabled"). A tuple field applies it to each element."""

    lo: float
    hi: float
    special: tuple[float, ...] = ()

    def allows(self, value: float) -> bool:
        """Whether ``value`` is finite and in range (or one of the special values)."""
        return math.isfinite(value) and (self.lo <= value <= self.hi or value in self.special)

    def describe(self) -> str:
        """``"1 to 4096"``, ``"-1, or 1 to 1024"``."""

        def fmt(v: float) -> str:
            return str(int(v)) if float(v).is_integer() else f"{v:g}"

        extra = "".join(f"{fmt(v)}, or " for v in self.special)
        return f"{extra}{fmt(self.lo)} to {fmt(self.hi)}"


_BIG = 1_000_000
LIMITS: dict[str, Limit] = {
    "images.background": Limit(0, 255),
    "images.max_pixels": Limit(1, 100_000_000_000),
    "images.min_side": Limit(1, 65_536),
    "retrieval.image_size": Limit(14, 4_096),
    "retrieval.exhaustive_below": Limit(0, _BIG),
    "retrieval.num_neighbors": Limit(1, 10_000),
    "retrieval.sequential_window": Limit(0, 10_000),
    "retrieval.second_round_min_pairs": Limit(0, 10_000),
    "retrieval.strong_matches": Limit(1, _BIG),
    "features.resize": Limit(32, 65_536, special=(0,)),
    "features.max_keypoints": Limit(1, 65_536),
    "features.detection_threshold": Limit(0, 1),
    "features.nms_radius": Limit(0, 32),
    "matching.depth_confidence": Limit(0, 1, special=(-1,)),
    "matching.width_confidence": Limit(0, 1, special=(-1,)),
    "matching.filter_threshold": Limit(0, 1),
    "matching.min_matches": Limit(0, _BIG),
    "matching.rotation_min_matches": Limit(0, _BIG),
    "matching.rotation_min_ratio": Limit(0, 1),
    "matching.rotation_partners": Limit(1, 100),
    "mapping.min_model_size": Limit(2, _BIG),
    "mapping.min_num_inliers": Limit(0, _BIG),
    "mapping.max_num_models": Limit(1, 10_000),
    "mapping.retry_below": Limit(0, 1),
    "mapping.num_threads": Limit(1, 1_024, special=(-1,)),
    "mapping.seed": Limit(0, 2**31 - 1),
    "compute.gpus_per_actor": Limit(0.01, 64),
    "compute.cpus_per_actor": Limit(0.01, 1_024),
    "compute.threads_per_actor": Limit(1, 1_024),
    "compute.max_actors": Limit(0, 100_000),
    "compute.image_batch_size": Limit(1, 4_096),
    "compute.pair_batch_size": Limit(1, 100_000),
    "compute.mapping_cpus": Limit(1, 1_024),
    "compute.resource_wait_s": Limit(0, 86_400),
    "compute.stall_report_s": Limit(1, 86_400),
}
"""The documented range of every numeric field, by ``section.key`` (``check_limits`` enforces it; a test
asserts that every numeric field is listed)."""


PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # Balanced accuracy and CPU time; what `imc-ray run` uses.
    "default": {},
    # Small images and keypoint budget: smoke tests, laptops, the bundled sample.
    "fast": {
        "features": {"resize": 640, "max_keypoints": 1024},
        "retrieval": {"image_size": 224},
    },
    # IMC-style accuracy: larger images, more keypoints, more neighbours above 50 images.
    "accurate": {
        "features": {"resize": 1600, "max_keypoints": 4096},
        "retrieval": {"num_neighbors": 30},
    },
    # EC2 GPU workers: official DINOv2 weights fetched on first use, GPU actors.
    "ec2": {
        "retrieval": {"allow_download": True},
        "features": {"resize": 1280, "max_keypoints": 4096},
        "compute": {
            "device": "cuda",
            "image_batch_size": 8,
            "pair_batch_size": 64,
            "mapping_cpus": 4,
            "max_actors": 4,  # deploy/ray-cluster.yaml allows up to 4 one-GPU workers
        },
    },
}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` (a string from the command line, or a JSON value) to ``tp``.

    A JSON value must have the field's JSON type: ``true`` is not a number, ``5`` is not a string."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, allowed))}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, str | list | tuple) or len(parts := _parts(value)) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} comma-separated values, got {value!r}")
        return tuple(_coerce(p, a, where) for p, a in zip(parts, args, strict=True))
    if tp is bool:
        return _coerce_bool(value, where)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {value!r} is not a string (quote it)")
        return value
    if tp in (int, float):
        return _coerce_number(value, tp, where)
    raise ConfigError(f"{where}: unsupported type {tp}")  # pragma: no cover - programming error


def _parts(value: str | list[Any] | tuple[Any, ...]) -> list[Any]:
    return value.split(",") if isinstance(value, str) else list(value)


def _coerce_bool(value: Any, where: str) -> bool:
    """A JSON boolean, or one of the words 1/true/yes/on and 0/false/no/off."""
    if isinstance(value, bool):
        return value
    text = value.strip().lower() if isinstance(value, str) else None
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{where}: {value!r} is not a boolean (use true or false)")


def _coerce_number(value: Any, tp: type, where: str) -> int | float:
    """An int or float from a JSON number (never a boolean) or a string."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(f"{where}: {value!r} is not a valid {tp.__name__}")
    if tp is int and isinstance(value, float) and not value.is_integer():
        raise ConfigError(f"{where}: {value!r} is not an integer")
    try:
        return typing.cast(int | float, tp(value))
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{where}: {value!r} is not a valid {tp.__name__}") from None


def _replace(obj: Any, updates: Mapping[str, Any], where: str) -> Any:
    """Return a copy of the dataclass ``obj`` with nested ``updates`` applied."""
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    changes: dict[str, Any] = {}
    for key, value in updates.items():
        path = f"{where}.{key}" if where else key
        if key not in names or key == "preset":
            known = ", ".join(sorted(names - {"preset"}))
            raise ConfigError(f"unknown config key {path!r}; known keys here: {known}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{path} is a section; set one of its keys, e.g. {path}.<key>=<value>")
            changes[key] = _replace(current, value, path)
        else:
            changes[key] = _coerce(value, hints[key], path)
    return dataclasses.replace(obj, **changes)


def _digest(*parts: object) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def stage_keys(cfg: RunConfig) -> StageKeys:
    """Digest of the settings each stage's outputs depend on, including every stage before it.

    Compute settings (actor counts, batch sizes) change speed, not results, and are left out.
    """
    images = dataclasses.asdict(cfg.images)
    features = _digest(images, dataclasses.asdict(cfg.features))
    glob = _digest(images, cfg.features.resize, cfg.retrieval.model, cfg.retrieval.weights, cfg.retrieval.image_size)
    glue = {k: v for k, v in dataclasses.asdict(cfg.matching).items() if not k.startswith("rotation_")}
    matches = _digest(features, glue)  # the orientation stage keys its own record (stages/orientation.py)
    return StageKeys(
        retrieval=glob, features=features, matches=matches, mapping=_digest(matches, dataclasses.asdict(cfg.mapping))
    )


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Turn ``["features.max_keypoints=1024", ...]`` into a nested mapping."""
    tree: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like section.key=value")
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier one")
        node[parts[-1]] = value
    return tree


def build_config(
    preset: str = "default",
    overrides: Iterable[str] = (),
    config_file: Path | None = None,
) -> RunConfig:
    """Resolve a preset, then a JSON config file, then dotted overrides (later wins)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    cfg = _replace(RunConfig(preset=preset), PRESETS[preset], "")
    if config_file is not None:
        try:
            data = json.loads(Path(config_file).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(
                f"config file {config_file} holds {type(data).__name__ if data is not None else 'null'}, "
                'not a JSON object; write {"section": {"key": value}}, e.g. {"features": {"max_keypoints": 1024}}'
            )
        data.pop("preset", None)
        cfg = _replace(cfg, data, "")
    cfg = _replace(cfg, parse_overrides(overrides), "")
    check_limits(cfg)
    return typing.cast(RunConfig, cfg)


def numeric_fields(cfg: RunConfig) -> dict[str, Any]:
    """``section.key`` -> value of every int, float and tuple-of-numbers field."""
    out: dict[str, Any] = {}
    for section in dataclasses.fields(cfg):
        sub = getattr(cfg, section.name)
        if not dataclasses.is_dataclass(sub):
            continue
        for f in dataclasses.fields(sub):
            value = getattr(sub, f.name)
            if isinstance(value, int | float | tuple) and not isinstance(value, bool):
                out[f"{section.name}.{f.name}"] = value
    return out


def check_limits(cfg: RunConfig) -> None:
    """Raise :class:`ConfigError` for the first numeric field outside its :data:`LIMITS` range."""
    for key, value in numeric_fields(cfg).items():
        limit = LIMITS.get(key)
        if limit is None:  # pragma: no cover - tests/test_config.py asserts every field is listed
            raise ConfigError(f"{key}: no documented range (add it to imc_ray.config.LIMITS)")
        for v in value if isinstance(value, tuple) else (value,):
            if not limit.allows(v):
                raise ConfigError(f"{key}={value!r} is out of range; allowed: {limit.describe()}")


__all__ = [
    "LIMITS",
    "PRESETS",
    "ComputeConfig",
    "ConfigError",
    "FeaturesConfig",
    "ImagesConfig",
    "Limit",
    "MappingConfig",
    "MatchingConfig",
    "RetrievalConfig",
    "RunConfig",
    "build_config",
    "check_limits",
    "parse_overrides",
    "stage_keys",
]
