"""Hostile input trees, names and layouts (issue 16): every file below an images folder ends as an image or
a problem with its reason, keys are injective, layouts are never guessed silently, OUTPUT is never input,
and submission.csv reads back exactly whatever the names."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imc_ray import evaluate
from imc_ray.formats import OUTPUT_MARKER, image_key, mark_output, pair_key
from imc_ray.stages.catalog import CatalogError, Scene, catalog_errors, find_scenes
from imc_ray.stages.submission import scene_rows, write_submission


def _png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path, "PNG")
    return path


def _accounted(scene: Scene) -> list[str]:
    """Every name the catalog accounted for: images and problems (each must appear once)."""
    return [r.name for r in scene.images] + [p.name for p in scene.problems]


# ----------------------------------------------------------------------------- keys


def test_colliding_image_keys_are_refused_naming_both_files(tmp_path: Path) -> None:
    images = tmp_path / "s" / "images"
    _png(images / "sub" / "a.png")
    _png(images / "sub-a.png", 1)
    [scene] = find_scenes(tmp_path / "s")
    assert [r.name for r in scene.images] == ["sub-a.png"]  # walk order: files of a folder before its subfolders
    [problem] = scene.problems
    assert problem.name == "sub/a.png" and problem.row
    assert str(images / "sub" / "a.png") in problem.error and str(images / "sub-a.png") in problem.error
    assert "rename one of them" in problem.error
    assert scene.row_names() == ["sub-a.png", "sub/a.png"]  # still a (nan) row


ALPHABET = "ab-/_ .,\"'é\r\n\tñ;日"


def _random_name(rng: random.Random) -> str:
    """A legal relative POSIX file name made of awkward characters."""
    parts = []
    for _ in range(rng.randint(1, 3)):
        stem = "".join(rng.choice(ALPHABET.replace("/", "")) for _ in range(rng.randint(1, 5))).strip("/")
        parts.append(stem if stem not in ("", ".", "..") else "x")
    return "/".join(parts) + rng.choice([".png", ".PNG", ".png ", ".txt", ".heic", ""])


def test_generated_names_keys_are_injective_and_every_file_is_accounted_for(tmp_path: Path) -> None:
    rng = random.Random(16)
    images = tmp_path / "s" / "images"
    for i in range(120):
        path = images / _random_name(rng)
        if any(parent.is_file() for parent in path.parents) or path.is_dir():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * (i + 1))
    made = {p.relative_to(images).as_posix() for p in images.rglob("*") if p.is_file()}
    assert len(made) > 60
    [scene] = find_scenes(tmp_path / "s")
    accounted = _accounted(scene)
    assert len(set(accounted)) == len(accounted)
    for name in made:  # the file itself, or the hidden folder it is in, is accounted for exactly once
        prefixes = ["/".join(name.split("/")[:k]) for k in range(1, name.count("/") + 2)]
        assert sum(p in accounted for p in prefixes) == 1, name
    keys = [image_key(r.name) for r in scene.images]
    assert len(set(keys)) == len(keys)
    pairs = {pair_key(a.name, b.name) for a in scene.images for b in scene.images if a != b}
    assert len(pairs) == len(scene.images) * (len(scene.images) - 1)
    for r in scene.images:
        assert not any(ord(c) < 32 for c in r.name)  # line breaks never reach pairs.txt or the database
    assert any(p.row for p in scene.problems) and any(not p.row for p in scene.problems)


# ----------------------------------------------------------------------------- CSV


def test_submission_quotes_any_name_and_reads_back_exactly(tmp_path: Path) -> None:
    rng = random.Random(7)
    made = ("".join(rng.choice(ALPHABET + "xyz") for _ in range(rng.randint(1, 8))) for _ in range(200))
    names = sorted({n.strip(): n for n in made if n.strip()}.values())  # evaluate strips its cells
    names += ["a\rb.png", "c\r\nd.png", 'q"uote,comma.png']
    rows = list(scene_rows("data\rset", "sce,ne", names, {names[0]: ([1.0, 0, 0, 0, 1, 0, 0, 0, 1], [0.0, 0, 0])}))
    path = tmp_path / "submission.csv"
    assert write_submission(path, rows) == 1
    with path.open(newline="") as f:
        got = list(csv.reader(f))
    assert got[0] == ["dataset", "scene", "image", "rotation_matrix", "translation_vector"]
    assert [tuple(r[:3]) for r in got[1:]] == [(d, s, n) for d, s, n, _ in rows]
    sub = evaluate.read_submission(path)  # the evaluator accepts the run's own output
    assert sum(len(v) for v in sub.values()) == len({n.strip() for n in names})


# ----------------------------------------------------------------------------- files that used to vanish


def test_odd_files_are_images_or_listed_problems(tmp_path: Path) -> None:
    images = tmp_path / "s" / "images"
    _png(images / "plain.png")
    _png(images / ".hidden.png", 1)  # a dot-file that is a real image
    _png(images / "trailing.png ", 2)  # a trailing space
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(images / "anim.gif")
    (images / "phone.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic")
    (images / "notes.txt").write_text("not a photo")
    _png(tmp_path / "elsewhere" / "linked.png", 3)
    (images / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (images / "loop").symlink_to(images, target_is_directory=True)
    _png(images / ".thumbs" / "t.png", 4)
    [scene] = find_scenes(tmp_path / "s")
    assert sorted(r.name for r in scene.images) == [
        ".hidden.png",
        "anim.gif",
        "link/linked.png",
        "plain.png",
        "trailing.png ",
    ]
    problems = {p.name: p for p in scene.problems}
    assert set(problems) == {"phone.HEIC", "notes.txt", "loop", ".thumbs"}
    assert problems["phone.HEIC"].row and "convert it to JPEG or PNG" in problems["phone.HEIC"].error
    assert not problems["notes.txt"].row and "not an image file" in problems["notes.txt"].error
    assert "read already" in problems["loop"].error and "hidden folder" in problems[".thumbs"].error
    errors = catalog_errors([scene])
    assert len(errors) == 4 and all(str(images) in e["error"] for e in errors)
    assert sorted(scene.row_names()) == sorted([*(r.name for r in scene.images), "phone.HEIC"])


def test_masks_of_a_plain_folder_are_not_read_as_photos(tmp_path: Path) -> None:
    scene = tmp_path / "walk"
    _png(scene / "a.png")
    _png(scene / "b.png", 1)
    (scene / "masks").mkdir()
    Image.fromarray(np.full((40, 48), 255, np.uint8)).save(scene / "masks" / "a.png.png")
    [found] = find_scenes(scene)
    assert sorted(r.name for r in found.images) == ["a.png", "b.png"] and not any(r.mask_file for r in found.images)
    [problem] = found.problems
    assert problem.name == "masks" and not problem.row and str(scene / "images") in problem.error
    assert [e["error"] for e in catalog_errors([found])] == [problem.error]


# ----------------------------------------------------------------------------- layouts


def test_photo_beside_scene_folders_is_refused_by_name(tmp_path: Path) -> None:
    _png(tmp_path / "scene1" / "images" / "a.png")
    _png(tmp_path / "stray.jpg")
    with pytest.raises(CatalogError, match=r"photos beside its scene folders \(stray.jpg\)"):
        find_scenes(tmp_path)


def test_images_folder_beside_scene_folders_is_refused(tmp_path: Path) -> None:
    _png(tmp_path / "images" / "a.png")
    _png(tmp_path / "other" / "images" / "b.png")
    with pytest.raises(CatalogError, match=r"both images/ and scene folders \(other\)"):
        find_scenes(tmp_path)


@pytest.mark.parametrize(
    ("files", "words"),
    [
        (["images/a.png", "other/images/b.png"], r"both images/ and scene folders \(other\)"),
        (["scene1/images/a.png", "stray.jpg"], r"photos beside its scene folders \(stray.jpg\)"),
    ],
)
def test_a_uri_input_follows_the_same_layout_rule(tmp_path: Path, files: list[str], words: str) -> None:
    """One layout rule for local and URI INPUTs (``catalog.input_layout``): a mixed tree is refused before
    anything is copied, with the same words."""
    from imc_ray import storage

    for rel in files:
        _png(tmp_path / "in" / rel)
    with pytest.raises(CatalogError, match=words):
        find_scenes(tmp_path / "in")
    with pytest.raises(CatalogError, match=words):
        storage.image_plan(storage.resolve(f"file://{tmp_path / 'in'}"))


def test_scene_whose_images_is_a_file_is_reported(tmp_path: Path) -> None:
    _png(tmp_path / "good" / "images" / "a.png")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "images").write_text("oops")
    scenes = find_scenes(tmp_path)
    assert [(s.name, len(s.images)) for s in scenes] == [("bad", 0), ("good", 1)]
    [error] = catalog_errors(scenes)
    assert error["scene"] == "bad" and "is not a folder" in error["error"] and str(tmp_path / "bad") in error["error"]


def test_output_inside_input_is_never_read(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png", 1)
    out = tmp_path / "out"
    _png(out / "pictures" / "pair.png", 2)  # what --pictures writes
    [scene] = find_scenes(tmp_path, exclude=[out])
    assert [r.name for r in scene.images] == ["a.png", "b.png"] and not scene.problems
    old = tmp_path / "old_out"  # another run's OUTPUT: its marker keeps it out too
    old.mkdir()
    mark_output(old)
    assert (old / OUTPUT_MARKER).is_file()
    _png(old / "pictures" / "x.png", 3)
    [scene] = find_scenes(tmp_path, exclude=[out])
    assert [r.name for r in scene.images] == ["a.png", "b.png"]
    with pytest.raises(CatalogError, match="is the OUTPUT folder"):
        find_scenes(tmp_path, exclude=[tmp_path])


def test_uri_input_stages_every_photo(tmp_path: Path) -> None:
    """A URI INPUT is copied before the catalog reads it: photos it cannot decode and names with a trailing
    space are copied too, so they get their row and error like local ones."""
    from imc_ray import storage

    images = tmp_path / "ds" / "s" / "images"
    _png(images / "a.png")
    _png(images / "b.png ", 1)
    (images / "c.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic")
    plan = storage.image_plan(storage.resolve(f"file://{tmp_path}"))
    assert {e.rel for e in plan["ds/s"]} == {"ds/s/images/a.png", "ds/s/images/b.png ", "ds/s/images/c.HEIC"}
