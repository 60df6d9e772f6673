"""Feature extraction from checkpoints: cache reuse and invalidation, batch independence,
one-pass multi-layer taps, SimCLR's single representation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssl_diffusion.diffusion.noise import from_sigma, to_sigma
from ssl_diffusion.errors import UserError
from ssl_diffusion.eval.features import FeatureExtractor, checkpoint_sha1
from ssl_diffusion.eval.spec import FeatureSpec


def _count_forwards(monkeypatch, method) -> list[int]:
    calls = [0]
    original = method.extract_features_multi

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(method, "extract_features_multi", counted)
    return calls


def test_cached_features_are_reused_without_forward_passes(loaded, tmp_path, monkeypatch):
    lm = loaded("ddaepp")
    calls = _count_forwards(monkeypatch, lm.method)
    first = FeatureExtractor(lm, cache_dir=tmp_path, batch_size=16, progress=False).extract("val")
    assert not first.from_cache and calls[0] == 1  # 4 val images: one batch
    again = FeatureExtractor(lm, cache_dir=tmp_path, batch_size=16, progress=False).extract("val")
    assert again.from_cache and calls[0] == 1
    np.testing.assert_array_equal(first.feats, again.feats)
    np.testing.assert_array_equal(first.labels, again.labels)
    assert again.feats.dtype == np.float32 and again.labels.dtype == np.int64
    assert first.meta["features"]["layer"] == lm.method.feature_layer
    # Another noise level is another cache entry.
    other = FeatureExtractor(lm, cache_dir=tmp_path, progress=False).extract(
        "val", FeatureSpec(lm.method.feature_layer, 0.5, True))
    assert not other.from_cache and not np.allclose(other.feats, first.feats)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_cache_is_invalidated_when_the_checkpoint_changes(run_copy, tmp_path):
    from ssl_diffusion.app.loading import load_method

    path = run_copy("ddaepp")
    before = FeatureExtractor(load_method(path), progress=False).extract("val")
    assert (path.parent / "features").is_dir()
    sha_before = checkpoint_sha1(path)
    ckpt = torch.load(path, weights_only=True)
    name = next(k for k in ckpt["state_dict"] if k.startswith("ema.") and k.endswith("weight"))
    ckpt["state_dict"][name] += 0.5
    torch.save(ckpt, path)
    assert checkpoint_sha1(path) != sha_before
    after = FeatureExtractor(load_method(path), progress=False).extract("val")
    assert not after.from_cache
    assert not np.allclose(after.feats, before.feats)


def test_features_do_not_depend_on_the_batch_size(loaded):
    lm = loaded("ddaepp")
    one = FeatureExtractor(lm, cache_dir=False, batch_size=1, progress=False).extract("test")
    seven = FeatureExtractor(lm, cache_dir=False, batch_size=7, progress=False).extract("test")
    assert one.feats.shape == (16, lm.method.feature_dim)
    np.testing.assert_allclose(one.feats, seven.feats, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(one.labels, seven.labels)


def test_multi_layer_taps_equal_single_layer_extraction(loaded, tmp_path):
    lm = loaded("ddaepp")
    layers = ["block0", "block3", "block1"]
    ex = FeatureExtractor(lm, cache_dir=tmp_path, progress=False)
    multi = ex.extract_layers("val", layers, sigma=0.2, use_ema=True)
    assert list(multi) == layers
    x = torch.stack([ex.transform(ex.dataset("val")[i][0]) for i in range(4)])
    for name in layers:
        single = lm.method.extract_features(x, name, 0.2, True).numpy()
        np.testing.assert_allclose(multi[name].feats, single, rtol=1e-5, atol=1e-5)


def test_simclr_has_one_representation(loaded, tmp_path):
    lm = loaded("simclr")
    fs = FeatureExtractor(lm, cache_dir=tmp_path, progress=False).extract("val")
    assert fs.feats.shape == (4, lm.method.feature_dim)
    assert fs.meta["features"]["layer"] is None
    assert "does not apply" in fs.meta["features"]["source"]
    with pytest.raises(UserError, match="diffusion methods only"):
        lm.method.feature_spec(layer="block0")


def test_bad_layer_noise_and_split_are_one_line_errors(loaded):
    lm = loaded("ddaepp")
    with pytest.raises(UserError, match="unknown layer `blok1`.*did you mean `block1`"):
        lm.method.feature_spec(layer="blok1")
    with pytest.raises(UserError, match=r"noise 5000 \(sigma\).*outside"):
        lm.method.feature_spec(noise=5000.0)
    ex = FeatureExtractor(lm, cache_dir=False, progress=False)
    with pytest.raises(UserError, match="unknown split `tset`"):
        ex.extract("tset")


def test_noise_units_round_trip():
    assert to_sigma(from_sigma(0.3, "logsnr"), "logsnr") == pytest.approx(0.3, rel=1e-12)
    assert from_sigma(1.0, "logsnr") == 0.0
    with pytest.raises(UserError, match="unknown noise unit"):
        to_sigma(1.0, "snr")
