"""Linear probe on frozen features (MAE ``main_linprobe.py`` / REPA protocol).

The probe is ``BatchNorm1d(affine=False)`` followed by ``Linear``: the BN standardises each feature
dimension without learnable scale, so one learning rate suits features of any scale (MAE, He et al.
2022, Sec. A.2), and the composition is still a linear classifier. The model never sees labels;
only the head is trained, with linear warm-up then half-cosine decay per step, and accuracies are
measured once, after the last epoch (no model selection on the evaluation splits).

Training features are a (N, D) tensor/array by default. For train-time augmentation pass
``train_feats`` as a callable ``epoch -> (feats, labels)`` that recomputes features each epoch
(then ``train_labels`` must be None); the callable owns the randomness of its augmentations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from ssl_diffusion.errors import UserError
from ssl_diffusion.eval.accuracy import as_labels, topk_accuracy
from ssl_diffusion.eval.config import LinearConfig
from ssl_diffusion.eval.neighbors import as_features
from ssl_diffusion.optim import LARS

_EVAL_BATCH = 8192  # rows per forward pass at evaluation time
_SINGLE_THREAD_MACS = 2**26  # per-step batch x dim x classes below which CPU training uses 1 thread


class LabeledFeatures(NamedTuple):
    """Features with their class ids (a tuple ``(feats, labels)`` is accepted too)."""

    feats: Tensor | np.ndarray  # (N, D)
    labels: Tensor | np.ndarray  # (N,) int


FeatureFn = Callable[[int], LabeledFeatures | tuple]  # epoch -> (feats, labels)


class LinearProbe(nn.Module):
    """BatchNorm1d without affine, then Linear (MAE linprobe head)."""

    def __init__(
        self, dim: int, num_classes: int, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6)  # MAE: eps 1e-6, no affine
        self.linear = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.linear.weight, std=0.01, generator=generator)  # MAE head init
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.bn(x))  # (N, C)


@dataclass
class ProbeFit:
    """A trained probe and how it was trained."""

    probe: LinearProbe  # in eval mode
    train_loss: float  # mean cross-entropy of the last epoch
    peak_lr: float  # lr * batch_size / 256
    steps: int  # optimizer steps taken
    num_train: int  # training samples in the last epoch


def lr_at(progress: float, cfg: LinearConfig) -> float:
    """Learning rate at fractional epoch ``progress``: linear warm-up, half-cosine to 0 (MAE)."""
    peak = cfg.lr * cfg.batch_size / 256
    if progress < cfg.warmup_epochs:
        return peak * progress / cfg.warmup_epochs
    span = max(cfg.epochs - cfg.warmup_epochs, 1e-12)
    return peak * 0.5 * (1 + math.cos(math.pi * (progress - cfg.warmup_epochs) / span))


def _make_optimizer(probe: LinearProbe, cfg: LinearConfig) -> torch.optim.Optimizer:
    # Weight decay on the matrix only; biases are never decayed (MAE param groups).
    groups = [
        {"params": [probe.linear.weight], "weight_decay": cfg.weight_decay},
        {"params": [probe.linear.bias], "weight_decay": 0.0},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=0.0, momentum=cfg.momentum)
    if cfg.optimizer == "lars":
        return LARS(groups, lr=0.0, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=0.0, betas=(cfg.momentum, 0.999))


def _labeled(pair, num_classes: int, name: str, dim: int | None = None) -> tuple[Tensor, Tensor]:
    if not (isinstance(pair, tuple) and len(pair) == 2):
        raise UserError(f"{name} must be a (feats, labels) pair, got {type(pair).__name__}")
    feats = as_features(pair[0], f"{name} features")
    if dim is not None and feats.shape[1] != dim:
        raise UserError(
            f"{name} features have dimension {feats.shape[1]} but the training features have "
            f"{dim}; extract all splits with the same model and layer"
        )
    return feats, as_labels(pair[1], feats.shape[0], num_classes, f"{name} labels").to(feats.device)


def fit_linear_probe(
    train_feats: Tensor | np.ndarray | FeatureFn,
    train_labels: Tensor | np.ndarray | None,
    num_classes: int,
    cfg: LinearConfig,
) -> ProbeFit:
    """Train BN(affine=False) + Linear on training features; runs on the features' device.

    ``train_feats`` is (N, D) with ``train_labels`` (N,), or a callable ``epoch -> (feats, labels)``
    with ``train_labels=None``. Batches of ``cfg.batch_size`` in a seeded random order; the last
    incomplete batch is dropped (MAE) unless the data is smaller than one batch.
    """
    cfg.validate()
    if num_classes < 2:
        raise UserError(f"num_classes={num_classes} must be >= 2 for a classifier")
    if callable(train_feats):
        if train_labels is not None:
            raise UserError(
                "train_labels must be None when train_feats is a callable epoch -> (feats, labels)"
            )
        fixed = None
    else:
        fixed = _labeled((train_feats, train_labels), num_classes, "train")
    gen = torch.Generator().manual_seed(cfg.seed)
    probe: LinearProbe | None = None
    steps = 0
    for epoch in range(cfg.epochs):
        if fixed is not None:
            x, y = fixed
        else:
            dim = None if probe is None else probe.linear.in_features
            x, y = _labeled(tuple(train_feats(epoch)), num_classes, f"train (epoch {epoch})", dim)
        if x.shape[0] < 2:
            raise UserError(f"the linear probe needs >= 2 training samples, got {x.shape[0]}")
        if probe is None:
            probe = LinearProbe(x.shape[1], num_classes, generator=gen).to(x.device)
            opt = _make_optimizer(probe, cfg)
        bs = min(cfg.batch_size, x.shape[0])
        with _threads_for(x.device, bs * x.shape[1] * num_classes):
            train_loss = _train_epoch(probe, opt, x, y, bs, epoch, cfg, gen)
        steps += x.shape[0] // bs
    return ProbeFit(probe.eval(), train_loss, cfg.lr * cfg.batch_size / 256, steps, x.shape[0])


def _train_epoch(
    probe: LinearProbe,
    opt: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    bs: int,
    epoch: int,
    cfg: LinearConfig,
    gen: torch.Generator,
) -> float:
    """One pass in seeded random order; returns the mean loss. The last partial batch is dropped."""
    probe.train()
    perm = torch.randperm(x.shape[0], generator=gen).to(x.device)  # (N,)
    num_batches = x.shape[0] // bs
    total = torch.zeros((), device=x.device)
    for b in range(num_batches):
        for group in opt.param_groups:
            group["lr"] = lr_at(epoch + b / num_batches, cfg)
        idx = perm[b * bs : (b + 1) * bs]
        # index_select, not x[idx]: advanced indexing opens an OpenMP region even for 256 rows.
        logits = probe(x.index_select(0, idx))  # (B, C)
        loss = nn.functional.cross_entropy(logits, y.index_select(0, idx))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.detach()
    return total.item() / num_batches


@contextmanager
def _threads_for(device: torch.device, macs_per_step: int):
    """Run small CPU steps on one thread. A probe step on (256 x 768) -> 10 is far too small
    for OpenMP fork/join to pay off; on the shared 2-core dev box one CIFAR-sized epoch took
    1.7 s on one thread and 37.6 s on two (oversubscribed barriers)."""
    if device.type != "cpu" or macs_per_step >= _SINGLE_THREAD_MACS:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@torch.no_grad()
def evaluate_probe(probe: LinearProbe, feats: Tensor, labels: Tensor) -> dict[str, float]:
    """Top-1/top-5 accuracy (percent) of a trained probe; BN uses its running statistics."""
    probe.eval()
    device = probe.linear.weight.device
    logits = torch.cat(
        [probe(feats[i : i + _EVAL_BATCH].to(device)) for i in range(0, len(feats), _EVAL_BATCH)]
    )
    acc = topk_accuracy(logits, labels)
    return {"top1": acc[1], "top5": acc[5],
            "predictions": logits.argmax(dim=1).cpu().numpy().astype(np.int64)}  # (N,) top-1


def train_linear_probe(
    train_feats: Tensor | np.ndarray | FeatureFn,
    train_labels: Tensor | np.ndarray | None,
    eval_sets: dict[str, LabeledFeatures | tuple],
    num_classes: int,
    cfg: LinearConfig | None = None,
) -> dict:
    """Train a linear probe and report accuracy on each evaluation split.

    Args:
        train_feats: (N, D) frozen features, or a callable ``epoch -> (feats, labels)``.
        train_labels: (N,) class ids, or None with a callable.
        eval_sets: split name -> (feats, labels), e.g. ``{"val": ..., "test": ...}``.
        num_classes: C.
        cfg: training recipe (default: ``LinearConfig()``).

    Returns:
        ``{"<split>_top1", "<split>_top5"}`` in percent for each split, ``"train_loss"`` (last
        epoch) and ``"protocol"`` (the config plus the actual peak lr, steps and sizes).
    """
    cfg = cfg if cfg is not None else LinearConfig()
    cfg.validate()
    if num_classes < 2:
        raise UserError(f"num_classes={num_classes} must be >= 2 for a classifier")
    dim = None if callable(train_feats) else torch.as_tensor(train_feats).shape[-1]
    splits = {
        name: _labeled(tuple(pair), num_classes, f"eval split `{name}`", dim)
        for name, pair in eval_sets.items()
    }
    fit = fit_linear_probe(train_feats, train_labels, num_classes, cfg)
    dim = fit.probe.linear.in_features
    out: dict = {}
    for name, (feats, labels) in splits.items():
        if feats.shape[1] != dim:
            raise UserError(
                f"eval split `{name}` has feature dimension {feats.shape[1]} but the probe was "
                f"trained on {dim}; extract all splits with the same model and layer"
            )
        acc = evaluate_probe(fit.probe, feats, labels)
        out[f"{name}_top1"], out[f"{name}_top5"] = acc["top1"], acc["top5"]
        out.setdefault("predictions", {})[name] = acc["predictions"]  # (N,) per split
    out["train_loss"] = fit.train_loss
    out["protocol"] = {
        **asdict(cfg),
        "model": "BatchNorm1d(affine=False) + Linear",
        "peak_lr": fit.peak_lr,
        "schedule": f"linear warm-up {cfg.warmup_epochs} epochs, then half-cosine to 0, per step",
        "steps": fit.steps,
        "feature_fn": callable(train_feats),
        "train_size": fit.num_train,
        "dim": dim,
        "num_classes": num_classes,
        "units": "percent",
    }
    return out
