"""The host LightningModule every method subclasses.

It owns what methods share: the optimiser (AdamW / Adam / SGD / LARS) with linear warm-up and a
cosine schedule, an optional EMA copy of the weights, an online linear probe (BatchNorm without
affine + Linear on detached ``feats``, its own parameter group, as solo-learn and lightly do), and
an online kNN evaluated on the validation split against a bank of training images.

A method implements:
  ``training_loss(views, labels) -> dict``: ``loss`` (total), named terms ``loss_*`` (logged as
      ``train/loss_*``) and ``feats`` (eval-encoder features of the first view, detached);
  ``extract_features(x) -> Tensor``: (N, D) features used by every evaluator;
  ``feature_dim``; optionally ``ema_source()`` (the module averaged when ``ema.enabled``).
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import asdict
from typing import Any, ClassVar

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_diffusion.config import Config, to_dict
from ssl_diffusion.data.info import DataInfo
from ssl_diffusion.data.module import PAD_LABEL
from ssl_diffusion.errors import UserError
from ssl_diffusion.eval.online import knn_settings, online_knn, topk_accuracy
from ssl_diffusion.eval.spec import FeatureSpec
from ssl_diffusion.methods.ema import EMA
from ssl_diffusion.methods.momentum import momentum_update, teacher_momentum
from ssl_diffusion.optim import LARS
from ssl_diffusion.version import __version__

META_KEY = "ssl_diffusion"  # checkpoint entry holding method, arch, config and data info


class NonFiniteLossError(UserError):
    """A NaN/Inf loss: the run stops and the last good checkpoint is kept."""


def _weight_decay_groups(params: list[tuple[str, nn.Parameter]], wd: float) -> list[dict]:
    # No weight decay on biases and normalisation weights (1-D tensors), as timm/lightly/DiT.
    decay = [p for n, p in params if p.ndim > 1]
    no_decay = [p for n, p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": wd}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def gather_rows(t: Tensor) -> Tensor:
    """``t`` (N_r, ...) of every rank concatenated in rank order; ``t`` itself on one process.

    Shards may differ in length (sizes are exchanged first, rows padded for the collective and
    the padding cut again); the trailing dimensions must agree across ranks.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    world = dist.get_world_size()
    size = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s) for s in sizes]
    padded = t.new_zeros((max(counts), *t.shape[1:]))  # (max N_r, ...)
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, counts)])  # (sum N_r, ...)


