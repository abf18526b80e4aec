"""SIGINT and SIGTERM stop a run cleanly (issue 16): finished work kept, no partial files, no lock, the
message to resume, exit 130 / 143, and no Ray process left behind, also when Ray is still starting."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from imc_ray.cli import INTERRUPTED
from imc_ray.lock import LOCK_NAME

from .conftest import QUICK_CONFIG, config_args, small_sample

pytestmark = pytest.mark.slow


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    return kids


def _descendants(pid: int) -> set[int]:
    kids, out, todo = _children(), set(), [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _interrupt(root: Path, out: Path, sig: int, ready: object) -> tuple[int, str, set[int]]:
    """Run ``imc-ray run`` in its own process group, send ``sig`` to the group (a terminal's Ctrl-C) once
    ``ready()``; return the exit code, stderr and every process the run started."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [sys.executable, "-m", "imc_ray", "run", str(root), str(out), *config_args(QUICK_CONFIG)]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    seen: set[int] = set()

    def watch() -> None:
        while proc.poll() is None:
            seen.update(_descendants(proc.pid))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    deadline = time.monotonic() + 300
    try:
        while not ready() and proc.poll() is None and time.monotonic() < deadline:  # type: ignore[operator]
            time.sleep(0.1)
        assert proc.poll() is None, "the run ended before the signal"
        os.killpg(proc.pid, sig)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        watcher.join()
    return proc.returncode, err, seen


def _assert_clean(out: Path, started: set[int]) -> None:
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in started) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = {p: Path(f"/proc/{p}/cmdline").read_bytes()[:120] for p in started if _alive(p)}
    assert not left, f"processes left behind: {left}"
    assert not list(out.rglob("*.tmp-*")), "partial files left"
    assert not (out / LOCK_NAME).exists()


def test_sigint_during_ray_start_and_sigterm_during_extraction(tmp_path: Path) -> None:
    root = small_sample(tmp_path / "in")
    out = tmp_path / "out"
    lock = out / LOCK_NAME
    t_lock: list[float] = []

    def starting() -> bool:  # the lock is taken just before Ray starts; a second later Ray is starting
        if lock.exists() and not t_lock:
            t_lock.append(time.monotonic())
        return bool(t_lock) and time.monotonic() - t_lock[0] > 1.0

    code, err, started = _interrupt(root, out, signal.SIGINT, starting)
    assert code == 130, err[-2000:]
    assert err.rstrip().endswith(INTERRUPTED) and "Traceback" not in err
    assert len(started) >= 3  # Ray's processes were starting
    _assert_clean(out, started)

    shards = out / "nerf_synthetic" / "lego" / "shards"
    code, err, started = _interrupt(root, out, signal.SIGTERM, lambda: any(shards.glob("features-*/*.parquet")))
    assert code == 143, err[-2000:]
    assert err.rstrip().endswith(INTERRUPTED) and "Traceback" not in err
    _assert_clean(out, started)
    assert any(shards.glob("features-*/*.parquet"))  # finished work is kept for the rerun
