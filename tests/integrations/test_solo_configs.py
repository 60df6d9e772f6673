"""Every solo-learn config in configs/solo composes with solo-learn's own parsing and builds the
plugin's method (with a tiny model), normalisation statistics taken from solo's pipelines."""

from __future__ import annotations

import importlib.util

import pytest

from tests.helpers_imagefolder import make_png_folder
from tests.integrations.solo_helpers import CONFIGS

pytestmark = pytest.mark.skipif(importlib.util.find_spec("solo") is None,
                                reason="solo-learn not installed (.ci/run installs the snapshot)")
TINY = ["backbone.kwargs.config.model.preset=DiT-tiny", "++backbone.kwargs.config.model.patch_size=8"]


def _compose(name: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.2"):
        cfg = compose(config_name=name, overrides=overrides)
    OmegaConf.set_struct(cfg, False)
    return cfg


@pytest.mark.parametrize("name", ["ddaepp_cifar10", "ddaepp_custom"])
def test_pretrain_configs_build_the_plugin_method(name, tmp_path):
    from solo.args.pretrain import parse_cfg
    from solo.methods import METHODS

    from ssl_diffusion.integrations.solo import SoloDiffusionMethod, register

    register()
    extra = [f"dataset_root={make_png_folder(tmp_path, train_per_class=1, val_per_class=1)}"] \
        if name.endswith("custom") else []
    cfg = parse_cfg(_compose(name, [*TINY, *extra]))
    model = METHODS[cfg.method](cfg)
    assert isinstance(model, SoloDiffusionMethod) and cfg.data.num_large_crops == 2
    spec = model.backbone.spec
    assert spec.image_size == 32 and model.features_dim == model.backbone.num_features
    if name.endswith("cifar10"):  # solo's CIFAR eval vs pretraining statistics
        assert spec.input_std == pytest.approx([0.247, 0.243, 0.261])
        assert model.train_std.tolist() == pytest.approx([0.2470, 0.2435, 0.2616])
        assert model.backbone.cfg.data.name == "cifar10"
    else:
        assert spec.input_mean == pytest.approx([0.485, 0.456, 0.406])
        assert spec.class_names == [f"class{k}" for k in range(5)]
        assert model.backbone.cfg.data.name == "imagefolder"


@pytest.mark.parametrize("name", ["linear_cifar10", "linear_custom"])
def test_linear_configs_rebuild_from_the_checkpoint(name, tmp_path):
    from solo.args.linear import parse_cfg

    extra = [f"dataset_root={make_png_folder(tmp_path, train_per_class=1, val_per_class=1)}"] \
        if name.endswith("custom") else []
    cfg = parse_cfg(_compose(name, ["pretrained_feature_extractor=/x/y.ckpt", *extra]))
    assert cfg.backbone.name == "ddaepp" and cfg.backbone.kwargs.checkpoint == "/x/y.ckpt"


def test_adapter_step_moves_the_teachers_on_solos_step_counter(tmp_path):
    """One training step of the adapter: the momentum teacher follows the student with the
    momentum of solo's step (half cosine, recomputed here) before the loss, as the host does."""
    import math
    from types import SimpleNamespace

    import torch
    from solo.args.pretrain import parse_cfg
    from solo.methods import METHODS

    from ssl_diffusion.integrations.solo import register

    register()
    cfg = parse_cfg(_compose("ddaepp_custom", [
        *TINY, f"dataset_root={make_png_folder(tmp_path, train_per_class=1, val_per_class=1)}",
        ("++backbone.kwargs.config.contrastive={weight: 0.5, proj_hidden_dim: 16, "
         "proj_output_dim: 8, pred_hidden_dim: 16, momentum_start: 0.9}")]))
    model = METHODS[cfg.method](cfg)
    method = model.backbone.method
    step, total = 30, 101
    method._trainer = SimpleNamespace(global_step=step, estimated_stepping_batches=total,
                                      world_size=1, global_rank=0)  # what on_fit_start attaches
    torch.manual_seed(0)
    with torch.no_grad():  # a student that differs from its teacher
        for p in method.projector.parameters():
            p.add_(torch.randn_like(p))
    student = [p.detach().clone() for p in method.projector.parameters()]
    teacher = [p.detach().clone() for p in method.teacher_projector.parameters()]
    crops = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)]
    loss = model.training_step([torch.arange(4), crops, torch.tensor([0, 1, 2, 3])], 0)
    assert torch.isfinite(loss)
    m = 1.0 - (1.0 - 0.9) * (math.cos(math.pi * step / (total - 1)) + 1) / 2
    for t0, s0, t1 in zip(teacher, student, method.teacher_projector.parameters()):
        torch.testing.assert_close(t1.detach(), m * t0 + (1 - m) * s0)
