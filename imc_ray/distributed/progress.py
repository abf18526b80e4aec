"""The run's progress bars (features, matching, mapping) and its stall reports, as context managers."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from imc_ray.distributed import guard
from imc_ray.distributed.gate import PROGRESS_FILE


@dataclass
class StreamProgress:
    """The stream's two bars and its stall reporter (:func:`stream_progress`)."""

    images: Any  # tqdm
    pairs: Any  # tqdm
    stall: guard.StallReporter

    def advance(self, new_pairs: int, matched: int) -> None:
        """Rows reached the driver: ``new_pairs`` more pairs to match, ``matched`` pairs matched."""
        self.stall.progress()
        if new_pairs:
            self.pairs.total += new_pairs
            self.pairs.refresh()
        if matched:
            self.pairs.update(matched)

    def state(self, hint: str) -> str:
        """What the stream waits for, for a stall report."""
        images, pairs = self.images, self.pairs
        return f"features {images.n}/{images.total} images, matching {pairs.n}/{pairs.total} pairs; {hint}"


def _watch_features(progress: Path, bar: Any, stop: threading.Event, stall: guard.StallReporter) -> None:
    """Driver thread: move the features bar from the scene gate's progress file until ``stop``; report a
    stream that makes no progress."""
    while not stop.wait(1.0):
        stall.check()
        try:
            seen = int(json.loads(progress.read_text())["images"])
        except (OSError, ValueError, KeyError):
            continue
        if seen > bar.n:
            bar.update(min(seen, bar.total) - bar.n)
            stall.progress()


@contextmanager
def stream_progress(output: Path, num_images: int, stall_after_s: float, hint: str) -> Iterator[StreamProgress]:
    """Bars for the stream over ``num_images`` images. The features bar follows the scene gate's progress
    file in ``output`` (rows reach the driver only behind the pairs queued for matching); no progress for
    ``stall_after_s`` seconds logs a stall report that ends with ``hint`` (what the stream needs)."""
    bars: list[Any] = [
        tqdm(total=num_images, desc="features", unit="img", position=0),
        tqdm(total=0, desc="matching", unit="pair", position=1),
    ]
    state: list[StreamProgress] = []
    stall = guard.StallReporter(stall_after_s, lambda: state[0].state(hint))
    state.append(StreamProgress(bars[0], bars[1], stall))
    progress = output / PROGRESS_FILE
    progress.unlink(missing_ok=True)
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_features, args=(progress, bars[0], stop, stall), daemon=True)
    watcher.start()
    try:
        yield state[0]
    finally:
        stop.set()
        watcher.join()
        progress.unlink(missing_ok=True)
        bars[0].n = bars[0].total
        for bar in bars:
            bar.close()


def mapping_progress(num_scenes: int) -> Any:
    """The bar of the scenes' mapping tasks (a tqdm, itself a context manager)."""
    return tqdm(total=num_scenes, desc="mapping", unit="scene")
