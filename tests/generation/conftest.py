"""Shared fixtures: one tiny trained ddaepp run, a SimCLR checkpoint, stand-in Inception weights.

The stand-in is a TorchScript network with the real one's contract ((N, 3, 299, 299) in [-1, 1)
-> (N, 2048)), loaded through the ordinary ``eval.fid.weights`` path, so the whole FID stage runs
in milliseconds; the real network is exercised in tests/eval.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.generation.helpers import TINY


class StandInInception(nn.Module):
    """Fixed random projection of 8x8-pooled pixels to 2048 features (not a metric of quality)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.proj = nn.Parameter(torch.randn(3 * 64, 2048, generator=g) / 8, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(x, 8).flatten(1)  # (N, 192)
        return torch.tanh(pooled @ self.proj)  # (N, 2048)


@pytest.fixture(scope="session")
def stand_in_weights(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("inception") / "stand_in.pt"
    with warnings.catch_warnings():  # torch >= 2.9 marks TorchScript as deprecated
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(StandInInception()), str(path))
    return str(path)


@pytest.fixture(scope="session")
def tiny_run_session(tmp_path_factory) -> Path:
    from ssl_diffusion.config import load_config
    from ssl_diffusion.engine import pretrain

    root = tmp_path_factory.mktemp("runs")
    cfg = load_config(None, [*TINY, f"run.root={root}", "run.name=tiny"])
    return Path(pretrain(cfg)["run_dir"])


@pytest.fixture
def tiny_run(tiny_run_session: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny run (tests write samples and metrics into it)."""
    return Path(shutil.copytree(tiny_run_session, tmp_path / "tiny"))


@pytest.fixture(scope="session")
def simclr_ckpt(tmp_path_factory) -> Path:
    """A SimCLR checkpoint in the engine's format (built directly: no training needed)."""
    from ssl_diffusion.config import load_config
    from ssl_diffusion.data.datasets import DataInfo
    from ssl_diffusion.registry import METHODS

    cfg = load_config(None, ["method=simclr", "backbone.name=vit_tiny", "data.image_size=16",
                             "trainer.max_steps=1", "logger.wandb.enabled=false"])
    info = DataInfo("digits", 10, 1, 16, [0.5], [0.5])
    method = METHODS.get("simclr")(cfg, info)
    ckpt: dict = {"state_dict": method.state_dict(), "global_step": 0}
    method.on_save_checkpoint(ckpt)
    path = tmp_path_factory.mktemp("simclr") / "last.ckpt"
    torch.save(ckpt, path)
    return path
