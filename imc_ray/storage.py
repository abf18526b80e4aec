"""INPUT and OUTPUT on object stores: ``s3://bucket/prefix`` and any other URI that pyarrow (or, failing
that, fsspec) can open (``gs://``, ``abfs://``, ``hdfs://``, ``file://``, ...).

The pipeline itself works on local paths (``distributed/pipeline.py`` does the staging):

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
import os
import re
import tempfile
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.fs as pafs

from imc_ray.formats import atomic_path
from imc_ray.stages.catalog import IMAGE_EXTENSIONS, UNDECODABLE_PHOTOS

STAGED_INPUT = ".imc-ray-input"
"""Folder (inside the work directory) that holds the local copy of a URI INPUT."""
WORK_MARKER = ".imc-ray-work"
"""File that marks a folder as the work directory of one OUTPUT URI (its redacted URI is the content)."""
WRITE_CHECK = ".imc-ray-write-check"

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_SECRET_PARAM = re.compile(r"key|secret|token|password|credential|sig", re.IGNORECASE)
_DENIED = ("access_denied", "accessdenied", "forbidden", "status 403", "credential", "invalidaccesskey", "expiredtoken")
_THREADS = 8


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
    """The image files of a URI INPUT, grouped by scene folder (the prefix of its ``images/`` folder;
    ``""`` for a single-scene tree), for the layouts of :func:`imc_ray.stages.catalog.find_scenes`:
    ``images/*`` at the root, else image files at the root (one plain folder: everything below it),
    else every ``.../images/*``. The catalog then reads the local copy.

    Raises:
        StorageError: nothing is there (a missing bucket or prefix), or it cannot be listed.
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
    photos = IMAGE_EXTENSIONS | UNDECODABLE_PHOTOS  # HEIC & co. too: the catalog lists them with their error
    images = [e for e in files.values() if PurePosixPath(e.rel.rstrip()).suffix.lower() in photos]
    if any(e.rel.startswith("images/") for e in images):
        return {"": [e for e in images if e.rel.startswith("images/")]}
    if any("/" not in e.rel for e in images):
        return {"": images}
    plan: dict[str, list[Entry]] = {}
    for e in images:
        parts = e.rel.split("/")
        if "images" in parts[:-1]:
            plan.setdefault("/".join(parts[: parts.index("images")]), []).append(e)
    return plan


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
