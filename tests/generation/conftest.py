"""Shared fixtures: one tiny trained ddaepp run, a SimCLR checkpoint, stand-in Inception weights.

The stand-in is a TorchScript network with the real one's contract ((N, 3, 299, 299) in [-1, 1)
-> (N, 2048)), loaded through the ordinary ``eval.fid.weights`` path, so the whole FID stage runs
in milliseconds; the real network is exercised in tests/eval.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.generation.helpers import pretrain_tiny, save_stand_in


@pytest.fixture(scope="session")
def stand_in_weights(tmp_path_factory) -> str:
    return save_stand_in(tmp_path_factory.mktemp("inception") / "stand_in.pt")


@pytest.fixture(scope="session")
def tiny_run_session(tmp_path_factory) -> Path:
    return pretrain_tiny(tmp_path_factory.mktemp("runs"))


@pytest.fixture
def tiny_run(tiny_run_session: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny run (tests write samples and metrics into it)."""
    return Path(shutil.copytree(tiny_run_session, tmp_path / "tiny"))


@pytest.fixture(scope="session")
def simclr_ckpt(tmp_path_factory) -> Path:
    """A SimCLR checkpoint in the engine's format (built directly: no training needed)."""
    from ssl_diffusion.config import load_config
    from ssl_diffusion.data.info import DataInfo
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
