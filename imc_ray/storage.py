"""INPUT and OUTPUT on object stores: ``s3://bucket/prefix`` and any other URI that pyarrow (or, failing
that, fsspec) can open (``gs://``, ``abfs://``, ``hdfs://``, ``file://``, ...).

The pipeline itself works on local paths; :class:`Staging` is the one object that moves data in and out:

* a URI INPUT: its image files are copied into a local folder before the image stages start (one Ray
  task per scene folder, in parallel), then the catalog reads that copy;
* a URI OUTPUT: the run works in a local work directory that first becomes a copy of what OUTPUT already
  holds (resume); each scene's folder is uploaded as soon as its mapping finishes, ``submission.csv`` and
  ``run.json`` at the end.

A transfer skips a file whose size and modification time (whole seconds) already agree on both sides;
after each transfer the local file takes the remote file's modification time, so an unchanged file is
not sent again. A path with a component that starts with ``.`` (the temporary files of atomic writes,
the work-directory marker, the staged input) is never transferred. Uploads to S3 are atomic per object;
local files are written under a temporary name and renamed, like every other output.

imc-ray never reads or stores credentials itself: pyarrow finds them (for S3: ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and ``~/.aws``, or the instance
profile; ``AWS_ENDPOINT_URL`` or ``?endpoint_override=HOST:PORT&scheme=http`` for S3-compatible servers).
:func:`redact` removes what a URI itself may carry (``user:secret@``, and the values of query parameters
named like ``*key*``, ``*secret*``, ``*token*``, ``*password*``, ``*credential*``, ``*sig*``) before it
is logged or written to ``run.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from imc_ray.formats import atomic_path, mark_output, remove_partial_files
from imc_ray.formats import check_writable as check_local_writable
from imc_ray.lock import output_lock
from imc_ray.stages.catalog import input_layout, is_photo

STAGED_INPUT = ".imc-ray-input"
"""Folder (inside the work directory) that holds the local copy of a URI INPUT."""
WORK_MARKER = ".imc-ray-work"
"""File that marks a folder as the work directory of one OUTPUT URI (its redacted URI is the content)."""
WRITE_CHECK = ".imc-ray-write-check"

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_SECRET_PARAM = re.compile(r"key|secret|token|password|credential|sig", re.IGNORECASE)
_DENIED = ("access_denied", "accessdenied", "forbidden", "status 403", "credential", "invalidaccesskey", "expiredtoken")
_THREADS = 8

logger = logging.getLogger(__name__)


class UriError(ValueError):
    """A URI that cannot be used at all (unknown scheme, malformed); a usage error."""


class StorageError(OSError):
    """A remote location that cannot be read or written (missing bucket, no access, unreachable)."""


@dataclass(frozen=True)
class Entry:
    """One file of a tree: its path relative to the tree's root (POSIX), size and modification time."""

    rel: str
    size: int
    mtime_ns: int | None


@dataclass(frozen=True)
class Remote:
    """A folder on a pyarrow filesystem: ``fs``, the folder's ``path`` on it, and its ``uri`` (redacted)."""

    fs: pafs.FileSystem
    path: str
    uri: str

    def where(self, rel: str = "") -> str:
        """The redacted URI of ``rel`` inside this folder, for messages."""
        base = self.uri.partition("?")[0].rstrip("/")
        return f"{base}/{rel}" if rel else base

    def child(self, rel: str) -> Remote:
        """The folder ``rel`` (POSIX, relative) inside this one."""
        base, sep, query = self.uri.partition("?")
        return Remote(self.fs, self._join(rel), f"{base.rstrip('/')}/{rel}{sep}{query}")

    def _join(self, rel: str) -> str:
        return f"{self.path}/{rel}" if self.path else rel


def is_uri(value: str | Path) -> bool:
    """True for ``scheme://...`` strings; a :class:`~pathlib.Path` is always local."""
    return isinstance(value, str) and _URI.match(value) is not None


