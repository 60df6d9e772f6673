"""Shared machinery of every method: EMA, LR schedule, optimiser groups, online kNN, NaN policy."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ssl_diffusion.data.info import DataInfo
from ssl_diffusion.eval.online import online_knn
from ssl_diffusion.methods.base import NonFiniteLossError, warmup_cosine
from ssl_diffusion.methods.ema import EMA
from ssl_diffusion.registry import METHODS

# --------------------------------------------------------------------------- EMA


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def _perturb(net: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g))
        net[1].running_mean.add_(1.0)


def test_ema_update_is_a_lerp_with_the_fixed_decay():
    src = _net()
    ema = EMA(src, decay=0.9, warmup=False)
    before = [p.detach().numpy().copy() for p in ema.module.parameters()]
    _perturb(src, 1)
    ema.update(src)
    for e0, e1, s in zip(before, ema.module.parameters(), src.parameters()):
        np.testing.assert_allclose(
            e1.numpy(), 0.9 * e0 + 0.1 * s.detach().numpy(), rtol=1e-6, atol=1e-7
        )
    assert torch.equal(ema.module[1].running_mean, src[1].running_mean)  # buffers are copied
    assert int(ema.num_updates) == 1
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_ema_warmup_ramps_the_decay():
    src = _net()
    ema = EMA(src, decay=0.2, warmup=True)
    expected = [p.detach().numpy().astype(np.float64) for p in src.parameters()]
    for n in range(4):
        _perturb(src, 10 + n)
        decay = min(0.2, (1 + n) / (10 + n))  # 0.1, 0.1818, 0.2, 0.2
        assert ema.current_decay() == pytest.approx(decay)
        ema.update(src)
        expected = [
            decay * e + (1 - decay) * s.detach().numpy() for e, s in zip(expected, src.parameters())
        ]
    for e, p in zip(expected, ema.module.parameters()):
        np.testing.assert_allclose(p.numpy(), e, rtol=1e-5, atol=1e-6)


def test_ema_copy_stays_in_eval_mode():
    ema = EMA(_net(), decay=0.5)
    ema.train()
    assert not ema.module.training


# --------------------------------------------------------------------------- LR schedule


def _reference_schedule(total: int, warmup: int, min_ratio: float) -> np.ndarray:
    steps = np.arange(total + 3, dtype=np.float64)
    warm = (steps + 1) / max(warmup, 1)
    progress = np.clip((steps - warmup) / (total - warmup), 0.0, 1.0)
    cosine = min_ratio + (1 - min_ratio) * 0.5 * (1 + np.cos(np.pi * progress))
    return np.where(steps < warmup, warm, cosine)


@pytest.mark.parametrize(
    "total,warmup,min_ratio", [(20, 0, 0.0), (20, 5, 0.0), (37, 4, 0.1), (10, 10, 0.0)]
)
def test_warmup_cosine_matches_numpy(total, warmup, min_ratio):
    got = np.array([warmup_cosine(s, total, warmup, min_ratio, "cosine") for s in range(total + 3)])
    if warmup >= total:  # warm-up only: the multiplier then stays at 1
        expected = np.where(np.arange(total + 3) < warmup, (np.arange(total + 3) + 1) / warmup, 1.0)
    else:
        expected = _reference_schedule(total, warmup, min_ratio)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    if 0 < warmup < total:
        assert got[warmup - 1] == 1.0 and got[warmup] == 1.0  # peak reached, then decays
    assert got[-1] == pytest.approx(min_ratio if warmup < total else 1.0)


def test_constant_schedule_after_warmup():
    got = [warmup_cosine(s, 10, 2, 0.0, "constant") for s in range(6)]
    assert got == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]


def test_logged_learning_rate_follows_the_schedule(trained_run):
    run = trained_run("simclr")
    cfg = run["cfg"]
    with open(Path(run["run_dir"]) / "metrics.csv", newline="") as f:
        lrs = {int(r["step"]): float(r["train/lr"]) for r in csv.DictReader(f) if r["train/lr"]}
    total = cfg.trainer.max_steps
    assert sorted(lrs) == list(range(total))
    for step, lr in lrs.items():
        mult = 0.5 * (1 + math.cos(math.pi * step / total))  # no warm-up, min_lr_ratio 0
        assert lr == pytest.approx(cfg.optim.lr * mult, rel=1e-6)


# --------------------------------------------------------------------------- optimiser


def _method(tiny_cfg, name: str, *overrides: str):
    cfg = tiny_cfg(f"method={name}", "trainer.max_steps=1", *overrides)
    info = DataInfo("fake", 10, 3, 16, [0.5] * 3, [0.5] * 3)
    torch.manual_seed(0)
    return METHODS.get(name)(cfg, info)


def test_no_weight_decay_on_biases_and_norms_and_online_head_apart(tiny_cfg):
    method = _method(tiny_cfg, "simclr", "optim.weight_decay=0.3", "eval.online_linear_lr=0.5")
    opt = method.configure_optimizers()["optimizer"]
    decay, no_decay, head = opt.param_groups
    assert decay["weight_decay"] == 0.3 and all(p.ndim > 1 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.ndim <= 1 for p in no_decay["params"])
    assert head["lr"] == 0.5 and {id(p) for p in head["params"]} == {
        id(p) for p in method.online_linear.parameters()
    }
    grouped = {id(p) for g in opt.param_groups for p in g["params"]}
    trainable = {id(p) for p in method.parameters() if p.requires_grad}
    assert grouped == trainable


def test_dino_teacher_is_not_optimised(tiny_cfg):
    method = _method(tiny_cfg, "dino")
    grouped = {
        id(p) for g in method.configure_optimizers()["optimizer"].param_groups for p in g["params"]
    }
    teacher = {
        id(p) for m in (method.teacher_backbone, method.teacher_head) for p in m.parameters()
    }
    assert grouped and not grouped & teacher


# --------------------------------------------------------------------------- non-finite loss


def _nan_step(method):
    method.training_loss = lambda views, labels: {
        "loss": torch.tensor(float("nan")),
        "loss_ntxent": torch.tensor(float("nan")),
    }
    return method.training_step(
        ([torch.zeros(2, 3, 16, 16)] * 2, torch.zeros(2, dtype=torch.long)), 0
    )


def test_nonfinite_loss_stops_with_an_actionable_error(tiny_cfg):
    with pytest.raises(NonFiniteLossError) as exc:
        _nan_step(_method(tiny_cfg, "simclr"))
    message = str(exc.value)
    assert "loss_ntxent=nan" in message and "trainer.on_nonfinite=skip" in message


def test_nonfinite_loss_can_be_skipped(tiny_cfg):
    method = _method(tiny_cfg, "simclr", "trainer.on_nonfinite=skip")
    assert _nan_step(method) is None
    assert method.skipped_steps == 1 and method._step_skipped


# --------------------------------------------------------------------------- online kNN


def _clusters(
    n_per_class: int, classes: int, dim: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(dim)[:classes] * 10  # orthogonal directions
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    return centres[labels] + torch.randn(len(labels), dim, generator=g), labels


def test_online_knn_separates_clusters():
    bank, bank_y = _clusters(30, 4, 8, seed=0)
    query, query_y = _clusters(10, 4, 8, seed=1)
    out = online_knn(bank, bank_y, query, query_y, num_classes=4)
    assert out["knn_top1"] == 100.0 and out["knn_top5"] == 100.0


def _brute_force_knn_top1(bank, bank_y, query, query_y, classes, k=20, t=0.07) -> float:
    b = bank.numpy() / np.linalg.norm(bank.numpy(), axis=1, keepdims=True)
    q = query.numpy() / np.linalg.norm(query.numpy(), axis=1, keepdims=True)
    correct = 0
    for i in range(len(q)):
        sims = b @ q[i]
        top = np.argsort(-sims)[:k]
        votes = np.zeros(classes)
        for j in top:
            votes[bank_y[j]] += np.exp(sims[j] / t)
        correct += int(np.argmax(votes) == query_y[i])
    return correct / len(q)


def test_online_knn_matches_brute_force_on_noisy_data():
    g = torch.Generator().manual_seed(3)
    bank, bank_y = torch.randn(200, 16, generator=g), torch.randint(0, 5, (200,), generator=g)
    bank += torch.eye(16)[bank_y] * 1.5  # a weak signal: accuracy strictly between 0 and 1
    query, query_y = torch.randn(60, 16, generator=g), torch.randint(0, 5, (60,), generator=g)
    query += torch.eye(16)[query_y] * 1.5
    expected = _brute_force_knn_top1(bank, bank_y, query, query_y, 5)
    assert 0.2 < expected < 1.0
    assert online_knn(bank, bank_y, query, query_y, num_classes=5)["knn_top1"] == pytest.approx(
        100 * expected
    )


def test_each_pretrain_in_one_process_gets_its_own_wandb_run(tiny_cfg, monkeypatch):
    """main_compare / main_layer_search train several runs in one process: each must log to its
    own wandb run (not the first one's), and none may be left open afterwards."""
    import wandb

    from ssl_diffusion.app.pretrain import pretrain

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    ids = []
    for name in ("first", "second"):
        cfg = tiny_cfg("method=simclr", "trainer.max_steps=1", "logger.wandb.enabled=true",
                       "logger.wandb.mode=offline", "eval.online_knn=false", "eval.online_linear=false",
                       f"run.name={name}")
        run_dir = Path(pretrain(cfg)["run_dir"])
        assert wandb.run is None
        run_id = (run_dir / "wandb_id.txt").read_text().strip()
        assert list((run_dir / "wandb").glob(f"offline-run-*-{run_id}")), name
        ids.append(run_id)
    assert ids[0] != ids[1]
