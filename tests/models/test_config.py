"""Config validation: every bad value is one line naming the value and the valid choices."""

from __future__ import annotations

import pytest

from ssl_diffusion.errors import UserError
from ssl_diffusion.models import ModelConfig, SelfCondConfig, build_denoiser
from tests.models.helpers import tiny


def _build(model: ModelConfig, sc: SelfCondConfig | None = None, size: int = 16):
    return build_denoiser(model, sc, in_channels=3, image_size=size)


def test_unknown_preset_suggests_the_closest():
    with pytest.raises(UserError, match=r"DiT-S/3.*valid: .*DiT-S/2.*did you mean `DiT-S/[24]`"):
        ModelConfig(preset="DiT-S/3").validate()


def test_preset_of_another_arch_names_the_fix():
    with pytest.raises(UserError, match=r"unet preset.*set model.arch=unet"):
        ModelConfig(arch="dit", preset="DDPM-35.7M").validate()


def test_override_for_another_arch_is_rejected():
    with pytest.raises(UserError, match=r"model.channel_mult does not apply to arch `dit`"):
        ModelConfig(channel_mult=[1, 2]).validate()


def test_overrides_replace_preset_values():
    model = _build(ModelConfig(arch="dit", preset="DiT-tiny", depth=2, width=32, heads=4))
    assert model.layer_names == ["block0", "block1"] and model.feature_dims["block0"] == 32
    unet = _build(ModelConfig(arch="unet", preset="UNet-tiny", channel_mult=[1, 1, 2]))
    assert "down1" in unet.layer_names and unet.feature_dims["mid"] == 64


def test_bad_source_layer_lists_the_valid_layers():
    with pytest.raises(UserError, match=r"`block9`.*valid: auto, block0, block1, block2, block3"):
        tiny("dit", SelfCondConfig(enabled=True, source_layer="block9"))


@pytest.mark.parametrize(
    "arch,kwargs,pattern",
    [
        ("dit", {"pool": "cls"}, "pool=cls"),
        ("unet", {"pool": "cls"}, "pool=cls"),
        ("unet", {"targets": "final"}, "targets=final"),
        ("uvit", {"targets": "final"}, "targets=final"),
        ("unet", {"source_layer": "dec3"}, "no later layer"),
        ("uvit", {"source_layer": "out1"}, "last block"),
    ],
)
def test_selfcond_choices_an_arch_cannot_honour(arch, kwargs, pattern):
    with pytest.raises(UserError, match=pattern):
        tiny(arch, SelfCondConfig(enabled=True, **kwargs))


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"pool": "max"}, r"selfcond.pool `max`.*valid: mean, attn, cls"),
        ({"mlp_depth": 0}, r"mlp_depth must be >= 1"),
        ({"drop_prob": 1.0}, r"drop_prob must be in \[0, 1\)"),
        ({"time_scale": "vec"}, r"did you mean `vector`"),
    ],
)
def test_selfcond_value_checks(kwargs, pattern):
    with pytest.raises(UserError, match=pattern):
        SelfCondConfig(**kwargs).validate()


@pytest.mark.parametrize(
    "model,size,pattern",
    [
        (ModelConfig(arch="dit", preset="DiT-tiny", patch_size=3), 16, "not divisible"),
        (ModelConfig(arch="uvit", preset="UViT-tiny", depth=4), 16, "must be odd"),
        (
            ModelConfig(arch="unet", preset="UNet-tiny", channel_mult=[1, 1, 1, 1, 1]),
            12,
            "downsampling factor 16",
        ),
    ],
)
def test_shape_errors_are_user_errors(model, size, pattern):
    with pytest.raises(UserError, match=pattern):
        _build(model, size=size)


def test_default_source_layer_is_the_middle():
    assert tiny("dit").default_source_layer == "block1"  # 4 blocks: 2 before, 2 after
    assert tiny("unet").default_source_layer == "mid"
    assert tiny("uvit").default_source_layer == "mid"
    model = tiny("dit", SelfCondConfig(enabled=True))
    assert model.layer_names[model.sc_source] == "block1"


def test_configs_and_presets_import_without_torch():
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys; from ssl_diffusion.models import ModelConfig, SelfCondConfig, PRESETS; "
        "ModelConfig(arch='unet', preset='DDPM-35.7M').resolved(); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
