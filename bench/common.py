"""Helpers shared by the benchmark scripts: stage timing, memory sampling, machine facts, JSON output.

The scripts in ``bench/`` are run as files (``python bench/run.py``), so Python puts ``bench/`` first on
``sys.path`` and they import this module as ``common``.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import platform
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from imc_ray.report import package_versions as package_versions  # re-exported: one version list

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The repository (``bench/``'s parent)."""

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"
"""Default benchmark input: ``<repo>/../shared/data`` (instant_ngp/fox and nerf_synthetic/lego)."""

TIMINGS_FILE = "timings.json"
"""What each baseline writes into its output folder (imc-ray writes ``run.json`` instead)."""


class StageTimer:
    """Accumulates wall-clock seconds per named stage (a stage may be entered many times)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        """Time the block and add it to ``stage``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - t0)

    def add(self, stage: str, seconds: float) -> None:
        """Add ``seconds`` to ``stage``."""
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds


def used_memory_bytes() -> int:
    """System-wide used memory: ``MemTotal - MemAvailable`` from ``/proc/meminfo`` (bytes)."""
    values: dict[str, int] = {}
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "MemAvailable"):
                values[key] = int(rest.split()[0]) * 1024
    return values["MemTotal"] - values["MemAvailable"]


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, user + system CPU seconds) of every process, from ``/proc/<pid>/stat``."""
    tick = os.sysconf("SC_CLK_TCK")
    table: dict[int, tuple[int, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as f:
                text = f.read()
        except OSError:
            continue  # the process ended meanwhile
        fields = text[text.rfind(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
        table[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return table


def _descendants(table: dict[int, tuple[int, float]], root: int) -> set[int]:
    """``root`` and every process below it in ``table``."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        todo.extend(children.get(pid, []))
    return found


def system_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from ``/proc/stat``."""
    with open("/proc/stat", encoding="ascii") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(values[:8]) - idle) / tick, sum(values[:8]) / tick


def busy_fraction(seconds: float = 2.0) -> float:
    """Share of the machine's CPU time that was busy over the next ``seconds`` (0..1)."""
    b0, t0 = system_cpu_seconds()
    time.sleep(seconds)
    b1, t1 = system_cpu_seconds()
    return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0


def wait_for_idle(max_wait: float, threshold: float = 0.15) -> float:
    """Wait (up to ``max_wait`` seconds) until less than ``threshold`` of the CPU is busy; return the last share."""
    deadline = time.monotonic() + max_wait
    share = busy_fraction()
    while share >= threshold and time.monotonic() < deadline:
        logger.info("machine busy (%.0f%% CPU used by other processes); waiting before the next run", 100 * share)
        time.sleep(8.0)
        share = busy_fraction()
    return share


class ResourceSampler:
    """Samples memory and CPU in a background thread while a run (a process tree) is in progress.

    Memory: ``peak_bytes`` is the largest system-wide used memory (``MemTotal - MemAvailable``)
    minus the value just before the run started, so it includes every process the run starts
    (Ray's raylet, GCS and workers too), and also any unrelated activity on the machine.

    CPU: ``tree_cpu_seconds`` is the user + system CPU time of the process ``root`` (set with
    :meth:`watch`) and all its descendants (a process that ends loses at most its last sampling
    interval); ``system_busy_seconds`` is the busy CPU time of the whole machine over the run, so
    ``other_cpu_seconds`` estimates what other users of the machine took meanwhile.
    """

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.baseline = 0
        self.peak = 0
        self.samples = 0
        self.root: int | None = None
        self._cpu: dict[int, float] = {}
        self._sys0 = (0.0, 0.0)
        self._sys1 = (0.0, 0.0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, pid: int) -> None:
        """Count the CPU time of ``pid`` and its descendants."""
        self.root = pid

    def _sample(self) -> None:
        self.peak = max(self.peak, used_memory_bytes())
        self.samples += 1
        if self.root is not None:
            table = _proc_table()
            for pid in _descendants(table, self.root):
                if pid in table:
                    self._cpu[pid] = max(self._cpu.get(pid, 0.0), table[pid][1])

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> ResourceSampler:
        self.baseline = used_memory_bytes()
        self.peak = self.baseline
        self._sys0 = system_cpu_seconds()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="resource-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, used_memory_bytes())
        self._sys1 = system_cpu_seconds()

    @property
    def peak_bytes(self) -> int:
        """Peak used memory above the pre-run baseline (bytes, >= 0)."""
        return max(0, self.peak - self.baseline)

    @property
    def tree_cpu_seconds(self) -> float:
        """CPU seconds used by the watched process tree."""
        return sum(self._cpu.values())

    @property
    def system_busy_seconds(self) -> float:
        """CPU seconds the whole machine was busy during the run."""
        return self._sys1[0] - self._sys0[0]

    @property
    def other_cpu_seconds(self) -> float:
        """Busy CPU seconds of the machine not accounted to the watched tree (other users; >= 0)."""
        return max(0.0, self.system_busy_seconds - self.tree_cpu_seconds)


def machine_info() -> dict[str, Any]:
    """CPU model, logical cores, RAM, OS and Python version of this machine."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = 0
    with contextlib.suppress(OSError), open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) * 1024
                break
    try:
        import torch

        cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except (ImportError, RuntimeError):
        cuda = "unknown"
    return {
        "cpu": cpu,
        "cores": os.cpu_count() or 1,
        "ram_gib": round(ram / 2**30, 1),
        "gpu": cuda,
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def git_revision() -> str:
    """Short commit of the repository, with ``+dirty`` when the tree has changes; ``unknown`` without git."""
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def now_iso() -> str:
    """Local date and time, to the second, with its UTC offset."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON (creating the parent folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr with timestamps (INFO, or DEBUG when ``verbose``)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
