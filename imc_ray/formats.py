"""On-disk formats: the one place that defines them (format version 1).

Output tree of ``imc-ray run INPUT OUTPUT``::

    OUTPUT/
      run.json                     what the run did: config, versions, per-stage seconds and counts, errors (below)
      submission.csv               dataset,scene,image,rotation_matrix,translation_vector (world-to-camera, ';'-joined)
      .stream-progress.json        during a run only: images past feature extraction (the driver's progress bar)
      .imc-ray-output              marker (OUTPUT_MARKER): the catalog never reads a folder holding it as input
      .imc-ray.lock                during a run only: host, pid and start time of the run that holds OUTPUT
      <dataset>/<scene>/
        features.h5                hloc-compatible local features, one group per image name
        global.h5                  hloc-compatible global descriptors (only when DINOv2 ran)
        pairs.txt                  "name0 name1" per line (hloc pairs file; see read_pairs for names with spaces)
        pairs-round2.txt           the second round's pairs, same format (scenes matched by nearest neighbours only)
        matches.h5                 hloc-compatible matches, one group per pair_key(name0, name1)
        shards/global-<key>/*.parquet    Arrow shards written by the DINOv2 actors (one writer each)
        shards/features-<key>/*.parquet  Arrow shards written by the ALIKED actors (one writer each)
        shards/matches-<key>/*.parquet   Arrow shards written by the LightGlue actors (one writer each)
        database.db                COLMAP database (keypoints, matches, two-view geometries)
        sparse/<k>/*.bin           every COLMAP model, largest first (k = 0, 1, ...; see ``joined``)
        scene.json                 mapping summary of the scene
        orientation.json           the orientation check's decision: key, suspects, groups, rotated (image -> degrees),
                                   hinted (image -> turn: the model's rolled photos tested after mapping),
                                   outside (images left out of the largest model, tested at every turn after
                                   mapping),
                                   seconds (the check's time, both passes)

``features.h5`` (hloc layout), group ``/<image name>``:
  * ``keypoints``   float32 (N, 2): x, y in original-image pixels, origin at the centre of the top-left
    pixel (COLMAP's origin is its corner: add 0.5);
  * ``descriptors`` float32 (D, N) (hloc stores descriptors transposed);
  * ``scores``      float32 (N,);
  * ``image_size``  int32 (2,): width, height of the decoded (EXIF-rotated) image.
  An image the orientation stage set upright (``orientation.json``, ``run.json`` → ``scenes.*.rotated``:
  image -> degrees counter-clockwise) has its keypoints and ``image_size`` in the upright image's pixels,
  and is upright in ``database.db`` and ``sparse/`` too; ``submission.csv`` gives the stored photo's pose.
  ``scene.json`` → ``rolled`` (also ``run.json`` → ``scenes.*.rolled``, optional: absent in older files):
  images of ``sparse/0`` whose camera is rolled by about 90, 180 or 270 degrees against the scene's up, i.e.
  photos turned in the file that the orientation check missed (image -> the turn that would set it upright,
  as in ``rotated``; ``mapping.camera_turns``). ``scene.json`` → ``upright`` (optional): images of ``sparse/0``
  whose camera is upright against that up (the partners the orientation check tests ``rolled`` against).
  ``scene.json`` → ``outside`` (optional, not in clusters mode): the images without a pose while a model
  exists, one list per model not joined to the largest, then one of the images in no model.

``global.h5``, group ``/<image name>``: ``global_descriptor`` float32 (D,), L2-normalised.

``matches.h5`` (hloc layout), group ``/<pair_key(name0, name1)>``:
  * ``matches0``          int32 (N0,): index into image 1's keypoints, -1 when unmatched;
  * ``matching_scores0``  float32 (N0,).

Every HDF5 file carries the root attributes ``imc_ray_format`` (= FORMAT_VERSION) and ``kind``.

``scene.json`` → ``cameras`` (also in ``run.json`` → ``scenes.*.cameras``): ``count``, ``decision`` (words),
``test_registered`` (when a test mapping with one camera per photo decided the sharing) and ``groups``, one
per COLMAP camera: ``first_image``, ``images`` (count), ``size`` [w, h], ``source`` (``known``, ``exif``,
``size``, ``folder``, ``image``, ``focal``), ``prior_focal`` and ``focal`` (pixels, or null), ``fixed``,
``note``.

``scene.json`` → ``geo`` (GPS, ``stages/geo.py``): ``fixes`` (photos with an EXIF GPS fix) and, when the
largest model was geo-registered, ``frame`` (``"ENU"``: east-north-up metres), ``origin`` [lat, lon, alt] of
the frame (the first fix in name order, WGS84), ``images`` (fixes used), ``rms_m`` and ``scale``.

``scene.json`` → ``joined`` (``stages/join.py``): one entry per model moved into a larger model's frame:
``source`` and ``target`` (indices k of ``sparse/<k>``), ``correspondences`` and ``inliers`` (3D-3D) and
``scale``. ``model_sizes`` are the mapper's; ``poses`` (and ``submission.csv``) hold the largest model and
the models joined to it (in clusters mode, a joined model's images are in its target's cluster).

Inputs beside a scene's ``images/``: ``masks/<image name>.png`` (COLMAP's masks: zero drops keypoints;
``stages/catalog.py``) and, with ``retrieval.pairs_file``, the user's pairs file (hloc's format above).

Known intrinsics (an input: ``mapping.cameras_file``, read by ``stages/cameras.py: read_cameras_file``), JSON::

    {"imc_ray_cameras": 1,
     "cameras": [{"images": "<glob>", "model": "<COLMAP model>", "width": W, "height": H, "params": [...]}]}

``images`` is an ``fnmatch`` glob on ``<dataset>/<scene>/<image name>`` (``*`` also matches ``/``); the first
entry that matches a photo gives its camera (one camera per entry and scene). ``model`` is a COLMAP camera
model name (``PINHOLE``, ``SIMPLE_RADIAL``, ``OPENCV``, ...) and ``params`` its parameters in COLMAP's order
and pixel convention (the centre of the top-left pixel is (0.5, 0.5)), for photos of ``width`` x ``height``
as decoded (EXIF orientation applied).

``run.json`` (written by the driver, read by ``report.read_report``: the summary, the viewer and bench;
``report.RunReport``), ``report_version`` 2 (version 1, without the key, has the same keys):
  * ``imc_ray_format``, ``report_version``, ``started`` (UTC, ISO 8601), ``input``, ``output``, ``work_dir``
    (a URI OUTPUT's local work directory, else empty), ``config`` (the resolved config), ``versions``;
  * ``stage_keys``: ``retrieval``, ``features``, ``matches``, ``mapping`` (the ``<key>`` of each stage);
  * ``retrieval``: ``dinov2`` (whether DINOv2 ran) and ``reason`` (why not);
  * ``resources_lowered``: resource requests lowered to fit a fixed-size cluster (words);
  * ``stages``, in run order: ``input`` (URI INPUT only: seconds, images, copied, removed), ``features``
    (seconds, images, reused, keypoints, images_per_node), ``pairs`` (seconds, pairs), ``matching`` (seconds,
    pairs, reused, matches, pairs_per_node), ``mapping`` (seconds_after_matching, scenes, reused),
    ``submission`` (seconds, registered). Stages overlap: seconds are each stage's own span;
  * ``scenes``: ``"<dataset>/<scene>"`` → ``num_images``, ``note``, ``pairs_method`` and, for a mapped
    scene, the fields of its ``scene.json`` except ``poses`` (``mapping.SceneResult``) plus ``num_registered``;
  * ``errors``: one entry per input file or pair not used: ``dataset``, ``scene``, ``image`` (or ``pair``),
    ``error``; ``seconds_total``; ``driver_peak_rss_mb``.

Parquet shards use portable Arrow types only (no Ray tensor extension types); arrays are flattened
row-major into ``list<...>`` columns with their shape in the scalar columns (schemas below).

Every file is written under a temporary name in the same directory and renamed into place, so a
reader never sees a half-written file. ``<key>`` is a digest of the settings that shape a stage and
every stage before it (``config.stage_keys``): a rerun with the same settings reuses committed shards
(resume), and a changed setting writes to new directories instead of mixing outputs of two configs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FORMAT_VERSION = 1

FEATURE_SHARD_SCHEMA = pa.schema(
    [
        ("dataset", pa.string()),
        ("scene", pa.string()),
        ("name", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("num_keypoints", pa.int32()),
        ("descriptor_dim", pa.int32()),
        ("keypoints", pa.list_(pa.float32())),  # (N*2,)
        ("scores", pa.list_(pa.float32())),  # (N,)
        ("descriptors", pa.list_(pa.float32())),  # (N*D,), row-major (N, D)
    ],
    metadata={"imc_ray_format": str(FORMAT_VERSION), "kind": "features"},
)

GLOBAL_SHARD_SCHEMA = pa.schema(
    [
        ("dataset", pa.string()),
        ("scene", pa.string()),
        ("name", pa.string()),
        ("global_descriptor", pa.list_(pa.float32())),  # (G,)
    ],
    metadata={"imc_ray_format": str(FORMAT_VERSION), "kind": "global"},
)

MATCH_SHARD_SCHEMA = pa.schema(
    [
        ("dataset", pa.string()),
        ("scene", pa.string()),
        ("name0", pa.string()),
        ("name1", pa.string()),
        ("num_matches", pa.int32()),
        ("matches", pa.list_(pa.int32())),  # (M*2,), row-major (M, 2)
        ("scores", pa.list_(pa.float32())),  # (M,)
    ],
    metadata={"imc_ray_format": str(FORMAT_VERSION), "kind": "matches"},
)


class FormatError(ValueError):
    """A file does not have the expected layout or version."""


@dataclass(frozen=True)
class Features:
    """Local features of one image.

    keypoints: (N, 2) float32, original-image pixels, pixel-centre origin.
    scores: (N,) float32.
    descriptors: (N, D) float32.
    image_size: (width, height) of the decoded image.
    """

    keypoints: np.ndarray
    scores: np.ndarray
    descriptors: np.ndarray
    image_size: tuple[int, int]


OUTPUT_MARKER = ".imc-ray-output"
"""Written into every OUTPUT (and work directory) when a run starts: the catalog never reads a folder that
holds it as input (an OUTPUT inside INPUT, even from an earlier run with another OUTPUT)."""


def image_key(name: str) -> str:
    """An image's part of a pair key (``/`` becomes ``-``); the catalog refuses a second image with the same one."""
    return name.replace("/", "-")


