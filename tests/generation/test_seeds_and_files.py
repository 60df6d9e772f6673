"""Seed parsing and the image writers: grid layout, ADM .npz format, per-seed PNG folders."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_diffusion.app.generation import format_seeds, parse_seeds, sampler_nfe, to_uint8
from ssl_diffusion.app.image_files import NpzWriter, save_grid, save_npz, save_png_folder
from ssl_diffusion.diffusion.config import SamplerConfig
from ssl_diffusion.errors import UserError


@pytest.mark.parametrize(("text", "seeds"), [
    ("0-63", list(range(64))), ("0,5,9", [0, 5, 9]), ("7", [7]),
    ("0-9,20-29", [*range(10), *range(20, 30)]), (" 3-4 ", [3, 4]),
    ("10-12,2", [10, 11, 12, 2]),
])
def test_parse_seeds(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["", "a", "5-3", "-1", "1-", "0-3,2", "1.5", "0--3"])
def test_bad_seeds_are_one_line_user_errors(text):
    with pytest.raises(UserError, match="seeds") as err:
        parse_seeds(text)
    assert "\n" not in str(err.value)


def test_format_seeds_inverts_parse():
    for text in ["0-63", "0,5,9", "0-9,20-29", "10-12,2"]:
        assert format_seeds(parse_seeds(text)) == text


def test_nfe_per_sampler():
    assert sampler_nfe(SamplerConfig(sampler="heun", steps=18)) == 35  # EDM's 18 steps
    assert [sampler_nfe(SamplerConfig(sampler=s, steps=8)) for s in ("euler", "ddim", "ddpm")] == [8] * 3


def test_to_uint8_endpoints_and_rounding():
    x = torch.tensor([-1.0, -0.9961, 0.0, 0.99, 1.0, 1.5]).view(1, 1, 1, 6)
    ref = np.clip(np.round(x.numpy() * 127.5 + 127.5), 0, 255).astype(np.uint8)
    assert to_uint8(x).dtype == torch.uint8
    np.testing.assert_array_equal(to_uint8(x).numpy(), ref)
    assert to_uint8(x)[0, 0, 0, 0] == 0 and to_uint8(x)[0, 0, 0, 4] == 255


def _images(n: int, c: int, size: int = 6) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, size, size), generator=torch.Generator().manual_seed(n + c),
                         dtype=torch.uint8)


@pytest.mark.parametrize(("c", "mode"), [(1, "L"), (3, "RGB")])
def test_grid_layout_and_mode(tmp_path, c, mode):
    x = _images(5, c)
    path = save_grid(x, tmp_path / "g.png", padding=2, pad_value=7)
    img = np.asarray(Image.open(path))
    assert Image.open(path).mode == mode
    assert img.shape[:2] == (2 * 8 + 2, 3 * 8 + 2)  # ceil(sqrt(5)) = 3 columns, 2 rows
    for i in range(5):
        r, col = divmod(i, 3)
        tile = img[2 + r * 8 : 8 + r * 8, 2 + col * 8 : 8 + col * 8]
        expect = x[i].permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(tile.reshape(expect.shape), expect)
    assert (img[0] == 7).all() and (img[-8:, -8:] == 7).all()  # border and the empty 6th tile
    assert save_grid(x, tmp_path / "row.png", nrow=5).is_file()
    big = np.asarray(Image.open(save_grid(x, tmp_path / "big.png", padding=2, pad_value=7,
                                          min_width=100)))
    k = 4  # 26 px wide grid -> the smallest integer factor reaching 100 px
    assert big.shape[:2] == (k * img.shape[0], k * img.shape[1])
    np.testing.assert_array_equal(big[::k, ::k], img)  # nearest neighbour: k x k blocks
    np.testing.assert_array_equal(big[k - 1 :: k, k - 1 :: k], img)
    assert np.asarray(Image.open(tmp_path / "row.png")).shape[:2] == (10, 42)


@pytest.mark.parametrize("c", [1, 3])
def test_npz_is_adm_format(tmp_path, c):
    x = _images(4, c)
    labels = torch.tensor([3, 1, 4, 1])
    with np.load(save_npz(x, tmp_path / "s.npz", labels)) as z:
        arr = z["arr_0"]
        assert arr.dtype == np.uint8 and arr.shape == (4, 6, 6, 3)  # NHWC, always 3 channels
        np.testing.assert_array_equal(arr, x.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).numpy())
        np.testing.assert_array_equal(z["arr_1"], labels.numpy())
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []


def test_npz_writer_streams_and_aborts_without_touching_old_file(tmp_path):
    x = _images(7, 3)
    w = NpzWriter(tmp_path / "s.npz", 7, 6, 6)
    for chunk in x.split(3):
        w.write(chunk)
    w.close()
    with np.load(tmp_path / "s.npz") as z:
        np.testing.assert_array_equal(z["arr_0"], x.permute(0, 2, 3, 1).numpy())
        assert list(z.keys()) == ["arr_0"]
    before = (tmp_path / "s.npz").read_bytes()
    w = NpzWriter(tmp_path / "s.npz", 7, 6, 6)
    w.write(x[:2])
    with pytest.raises(ValueError, match="expected 7"):
        w.close()  # too few images: refused, old file kept
    w.abort()
    assert (tmp_path / "s.npz").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["s.npz"]


def test_png_folder_named_by_seed(tmp_path):
    x = _images(3, 1)
    paths = save_png_folder(x, [5, 17, 123456], tmp_path / "pngs")
    assert [p.name for p in paths] == ["000005.png", "000017.png", "123456.png"]
    for p, img in zip(paths, x):
        np.testing.assert_array_equal(np.asarray(Image.open(p)), img[0].numpy())


def test_writers_reject_float_images(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        save_grid(torch.zeros(2, 3, 4, 4), tmp_path / "g.png")
