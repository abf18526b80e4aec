"""One run per OUTPUT (issue 16): a second run is refused naming the holder; a stale lock is taken over;
partial files of a killed run are removed under the lock."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imc_ray import cli
from imc_ray.formats import remove_partial_files
from imc_ray.lock import LOCK_NAME, LockError, acquire, output_lock, read_holder, release

HOLD = (
    "import sys, time, pathlib; from imc_ray.lock import acquire; acquire(pathlib.Path(sys.argv[1])); "
    "print('held', flush=True); time.sleep(60)"
)


def _holder(folder: Path) -> subprocess.Popen[str]:
    """Another process that takes ``folder``'s lock and keeps it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_second_run_is_refused_naming_the_holder(tmp_path: Path) -> None:
    proc = _holder(tmp_path)
    try:
        with pytest.raises(LockError) as info:
            acquire(tmp_path)
        message = str(info.value)
        assert f"pid {proc.pid} on host {socket.gethostname()}, started 20" in message
        assert "choose another OUTPUT" in message and "\n" not in message
    finally:
        proc.kill()
        proc.wait()
    with output_lock(tmp_path):  # the kernel dropped the dead holder's lock: taken over
        holder = read_holder(tmp_path / LOCK_NAME)
        assert holder is not None and holder["pid"] == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists()


def test_stale_lock_of_a_dead_pid_is_taken_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = {"host": socket.gethostname(), "pid": int(dead.stdout), "started": "2026-01-01T00:00:00+00:00"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(stale))
    fd = acquire(tmp_path)
    try:
        assert read_holder(tmp_path / LOCK_NAME)["pid"] == os.getpid()  # type: ignore[index]
        assert f"pid {stale['pid']}" in caplog.text and "taking over" in caplog.text
    finally:
        release(tmp_path, fd)


def test_cli_run_on_a_locked_output_exits_1_before_ray(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = tmp_path / "in"
    images.mkdir()
    (images / "a.png").write_bytes(b"")
    out = tmp_path / "out"
    out.mkdir()
    proc = _holder(out)
    try:
        t0 = time.monotonic()
        assert cli.main(["run", str(images), str(out)]) == cli.EXIT_FAIL
        assert time.monotonic() - t0 < 20  # refused before Ray starts
    finally:
        proc.kill()
        proc.wait()
    err = capsys.readouterr().err
    assert f"is in use by pid {proc.pid}" in err and err.count("\n") == 1


def test_partial_files_are_removed(tmp_path: Path) -> None:
    scene = tmp_path / "d" / "s" / "shards" / "features-abc"
    scene.mkdir(parents=True)
    (scene / ".0123.parquet.tmp-0a1b2c3d").write_bytes(b"half")
    (scene / "0123.parquet").write_bytes(b"whole")
    (tmp_path / ".features.h5.tmp-deadbeef").write_bytes(b"half")
    assert remove_partial_files(tmp_path) == 2
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["0123.parquet"]
