"""Paired seeds: for one seed every arm (ddae, ddaepp, ddaepp + self-distillation, knob ablations)
starts from the same base weights and sees the same noise levels and noise tensors."""

from __future__ import annotations

import pytest
import torch

from tests.methods.test_ddae import fixed_batch, make

CSD = ("contrastive.weight=0.5", "contrastive.proj_hidden_dim=32",
       "contrastive.proj_output_dim=16", "contrastive.pred_hidden_dim=32")
ARCHS = {
    "dit": (),
    "uvit": ("model.arch=uvit", "model.preset=UViT-tiny", "model.patch_size=4"),
    "unet": ("model.arch=unet", "model.preset=UNet-tiny", "model.patch_size=null",
             "diffusion.objective=edm"),
}
ARMS = {
    "ddae": ("ddae", ()),
    "ddaepp": ("ddaepp", ()),
    "ddaepp_vector_gate": ("ddaepp", ("selfcond.time_scale=vector", "selfcond.norm=ln")),
    "ddaepp_csd": ("ddaepp", CSD),
}


def base_state(m) -> dict[str, torch.Tensor]:
    """The base network's weights: every entry the ddae arm also has."""
    return {k: v for k, v in m.net.state_dict().items()
            if not k.startswith("selfcond.") and "aug" not in k}


@pytest.mark.parametrize("arch", ARCHS)
def test_base_weights_equal_across_arms(arch):
    ref = base_state(make("ddae", "eval.online_linear=false", *ARCHS[arch]))
    for name, (method, extra) in ARMS.items():
        if arch == "unet" and name == "ddaepp_csd":
            extra = (*extra, "contrastive.feature=pooled")
        m = make(method, "eval.online_linear=false", *ARCHS[arch], *extra)
        state = base_state(m)
        assert state.keys() == ref.keys(), name
        for k in ref:
            assert torch.equal(state[k], ref[k]), f"{arch}/{name}: {k} differs from ddae"


def first_noisy_inputs(m) -> torch.Tensor:
    """The network input of the diffusion loss on the first training batch."""
    seen: list[torch.Tensor] = []
    handle = m.net.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach()))
    views, labels = fixed_batch()
    torch.manual_seed(123)  # arms may consume the global RNG differently; it must not matter
    m.training_loss(views, labels)
    handle.remove()
    return seen


@pytest.mark.parametrize("arch", ["dit", "uvit"])
def test_first_batch_noisy_inputs_equal_across_arms(arch):
    ref = first_noisy_inputs(make("ddae", "eval.online_linear=false", *ARCHS[arch]))
    assert len(ref) == 1
    n = ref[0].shape[0]
    for name, (method, extra) in ARMS.items():
        seen = first_noisy_inputs(make(method, "eval.online_linear=false", *ARCHS[arch], *extra))
        if name == "ddaepp_csd":
            # the diffusion loss runs on 2N augmented views: its noise levels and noise tensors
            # are the plain arm's for the first N (the images differ by augmentation only)
            continue
        assert torch.equal(seen[0], ref[0]), f"{arch}/{name}: first noisy batch differs"
    assert n == fixed_batch()[0][0].shape[0]


def test_training_noise_shared_by_csd_arm_and_changes_with_step_and_seed():
    plain = make("ddae", "eval.online_linear=false")
    csd = make("ddaepp", "eval.online_linear=false", *CSD)
    x = fixed_batch()[0][0]
    s1, e1 = plain._train_noise(x)
    s2, e2 = csd._train_noise(torch.cat([x, x]), chunks=2)
    assert torch.equal(s2[: len(x)], s1) and torch.equal(e2[: len(x)], e1)
    assert not torch.equal(s2[len(x):], s1)  # the second view gets fresh noise
    other_seed = make("ddae", "eval.online_linear=false", "seed=3")
    s3, e3 = other_seed._train_noise(x)
    assert not torch.equal(s3, s1) and not torch.equal(e3, e1)
