"""SimCLR and DINO: a few pretraining steps write a complete run directory, the checkpoint
reloads, and the loss goes down when one fixed batch is fitted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_diffusion.app.checkpoint import META_KEY
from ssl_diffusion.app.loading import load_method
from ssl_diffusion.app.pretrain import build_datamodule, build_method, method_class
from ssl_diffusion.data.datasets import build_splits

METHODS = ["simclr", "dino"]


@pytest.mark.parametrize("method", METHODS)
def test_pretraining_writes_the_run_directory(trained_run, method):
    run = trained_run(method)
    run_dir = Path(run["run_dir"])
    assert run_dir.name == method  # no recipe and no run.name: the method's name
    for name in ("config.yaml", "last.ckpt", "metrics.csv", "metrics.json"):
        assert (run_dir / name).is_file(), name
    pretrain = json.loads((run_dir / "metrics.json").read_text())["pretrain"]
    assert pretrain["method"] == method and pretrain["dataset"] == "fake"
    assert pretrain["steps"] == 3 and pretrain["images_seen"] == 3 * 8
    # trainable parameters only: DINO's teacher and the online probe are not counted
    loaded = load_method(run_dir / "last.ckpt").method
    trainable = sum(p.numel() for n, p in loaded.named_parameters()
                    if p.requires_grad and not n.startswith("online_linear"))
    assert pretrain["params"] == trainable < sum(p.numel() for p in loaded.parameters())
    assert set(pretrain["online"]) == {"knn_top1", "knn_top5", "linear_top1", "linear_top5"}
    assert all(0.0 <= v <= 100.0 for v in pretrain["online"].values())  # percent
    assert pretrain["online_protocol"]["split"] == "val"
    assert (
        pretrain["online_protocol"]["bank_size"] == 24
        and pretrain["online_protocol"]["val_size"] == 4
    )


@pytest.mark.parametrize("method", METHODS)
def test_checkpoint_reloads_the_trained_method(trained_run, method):
    run = trained_run(method)
    loaded = load_method(Path(run["run_dir"]) / "last.ckpt")
    assert loaded.cfg == run["cfg"]
    assert (
        loaded.ckpt[META_KEY]["method"] == method and loaded.ckpt[META_KEY]["arch"] == "vit_micro"
    )
    state = loaded.method.state_dict()
    assert all(torch.equal(state[k], v) for k, v in loaded.ckpt["state_dict"].items())
    x = torch.randn(5, 3, 16, 16)
    feats = loaded.method.extract_features(x)
    assert feats.shape == (5, loaded.method.feature_dim)
    assert torch.equal(feats, loaded.method.extract_features(x))  # eval mode: deterministic


# DINO's loss is a cross-entropy to a moving, re-centred teacher and may rise early in training;
# freezing teacher and centre isolates what must improve on a fixed batch: the student.
FIXED_TEACHER = ("dino.momentum_start=1.0", "dino.momentum_end=1.0", "dino.center_momentum=1.0")


@pytest.mark.parametrize("method", METHODS)
def test_loss_decreases_on_a_fixed_batch(tiny_cfg, method):
    cfg = tiny_cfg(f"method={method}", "trainer.max_steps=1", *FIXED_TEACHER)
    splits = build_splits(cfg.data)
    views, labels = next(iter(build_datamodule(cfg, splits, method_class(cfg)).train_dataloader()))
    torch.manual_seed(0)
    model = build_method(cfg, splits.info).train()
    opt = model.configure_optimizers()["optimizer"]
    losses = []
    for _ in range(15):
        out = model.training_loss(views, labels)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert np.isfinite(losses).all()
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < 0.9 * first, f"{method} losses did not go down: {np.round(losses, 3)}"
    assert (
        out["feats"].shape == (labels.shape[0], model.feature_dim)
        and not out["feats"].requires_grad
    )
