"""The Ray internals of ``imc_ray/distributed/ray_internals.py`` still do what they are used for (a real local
Ray cluster). When one of these fails after a Ray upgrade, mend that module."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import ray.data
from ray.data import ActorPoolStrategy

from imc_ray.distributed.ray_internals import split_blocks

ROWS = 10


class _HoldCpus:
    """Stands for the model pools: two 1-CPU actors hold both CPUs of the test cluster until the stream ends.
    Its last rows wait (at most ``wait_s``) until a row has reached the next stage: they end at once when rows
    flow past the split while the upstream runs, and only after ``wait_s`` when the split waits for it."""

    def __init__(self, seen: str, wait_s: float) -> None:
        self.seen, self.wait_s = Path(seen), wait_s

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(0.2)
        end = time.time() + self.wait_s
        while int(batch["x"][0]) >= ROWS - 4 and not self.seen.exists() and time.time() < end:
            time.sleep(0.1)
        return {"x": batch["x"], "t_up": np.full(len(batch["x"]), time.time())}


class _Stamp:
    """Stands for the matchers: records when each row arrives (and says that one has)."""

    def __init__(self, seen: str) -> None:
        self.seen = Path(seen)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.seen.touch()
        n = len(batch["x"])
        return {"t_up": batch["t_up"], "t_down": np.full(n, time.time()), "rows": np.full(n, n)}


def _stream(split: bool, seen: Path, wait_s: float) -> list[dict[str, float]]:
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ds = ray.data.from_items([{"x": i} for i in range(ROWS)], override_num_blocks=ROWS)
    hold = {"seen": str(seen), "wait_s": wait_s}
    ds = ds.map_batches(
        _HoldCpus, fn_constructor_kwargs=hold, batch_size=1, compute=ActorPoolStrategy(size=2), num_cpus=1
    )
    ds = split_blocks(ds, 1) if split else ds.repartition(target_num_rows_per_block=1)
    stamp = {"seen": str(seen)}
    ds = ds.map_batches(
        _Stamp, fn_constructor_kwargs=stamp, batch_size=None, compute=ActorPoolStrategy(size=1), num_cpus=0
    )
    return ds.take_all()


def test_split_blocks_needs_no_cpu(ray_local: None, tmp_path: Path) -> None:
    """With both CPUs held upstream, the split rows reach the next stage while the upstream still runs, in
    blocks of the asked size; the plain repartition (1-CPU tasks) waits for the upstream to end. If Ray ever
    makes the plain repartition free, the second half fails: then drop the internal."""
    rows = _stream(split=True, seen=tmp_path / "split", wait_s=120.0)
    assert len(rows) == ROWS and max(r["rows"] for r in rows) == 1
    assert min(r["t_down"] for r in rows) < max(r["t_up"] for r in rows)
    plain = _stream(split=False, seen=tmp_path / "plain", wait_s=3.0)
    assert min(r["t_down"] for r in plain) >= max(r["t_up"] for r in plain)