def pair_key(name0: str, name1: str) -> str:
    """hloc's ``names_to_pair``: the HDF5 group name of a pair."""
    return "/".join((image_key(name0), image_key(name1)))


def scene_dir(output: Path, dataset: str, scene: str) -> Path:
    """Directory of one scene's outputs; refuses names that would lead outside ``output``."""
    for part in (dataset, scene):
        if part in ("", ".", "..") or "/" in part or "\\" in part or "\0" in part:
            raise ValueError(f"dataset/scene name {part!r} cannot be used as a folder name inside {output}; rename it")
    return output / dataset / scene


@dataclass(frozen=True)
class StageKeys:
    """Digest of the settings each stage's outputs depend on, including every stage before it
    (``config.stage_keys``): the ``<key>`` of the shard folders and of ``scene.json``."""

    retrieval: str
    features: str
    matches: str
    mapping: str

    def to_dict(self) -> dict[str, str]:
        """As ``run.json`` → ``stage_keys`` has them."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SceneLayout:
    """Every file and shard folder of one scene's outputs (the tree in this module's docstring).

    ``keys`` is needed only for the shard folders (a reader of finished outputs, such as the viewer, has none)."""

    root: Path
    keys: StageKeys | None = None

    @classmethod
    def of(cls, output: Path, dataset: str, scene: str, keys: StageKeys | None = None) -> SceneLayout:
        """The layout of scene ``dataset/scene`` in ``output`` (:func:`scene_dir` checks the names)."""
        return cls(scene_dir(output, dataset, scene), keys)

    @property
    def features_h5(self) -> Path:
        return self.root / "features.h5"

    @property
    def global_h5(self) -> Path:
        return self.root / "global.h5"

    @property
    def pairs_txt(self) -> Path:
        return self.root / "pairs.txt"

    @property
    def pairs_round2_txt(self) -> Path:
        return self.root / "pairs-round2.txt"

    @property
    def matches_h5(self) -> Path:
        return self.root / "matches.h5"

    @property
    def database(self) -> Path:
        return self.root / "database.db"

    @property
    def sparse(self) -> Path:
        """``sparse/<k>/``: every COLMAP model, largest first."""
        return self.root / "sparse"

    @property
    def scene_json(self) -> Path:
        return self.root / "scene.json"

    @property
    def orientation_json(self) -> Path:
        return self.root / "orientation.json"

    def shards(self, kind: str) -> Path:
        """``shards/<kind>-<key>``: the Arrow shards of ``kind`` (``global``, ``features`` or ``matches``) for
        this config's key; a changed setting never reads or mixes the shards of another."""
        if self.keys is None:
            raise ValueError(f"{self.root}: the shard folders need the run's stage keys")
        key = {"global": self.keys.retrieval, "features": self.keys.features, "matches": self.keys.matches}[kind]
        return self.root / "shards" / f"{kind}-{key}"

    @property
    def global_shards(self) -> Path:
        return self.shards("global")

    @property
    def feature_shards(self) -> Path:
        return self.shards("features")

    @property
    def match_shards(self) -> Path:
        return self.shards("matches")


