"""ddae / ddaepp: losses go down, features are batch independent, knobs are enforced."""

from __future__ import annotations

import pytest
import torch

from ssl_diffusion.config import load_config
from ssl_diffusion.data.info import DataInfo
from ssl_diffusion.errors import UserError
from ssl_diffusion.registry import METHODS

INFO = DataInfo("fake", 10, 1, 16, [0.5], [0.5])

BASE = [
    "data.name=fake", "data.image_size=16", "trainer.max_steps=10", "model.arch=dit",
    "model.preset=DiT-tiny", "model.patch_size=4", "diffusion.objective=flow",
    "logger.wandb.enabled=false",
]


def make(method: str, *overrides: str):
    cfg = load_config(None, [f"method={method}", *BASE, *overrides])
    torch.manual_seed(0)
    m = METHODS.get(method)(cfg, INFO)
    m.validate_config()
    return m


def fixed_batch(n: int = 8) -> tuple[list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 16, 16, generator=g) * 2 - 1
    x[: n // 2, :, 4:12, 4:12] = 1.0  # two visually distinct groups
    return [x], (torch.arange(n) >= n // 2).long()


def train_losses(m, steps: int, key: str = "loss") -> list[float]:
    views, labels = fixed_batch()
    opt = torch.optim.Adam([p for _, p in m.trainable_named_parameters()], lr=3e-3)
    losses = []
    for _ in range(steps):
        torch.manual_seed(0)  # the same noise levels and draws every step: only learning moves
        out = m.training_loss(views, labels)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out[key].detach()))
    return losses


@pytest.mark.parametrize("method,extra", [
    ("ddae", ()),
    ("ddaepp", ()),
    ("ddaepp", ("contrastive.weight=0.5", "contrastive.proj_hidden_dim=32",
                "contrastive.proj_output_dim=16", "contrastive.pred_hidden_dim=32")),
    ("ddae", ("diffusion.objective=edm", "model.arch=unet", "model.preset=UNet-tiny",
              "model.patch_size=null")),
])
def test_loss_decreases_on_a_fixed_batch(method, extra):
    m = make(method, "eval.online_linear=false", *extra)
    losses = train_losses(m, 15, "loss_diffusion")
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.8 * first, (first, last)


def test_contrastive_terms_are_reported_and_warm_up():
    m = make("ddaepp", "contrastive.weight=1.0", "contrastive.warmup_steps=10",
             "contrastive.proj_hidden_dim=32", "contrastive.proj_output_dim=16",
             "contrastive.pred_hidden_dim=32", "eval.online_linear=false")
    views, labels = fixed_batch()
    out = m.training_loss(views, labels)
    assert {"loss", "loss_diffusion", "loss_contrastive", "contrastive_lambda"} <= set(out)
    assert float(out["contrastive_lambda"]) == 0.0  # step 0 of a 10-step ramp
    assert torch.isclose(out["loss"], out["loss_diffusion"])


def test_contrastive_gradient_reaches_the_source_layer_and_below():
    m = make("ddaepp", "contrastive.weight=1.0", "contrastive.proj_hidden_dim=32",
             "contrastive.proj_output_dim=16", "contrastive.pred_hidden_dim=32",
             "eval.online_linear=false")
    views, labels = fixed_batch()
    out = m.training_loss(views, labels)
    out["loss_contrastive"].backward()
    source = m.contrastive_layer
    idx = int(source.removeprefix("block"))
    # adaLN-Zero gates start at 0, so the gradient enters blocks through their adaLN weights
    assert m.net.blocks[idx].adaLN.weight.grad.abs().sum() > 0
    assert m.net.blocks[0].adaLN.weight.grad.abs().sum() > 0
    later = m.net.blocks[idx + 1].adaLN.weight.grad
    assert later is None or later.abs().sum() == 0  # truncated student pass: later blocks unused


def test_features_are_batch_independent_and_deterministic():
    m = make("ddaepp").eval()
    views, _ = fixed_batch(8)
    x = views[0]
    full = m.extract_features(x)
    alone = torch.cat([m.extract_features(x[i : i + 1]) for i in range(8)])
    assert full.shape == (8, m.feature_dim)
    torch.testing.assert_close(full, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full, m.extract_features(x.flip(0)).flip(0), atol=1e-5, rtol=1e-5)
    other_noise = m.extract_features(x, sigma=0.5)
    assert not torch.allclose(full, other_noise)


def test_generation_is_batch_independent():
    m = make("ddaepp", "sampler.sampler=euler", "sampler.steps=4").eval()
    a = m.generate([0, 1, 2, 3])
    b = torch.cat([m.generate([i]) for i in range(4)])
    assert a.shape == (4, 1, 16, 16)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert a.min() >= -1 and a.max() <= 1


def test_ddae_refuses_self_conditioning_and_contrastive():
    with pytest.raises(UserError, match="ddaepp"):
        make("ddae", "selfcond.enabled=true")
    with pytest.raises(UserError, match="ddaepp"):
        make("ddae", "contrastive.weight=0.1")


def test_feature_noise_outside_the_schedule_is_refused():
    with pytest.raises(UserError, match="eval.features.noise"):
        make("ddae", "eval.features.noise=5000")


def test_selfcond_is_on_for_ddaepp_and_off_for_ddae():
    assert make("ddaepp").net.selfcond is not None
    assert getattr(make("ddae").net, "selfcond", None) is None
