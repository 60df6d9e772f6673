"""SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
Representations", arXiv 2002.05709), from lightly's blocks.

Extra config keys (section ``simclr``): ``proj_hidden_dim``, ``proj_output_dim``,
``temperature``. Augmentation preset: ``simclr`` (2 views); features: backbone output (the EMA
backbone's when ``ema.enabled``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ssl_diffusion.config import Config
from ssl_diffusion.data.info import DataInfo
from ssl_diffusion.errors import require
from ssl_diffusion.methods.backbones import build_backbone
from ssl_diffusion.methods.base import SSLMethod
from ssl_diffusion.registry import METHODS


@METHODS.register("simclr")
class SimCLR(SSLMethod):
    default_aug = "simclr"
    normalization = "dataset"

    def __init__(self, cfg: Config, info: DataInfo) -> None:
        super().__init__(cfg, info)
        s = cfg.simclr
        # lightly is optional: registering this method must not need it (ddae runs without it)
        heads = require("lightly.models.modules", "method simclr")
        losses = require("lightly.loss", "method simclr")
        self.backbone = build_backbone(cfg.backbone, info)
        self.feature_dim = self.backbone.feature_dim
        self.projection = heads.SimCLRProjectionHead(self.feature_dim, s.proj_hidden_dim, s.proj_output_dim)
        # gather_distributed: negatives come from every device (global batch), as in the paper.
        self.criterion = losses.NTXentLoss(temperature=s.temperature, gather_distributed=True)
        self.setup_shared()

    def ema_source(self) -> torch.nn.Module:
        return self.backbone

    def encoder(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.backbone

    def training_loss(self, views: list[Tensor], labels: Tensor) -> dict[str, Tensor]:
        x0, x1 = views[0], views[1]
        h = self.backbone(torch.cat([x0, x1]))  # (2N, D)
        z0, z1 = self.projection(h).chunk(2)  # (N, P) each
        loss = self.criterion(z0, z1)
        feats = h[: x0.shape[0]] if self.ema is None else self.extract_features(x0)
        return {"loss": loss, "loss_ntxent": loss, "feats": feats.detach()}

    @torch.no_grad()
    def extract_features(self, x: Tensor) -> Tensor:
        enc = self.encoder()
        was_training = enc.training
        enc.eval()
        feats = enc(x)  # (N, D)
        enc.train(was_training)
        return feats
