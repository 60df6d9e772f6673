"""The Lightning data module every method shares, with a resumable, seeded sampler.

Determinism: the epoch order is a permutation seeded by (seed, epoch); each sample's augmentation
is drawn from its own RNG seeded by (seed, epoch, position), so neither the worker count nor a
resume in the middle of an epoch changes which views a step sees.

Several processes (DDP): the training split is sharded by ``ResumableSampler``; the online-eval
bank and val loaders by ``EvalShard`` (contiguous, equally padded shards), so each rank embeds
1/world of them and the method gathers the exact single-process sets.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from ssl_diffusion.config import Config
from ssl_diffusion.data.datasets import Splits

PAD_LABEL = -1  # label of the rows that pad an EvalShard; dropped after gathering across ranks


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A 63-bit seed for one sample draw, decorrelated across (seed, epoch, position)."""
    mixed = np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, position]).generate_state(2)
    return int(mixed[0]) << 31 ^ int(mixed[1])


class ResumableSampler(Sampler):
    """Seeded epoch permutation, sharded over ranks, that can start mid-epoch.

    Yields ``(index, sample_seed)`` pairs consumed by ``ViewDataset``.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 batch_size: int = 1, drop_last: bool = True) -> None:
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.batch_size, self.drop_last = batch_size, drop_last
        self.epoch = 0
        # Set on resume: batches of epoch `skip_epoch` already consumed. Tied to that epoch (not
        # to whichever epoch comes first): the trainer calls set_epoch(k) on a fresh sampler
        # (epoch 0) when it resumes in epoch k, and the skip must survive that call.
        self.skip_batches = 0
        self.skip_epoch: int | None = None  # None = the first epoch iterated

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int | None, batches_done: int) -> None:
        """Start epoch ``epoch`` (None: the next one iterated) after ``batches_done`` batches."""
        self.skip_epoch, self.skip_batches = epoch, batches_done

    def _order(self) -> np.ndarray:
        if self.shuffle:
            return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        return np.arange(self.n)

    def per_rank(self) -> int:
        per_rank = self.n // self.world_size  # equal shards; the remainder is dropped
        if self.drop_last:
            per_rank -= per_rank % self.batch_size
        return per_rank

    def __len__(self) -> int:
        # The full epoch, also in a resumed one: Lightning's batch counter restarts at the
        # skipped position and ends the epoch at this length (a shorter length would make it
        # reset the counter and cut every later epoch short).
        return self.per_rank()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self._order()
        per_rank = self.per_rank()
        shard = order[self.rank :: self.world_size][:per_rank]
        start = 0
        if self.skip_batches and self.skip_epoch in (None, self.epoch):
            start = self.skip_batches * self.batch_size
        if self.skip_epoch is None or self.epoch >= self.skip_epoch:
            self.skip_batches = 0  # only the resumed epoch is shortened
        for pos in range(start, per_rank):
            global_pos = pos * self.world_size + self.rank
            yield int(shard[pos]), sample_seed(self.seed, self.epoch, global_pos)


class ViewDataset(Dataset):
    """Applies a view transform with a per-sample RNG when given ``(index, seed)``."""

    def __init__(self, base: Dataset, transform: Callable) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, int]:
        if isinstance(key, tuple):
            idx, seed = key
            img, label = self.base[idx]
            # Scoped RNG: seeding the augmentation must not disturb the trainer's global RNG.
            # numpy too: lightly's GaussianBlur and RandomSolarization draw from np.random.
            py_state, np_state = random.getstate(), np.random.get_state()
            try:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    random.seed(seed)
                    np.random.seed(seed % 2**32)
                    views = self.transform(img)
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)
            return views, label
        img, label = self.base[key]
        return self.transform(img), label


class EvalShard(Dataset):
    """Rank ``rank``'s contiguous block of ``base``, padded to ``ceil(len(base) / world)`` rows.

    Every rank then runs the same number of eval batches (DDP's first eval forward is a
    collective, and so is the gather at the end). Padding rows repeat a real image with label
    ``PAD_LABEL``; blocks in rank order, padding removed, are ``base`` in its own order.
    """

    def __init__(self, base: Dataset, rank: int, world_size: int) -> None:
        self.base = base
        n = len(base)
        self.per_rank = -(-n // world_size)
        self.start = min(rank * self.per_rank, n)
        self.stop = min(self.start + self.per_rank, n)

    def __len__(self) -> int:
        return self.per_rank

    def __getitem__(self, i: int) -> tuple[Any, int]:
        j = self.start + i
        if j < self.stop:
            return self.base[j]
        views, _ = self.base[min(j, len(self.base) - 1)]
        return views, PAD_LABEL


def first_n(dataset: Dataset, n: int | None) -> Dataset:
    if n is None or n >= len(dataset):
        return dataset
    return Subset(dataset, list(range(n)))


class SSLDataModule(pl.LightningDataModule):
    """Train views for the method; eval-transformed bank (train) and val loaders for online eval."""

    def __init__(self, cfg: Config, splits: Splits, train_transform: Callable,
                 eval_transform: Callable) -> None:
        super().__init__()
        self.cfg = cfg
        self.splits = splits
        self.train_transform = train_transform
        self.eval_transform = eval_transform
        self.sampler: ResumableSampler | None = None
        self._resume: tuple[int | None, int] = (None, 0)  # (epoch, batches done) on resume

    def _loader(self, dataset: Dataset, shuffle: bool, sampler: Sampler | None = None,
                drop_last: bool = False) -> DataLoader:
        d = self.cfg.data
        return DataLoader(
            dataset,
            batch_size=d.batch_size,
            sampler=sampler,
            shuffle=False if sampler is not None else shuffle,
            drop_last=drop_last,
            num_workers=d.num_workers,
            persistent_workers=False,
            pin_memory=torch.cuda.is_available(),
            # Own generator: creating an iterator must not consume the global RNG (resume).
            generator=torch.Generator().manual_seed(self.cfg.seed),
        )

    def _rank_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        n = len(self.splits.train)
        batch = self.cfg.data.batch_size
        drop_last = n // world >= batch  # tiny datasets keep their only partial batch
        self.sampler = ResumableSampler(n, self.cfg.seed, True, rank, world, batch, drop_last)
        self.sampler.resume_at(*self._resume)
        self._resume = (None, 0)
        return self._loader(ViewDataset(self.splits.train, self.train_transform), True,
                            self.sampler, drop_last)

    def val_dataloader(self) -> list[DataLoader]:
        e = self.cfg.eval
        bank = ViewDataset(first_n(self.splits.train, e.bank_size), self.eval_transform)
        val = ViewDataset(first_n(self.splits.val, e.val_size), self.eval_transform)
        rank, world = self._rank_world()
        if world > 1:
            bank, val = EvalShard(bank, rank, world), EvalShard(val, rank, world)
        return [self._loader(bank, False), self._loader(val, False)]

    def test_dataloader(self) -> DataLoader:
        return self._loader(ViewDataset(self.splits.test, self.eval_transform), False)

    def resume_from_batch(self, batches_done: int, epoch: int | None = None) -> None:
        """Skip the first ``batches_done`` batches of epoch ``epoch`` (mid-epoch resume; None =
        the first epoch iterated, for checkpoints that did not record it)."""
        self._resume = (epoch, batches_done)
        if self.sampler is not None:
            self.sampler.resume_at(epoch, batches_done)
