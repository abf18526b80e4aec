"""The driver's tally of stream rows (no Ray): counts, errors, and when a scene is ready for mapping."""

from __future__ import annotations

from typing import Any

from imc_ray.distributed.gate import stream_rows
from imc_ray.distributed.tally import Tally


def _scene(dataset: str, scene: str, chosen: int, todo: int, done_at: float) -> dict[str, Any]:
    return {"kind": "scene", "dataset": dataset, "scene": scene, "num_pairs": chosen, "todo": todo,
            "method": "exhaustive", "seconds": 0.5, "done_at": done_at}  # fmt: skip


def _pair(dataset: str, scene: str, a: str, b: str, n: int, error: str = "") -> dict[str, Any]:
    return {"kind": "pair", "dataset": dataset, "scene": scene, "name0": a, "name1": b, "num_matches": n,
            "error": error, "node": "n1"}  # fmt: skip


def test_a_scene_is_ready_when_its_announced_pairs_are_matched() -> None:
    tally = Tally(started=100.0)
    first = tally.add(
        stream_rows(
            [
                {"kind": "image", "dataset": "d", "scene": "s", "name": "a", "num_keypoints": 10, "node": "n1"},
                {"kind": "image", "dataset": "d", "scene": "s", "name": "bad", "error": "bad: corrupt"},
                _scene("d", "s", chosen=3, todo=2, done_at=105.0),  # one pair matched by an earlier run
                _pair("d", "s", "a", "b", 7),
            ]
        )
    )
    assert first.ready == [] and first.new_pairs == 2 and first.matched == 1
    second = tally.add(stream_rows([_pair("d", "s", "a", "c", 0, error="d/s: matching a with c failed")]))
    assert second.ready == [(("d", "s"), 3)] and second.matched == 1
    assert tally.add(stream_rows([_pair("d", "t", "x", "y", 1)])).ready == []  # no scene row yet for d/t
    assert (tally.keypoints, tally.num_matches) == (10, 8)
    assert (tally.pairs_chosen, tally.pairs_todo, tally.pairs_reused) == (3, 2, 1)
    assert tally.first_scene_done == tally.last_scene_done == 105.0
    assert tally.pairs_method == {("d", "s"): "exhaustive"}
    assert tally.images_per_node == {"n1": 1} and tally.pairs_per_node == {"n1": 3}
    assert [e.get("image") or e.get("pair") for e in tally.errors] == ["bad", ["a", "c"]]


def test_a_scene_with_nothing_to_match_is_ready_at_once() -> None:
    """Resume: every pair was matched before, so the scene row alone makes the scene ready."""
    tally = Tally(started=0.0)
    step = tally.add(stream_rows([_scene("d", "s", chosen=5, todo=0, done_at=1.0)]))
    assert step.ready == [(("d", "s"), 5)] and step.new_pairs == 0
    assert tally.add(stream_rows([_scene("d", "u", chosen=0, todo=0, done_at=2.0)])).ready == [(("d", "u"), 0)]