def redact(uri: str) -> str:
    """``uri`` without credentials: ``user:secret@`` is dropped and secret-like query values become ``***``."""
    head, _, query = uri.partition("#")[0].partition("?")
    scheme, sep, rest = head.partition("://")
    at = rest.rfind("@")
    if at >= 0 and ":" in rest[:at]:  # user:secret@host (a secret may even hold an unencoded '/')
        rest = rest[at + 1 :]
    params = urllib.parse.parse_qsl(query, keep_blank_values=True)
    masked = urllib.parse.urlencode([(k, "***" if _SECRET_PARAM.search(k) else v) for k, v in params], safe=":/*")
    return f"{scheme}{sep}{rest}" + (f"?{masked}" if masked else "")


def resolve(uri: str) -> Remote:
    """The filesystem and folder of ``uri``, with pyarrow's ``FileSystem.from_uri``, else fsspec's.

    Raises:
        UriError: no filesystem handles the URI's scheme, or the URI is malformed.
        StorageError: the filesystem cannot be reached (e.g. S3 region lookup failed).
    """
    shown = redact(uri)
    scheme = uri.partition("://")[0].lower()
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except pa.ArrowInvalid as exc:
        if "Unrecognized filesystem type" not in str(exc):
            raise UriError(f"{shown}: {str(exc).replace(uri, shown)}; fix the URI") from None
        fs, path = _fsspec(uri, scheme, shown)
    except OSError as exc:
        raise _explain(exc, shown, "open") from None
    return Remote(fs, path.rstrip("/"), shown)


def _fsspec(uri: str, scheme: str, shown: str) -> tuple[pafs.FileSystem, str]:
    """A scheme pyarrow does not know, through fsspec (``memory://``, or ``gcs://`` with gcsfs, ...)."""
    try:
        import fsspec

        ffs, path = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        raise UriError(
            f"{shown}: unknown URI scheme {scheme!r} ({exc}); use s3://, gs://, abfs://, hdfs:// or file://, "
            f"or install the fsspec package that handles {scheme}://"
        ) from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(ffs)), str(path)


def _explain(exc: OSError, where: str, action: str) -> StorageError:
    """A one-line error that names the location and the fix."""
    msg = " ".join(str(exc).split())
    low = msg.lower()
    if "no_such_bucket" in low or "nosuchbucket" in low or "bucket does not exist" in low:
        fix = "the bucket does not exist: create it (aws s3 mb s3://BUCKET) or fix the URI"
    elif "network_connection" in low or "curlcode" in low or "could not resolve" in low or "timed out" in low:
        fix = (
            "the storage endpoint cannot be reached: check the network, the region and the endpoint "
            "(AWS_ENDPOINT_URL or ?endpoint_override=)"
        )
    elif any(w in low for w in _DENIED):
        fix = (
            "access denied: provide credentials that may use it (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE, or an instance profile)"
        )
    else:
        fix = "check the URI, the network and the credentials"
    return StorageError(f"cannot {action} {where}: {fix} ({msg})")


@contextlib.contextmanager
def _io(where: str, action: str) -> Iterator[None]:
    """Turn a filesystem error into a :class:`StorageError` that names ``where``."""
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        raise _explain(exc, where, action) from None


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


def list_files(remote: Remote) -> dict[str, Entry]:
    """Every file below ``remote`` (recursive, hidden paths left out); empty when the folder does not exist."""
    with _io(remote.where(), "list"):
        if remote.fs.get_file_info(remote.path).type == pafs.FileType.NotFound:
            return {}
        infos = remote.fs.get_file_info(pafs.FileSelector(remote.path, recursive=True, allow_not_found=True))
    out = {}
    prefix = len(remote.path) + 1 if remote.path else 0
    for info in infos:
        rel = info.path[prefix:]
        if info.type == pafs.FileType.File and not _hidden(rel):
            out[rel] = Entry(rel, int(info.size), info.mtime_ns)
    return out


def local_files(root: Path) -> dict[str, Path]:
    """Every file below the local folder ``root`` (hidden paths left out), by POSIX path relative to it."""
    out: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for fn in filenames:
            if not fn.startswith("."):
                p = Path(dirpath) / fn
                out[p.relative_to(root).as_posix()] = p
    return out


