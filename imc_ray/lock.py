"""One run per OUTPUT: a lock file in the OUTPUT folder (the work directory for a URI OUTPUT).

``OUTPUT/.imc-ray.lock`` holds the holder's host, pid and start time (JSON) while a run holds it, and an
exclusive ``flock`` on that file proves the holder is alive: the kernel drops it when the process ends,
however it ends. A second run finds the lock taken and is refused with a :class:`LockError` naming the
holder. A lock file left by a run that died (no ``flock`` held; on the same host its pid is gone) is taken
over with a warning. Where the filesystem has no ``flock``, a lock whose pid is alive on this host, or
that another host holds, is respected; a dead pid on this host is taken over.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOCK_NAME = ".imc-ray.lock"

logger = logging.getLogger(__name__)


class LockError(RuntimeError):
    """Another run holds the OUTPUT folder."""


def _me() -> dict[str, Any]:
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": now}


def read_holder(path: Path) -> dict[str, Any] | None:
    """The holder recorded in a lock file, or None when it is missing, empty or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "another run (its lock file is still being written)"
    return f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"


def _refusal(path: Path, holder: dict[str, Any] | None) -> LockError:
    return LockError(
        f"{path.parent} is in use by {_describe(holder)} ({path}); wait for that run to end or stop it, "
        "or choose another OUTPUT"
    )


def _stale_without_flock(holder: dict[str, Any] | None) -> bool:
    """Without ``flock``: a lock is stale when it names a dead pid on this host."""
    if holder is None:
        return False
    return holder.get("host") == socket.gethostname() and not pid_alive(int(holder.get("pid", 0)))


def _try_flock(fd: int) -> bool | None:
    """True: locked; False: another process holds it; None: this filesystem has no flock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            return None
        raise
    return True


def acquire(folder: Path) -> int:
    """Take the lock of ``folder`` (which exists); return the open descriptor that holds it.

    Raises:
        LockError: another live run holds it (the message names its host, pid and start time).
    """
    path = folder / LOCK_NAME
    for _ in range(5):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        locked = _try_flock(fd)
        holder = read_holder(path)
        if locked is False or (locked is None and holder is not None and not _stale_without_flock(holder)):
            os.close(fd)
            raise _refusal(path, holder)
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # released and removed between our open and our flock: try the new file
            os.close(fd)
            continue
        if holder is not None:
            logger.warning("taking over the lock %s of %s, which ended without releasing it", path, _describe(holder))
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(_me()) + "\n").encode())
        os.fsync(fd)
        return fd
    raise _refusal(path, read_holder(path))


def release(folder: Path, fd: int) -> None:
    """Remove the lock file and drop the lock (remove first: a waiting run then finds no stale file)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(folder / LOCK_NAME)
    os.close(fd)


@contextlib.contextmanager
def output_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s lock for the duration of the block."""
    fd = acquire(folder)
    try:
        yield
    finally:
        release(folder, fd)
