"""ALIKED one image per forward pass against several of one size per pass (what GPU actors do).

    python bench/aliked_batching.py [IMAGES_DIR] [--images 8] [--batch 2] [--device cpu|cuda] [--preset default]

Each mode runs in its own subprocess (so peak memory is its own) on the first ``--images`` images of
IMAGES_DIR (default: the bundled sample's), after one warm-up image, with one torch thread on CPU.
Prints seconds per image and peak resident memory (and GPU memory on CUDA) of each mode and the ratios
batched / one at a time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(images_dir: Path, count: int, batch: int, device_name: str, preset: str) -> dict[str, float]:
    """Seconds per image, peak RSS (MB) and on CUDA peak GPU memory (MB) of extracting ``count`` images,
    ``batch`` per call."""
    import torch

    from imc_ray.config import build_config
    from imc_ray.report import peak_rss_mb
    from imc_ray.stages import features
    from imc_ray.stages.catalog import load_image

    torch.set_num_threads(1)
    cfg = build_config(preset, [])
    device = torch.device(device_name)
    model = features.load_aliked(cfg.features, device)
    paths = sorted(p for p in images_dir.iterdir() if p.is_file())[:count]
    loaded = [load_image(p, cfg.images, cfg.features.resize) for p in paths]
    features.extract(model, [loaded[0][0]], [loaded[0][1]], device)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(0, len(loaded), batch):
        chunk = loaded[i : i + batch]
        features.extract(model, [im for im, _ in chunk], [s for _, s in chunk], device, together=batch > 1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    out = {"s_per_image": (time.perf_counter() - t0) / len(loaded), "peak_rss_mb": peak_rss_mb()}
    if device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "images_dir", nargs="?", type=Path, default=REPO / "examples" / "nerf_synthetic" / "lego" / "images"
    )
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one mode, print JSON
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.images_dir, args.images, args.one, args.device, args.preset)))
        return
    results = {}
    for batch in (1, args.batch):
        cmd = [sys.executable, __file__, str(args.images_dir), "--images", str(args.images), "--device", args.device]
        cmd += ["--preset", args.preset, "--one", str(batch)]
        results[batch] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        print(
            f"{batch} image(s) per pass: {results[batch]['s_per_image']:.3f} s/image, "
            f"peak RSS {results[batch]['peak_rss_mb']:.0f} MB"
            + (f", peak GPU {results[batch]['peak_gpu_mb']:.0f} MB" if "peak_gpu_mb" in results[batch] else "")
        )
    one, many = results[1], results[args.batch]
    print(
        f"batched / one at a time: {many['s_per_image'] / one['s_per_image']:.2f}x the time, "
        f"{many['peak_rss_mb'] / one['peak_rss_mb']:.2f}x the peak memory"
    )


if __name__ == "__main__":
    main()