def check_writable(output: Path) -> None:
    """Create ``output`` and prove it takes a file, or raise an error that says what to do."""
    try:
        output.mkdir(parents=True, exist_ok=True)
        write_text_atomic(output / ".imc-ray-write-check", "ok\n")
        (output / ".imc-ray-write-check").unlink()
    except OSError as exc:
        raise PermissionError(
            f"cannot write to the output folder {output} ({exc.strerror or exc}); free some space, fix its "
            "permissions or choose another OUTPUT"
        ) from None


def mark_output(output: Path) -> None:
    """Write :data:`OUTPUT_MARKER` into ``output`` (once), so no later run reads it as input."""
    if not (output / OUTPUT_MARKER).is_file():
        write_text_atomic(output / OUTPUT_MARKER, "imc-ray output folder: never read as input\n")


def ensure_space(path: Path, nbytes: int) -> None:
    """Refuse to start a write of about ``nbytes`` that the disk cannot hold.

    HDF5 (h5py 3.16 / HDF5 2.0) crashes the process with a segmentation fault when the disk fills
    up mid-write, so HDF5 writers check first.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    need = int(nbytes * 1.1) + (1 << 20)
    free = shutil.disk_usage(path.parent).free
    if free < need:
        raise OSError(
            errno.ENOSPC,
            f"not enough free space for {path}: about {need / 1e6:.1f} MB needed, {free / 1e6:.1f} MB free; "
            "free some space or choose another OUTPUT (finished files are kept)",
        )


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


_PARTIAL = re.compile(r"^\..+\.tmp-[0-9a-f]{8}$")


def remove_partial_files(folder: Path) -> int:
    """Delete the temporary files of :func:`atomic_path` below ``folder`` (left by a run that was killed or
    interrupted; call it only while holding the OUTPUT's lock); return how many."""
    removed = 0
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            if _PARTIAL.match(name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(dirpath, name))
                    removed += 1
    return removed


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


# ----------------------------------------------------------------------------- HDF5


def _check_version(f: h5py.File, path: Path, kind: str) -> None:
    version = f.attrs.get("imc_ray_format")
    if version is None:
        return  # a plain hloc file: accepted as-is
    if int(version) != FORMAT_VERSION or f.attrs.get("kind") != kind:
        raise FormatError(
            f"{path}: format {version!r}/{f.attrs.get('kind')!r}, expected {FORMAT_VERSION}/{kind!r}; "
            "delete the file (or the output folder) and run again"
        )


def write_features_h5(path: Path, features: dict[str, Features]) -> None:
    """Write ``features.h5`` (layout in the module docstring), atomically."""
    ensure_space(path, sum(f.keypoints.nbytes + f.descriptors.nbytes + f.scores.nbytes + 64 for f in features.values()))
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["imc_ray_format"] = FORMAT_VERSION
        f.attrs["kind"] = "features"
        for name in sorted(features):
            feats = features[name]
            g = f.create_group(name)
            g.create_dataset("keypoints", data=feats.keypoints.astype(np.float32))
            g.create_dataset("descriptors", data=feats.descriptors.astype(np.float32).T)
            g.create_dataset("scores", data=feats.scores.astype(np.float32))
            g.create_dataset("image_size", data=np.asarray(feats.image_size, dtype=np.int32))


def read_features_h5(path: Path, names: list[str] | None = None) -> dict[str, Features]:
    """Read features of ``names`` (all images when None) from ``features.h5``."""
    out: dict[str, Features] = {}
    with h5py.File(path, "r", locking=False) as f:
        _check_version(f, path, "features")
        if names is None:
            names = []
            f.visititems(lambda key, obj: names.append(key) if "keypoints" in getattr(obj, "keys", list)() else None)
        for name in names:
            g = f[name]
            out[name] = Features(
                keypoints=g["keypoints"][()],
                scores=g["scores"][()],
                descriptors=g["descriptors"][()].T,
                image_size=(int(g["image_size"][0]), int(g["image_size"][1])),
            )
    return out


def write_global_h5(path: Path, descriptors: dict[str, np.ndarray]) -> None:
    """Write ``global.h5``: name -> (D,) float32 descriptor."""
    ensure_space(path, sum(d.nbytes + 64 for d in descriptors.values()))
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["imc_ray_format"] = FORMAT_VERSION
        f.attrs["kind"] = "global"
        for name in sorted(descriptors):
            f.create_group(name).create_dataset("global_descriptor", data=descriptors[name].astype(np.float32))


def read_global_h5(path: Path, names: list[str]) -> np.ndarray | None:
    """(N, D) descriptors of ``names`` from ``global.h5``; None when the file or one of the names is missing."""
    if not path.is_file():
        return None
    with h5py.File(path, "r", locking=False) as f:
        _check_version(f, path, "global")
        if not all(n in f for n in names):
            return None
        return np.stack([np.asarray(f[n]["global_descriptor"], np.float32) for n in names])


def write_matches_h5(
    path: Path, matches: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]], num_kp0: dict[str, int]
) -> None:
    """Write ``matches.h5`` from compact matches.

    matches: (name0, name1) -> (indices (M, 2) int, scores (M,) float).
    num_kp0: number of keypoints of each image (the length of ``matches0``).
    """
    ensure_space(path, sum(8 * num_kp0[a] + 64 for a, _ in matches))
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["imc_ray_format"] = FORMAT_VERSION
        f.attrs["kind"] = "matches"
        for name0, name1 in sorted(matches):
            idx, scores = matches[(name0, name1)]
            m0 = np.full(num_kp0[name0], -1, dtype=np.int32)
            s0 = np.zeros(num_kp0[name0], dtype=np.float32)
            m0[idx[:, 0]] = idx[:, 1]
            s0[idx[:, 0]] = scores
            g = f.create_group(pair_key(name0, name1))
            g.create_dataset("matches0", data=m0)
            g.create_dataset("matching_scores0", data=s0)


