"""The solo-learn plugin's torch-only parts (no solo-learn needed): the backbone's input mapping
and kwargs checks, the converter's refusals, and the one-line error when solo-learn is missing."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_diffusion.errors import UserError
from ssl_diffusion.integrations.solo_backbone import BackboneSpec, DiffusionBackbone, backbone_spec

TINY = {"model": {"preset": "DiT-tiny", "patch_size": 4, "depth": 2}, "diffusion": {"objective": "flow"}}


def _backbone(**kw) -> DiffusionBackbone:
    spec = BackboneSpec(method="ddaepp", image_size=16, config=TINY, num_classes=5,
                        input_mean=[0.4914, 0.4822, 0.4465], input_std=[0.247, 0.243, 0.261], **kw)
    return DiffusionBackbone(spec).eval()


def test_model_input_undoes_solo_normalisation_and_resizes():
    torch.manual_seed(0)
    backbone = _backbone()
    x01 = torch.rand(3, 3, 16, 16)  # images in [0, 1]
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.247, 0.243, 0.261]).view(1, 3, 1, 1)
    torch.testing.assert_close(backbone.model_input((x01 - mean) / std), 2 * x01 - 1)
    # other training statistics (solo's CIFAR crops use std 0.2435 where its eval uses 0.243)
    other = torch.tensor([0.2470, 0.2435, 0.2616])
    torch.testing.assert_close(backbone.model_input((x01 - mean) / other.view(1, 3, 1, 1),
                                                    mean.flatten(), other), 2 * x01 - 1)
    # solo's custom-data eval crops are 224 px: resized like PIL's antialiased bilinear resize
    big = torch.rand(2, 3, 224, 224)
    out = backbone.model_input((big - mean) / std)
    assert out.shape == (2, 3, 16, 16)
    ref = torch.tensor(np.stack([[np.asarray(Image.fromarray(c.numpy(), mode="F").resize(
        (16, 16), Image.BILINEAR)) for c in img] for img in big]))  # (2, 3, 16, 16)
    torch.testing.assert_close(out, 2 * ref - 1, atol=2e-3, rtol=0)
    feats = backbone((x01 - mean) / std)
    torch.testing.assert_close(feats, backbone.method.extract_features(2 * x01 - 1))
    assert feats.shape == (3, backbone.num_features)


def test_backbone_kwargs_are_checked():
    with pytest.raises(UserError, match="unknown backbone.kwargs crop"):
        backbone_spec("ddaepp", {"image_size": 16, "crop": 3})
    with pytest.raises(UserError, match="needs backbone.kwargs.image_size"):
        backbone_spec("ddaepp", {})
    with pytest.raises(UserError, match="not provided by ssl_diffusion"):
        backbone_spec("resnet18", {"image_size": 16})
    with pytest.raises(UserError, match="model.prest"):
        DiffusionBackbone(BackboneSpec(method="ddae", image_size=16, config={"model": {"prest": 1}}))
    with pytest.raises(UserError, match="contradicts backbone"):
        DiffusionBackbone(BackboneSpec(method="ddae", image_size=16, config={"method": "simclr"}))


def test_converter_refuses_checkpoints_not_written_by_the_plugin(tmp_path):
    from ssl_diffusion.integrations.solo_convert import convert_solo_checkpoint
    from ssl_diffusion.methods.base import META_KEY

    path = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, META_KEY: {"method": "ddaepp", "config": {}}}, path)
    with pytest.raises(UserError, match="not written by ssl_diffusion's solo-learn plugin"):
        convert_solo_checkpoint(path, tmp_path / "out.ckpt")
    assert not (tmp_path / "out.ckpt").exists()


def test_missing_solo_is_one_line_naming_the_package(monkeypatch):
    monkeypatch.delitem(sys.modules, "ssl_diffusion.integrations.solo", raising=False)
    for name in [m for m in sys.modules if m == "solo" or m.startswith("solo.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "solo", None)  # import solo -> ImportError
    with pytest.raises(UserError) as err:
        importlib.import_module("ssl_diffusion.integrations.solo")
    message = str(err.value)
    assert "\n" not in message and "`solo`" in message and "solo-learn" in message
