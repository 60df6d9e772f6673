"""Shared helpers for the diffusion tests: a tiny conv denoiser that follows the Denoiser
contract, an oracle "net" that returns a prescribed prediction, and a call counter."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch
from torch import Tensor, nn

from ssl_diffusion.models.base import Denoiser, DenoiserOutput


class ToyDenoiser(Denoiser):
    """conv -> (+ noise / class / aug embedding) -> conv -> conv, a few thousand parameters."""

    def __init__(
        self, channels: int = 3, width: int = 16, num_classes: int | None = None, aug_dim: int = 9
    ):
        super().__init__()
        self.layer_names = ["conv_in", "conv_mid", "conv_out"]
        self.feature_dims = {"conv_in": width, "conv_mid": width, "conv_out": channels}
        self.num_classes = num_classes
        self.conv_in = nn.Conv2d(channels, width, 3, padding=1)
        self.noise_mlp = nn.Sequential(nn.Linear(1, width), nn.SiLU(), nn.Linear(width, width))
        self.class_emb = nn.Embedding(num_classes + 1, width) if num_classes else None
        self.aug_proj = nn.Linear(aug_dim, width, bias=False)
        self.conv_mid = nn.Conv2d(width, width, 3, padding=1)
        self.conv_out = nn.Conv2d(width, channels, 3, padding=1)

    def forward(
        self, x, noise_labels, class_labels=None, aug_labels=None, taps=(), stop_after=None
    ):
        emb = self.noise_mlp(noise_labels.float()[:, None])  # (N, W)
        if self.class_emb is not None:
            if class_labels is None:
                class_labels = torch.full(
                    (x.shape[0],), self.num_classes, dtype=torch.long, device=x.device
                )
            emb = emb + self.class_emb(class_labels)
        if aug_labels is not None:
            emb = emb + self.aug_proj(aug_labels)
        feats: dict[str, Tensor] = {}
        h = torch.nn.functional.silu(self.conv_in(x) + emb[:, :, None, None])  # (N, W, H, W)
        for name in taps:
            self.check_layer(name)
        if "conv_in" in taps:
            feats["conv_in"] = h.mean((2, 3))
        if stop_after == "conv_in":
            return DenoiserOutput(pred=None, feats=feats)
        h = torch.nn.functional.silu(self.conv_mid(h))
        if "conv_mid" in taps:
            feats["conv_mid"] = h.mean((2, 3))
        pred = self.conv_out(h)
        if "conv_out" in taps:
            feats["conv_out"] = pred.mean((2, 3))
        return DenoiserOutput(pred=pred, feats=feats, selfcond=h.mean((2, 3)))


class FixedPredictionNet(nn.Module):
    """Returns ``fn(x, c_noise)`` as the prediction: an oracle with the denoiser call signature."""

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor]):
        super().__init__()
        self.fn = fn

    def forward(
        self, x, noise_labels, class_labels=None, aug_labels=None, taps=(), stop_after=None
    ):
        return DenoiserOutput(pred=self.fn(x, noise_labels))


class CallCounter(nn.Module):
    """Wraps a net and records the batch size of every forward call."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.num_classes = getattr(net, "num_classes", None)
        self.batch_sizes: list[int] = []

    def forward(
        self,
        x,
        noise_labels,
        class_labels=None,
        aug_labels=None,
        taps: Sequence[str] = (),
        stop_after=None,
    ):
        self.batch_sizes.append(x.shape[0])
        return self.net(
            x,
            noise_labels,
            class_labels=class_labels,
            aug_labels=aug_labels,
            taps=taps,
            stop_after=stop_after,
        )


@pytest.fixture
def toy_net() -> Callable[..., ToyDenoiser]:
    def make(seed: int = 0, **kwargs) -> ToyDenoiser:
        torch.manual_seed(seed)
        return ToyDenoiser(**kwargs).eval()

    return make


@pytest.fixture
def fixed_prediction_net() -> type[FixedPredictionNet]:
    return FixedPredictionNet


@pytest.fixture
def call_counter() -> type[CallCounter]:
    return CallCounter


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny tensors: one intra-op thread is ~10-100x faster than two on a loaded 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