def read_matches_h5(path: Path, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray]:
    """Compact matches of one pair: indices (M, 2) int32 and scores (M,) float32."""
    with h5py.File(path, "r", locking=False) as f:
        _check_version(f, path, "matches")
        g = f[pair_key(name0, name1)]
        m0 = g["matches0"][()]
        s0 = g["matching_scores0"][()]
    valid = m0 >= 0
    idx = np.stack([np.nonzero(valid)[0], m0[valid]], axis=1).astype(np.int32)
    return idx, s0[valid].astype(np.float32)


def feature_names_h5(path: Path) -> list[str]:
    """The image names of ``features.h5`` (the groups that hold ``keypoints``), sorted; no arrays are read."""
    names: list[str] = []
    with h5py.File(path, "r", locking=False) as f:
        _check_version(f, path, "features")
        f.visititems(lambda key, obj: names.append(key) if isinstance(obj, h5py.Group) and "keypoints" in obj else None)
    return sorted(names)


def match_counts_h5(path: Path, names: Iterable[str]) -> dict[tuple[str, str], int]:
    """Every pair of ``matches.h5`` -> its number of matches (entries of ``matches0`` that are not -1).

    A group name holds :func:`image_key` of each image, not its name; ``names`` (the scene's images, e.g.
    :func:`feature_names_h5`) maps the keys back, and a key that no name gives is returned as it is.
    """
    back = {image_key(n): n for n in names}
    out: dict[tuple[str, str], int] = {}
    with h5py.File(path, "r", locking=False) as f:
        _check_version(f, path, "matches")
        for k0, g0 in f.items():
            if not isinstance(g0, h5py.Group):
                continue
            for k1, g1 in g0.items():
                if isinstance(g1, h5py.Group) and "matches0" in g1:
                    out[(back.get(k0, k0), back.get(k1, k1))] = int(np.count_nonzero(g1["matches0"][()] >= 0))
    return out


