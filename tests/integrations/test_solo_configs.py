"""Every solo-learn config in configs/solo composes with solo-learn's own parsing and builds the
plugin's method (with a tiny model), normalisation statistics taken from solo's pipelines."""

from __future__ import annotations

import importlib.util

import pytest

from tests.integrations.solo_helpers import CONFIGS, make_png_folder

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
