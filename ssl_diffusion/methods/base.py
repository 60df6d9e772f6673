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
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_diffusion.errors import UserError
from ssl_diffusion.methods.ema import EMA


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


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float, schedule: str) -> float:
    """LR multiplier: linear warm-up to 1 over ``warmup`` steps, then cosine (or constant)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class SSLMethod(pl.LightningModule):
    default_aug: str = "simclr"  # augmentation preset when aug.preset is null
    normalization: str = "dataset"  # dataset | symmetric ([-1, 1], diffusion models)
    default_ema: bool = False  # ema.enabled=null resolves to this
    feature_dim: int

    def __init__(self, cfg: Any, info: Any) -> None:
        super().__init__()
        self.cfg = cfg
        self.info = info
        self.ema: EMA | None = None
        self.online_linear: nn.Module | None = None
        self._val_feats: dict[int, list[Tensor]] = {}
        self._val_labels: dict[int, list[Tensor]] = {}
        self._val_logits: list[Tensor] = []
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

    def compile_targets(self) -> list[nn.Module]:
        """Networks compiled in place by ``trainer.compile=true`` (state-dict keys unchanged)."""
        return [m for m in (getattr(self, "backbone", None), getattr(self, "net", None)) if m is not None]

    def compile_networks(self) -> None:
        for module in self.compile_targets():
            module.compile()

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
        from dataclasses import asdict

        from ssl_diffusion import __version__
        from ssl_diffusion.checkpoint import META_KEY
        from ssl_diffusion.config import to_dict

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
    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        views, labels = batch[0], batch[1]
        self._step_skipped = False
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
            return None
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

    def _gathered(self, chunks: list[Tensor]) -> Tensor:
        out = torch.cat(chunks) if chunks else torch.empty(0)
        return out

    def on_validation_epoch_end(self) -> None:
        if not self._val_feats.get(1):
            return
        metrics = self.online_metrics()
        self.last_online_metrics = metrics
        for name, value in metrics.items():
            self.log(f"val/{name}", value, sync_dist=False, rank_zero_only=False)

    def online_protocol(self) -> dict[str, Any]:
        """How the online numbers were computed (stored beside them in metrics.json)."""
        from ssl_diffusion.eval.online import knn_settings

        k, temperature = knn_settings(getattr(self.cfg.eval, "knn", None))
        sizes = {i: sum(len(c) for c in self._val_labels.get(i, [])) for i in (0, 1)}
        return {"split": "val", "knn_k": k, "knn_temperature": temperature,
                "bank_size": sizes[0], "val_size": sizes[1], "linear": "online BN+Linear head"}

    def online_metrics(self) -> dict[str, float]:
        from ssl_diffusion.eval.online import online_knn, topk_accuracy

        val_y = self._gathered(self._val_labels[1])
        metrics: dict[str, float] = {}
        if self.cfg.eval.online_knn and self._val_feats[0]:
            bank, bank_y = self._gathered(self._val_feats[0]), self._gathered(self._val_labels[0])
            metrics.update(online_knn(bank, bank_y, self._gathered(self._val_feats[1]), val_y,
                                      self.info.num_classes, getattr(self.cfg.eval, "knn", None)))
        if self._val_logits:
            logits = self._gathered(self._val_logits)
            top1, top5 = topk_accuracy(logits, val_y, (1, 5))
            metrics.update({"linear_top1": top1, "linear_top5": top5})
        return metrics

    # ------------------------------------------------------------------ optimisation
    def trainable_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        skip = ("online_linear.", "ema.")
        return [(n, p) for n, p in self.named_parameters()
                if p.requires_grad and not n.startswith(skip)]

    def configure_optimizers(self) -> Any:
        o = self.cfg.optim
        lr = o.lr
        if o.lr_scaling == "linear":
            world = self.trainer.world_size if self._trainer is not None else 1
            lr = o.lr * self.cfg.data.batch_size * world / 256
        groups = _weight_decay_groups(self.trainable_named_parameters(), o.weight_decay)
        if self.online_linear is not None:
            groups.append({"params": list(self.online_linear.parameters()), "weight_decay": 0.0,
                           "lr": self.cfg.eval.online_linear_lr or lr})
        for g in groups:
            g.setdefault("lr", lr)
        if o.name == "adamw":
            opt = torch.optim.AdamW(groups, lr=lr, betas=tuple(o.betas))
        elif o.name == "adam":
            opt = torch.optim.Adam(groups, lr=lr, betas=tuple(o.betas))
        elif o.name == "sgd":
            opt = torch.optim.SGD(groups, lr=lr, momentum=o.momentum)
        else:
            from lightly.utils.lars import LARS

            opt = LARS(groups, lr=lr, momentum=o.momentum)
        total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 1
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: warmup_cosine(step, total, o.warmup_steps, o.min_lr_ratio, o.schedule)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