# ----------------------------------------------------------------------------- Parquet shards


def _shard_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("*.parquet") if not p.name.startswith("."))


def done_keys(directory: Path, columns: tuple[str, ...]) -> set[tuple[str, ...]]:
    """The rows already committed in a shard directory, as tuples of ``columns`` (resume)."""
    out: set[tuple[str, ...]] = set()
    for p in _shard_files(directory):
        d = pq.read_table(p, columns=list(columns)).to_pydict()
        out.update(zip(*(d[c] for c in columns), strict=True))
    return out


def write_shard(directory: Path, table: pa.Table) -> Path:
    """Write one Arrow shard under a fresh unique name, atomically; return its path. Names sort in the order
    of writing on one machine (the override shards of ``rotated/``: a later decision's rows come last)."""
    path = directory / f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.parquet"
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def read_shards(directory: Path, schema: pa.Schema) -> pa.Table:
    """Concatenate every committed shard of a directory (temporary files are ignored), then the
    override shards of ``directory/rotated/``: rows there come last, so they replace earlier rows
    of the same image or pair when the table is turned into a dict."""
    files = _shard_files(directory) + _shard_files(directory / "rotated")
    if not files:
        return schema.empty_table()
    tables = []
    for p in files:
        t = pq.read_table(p)
        if t.schema.metadata is None or t.schema.metadata.get(b"imc_ray_format") != str(FORMAT_VERSION).encode():
            raise FormatError(f"{p}: not an imc-ray format-{FORMAT_VERSION} shard; delete it and run again")
        tables.append(t.select(schema.names).cast(schema))
    return pa.concat_tables(tables)


