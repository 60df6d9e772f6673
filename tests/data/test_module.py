"""The resumable sampler and per-sample augmentation RNG of the shared data module."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from ssl_diffusion.app.pretrain import build_datamodule, method_class
from ssl_diffusion.data.datasets import build_splits
from ssl_diffusion.data.module import ResumableSampler

N, BATCH = 40, 4


def _pairs(sampler: ResumableSampler) -> list[tuple[int, int]]:
    return list(sampler)


def test_same_seed_and_epoch_give_the_same_order():
    a, b = (
        ResumableSampler(N, seed=3, batch_size=BATCH),
        ResumableSampler(N, seed=3, batch_size=BATCH),
    )
    assert _pairs(a) == _pairs(b) == _pairs(a)
    indices = [i for i, _ in _pairs(a)]
    assert sorted(indices) == list(range(N)) and indices != list(range(N))


def test_order_changes_across_epochs_and_seeds():
    s = ResumableSampler(N, seed=3, batch_size=BATCH)
    epoch0 = _pairs(s)
    s.set_epoch(1)
    epoch1 = _pairs(s)
    other_seed = _pairs(ResumableSampler(N, seed=4, batch_size=BATCH))
    assert [i for i, _ in epoch0] != [i for i, _ in epoch1]
    assert [i for i, _ in epoch0] != [i for i, _ in other_seed]
    assert {seed for _, seed in epoch0}.isdisjoint(seed for _, seed in epoch1)


def test_skip_batches_yields_exactly_the_tail_once():
    s = ResumableSampler(N, seed=0, batch_size=BATCH)
    s.set_epoch(2)
    full = _pairs(s)
    s.resume_at(2, 3)
    assert len(s) == N  # Lightning counts the epoch in full and resumes its counter at batch 3
    assert _pairs(s) == full[3 * BATCH :]
    assert _pairs(s) == full  # only the resumed epoch is shortened
    s.resume_at(2, 2)
    s.set_epoch(3)  # a new epoch starts from its beginning
    assert len(_pairs(s)) == N


def test_resume_in_a_later_epoch_survives_set_epoch():
    """The trainer builds a fresh sampler (epoch 0) and then calls set_epoch(k) when it resumes
    in epoch k: the skip belongs to epoch k and must not be dropped by that call (issue 13)."""
    reference = ResumableSampler(N, seed=0, batch_size=BATCH)
    reference.set_epoch(3)
    full = _pairs(reference)
    fresh = ResumableSampler(N, seed=0, batch_size=BATCH)
    fresh.resume_at(3, 2)
    fresh.set_epoch(3)
    assert _pairs(fresh) == full[2 * BATCH :]
    fresh.set_epoch(4)
    reference.set_epoch(4)
    assert _pairs(fresh) == _pairs(reference)


def test_drop_last_keeps_whole_batches():
    s = ResumableSampler(42, seed=0, batch_size=BATCH, drop_last=True)
    assert len(s) == len(_pairs(s)) == 40


def test_ranks_shard_the_single_device_order():
    """Two ranks see disjoint halves and each sample keeps the (index, seed) of one device."""
    single = set(_pairs(ResumableSampler(N, seed=5, batch_size=BATCH)))
    r0 = _pairs(ResumableSampler(N, seed=5, rank=0, world_size=2, batch_size=BATCH))
    r1 = _pairs(ResumableSampler(N, seed=5, rank=1, world_size=2, batch_size=BATCH))
    assert len(r0) == len(r1) == N // 2
    assert set(r0).isdisjoint(r1)
    assert set(r0) | set(r1) == single


# --------------------------------------------------------------------------- augmentation RNG


def _datamodule(tiny_cfg, *overrides: str):
    cfg = tiny_cfg("trainer.max_steps=1", *overrides)
    return build_datamodule(cfg, build_splits(cfg.data), method_class(cfg))


def _batches(loader) -> list[list[torch.Tensor]]:
    return [[*views, labels] for views, labels in loader]


def _assert_same_batches(a, b) -> None:
    assert len(a) == len(b)
    for batch_a, batch_b in zip(a, b):
        assert len(batch_a) == len(batch_b)
        assert all(torch.equal(x, y) for x, y in zip(batch_a, batch_b))


# DINO exercises lightly's numpy-driven solarisation; blur_prob=0.5 its numpy-driven blur.
@pytest.mark.parametrize("method", ["simclr", "dino"])
def test_augmentation_is_independent_of_workers_and_resume(tiny_cfg, method):
    extra = (f"method={method}", "aug.blur_prob=0.5", "aug.solarize_prob=0.5")
    dm = _datamodule(tiny_cfg, *extra, "data.num_workers=0")
    in_process = _batches(dm.train_dataloader())
    assert len(in_process) == 4
    workers = _batches(_datamodule(tiny_cfg, *extra, "data.num_workers=2").train_dataloader())
    _assert_same_batches(in_process, workers)
    dm.resume_from_batch(2)
    _assert_same_batches(_batches(dm.train_dataloader()), in_process[2:])


def test_augmentation_leaves_the_global_rng_alone(tiny_cfg):
    loader = _datamodule(tiny_cfg, "method=dino", "aug.blur_prob=0.5").train_dataloader()
    torch.manual_seed(11)
    random.seed(11)
    np.random.seed(11)
    before = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    views = _batches(loader)
    after = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    assert views
    assert torch.equal(before[0], after[0])
    assert before[1] == after[1]
    assert np.array_equal(before[2], after[2])
