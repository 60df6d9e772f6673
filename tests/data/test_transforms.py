"""View pipelines: number and size of views, grey images, normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_diffusion.config import load_config
from ssl_diffusion.data.info import DataInfo
from ssl_diffusion.data.transforms import local_crop_size, train_transform
from ssl_diffusion.errors import UserError

SIZE = 16


def _info(channels: int, size: int = SIZE) -> DataInfo:
    return DataInfo("t", 10, channels, size, [0.4] * channels, [0.2] * channels)


def _aug(*overrides: str):
    return load_config(None, ["trainer.max_steps=1", *overrides]).aug


def _image(channels: int, size: int = SIZE) -> Image.Image:
    rng = np.random.default_rng(0)
    if channels == 1:
        return Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), mode="L")
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), mode="RGB")


@pytest.mark.parametrize("channels", [3, 1])
def test_simclr_gives_two_views_of_the_image_size(channels):
    views = train_transform("simclr", _info(channels), _aug(), "dataset")(_image(channels))
    assert len(views) == 2
    assert [tuple(v.shape) for v in views] == [(channels, SIZE, SIZE)] * 2
    assert not torch.equal(views[0], views[1])


@pytest.mark.parametrize("channels", [3, 1])
def test_dino_local_crops_are_sized_from_the_data(channels):
    aug = _aug("aug.n_local_views=3")
    views = train_transform("dino", _info(channels), aug, "dataset")(_image(channels))
    local = local_crop_size(aug, SIZE)
    assert local == 8  # max(8, round(16 * 3/7)); lightly's default would be 96 px
    assert len(views) == 2 + 3
    assert [tuple(v.shape) for v in views] == [(channels, SIZE, SIZE)] * 2 + [
        (channels, local, local)
    ] * 3


def test_local_crop_size_rule():
    assert local_crop_size(_aug(), 224) == 96  # the paper's 96 px at 224 px
    assert local_crop_size(_aug(), 32) == 14
    assert local_crop_size(_aug("aug.local_crop_size=12"), 32) == 12
    views = train_transform(
        "dino", _info(3, 32), _aug("aug.local_crop_size=12", "aug.n_local_views=1"), "dataset"
    )(_image(3, 32))
    assert tuple(views[-1].shape) == (3, 12, 12)


def test_eval_preset_is_deterministic_normalisation():
    img = _image(3)
    views = train_transform("eval", _info(3), _aug(), "dataset")(img)
    expected = (np.asarray(img, np.float32) / 255.0 - 0.4) / 0.2  # (H, W, C)
    assert len(views) == 1
    np.testing.assert_allclose(views[0].permute(1, 2, 0).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_diffusion_preset_is_symmetric_and_only_flips():
    img = _image(1)
    aug = _aug("aug.hflip_prob=1.0")
    (view,) = train_transform("diffusion", _info(1), aug, "symmetric")(img)
    expected = np.asarray(img, np.float32)[:, ::-1] / 127.5 - 1.0  # flipped, in [-1, 1]
    np.testing.assert_allclose(view[0].numpy(), expected, rtol=1e-5, atol=1e-5)


def test_unknown_preset_lists_the_presets():
    with pytest.raises(UserError) as exc:
        train_transform("simclrr", _info(3), _aug(), "dataset")
    message = str(exc.value)
    assert "`simclrr`" in message
    for preset in ("simclr", "dino", "diffusion", "eval"):
        assert preset in message