def feature_rows(dataset: str, scene: str, items: list[tuple[str, Features]]) -> pa.Table:
    """Arrow table (FEATURE_SHARD_SCHEMA) of ``(name, features)``."""
    return pa.Table.from_pydict(
        {
            "dataset": [dataset] * len(items),
            "scene": [scene] * len(items),
            "name": [n for n, _ in items],
            "width": [f.image_size[0] for _, f in items],
            "height": [f.image_size[1] for _, f in items],
            "num_keypoints": [len(f.keypoints) for _, f in items],
            "descriptor_dim": [f.descriptors.shape[1] for _, f in items],
            "keypoints": [f.keypoints.astype(np.float32).ravel() for _, f in items],
            "scores": [f.scores.astype(np.float32) for _, f in items],
            "descriptors": [f.descriptors.astype(np.float32).ravel() for _, f in items],
        },
        schema=FEATURE_SHARD_SCHEMA,
    )


def features_from_table(table: pa.Table) -> dict[str, Features]:
    """Inverse of :func:`feature_rows`: name -> Features."""
    feats: dict[str, Features] = {}
    d = table.to_pydict()
    for i, name in enumerate(d["name"]):
        n, dim = d["num_keypoints"][i], d["descriptor_dim"][i]
        feats[name] = Features(
            keypoints=np.asarray(d["keypoints"][i], np.float32).reshape(n, 2),
            scores=np.asarray(d["scores"][i], np.float32),
            descriptors=np.asarray(d["descriptors"][i], np.float32).reshape(n, dim),
            image_size=(d["width"][i], d["height"][i]),
        )
    return feats


