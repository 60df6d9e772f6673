"""Datasets: the digits splits, imagefolder validation and missing-dataset errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssl_diffusion.config import load_config
from ssl_diffusion.data.datasets import DIGITS_TEST_FRACTION, build_splits
from ssl_diffusion.errors import UserError

N_DIGITS = 1797  # sklearn.datasets.load_digits


def _data_cfg(*overrides: str):
    return load_config(None, ["trainer.max_steps=1", *overrides]).data


def _images(dataset) -> np.ndarray:
    return np.stack([np.asarray(dataset[i][0]) for i in range(len(dataset))])


# --------------------------------------------------------------------------- digits


def test_digits_split_sizes_and_disjointness():
    splits = build_splits(_data_cfg("data.val_fraction=0.15"))
    n_test = round(N_DIGITS * DIGITS_TEST_FRACTION)
    n_val = round((N_DIGITS - n_test) * 0.15)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (
        N_DIGITS - n_test - n_val,
        n_val,
        n_test,
    )
    assert splits.train.dataset is splits.val.dataset  # both carved out of the same train split
    train_idx, val_idx = set(splits.train.indices), set(splits.val.indices)
    assert not train_idx & val_idx
    assert train_idx | val_idx == set(range(N_DIGITS - n_test))
    assert splits.info.channels == 1 and splits.info.image_size == 16
    x, y = splits.test[0]
    assert x.size == (16, 16) and x.mode == "L" and 0 <= y < 10
    assert {int(splits.test[i][1]) for i in range(len(splits.test))} == set(range(10))


def test_digits_val_split_is_fixed_by_split_seed_and_test_never_moves():
    a = build_splits(_data_cfg("data.split_seed=0"))
    b = build_splits(_data_cfg("data.split_seed=0"))
    c = build_splits(_data_cfg("data.split_seed=1"))
    d = build_splits(_data_cfg("data.split_seed=1", "data.val_fraction=0.3"))
    assert a.val.indices == b.val.indices and a.train.indices == b.train.indices
    assert a.val.indices != c.val.indices
    test_a = _images(a.test)
    for other in (c, d):
        assert np.array_equal(_images(other.test), test_a)


def test_train_subset_caps_training_images_only():
    splits = build_splits(_data_cfg("data.train_subset=50"))
    full = build_splits(_data_cfg())
    assert len(splits.train) == 50
    assert splits.val.indices == full.val.indices
    assert set(splits.train.indices) <= set(full.train.indices)


# --------------------------------------------------------------------------- imagefolder


def _png(path: Path, size: int = 8, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)


@pytest.fixture
def folder(tmp_path) -> Path:
    for split in ("train", "val"):
        for k, cls in enumerate(("cat", "dog")):
            for i in range(3):
                _png(tmp_path / split / cls / f"{i}.png", value=40 * k + i)
    return tmp_path


def _imagefolder(root: Path, *overrides: str):
    return build_splits(
        _data_cfg("data.name=imagefolder", f"data.root={root}", "data.val_fraction=0", *overrides)
    )


def _read_all(dataset) -> None:
    for i in range(len(dataset)):
        dataset[i]


def test_imagefolder_reads_a_valid_tree(folder):
    splits = _imagefolder(folder)
    assert splits.info.class_names == ["cat", "dog"] and splits.info.num_classes == 2
    assert splits.info.image_size == 8 and splits.info.channels == 3
    assert len(splits.train) == 6 and len(splits.test) == 6
    img, label = splits.train[4]
    assert img.size == (8, 8) and label == 1


def test_imagefolder_non_image_file(folder):
    bad = folder / "train" / "dog" / "notes.txt"
    bad.write_text("not an image")
    with pytest.raises(UserError, match="non-image file") as exc:
        _imagefolder(folder)
    assert str(bad) in str(exc.value)


def test_imagefolder_empty_class(folder):
    (folder / "train" / "emu").mkdir()
    with pytest.raises(UserError, match="empty") as exc:
        _imagefolder(folder)
    assert str(folder / "train" / "emu") in str(exc.value)


def test_imagefolder_val_classes_must_match_train(folder):
    _png(folder / "val" / "emu" / "0.png")
    with pytest.raises(UserError, match="differ") as exc:
        _imagefolder(folder)
    assert "emu" in str(exc.value)


@pytest.mark.parametrize("name", ["2_broken.png", "-broken.png"])  # sorted last, and first
def test_imagefolder_unreadable_image(folder, name):
    bad = folder / "train" / "cat" / name
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(UserError, match="unreadable image") as exc:
        _read_all(_imagefolder(folder).train.dataset)
    assert str(bad) in str(exc.value)


def test_imagefolder_mixed_sizes_need_image_size(folder):
    big = folder / "train" / "dog" / "9_big.png"
    _png(big, size=12)
    with pytest.raises(UserError) as exc:
        _read_all(_imagefolder(folder).train.dataset)
    message = str(exc.value)
    assert str(big) in message and "12x12" in message and "8x8" in message
    assert "data.image_size" in message
    resized = _imagefolder(folder, "data.image_size=8")
    assert {resized.train.dataset[i][0].size for i in range(7)} == {(8, 8)}


def test_imagefolder_missing_root(tmp_path):
    with pytest.raises(UserError, match="does not exist") as exc:
        _imagefolder(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(exc.value)


# --------------------------------------------------------------------------- torchvision


@pytest.mark.parametrize("name", ["cifar10", "mnist"])
def test_missing_torchvision_dataset_names_path_and_download(tmp_path, name):
    root = tmp_path / "nonexistent"
    with pytest.raises(UserError) as exc:
        build_splits(_data_cfg(f"data.name={name}", f"data.root={root}"))
    message = str(exc.value)
    assert str(root) in message and "data.download=true" in message and f"`{name}`" in message