def rank_seed(seed: int, rank: int) -> int:
    """Seed of rank ``rank``'s training RNG stream, decorrelated across ranks (32 bits)."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, rank]).generate_state(1)[0])


def step_generator(seed: int, rank: int, step: int, stream: str) -> torch.Generator:
    """A CPU generator for one (seed, rank, training step, named stream).

    Draws that must match across the arms of a paired comparison (the diffusion loss's noise
    levels and noise) come from here instead of the global RNG, so an arm that draws extra
    random numbers elsewhere (self-distillation views, teacher noise) still sees the same
    noise at every step; a resumed run gets it back without saving any state.
    """
    key = [seed & 0xFFFFFFFF, rank, step, zlib.crc32(stream.encode())]
    state = np.random.SeedSequence(key).generate_state(2)  # two 32-bit words
    return torch.Generator().manual_seed((int(state[0]) << 31) ^ int(state[1]))


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float, schedule: str) -> float:
    """LR multiplier: linear warm-up to 1 over ``warmup`` steps, then cosine (or constant)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class SSLMethod(pl.LightningModule):
    """The method contract every evaluator, loader, generator and comparison relies on.

    Subclasses implement ``training_loss`` (named loss terms, optionally ``feats``) and
    ``extract_features``; they declare what callers may ask of them here instead of being
    inspected by name or ``hasattr``:

    - ``generative``: the method samples images (``generate``) and its features are a function
      of (layer, noise level) (``feature_spec``, ``extract_features_multi``).
    - ``feature_spec(layer, noise, unit, use_ema)``: the one place where ``layer="auto"`` and a
      noise level in sigma or logSNR are resolved and checked.
    - ``momentum_pairs()`` / ``momentum_range()``: (student, teacher) pairs that follow the one
      shared teacher-momentum schedule (``methods/momentum.py``), applied before every step.
    - ``learnable_parameter_groups(lr)``: what the optimiser trains (never a teacher, the EMA
      copy or, outside its own group, the online probe).
    """

    default_aug: str = "simclr"  # augmentation preset when aug.preset is null
    normalization: str = "dataset"  # dataset | symmetric ([-1, 1], diffusion models)
    default_ema: bool = False  # ema.enabled=null resolves to this
    generative: ClassVar[bool] = False  # samples images; features are a (layer, noise) grid
    feature_source: ClassVar[str] = "the backbone output"  # what extract_features returns
    feature_dim: int

    def __init__(self, cfg: Config, info: DataInfo) -> None:
        super().__init__()
        self.cfg = cfg
        self.info = info
        self.ema: EMA | None = None
        self.online_linear: nn.Module | None = None
        self._val_feats: dict[int, list[Tensor]] = {}
        self._val_labels: dict[int, list[Tensor]] = {}
        self._val_logits: list[Tensor] = []
        self._val: dict[str, Tensor] = {}  # the whole bank/val split, gathered from every rank
        self.skipped_steps = 0
        self._step_skipped = False  # this step's loss was non-finite and skipped (no EMA update)
        self.last_online_metrics: dict[str, float] = {}

    # ------------------------------------------------------------------ hooks for subclasses
    def training_loss(self, views: list[Tensor], labels: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def extract_features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def ema_source(self) -> nn.Module | None:
        return None

    def validate_config(self) -> None:
        """Method-specific config checks (raise UserError)."""

    def feature_spec(self, layer: str | None = None, noise: float | None = None,
                     unit: str | None = None, use_ema: bool | None = None) -> FeatureSpec:
        """The features ``extract_features`` returns; methods with one representation (SimCLR,
        DINO) accept no layer or noise."""
        if layer is not None or noise is not None:
            raise UserError(f"method `{self.cfg.method}` has one representation (its backbone "
                            f"output); feature layer and noise apply to diffusion methods only "
                            f"— drop them")
        return FeatureSpec(None, None, None)

    @property
    def class_conditional(self) -> bool:
        """Whether ``generate`` takes class labels (classifier-free guidance applies)."""
        return False

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(student, teacher) module pairs that follow the teacher-momentum schedule."""
        return []

    def momentum_range(self) -> tuple[float, float]:
        """(start, end) momentum of the teachers in ``momentum_pairs``."""
        return (0.996, 1.0)

    def compile_targets(self) -> list[nn.Module]:
        """Networks compiled in place by ``trainer.compile=true`` (state-dict keys unchanged)."""
        return [m for m in (getattr(self, "backbone", None), getattr(self, "net", None)) if m is not None]

    def compile_networks(self) -> None:
        for module in self.compile_targets():
            module.compile()

    # ------------------------------------------------------------------ schedules
    def schedule_steps(self) -> int:
        """Length of the lr and teacher-momentum schedules: ``trainer.schedule_steps`` (pinned
        when a run is extended) or the run's own length."""
        if self.cfg.trainer.schedule_steps is not None:
            return self.cfg.trainer.schedule_steps
        return max(int(self.trainer.estimated_stepping_batches), 1) if self._trainer else 1

    def update_teachers(self) -> float | None:
        """Move every momentum teacher towards its student; returns the momentum used."""
        pairs = self.momentum_pairs()
        if not pairs:
            return None
        m = teacher_momentum(self.global_step, self.schedule_steps(), *self.momentum_range())
        for student, teacher in pairs:
            momentum_update(student, teacher, m)
        return m

    # ------------------------------------------------------------------ construction helpers
    def setup_shared(self) -> None:
        """Call at the end of a subclass __init__, once ``feature_dim`` is known."""
        c = self.cfg
        ema_on = self.default_ema if c.ema.enabled is None else c.ema.enabled
        if ema_on and self.ema_source() is not None:
            self.ema = EMA(self.ema_source(), c.ema.decay, c.ema.warmup)
        if c.eval.online_linear:
            self.online_linear = nn.Sequential(
                nn.BatchNorm1d(self.feature_dim, affine=False),
                nn.Linear(self.feature_dim, self.info.num_classes),
            )

    def arch_name(self) -> str:
        """Architecture identity stored in checkpoints (refuse mismatched loads)."""
        return self.cfg.backbone.name

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[META_KEY] = {
            "version": __version__,
            "method": self.cfg.method,
            "arch": self.arch_name(),
            "config": to_dict(self.cfg),
            "data_info": asdict(self.info),
        }

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"feats": self.extract_features(x)}

    # ------------------------------------------------------------------ training
    def on_train_start(self) -> None:
        # Lightning seeds every rank alike, so a step's noise levels, noise, augment-pipe draws
        # and dropout would repeat on every rank and the global batch would hold world-fold
        # duplicates of them (DiT seeds each rank differently for the same reason). A resumed
        # run then replaces this with each rank's saved stream (AtomicCheckpoint).
        if self.trainer.world_size > 1:
            seed = rank_seed(self.cfg.seed, self.global_rank)
            torch.manual_seed(seed)
            np.random.seed(seed)
            random.seed(seed)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        views, labels = batch[0], batch[1]
        self._step_skipped = False
        self.update_teachers()
        out = self.training_loss(views, labels)
        loss = out["loss"]
        if not torch.isfinite(loss):
            return self._nonfinite(out)
        bs = labels.shape[0]
        for name, value in out.items():
            if name != "feats" and isinstance(value, Tensor) and value.ndim == 0:
                self.log(f"train/{name}", value.detach().float(), prog_bar=name == "loss",
                         batch_size=bs)
        if self.online_linear is not None and "feats" in out:
            logits = self.online_linear(out["feats"].detach())
            lin_loss = F.cross_entropy(logits, labels)
            acc = (logits.argmax(1) == labels).float().mean()
            self.log("train/online_linear_loss", lin_loss, batch_size=bs)
            self.log("train/online_linear_top1", acc, batch_size=bs)
            loss = loss + lin_loss
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=bs)
        return loss

    def _nonfinite(self, out: dict[str, Tensor]) -> None:
        bad = [k for k, v in out.items() if k.startswith("loss") and not torch.isfinite(v).all()]
        terms = ", ".join(f"{k}={out[k].item()}" for k in bad)
        if self.cfg.trainer.on_nonfinite == "skip":
            self.skipped_steps += 1
            self._step_skipped = True
            self.log("train/skipped_steps", float(self.skipped_steps))
            return
        raise NonFiniteLossError(
            f"non-finite loss at step {self.global_step} ({terms}); the last good checkpoint is "
            f"kept — lower optim.lr, set optim.grad_clip, or trainer.on_nonfinite=skip"
        )

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # Here rather than in on_train_batch_end: Lightning runs callbacks (the checkpoint) before
        # the module's on_train_batch_end, so a checkpoint saved there would miss this step's EMA
        # update and a resumed run would drift from an unbroken one.
        if self.ema is not None and not self._step_skipped:
            self.ema.update(self.ema_source())

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        pass

    # ------------------------------------------------------------------ online evaluation
    def on_validation_epoch_start(self) -> None:
        self._val_feats, self._val_labels, self._val_logits = {0: [], 1: []}, {0: [], 1: []}, []

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, labels = batch[0], batch[1]
        feats = self.extract_features(x).float()  # (N, D)
        self._val_feats[dataloader_idx].append(feats)
        self._val_labels[dataloader_idx].append(labels)
        if dataloader_idx == 1 and self.online_linear is not None:
            self._val_logits.append(self.online_linear(feats))

    def _gather_val(self) -> None:
        """Outputs of every rank in dataset order, without the padding rows of the sharded loaders.

        Under DDP each rank evaluated one contiguous, equally padded shard (``EvalShard``), so
        concatenating in rank order and dropping ``PAD_LABEL`` rows restores the single-process
        bank and val set exactly; on one process this is the plain concatenation.
        """
        self._val = {}
        for idx, split in ((0, "bank"), (1, "val")):
            if not self._val_feats.get(idx):
                continue
            labels = gather_rows(torch.cat(self._val_labels[idx]))  # (N,)
            keep = labels != PAD_LABEL
            self._val[f"{split}_labels"] = labels[keep]
            feats = gather_rows(torch.cat(self._val_feats[idx]))  # (N, D)
            self._val[f"{split}_feats"] = feats[keep]
            if idx == 1 and self._val_logits:
                self._val["val_logits"] = gather_rows(torch.cat(self._val_logits))[keep]  # (N, C)

    def on_validation_epoch_end(self) -> None:
        if not self._val_feats.get(1):
            return
        self._gather_val()
        # Evaluated once, on rank 0, and broadcast: every rank logs and returns the same numbers
        # (GPU scatter-add votes are not bit-reproducible, so ranks must not each recompute them).
        strategy = self.trainer.strategy
        metrics = self.online_metrics() if strategy.is_global_zero else {}
        metrics = strategy.broadcast(metrics, src=0)
        self.last_online_metrics = metrics
        for name, value in metrics.items():
            self.log(f"val/{name}", value, sync_dist=False, rank_zero_only=False)

    def online_protocol(self) -> dict[str, Any]:
        """How the online numbers were computed (stored beside them in metrics.json)."""
        k, temperature = knn_settings(getattr(self.cfg.eval, "knn", None))
        sizes = {split: len(self._val.get(f"{split}_labels", ())) for split in ("bank", "val")}
        return {"split": "val", "knn_k": k, "knn_temperature": temperature,
                "bank_size": sizes["bank"], "val_size": sizes["val"],
                "linear": "online BN+Linear head"}

    def online_metrics(self) -> dict[str, float]:
        """Online kNN / linear accuracies on the gathered bank and val split (``_gather_val``)."""
        v = self._val
        metrics: dict[str, float] = {}
        if "val_labels" not in v:
            return metrics
        if self.cfg.eval.online_knn and "bank_feats" in v:
            metrics.update(online_knn(v["bank_feats"], v["bank_labels"], v["val_feats"],
                                      v["val_labels"], self.info.num_classes,
                                      getattr(self.cfg.eval, "knn", None)))
        if "val_logits" in v:
            top1, top5 = topk_accuracy(v["val_logits"], v["val_labels"], (1, 5))
            metrics.update({"linear_top1": top1, "linear_top5": top5})
        return metrics

    # ------------------------------------------------------------------ optimisation
    def trainable_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Parameters the optimiser updates: no momentum teacher, EMA copy or online probe."""
        frozen = [t for _, t in self.momentum_pairs()]
        frozen += [m for m in (self.ema, self.online_linear) if m is not None]
        skip = {id(p) for module in frozen for p in module.parameters()}
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad and id(p) not in skip]

    def learnable_parameter_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimiser groups: decayed matrices, undecayed vectors, the online probe on its own."""
        groups = _weight_decay_groups(self.trainable_named_parameters(), self.cfg.optim.weight_decay)
        if self.online_linear is not None:
            groups.append({"params": list(self.online_linear.parameters()), "weight_decay": 0.0,
                           "lr": self.cfg.eval.online_linear_lr or lr})
        for g in groups:
            g.setdefault("lr", lr)
        return groups

    def configure_optimizers(self) -> Any:
        o = self.cfg.optim
        lr = o.lr
        if o.lr_scaling == "linear":
            world = self.trainer.world_size if self._trainer is not None else 1
            lr = o.lr * self.cfg.data.batch_size * world / 256
        groups = self.learnable_parameter_groups(lr)
        if o.name == "adamw":
            opt = torch.optim.AdamW(groups, lr=lr, betas=tuple(o.betas))
        elif o.name == "adam":
            opt = torch.optim.Adam(groups, lr=lr, betas=tuple(o.betas))
        elif o.name == "sgd":
            opt = torch.optim.SGD(groups, lr=lr, momentum=o.momentum)
        else:
            opt = LARS(groups, lr=lr, momentum=o.momentum)
        total = self.schedule_steps()
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: warmup_cosine(step, total, o.warmup_steps, o.min_lr_ratio, o.schedule)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