def consolidate_features(scene: SceneLayout, names: set[str] | None = None) -> dict[str, Features]:
    """Merge a scene's committed feature shards (and the orientation stage's overrides) into ``features.h5``,
    keeping only the images ``names`` (the scene's images now: shards of an earlier run may hold images
    since removed from INPUT); None keeps all."""
    feats = features_from_table(read_shards(scene.feature_shards, FEATURE_SHARD_SCHEMA))
    if names is not None:
        feats = {n: f for n, f in feats.items() if n in names}
    write_features_h5(scene.features_h5, feats)
    return feats


def global_rows(dataset: str, scene: str, items: list[tuple[str, np.ndarray]]) -> pa.Table:
    """Arrow table (GLOBAL_SHARD_SCHEMA) of ``(name, descriptor (G,))``."""
    return pa.Table.from_pydict(
        {
            "dataset": [dataset] * len(items),
            "scene": [scene] * len(items),
            "name": [n for n, _ in items],
            "global_descriptor": [g.astype(np.float32) for _, g in items],
        },
        schema=GLOBAL_SHARD_SCHEMA,
    )


def globals_from_table(table: pa.Table) -> dict[str, np.ndarray]:
    """Inverse of :func:`global_rows`: name -> (G,) float32."""
    d = table.to_pydict()
    return {n: np.asarray(g, np.float32) for n, g in zip(d["name"], d["global_descriptor"], strict=True)}


def match_rows(dataset: str, scene: str, items: list[tuple[str, str, np.ndarray, np.ndarray]]) -> pa.Table:
    """Arrow table (MATCH_SHARD_SCHEMA) of ``(name0, name1, indices (M, 2), scores (M,))``."""
    return pa.Table.from_pydict(
        {
            "dataset": [dataset] * len(items),
            "scene": [scene] * len(items),
            "name0": [a for a, _, _, _ in items],
            "name1": [b for _, b, _, _ in items],
            "num_matches": [len(m) for _, _, m, _ in items],
            "matches": [m.astype(np.int32).ravel() for _, _, m, _ in items],
            "scores": [s.astype(np.float32) for _, _, _, s in items],
        },
        schema=MATCH_SHARD_SCHEMA,
    )


def matches_from_table(table: pa.Table) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    """Inverse of :func:`match_rows`: (name0, name1) -> (indices (M, 2) int32, scores (M,) float32)."""
    d = table.to_pydict()
    out: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    for i in range(len(d["name0"])):
        m = np.asarray(d["matches"][i], np.int32).reshape(-1, 2)
        out[(d["name0"][i], d["name1"][i])] = (m, np.asarray(d["scores"][i], np.float32))
    return out


def read_pairs(path: Path, names: Iterable[str] = ()) -> list[tuple[str, str]]:
    """Read an hloc pairs file ("name0 name1" per line).

    Image names may contain spaces (hloc's format cannot tell where such a line splits): give the scene's
    image ``names`` and each line is split where both halves are known names.
    """
    known = set(names)
    pairs = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(" ")
        cuts = [
            i for i in range(1, len(parts)) if len(parts) == 2 or {" ".join(parts[:i]), " ".join(parts[i:])} <= known
        ]
        if len(cuts) != 1:
            raise ValueError(f"{path}, line {n}: cannot tell the two image names apart in {line!r}")
        pairs.append((" ".join(parts[: cuts[0]]), " ".join(parts[cuts[0] :])))
    return pairs


def write_pairs(path: Path, pairs: list[tuple[str, str]]) -> None:
    """Write an hloc pairs file atomically (names with spaces: read it back with :func:`read_pairs`' ``names``)."""
    write_text_atomic(path, "".join(f"{a} {b}\n" for a, b in pairs))
