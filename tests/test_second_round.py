"""The second round of pairs (``stages/pairs.py: round_two``) in a real run: weakly connected images of a
scene matched by nearest neighbours get more pairs before mapping, and a rerun adds none."""

from __future__ import annotations

from pathlib import Path

from imc_ray.config import build_config, stage_keys
from imc_ray.formats import MATCH_SHARD_SCHEMA, SceneLayout, matches_from_table, read_pairs, read_shards
from imc_ray.stages.pairs import weak_images

from .conftest import QUICK_CONFIG, small_sample

# One neighbour per image and no sequential window: most images end the first round with one or two pairs.
SPARSE = [
    "retrieval.exhaustive_below=0",
    "retrieval.num_neighbors=1",
    "retrieval.sequential_window=0",
    "retrieval.second_round_min_pairs=3",
    "retrieval.strong_matches=30",
]


def _matched(layout: SceneLayout) -> dict[tuple[str, str], int]:
    table = matches_from_table(read_shards(layout.match_shards, MATCH_SHARD_SCHEMA))
    return {pair: len(idx) for pair, (idx, _) in table.items()}


def test_weak_images_get_a_second_round(ray_local: None, tmp_path: Path) -> None:
    from imc_ray.distributed import pipeline

    root = small_sample(tmp_path / "in")
    out = tmp_path / "out"
    cfg = build_config(QUICK_CONFIG[0], [*QUICK_CONFIG[1], *SPARSE])
    rep = pipeline.run(root, out, cfg)
    entry = rep.scene("nerf_synthetic", "lego")
    assert entry is not None and entry.result is not None
    layout = SceneLayout.of(out, "nerf_synthetic", "lego", stage_keys(cfg))
    names = sorted(p.name for p in (root / "nerf_synthetic" / "lego" / "images").iterdir())
    first = read_pairs(layout.pairs_txt, names)
    second = read_pairs(layout.pairs_round2_txt, names)
    assert second and not set(second) & set(first)
    matched = _matched(layout)
    assert set(first) | set(second) == set(matched)  # every second-round pair was matched
    weak = weak_images(names, {p: matched[p] for p in first}, 30, 3)
    assert weak and all(a in weak or b in weak for a, b in second)  # only weak images got candidates
    pairs = entry.result.pairs
    assert pairs["second_round"] == len(second) and pairs["candidates"] == len(first) + len(second)
    n = len(names)
    assert pairs["screened"] == n * (n - 1) // 2 - pairs["candidates"] > 0
    assert pairs["matched"] == len(matched)

    again = pipeline.run(root, out, cfg)  # the rerun: the same second round, nothing matched again
    assert read_pairs(layout.pairs_round2_txt, names) == second
    assert _matched(layout) == matched
    assert again.stages["matching"]["pairs"] == 0
