"""Shared settings and builders of the generation tests (also used by tests/test_ddp_generation.py
and tests/test_bad_inputs.py, outside this folder's conftest)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# a ddaepp DiT-tiny on 16 px digits, 2 steps: a real checkpoint in a few seconds
TINY = [
    "method=ddaepp", "data.name=digits", "data.image_size=16", "data.batch_size=8",
    "data.num_workers=0", "trainer.max_steps=2", "trainer.accelerator=cpu",
    "trainer.progress_bar=false", "model.arch=dit", "model.preset=DiT-tiny", "model.patch_size=4",
    "diffusion.objective=flow", "sampler.sampler=euler", "sampler.steps=2",
    "eval.online_knn=false", "eval.online_linear=false", "logger.wandb.enabled=false",
]


class StandInInception(nn.Module):
    """Fixed random projection of 8x8-pooled pixels to 2048 features (not a metric of quality)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.proj = nn.Parameter(torch.randn(3 * 64, 2048, generator=g) / 8, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(x, 8).flatten(1)  # (N, 192)
        return torch.tanh(pooled @ self.proj)  # (N, 2048)


def save_stand_in(path: Path) -> str:
    """Save ``StandInInception`` as TorchScript at ``path`` (an ``eval.fid.weights`` file)."""
    with warnings.catch_warnings():  # torch >= 2.9 marks TorchScript as deprecated
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(StandInInception()), str(path))
    return str(path)


def pretrain_tiny(root: Path) -> Path:
    """Train the ``TINY`` run under ``root``; returns its run directory."""
    from ssl_diffusion.app.pretrain import pretrain
    from ssl_diffusion.config import load_config

    cfg = load_config(None, [*TINY, f"run.root={root}", "run.name=tiny"])
    return Path(pretrain(cfg)["run_dir"])
