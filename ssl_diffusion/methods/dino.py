"""DINO (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers",
arXiv 2104.14294), from lightly's blocks.

Extra config keys (section ``dino``): ``hidden_dim``, ``bottleneck_dim``, ``output_dim``,
``norm_last_layer``, ``student_temp``, ``teacher_temp``, ``warmup_teacher_temp``,
``warmup_teacher_temp_epochs``, ``momentum_start``, ``momentum_end``, ``center_momentum``,
``freeze_last_layer_steps``. Augmentation preset: ``dino`` (2 global + ``aug.n_local_views``
local crops sized from the data). Features: the momentum teacher's backbone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ssl_diffusion.config import Config
from ssl_diffusion.data.info import DataInfo
from ssl_diffusion.errors import require
from ssl_diffusion.methods.backbones import build_backbone
from ssl_diffusion.methods.base import SSLMethod
from ssl_diffusion.methods.config import DINOConfig
from ssl_diffusion.methods.ema import clone_frozen
from ssl_diffusion.registry import METHODS


def _lightly(module: str) -> Any:
    # lightly is optional: registering this method must not need it (ddae runs without it)
    return require(f"lightly.{module}", "method dino")


def _head(cfg: DINOConfig, input_dim: int) -> nn.Module:
    head = _lightly("models.modules").DINOProjectionHead
    return head(input_dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.output_dim,
                norm_last_layer=cfg.norm_last_layer)


@METHODS.register("dino")
class DINO(SSLMethod):
    default_aug = "dino"
    feature_source = "the momentum teacher's backbone output"
    normalization = "dataset"

    def __init__(self, cfg: Config, info: DataInfo) -> None:
        super().__init__(cfg, info)
        d = cfg.dino
        self.backbone = build_backbone(cfg.backbone, info)
        self.feature_dim = self.backbone.feature_dim
        self.head = _head(d, self.feature_dim)
        self.teacher_backbone = clone_frozen(self.backbone)
        # lightly's head uses weight norm, which deepcopy cannot clone: build it anew and copy.
        self.teacher_head = _head(d, self.feature_dim)
        self.teacher_head.load_state_dict(self.head.state_dict())
        for p in self.teacher_head.parameters():
            p.requires_grad_(False)
        self.criterion = _lightly("loss").DINOLoss(
            output_dim=d.output_dim,
            warmup_teacher_temp=d.warmup_teacher_temp,
            teacher_temp=d.teacher_temp,
            warmup_teacher_temp_epochs=max(d.warmup_teacher_temp_epochs, 1),
            student_temp=d.student_temp,
            center_momentum=d.center_momentum,
        )
        self.setup_shared()

    def ema_source(self) -> torch.nn.Module:
        return self.backbone

    def momentum_pairs(self) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
        return [(self.backbone, self.teacher_backbone), (self.head, self.teacher_head)]

    def momentum_range(self) -> tuple[float, float]:
        return (self.cfg.dino.momentum_start, self.cfg.dino.momentum_end)

    def _teacher_temp(self) -> float:
        d = self.cfg.dino
        if self.current_epoch < d.warmup_teacher_temp_epochs:
            frac = self.current_epoch / d.warmup_teacher_temp_epochs
            return d.warmup_teacher_temp + frac * (d.teacher_temp - d.warmup_teacher_temp)
        return d.teacher_temp

    def training_loss(self, views: list[Tensor], labels: Tensor) -> dict[str, Tensor]:
        # the teachers were moved towards the students before this step (SSLMethod.update_teachers)
        global_views = views[:2]
        n = global_views[0].shape[0]
        with torch.no_grad():
            t_feats = self.teacher_backbone(torch.cat(global_views))  # (2N, D)
            t_out = self.teacher_head(t_feats).chunk(2)  # 2 x (N, K)
        s_out = list(self.head(self.backbone(torch.cat(global_views))).chunk(2))
        for local in views[2:]:
            s_out.append(self.head(self.backbone(local)))  # (N, K)
        loss = self.criterion(list(t_out), s_out, teacher_temp=self._teacher_temp())
        return {"loss": loss, "loss_dino": loss, "feats": t_feats[:n].detach()}

    def on_after_backward(self) -> None:
        if self.global_step < self.cfg.dino.freeze_last_layer_steps:
            for p in self.head.last_layer.parameters():
                p.grad = None

    @torch.no_grad()
    def extract_features(self, x: Tensor) -> Tensor:
        return self.teacher_backbone(x)  # (N, D); the teacher is always in eval mode
