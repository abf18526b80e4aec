"""The DINOv2 loader, tested with a tiny randomly initialised checkpoint (real weights need internet)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from imc_ray.config import RetrievalConfig
from imc_ray.stages import retrieval

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = retrieval.build_dinov2(embed_dim=64, depth=2, img_size=112)
    d = tmp_path_factory.mktemp("weights")
    torch.save(model.state_dict(), d / "dinov2_vits14_pretrain.pth")
    return d


def test_load_from_directory_and_file(tiny_checkpoint: Path) -> None:
    for weights in (tiny_checkpoint, tiny_checkpoint / "dinov2_vits14_pretrain.pth"):
        model = retrieval.load_dinov2(RetrievalConfig(weights=str(weights)), CPU)
        assert model.embed_dim == 64 and len(model.blocks) == 2
        state = torch.load(tiny_checkpoint / "dinov2_vits14_pretrain.pth", weights_only=True)
        torch.testing.assert_close(model.state_dict()["cls_token"], state["cls_token"])


def test_load_from_torch_hub_cache(tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    cfg = RetrievalConfig()
    with pytest.raises(retrieval.WeightsNotFound, match="imc-ray fetch-weights"):
        retrieval.resolve_weights(cfg)  # not there, and downloads are off: no network touched
    target = retrieval.hub_cache_path(cfg.model)
    target.parent.mkdir(parents=True)
    target.write_bytes((tiny_checkpoint / "dinov2_vits14_pretrain.pth").read_bytes())
    assert retrieval.resolve_weights(cfg) == target
    assert retrieval.load_dinov2(cfg, CPU).embed_dim == 64


def test_missing_explicit_weights_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(retrieval.WeightsNotFound, match=str(tmp_path / "nope")):
        retrieval.resolve_weights(RetrievalConfig(weights=str(tmp_path / "nope")))


def test_not_a_dinov2_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="expected an official DINOv2 checkpoint"):
        retrieval.load_dinov2(RetrievalConfig(weights=str(path)), CPU)


def test_pickled_code_is_not_loaded(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"cls_token": torch.zeros(1), "payload": _Evil()}, path)
    with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported global"):
        retrieval.load_state(path)


class _Evil:
    pass


def test_describe_shapes_and_normalisation(tiny_checkpoint: Path) -> None:
    model = retrieval.load_dinov2(RetrievalConfig(weights=str(tiny_checkpoint)), CPU)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (90 + 10 * i, 120, 3), dtype=np.uint8) for i in range(3)]
    desc = retrieval.describe(model, images, 112, CPU)
    assert desc.shape == (3, 128) and desc.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(desc, axis=1), 1.0, atol=1e-5)
    again = retrieval.describe(model, images[:1], 112, CPU)
    np.testing.assert_allclose(again[0], desc[0], atol=1e-5)  # batch composition does not change a descriptor


def test_architecture_of_official_layout() -> None:
    state = retrieval.build_dinov2(embed_dim=384, depth=12).state_dict()
    assert retrieval.architecture_of(state) == {"embed_dim": 384, "depth": 12, "ffn_layer": "mlp", "img_size": 518}