def _same(path: Path, entry: Entry) -> bool:
    """The local file agrees with ``entry`` in size and (when the remote has one) whole-second mtime."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    if st.st_size != entry.size:
        return False
    return entry.mtime_ns is None or st.st_mtime_ns // 10**9 == entry.mtime_ns // 10**9


def _parallel(fn: Callable[[str], object], items: Iterable[str]) -> None:
    with ThreadPoolExecutor(_THREADS) as pool:
        list(pool.map(fn, items))  # the first error propagates


def download(remote: Remote, entries: Iterable[Entry], local: Path) -> int:
    """Copy ``entries`` of ``remote`` to the same relative paths below ``local`` (atomically, in parallel),
    skipping files that are already there; return how many were copied."""
    todo = [e for e in entries if not _same(local / e.rel, e)]
    by_rel = {e.rel: e for e in todo}

    def one(rel: str) -> None:
        entry = by_rel[rel]
        with _io(remote.where(rel), "read"), atomic_path(local / rel) as tmp:
            pafs.copy_files(
                remote._join(rel), str(tmp), source_filesystem=remote.fs, destination_filesystem=pafs.LocalFileSystem()
            )
            if entry.mtime_ns is not None:
                os.utime(tmp, ns=(entry.mtime_ns, entry.mtime_ns))

    _parallel(one, by_rel)
    return len(todo)


def prune(local: Path, wanted: Iterable[str], keep: Callable[[str], bool] | None = None) -> int:
    """Delete the (non-hidden) files below ``local`` whose relative path is not in ``wanted``, except those
    ``keep`` accepts; return how many were deleted."""
    want = set(wanted)
    gone = [p for rel, p in local_files(local).items() if rel not in want and not (keep and keep(rel))]
    for p in gone:
        p.unlink()
    return len(gone)


def download_tree(remote: Remote, local: Path, keep: Callable[[str], bool] | None = None) -> int:
    """Make ``local`` a copy of ``remote``: copy what differs, delete local files that ``remote`` lacks
    unless ``keep`` accepts them; return how many files were copied."""
    theirs = list_files(remote)
    prune(local, theirs, keep)
    return download(remote, theirs.values(), local)


def upload_file(path: Path, remote: Remote, rel: str) -> None:
    """Copy the local file ``path`` to ``rel`` inside ``remote``; the local file takes the remote mtime."""
    dest = remote._join(rel)
    with _io(remote.where(rel), "write"):
        if remote.fs.type_name == "local":  # object stores have no folders to create
            remote.fs.create_dir(str(PurePosixPath(dest).parent), recursive=True)
        pafs.copy_files(str(path), dest, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=remote.fs)
        mtime = remote.fs.get_file_info(dest).mtime_ns
    if mtime is not None:
        os.utime(path, ns=(mtime, mtime))


def upload_tree(local: Path, remote: Remote, last: tuple[str, ...] = ()) -> int:
    """Make ``remote`` a copy of the local folder ``local``: upload new and changed files (in parallel),
    delete remote files that ``local`` lacks; return how many files were uploaded.

    ``last`` (relative paths) are the files a reader trusts to mean "the rest is complete" (a scene's
    ``scene.json``): their old remote copies are deleted first and the new ones uploaded after everything
    else, so an interrupted upload never leaves them beside a half-updated folder.
    """
    theirs = list_files(remote)
    mine = local_files(local)
    todo = [rel for rel, p in mine.items() if rel not in theirs or not _same(p, theirs[rel])]
    late = [rel for rel in todo if rel in last]
    for rel in [*(r for r in late if r in theirs), *(r for r in theirs if r not in mine)]:
        with _io(remote.where(rel), "delete"):
            remote.fs.delete_file(remote._join(rel))
    _parallel(lambda rel: upload_file(mine[rel], remote, rel), [r for r in todo if r not in late])
    for rel in late:
        upload_file(mine[rel], remote, rel)
    return len(todo)


def check_writable(remote: Remote) -> None:
    """Prove that ``remote`` takes a file (written and deleted again), or raise a :class:`StorageError`."""
    with _io(remote.where(), "write to"):
        if remote.fs.type_name == "local":
            remote.fs.create_dir(remote.path, recursive=True)
        with remote.fs.open_output_stream(remote._join(WRITE_CHECK)) as f:
            f.write(b"ok\n")
        remote.fs.delete_file(remote._join(WRITE_CHECK))


def image_plan(remote: Remote) -> dict[str, list[Entry]]:
    """The photos (and masks) of a URI INPUT, grouped by scene folder (``""`` for a one-scene tree), by the catalog's
    one layout rule (:func:`imc_ray.stages.catalog.input_layout`). The catalog then reads the local copy.

    Raises:
        StorageError: nothing is there (a missing bucket or prefix), or it cannot be listed.
        CatalogError: a mixed layout, or no scene.
    """
    files = list_files(remote)
    if not files:
        bucket = remote.path.split("/")[0]
        with _io(remote.where(), "read"):
            missing_bucket = remote.fs.type_name == "s3" and remote.fs.get_file_info(bucket).type == (
                pafs.FileType.NotFound
            )
        what = "no files there"
        if missing_bucket:
            what = f"bucket {bucket!r} does not exist (or these credentials cannot see it)"
        raise StorageError(f"input {remote.where()}: {what}; check the URI and that the images were uploaded")
    layout = input_layout(files, remote.where())
    images = [e for e in files.values() if is_photo(e.rel)]  # HEIC & co. too: the catalog lists them with their error
    if layout.kind == "images":
        return {"": [e for e in images if e.rel.startswith(("images/", "masks/"))]}
    if layout.kind == "plain":
        return {"": images}
    return {f: [e for e in images if e.rel.startswith((f"{f}/images/", f"{f}/masks/"))] for f in layout.folders}


def default_work_dir(remote: Remote) -> Path:
    """``<system temp dir>/imc-ray-work-<digest of the OUTPUT URI>``: a rerun finds the same folder."""
    digest = hashlib.sha1(remote.uri.encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"imc-ray-work-{digest}"


def prepare_work_dir(work: Path, remote: Remote) -> Path:
    """Create (or reopen) the work directory of the OUTPUT ``remote``; refuse a folder that holds other files.

    Raises:
        ValueError: ``work`` is not empty and is not the work directory of this OUTPUT.
    """
    work = Path(work).expanduser().resolve()
    marker = work / WORK_MARKER
    if marker.is_file():
        owner = marker.read_text().strip()
        if owner != remote.uri:
            raise ValueError(
                f"work directory {work} belongs to the output {owner}, not {remote.uri}; "
                "pass another --work-dir (an empty or new folder)"
            )
    elif work.is_dir() and any(work.iterdir()):
        raise ValueError(
            f"work directory {work} is not empty and is not an imc-ray work directory; "
            "pass an empty or new folder as --work-dir"
        )
    work.mkdir(parents=True, exist_ok=True)
    marker.write_text(remote.uri + "\n")
    return work


ParallelMap = Callable[[Callable[..., tuple[int, str]], list[tuple[Any, ...]]], list[tuple[int, str]]]
"""Runs a function on each argument tuple in parallel (the pipeline passes Ray tasks); results in order."""


def copy_folder(uri: str, entries: list[Entry], root: Path) -> tuple[int, str]:
    """Copy ``entries`` of the URI INPUT ``uri`` below ``root``; (files copied, error or "")."""
    try:
        return download(resolve(uri), entries, root), ""
    except (StorageError, UriError) as exc:
        return 0, str(exc)


class Staging:
    """Where a run reads and writes: a local or URI INPUT, and a local OUTPUT or a URI OUTPUT with its local
    work directory. Use it as ``with Staging(...) as out:`` (``out``: the local folder the run writes).

    Entering checks that OUTPUT takes files, sets up the work directory (a copy of what a URI OUTPUT holds:
    resume), locks it (:mod:`imc_ray.lock`), marks it as an output and removes partial files an interrupted
    run left; leaving removes partial files and releases the lock, however the run ends.
    """

    def __init__(self, input_root: Path | str, output: Path | str, work_dir: Path | None = None) -> None:
        self.input_root, self.output, self.work_dir = input_root, output, work_dir
        self.src = resolve(input_root) if isinstance(input_root, str) and is_uri(input_root) else None
        self.dst = resolve(output) if isinstance(output, str) and is_uri(output) else None
        self.plan = image_plan(self.src) if self.src is not None else {}  # one listing; the driver holds paths
        if self.dst is not None:
            check_writable(self.dst)
        self.local = (
            prepare_work_dir(work_dir or default_work_dir(self.dst), self.dst)
            if self.dst is not None
            else Path(output).resolve()
        )
        self._held = contextlib.ExitStack()

    def __enter__(self) -> Path:
        out = self.local
        check_local_writable(out)
        self._held.enter_context(output_lock(out))
        self._held.callback(remove_partial_files, out)  # however the run ends: no partial files left
        mark_output(out)  # never read as input by a later run
        if remove_partial_files(out):  # left by a run that was killed; no other run writes here now
            logger.info("removed the partial files of an interrupted run from %s", out)
        if self.dst is not None:  # resume; committed shards of the work directory are kept even where OUTPUT lacks them
            n = download_tree(self.dst, out, keep=lambda rel: "shards" in rel.split("/"))
            logger.info("work directory %s: %d files copied from %s", out, n, self.dst.where())
        return out

    def __exit__(self, *exc: object) -> None:
        self._held.close()

    @property
    def input_label(self) -> str:
        """INPUT as ``run.json`` names it (a local path resolved; a URI redacted)."""
        return self.src.uri if self.src is not None else str(Path(self.input_root).resolve())

    @property
    def output_label(self) -> str:
        """OUTPUT as ``run.json`` names it."""
        return self.dst.uri if self.dst is not None else str(self.local)

    @property
    def upload_to(self) -> str | None:
        """The OUTPUT URI each finished scene is uploaded to, or None for a local OUTPUT."""
        return str(self.output) if self.dst is not None else None

    def never_input(self) -> list[Path]:
        """Folders the catalog must never read as input: OUTPUT and the work directory."""
        return ([Path(self.output)] if self.dst is None else []) + ([Path(self.work_dir)] if self.work_dir else [])

    def input_folder(self) -> Path:
        """The local folder the catalog reads: INPUT itself, or the staged copy of a URI INPUT."""
        if self.src is None:
            return Path(self.input_root)
        base = Path(self.work_dir).resolve() if self.work_dir else self.local
        return base / STAGED_INPUT / self.src.path.lstrip("/")

    def fetch_input(self, parallel: ParallelMap) -> dict[str, float]:
        """Copy a URI INPUT's images into :meth:`input_folder` (one call of ``parallel`` per scene folder;
        files already there are skipped, files no longer in INPUT deleted); the counts for ``run.json``."""
        assert self.src is not None
        t0 = time.perf_counter()
        root = self.input_folder()
        removed = prune(root, (e.rel for entries in self.plan.values() for e in entries))
        done = parallel(
            copy_folder, [(str(self.input_root), entries, root) for _, entries in sorted(self.plan.items())]
        )
        errors = [err for _, err in done if err]
        if errors:
            more = f" (and {len(errors) - 1} more scene folders)" if len(errors) > 1 else ""
            raise StorageError(errors[0] + more)
        files = sum(len(entries) for entries in self.plan.values())
        copied = sum(n for n, _ in done)
        logger.info("input %s: %d images, %d copied to %s", self.src.where(), files, copied, root)
        return {"seconds": time.perf_counter() - t0, "images": files, "copied": copied, "removed": removed}

    def finish(self, names: tuple[str, ...] = ("submission.csv", "run.json")) -> None:
        """Upload the run's top-level files to a URI OUTPUT, in order (``run.json`` last: the run is complete)."""
        if self.dst is not None:
            for name in names:
                upload_file(self.local / name, self.dst, name)
