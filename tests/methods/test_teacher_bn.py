"""Contrastive self-distillation: the momentum teacher's BatchNorm uses batch statistics (MoCo v3)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssl_diffusion.methods.ema import batchnorm_batch_stats
from tests.methods.test_ddae import fixed_batch, make

HEADS = ("contrastive.weight=1.0", "contrastive.proj_hidden_dim=32",
         "contrastive.proj_output_dim=16", "contrastive.pred_hidden_dim=32",
         "eval.online_linear=false")


def _teacher_bn_outputs(*overrides: str) -> list[tuple[bool, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(training flag, output, batch-stat reference, running-stat reference) of the teacher
    projector's first BatchNorm during one training step."""
    m = make("ddaepp", *HEADS, *overrides)
    bn = next(b for b in m.teacher_projector.modules() if isinstance(b, nn.BatchNorm1d))
    # distinct running statistics (in the student too: the momentum update copies its buffers)
    for b in [*m.projector.modules(), *m.teacher_projector.modules()]:
        if isinstance(b, nn.BatchNorm1d) and b.running_mean is not None:
            b.running_mean.fill_(0.3)
            b.running_var.fill_(2.0)
    seen = []

    def hook(mod: nn.BatchNorm1d, inp: tuple[torch.Tensor], out: torch.Tensor) -> None:
        x = inp[0]
        batch_ref = F.batch_norm(x, None, None, mod.weight, mod.bias, training=True, eps=mod.eps)
        run_ref = F.batch_norm(x, torch.full_like(x[0], 0.3), torch.full_like(x[0], 2.0),
                               mod.weight, mod.bias, training=False, eps=mod.eps)
        seen.append((mod.training, out.detach(), batch_ref.detach(), run_ref.detach()))

    bn.register_forward_hook(hook)
    views, labels = fixed_batch()
    out = m.training_loss(views, labels)
    out["loss"].backward()
    # the teacher stays frozen: no gradients, not trained, eval mode restored after the step
    assert all(p.grad is None for p in m.teacher_projector.parameters())
    assert all(p.grad is None for p in m.teacher_net.parameters())
    assert not m.teacher_projector.training and not bn.training
    names = {n for n, _ in m.trainable_named_parameters()}
    assert not any(n.startswith(("teacher_net.", "teacher_projector.")) for n in names)
    return seen


def test_teacher_batchnorm_uses_batch_statistics_by_default() -> None:
    seen = _teacher_bn_outputs()
    assert len(seen) == 1
    training, out, batch_ref, run_ref = seen[0]
    assert training
    torch.testing.assert_close(out, batch_ref)
    assert not torch.allclose(out, run_ref, atol=1e-3)


def test_teacher_bn_running_knob_keeps_eval_mode() -> None:
    training, out, batch_ref, run_ref = _teacher_bn_outputs("contrastive.teacher_bn=running")[0]
    assert not training
    torch.testing.assert_close(out, run_ref)
    assert not torch.allclose(out, batch_ref, atol=1e-3)


def test_batchnorm_batch_stats_switches_only_batchnorm_and_restores() -> None:
    net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5)).eval()
    with batchnorm_batch_stats(net):
        assert net[1].training and not net[2].training and not net[0].training
    assert not net[1].training
    with pytest.raises(RuntimeError), batchnorm_batch_stats(net):
        raise RuntimeError("restored on error too")
    assert not net[1].training
    with batchnorm_batch_stats(net, enabled=False):
        assert not net[1].training
