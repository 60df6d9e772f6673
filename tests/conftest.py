"""Shared fixtures for the host-layer tests: one intra-op thread, tiny configs, trained runs.

Tiny means: FakeData at 16 px, ``vit_micro``, batch 8, a handful of steps, no wandb, no worker
processes, every run directory under pytest's ``tmp_path``.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))

# Overrides that make any method train in about a second per step on one CPU thread.
TINY = [
    "data.name=fake",
    "data.image_size=16",
    "data.fake_size=40",  # 36 train (4 batches of 8, drop_last), 4 val
    "data.batch_size=8",
    "data.num_workers=0",
    "backbone.name=vit_micro",
    "optim.lr=1e-3",
    "trainer.accelerator=cpu",
    "trainer.progress_bar=false",
    "trainer.log_every_n_steps=1",
    "logger.wandb.enabled=false",
    "eval.bank_size=24",
    "eval.val_size=8",
    "aug.n_local_views=2",
    "simclr.proj_hidden_dim=32",
    "simclr.proj_output_dim=16",
    "dino.hidden_dim=32",
    "dino.bottleneck_dim=16",
    "dino.output_dim=64",
]


@pytest.fixture(scope="session", autouse=True)
def _single_thread():
    """Tiny tensors: one intra-op thread is much faster than two on a loaded 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(root: Path, *overrides: str, recipe: str | Path | None = None) -> Any:
    """A validated tiny config whose run directories live under ``root``."""
    from ssl_diffusion.config import load_config

    return load_config(recipe, [*TINY, f"run.root={root}", *overrides])


@pytest.fixture
def tiny_cfg(tmp_path: Path):
    """``tiny_cfg("method=dino", "trainer.max_steps=3")`` -> config with runs under tmp_path."""

    def make(*overrides: str, recipe: str | Path | None = None) -> Any:
        return tiny_config(tmp_path / "runs", *overrides, recipe=recipe)

    return make


def _load_main_pretrain():
    spec = importlib.util.spec_from_file_location("main_pretrain", ROOT / "main_pretrain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def main_pretrain():
    """The ``main_pretrain`` script as a module (its ``main(argv)`` runs in-process)."""
    return _load_main_pretrain()


@pytest.fixture
def cli(main_pretrain, capsys):
    """Run ``main_pretrain.py`` in-process through ``run_cli``; returns (exit code, stdout, stderr)."""
    from ssl_diffusion.app.cli import run_cli

    def call(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            run_cli(main_pretrain.main, list(argv))
        out, err = capsys.readouterr()
        return exc.value.code, out, err

    return call


_TRAINED: dict[str, dict] = {}


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """``trained_run("simclr")``: a 3-step pretraining run, trained once per session."""
    from ssl_diffusion.app.pretrain import pretrain

    def get(method: str) -> dict:
        if method not in _TRAINED:
            root = tmp_path_factory.mktemp(f"trained_{method}")
            cfg = tiny_config(root, f"method={method}", "trainer.max_steps=3")
            _TRAINED[method] = {"cfg": cfg, **pretrain(cfg, None)}
        return _TRAINED[method]

    return get


def subprocess_env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["WANDB_MODE"] = "disabled"
    env["OMP_NUM_THREADS"] = "1"
    env.pop("SSL_DIFFUSION_DEBUG", None)
    return env


def run_script(name: str, *argv: str, cwd: Path,
               timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the repository's ``<name>.py`` CLI in a subprocess with ``subprocess_env()``."""
    return subprocess.run([sys.executable, str(ROOT / f"{name}.py"), *argv], cwd=cwd,
                          env=subprocess_env(), capture_output=True, text=True, timeout=timeout,
                          check=False)


if str(ROOT) not in sys.path:  # tests import `ssl_diffusion` from the checkout
    sys.path.insert(0, str(ROOT))
