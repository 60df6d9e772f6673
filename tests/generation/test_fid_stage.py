"""The FID stage: reference data, DDP sharding of the generated statistics, class labels."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ssl_diffusion.app.generation import (
    FIDStage,
    check_guidance,
    class_labels_for,
    fid_metrics,
    generate_uint8,
    reference_batches,
    reference_dataset_id,
    sampler_config,
)
from ssl_diffusion.app.loading import load_method
from ssl_diffusion.config import load_config
from ssl_diffusion.data.datasets import build_splits
from ssl_diffusion.errors import UserError
from ssl_diffusion.eval.fid import ReferenceKey, compute_fid, extract_stats, reference_stats
from ssl_diffusion.eval.inception import load_inception

DIGITS = ["data.name=digits", "data.image_size=16", "trainer.max_steps=1"]


@pytest.fixture(scope="module")
def digits_cfg():
    return load_config(None, DIGITS)


@pytest.fixture(scope="module")
def digits_splits(digits_cfg):
    return build_splits(digits_cfg.data)


def test_reference_batches_are_raw_pixels_in_a_fixed_shuffled_order(digits_cfg, digits_splits):
    full = torch.cat(list(reference_batches(digits_cfg, "train", None, batch_size=500,
                                            splits=digits_splits)))
    n_train = len(digits_splits.train) + len(digits_splits.val)  # the whole official train split
    assert full.dtype == torch.uint8 and full.shape == (n_train, 1, 16, 16)
    head = torch.cat(list(reference_batches(digits_cfg, "train", 10, batch_size=3,
                                            splits=digits_splits)))
    torch.testing.assert_close(head, full[:10])  # ref_n takes a prefix of one fixed shuffle
    order = np.random.default_rng(0).permutation(n_train)
    assert order[:10].tolist() != list(range(10))  # ... which is not the dataset order
    pil, _ = digits_splits.train.dataset[int(order[3])]
    np.testing.assert_array_equal(head[3, 0].numpy(), np.asarray(pil))
    test = torch.cat(list(reference_batches(digits_cfg, "test", None, splits=digits_splits)))
    assert len(test) == len(digits_splits.test)
    with pytest.raises(UserError, match="ref_split='tset'.*test"):
        next(reference_batches(digits_cfg, "tset", 4, splits=digits_splits))


def test_reference_dataset_id_names_what_fixes_the_images(digits_cfg, tmp_path):
    assert reference_dataset_id(digits_cfg.data) == "digits"
    a = load_config(None, [*DIGITS, "data.name=imagefolder", f"data.root={tmp_path / 'a'}"])
    b = load_config(None, [*DIGITS, "data.name=imagefolder", f"data.root={tmp_path / 'b'}"])
    assert reference_dataset_id(a.data) != reference_dataset_id(b.data)
    fake = load_config(None, [*DIGITS, "data.name=fake", "data.fake_channels=1"])
    assert reference_dataset_id(fake.data) == "fake-1c-512"


def test_fid_metrics_equal_compute_fid(stand_in_weights, digits_cfg, digits_splits):
    net = load_inception(stand_in_weights)
    cfg = dataclasses.replace(digits_cfg.eval.fid, kid_subset_size=8, kid_subsets=3, n=12)
    key = ReferenceKey("digits", "train", 16, 20)

    def ref_fn():
        return reference_batches(digits_cfg, "train", 20, batch_size=7, splits=digits_splits)

    gen = [b.flip(-1) for b in reference_batches(digits_cfg, "test", 12, 5, 5, digits_splits)]
    want = compute_fid(iter(gen), key, ref_fn, dataclasses.replace(cfg, cache_dir=None), net=net)
    ref = reference_stats(ref_fn, key, net, cache_dir=None, kid_max_n=cfg.kid_max_n)
    got = fid_metrics(extract_stats(iter(gen), net, kid_max_n=cfg.kid_max_n), ref, key, cfg, net)
    assert got == want and got["fid"] > 0


def test_sharded_statistics_merge_to_the_single_process_ones(tiny_run, stand_in_weights):
    loaded = load_method(tiny_run / "last.ckpt")
    fid_cfg = dataclasses.replace(loaded.cfg.eval.fid, weights=stand_in_weights, kid_max_n=3)
    stage = FIDStage(loaded.cfg, fid_cfg)
    seeds, scfg = list(range(10, 17)), loaded.cfg.sampler
    whole = stage.generated_stats(loaded.method, seeds, scfg, batch_size=4, progress=False)
    shards = [stage.generated_stats(loaded.method, seeds, scfg, batch_size=2, rank=r, world=2,
                                    progress=False) for r in (0, 1)]
    assert [s.features.count for s in shards] == [4, 3]  # seeds 10,12,14,16 and 11,13,15
    merged = shards[0].features.merge(shards[1].features)
    for k, v in whole.features.raw_sums().items():
        torch.testing.assert_close(merged.raw_sums()[k], v, rtol=1e-6, atol=1e-3)
    np.testing.assert_allclose(merged.kept_features, whole.features.kept_features, atol=1e-5)


def test_class_labels_and_guidance(tiny_run):
    loaded = load_method(tiny_run / "last.ckpt")
    m = loaded.method
    assert class_labels_for(m, [0, 1], None) is None
    with pytest.raises(UserError, match="class-conditional"):
        class_labels_for(m, [0, 1], 3)
    with pytest.raises(UserError, match="cfg=1.5.*unconditional"):
        check_guidance(m, sampler_config(loaded.cfg.sampler, cfg=1.5))

    from ssl_diffusion.registry import METHODS

    cfg = load_config(None, [*DIGITS, "method=ddaepp", "model.arch=dit", "model.preset=DiT-tiny",
                             "model.patch_size=4", "ddae.class_conditional=true",
                             "sampler.sampler=euler", "sampler.steps=2"])
    cond = METHODS.get("ddaepp")(cfg, loaded.info).eval()
    assert class_labels_for(cond, [3, 11, 12], "all").tolist() == [3, 1, 2]  # seed mod 10
    assert class_labels_for(cond, [3, 11], None).tolist() == [3, 1]
    assert class_labels_for(cond, [3, 11], 7).tolist() == [7, 7]
    with pytest.raises(UserError, match="out of range; choose 0..9"):
        class_labels_for(cond, [0], 10)
    check_guidance(cond, sampler_config(cfg.sampler, cfg=2.0))


def test_guided_generation_of_a_conditional_model(tiny_run):
    from ssl_diffusion.registry import METHODS

    info = load_method(tiny_run / "last.ckpt").info
    cfg = load_config(None, [*DIGITS, "method=ddaepp", "model.arch=dit", "model.preset=DiT-tiny",
                             "model.patch_size=4", "ddae.class_conditional=true",
                             "sampler.sampler=euler", "sampler.steps=2"])
    cond = METHODS.get("ddaepp")(cfg, info).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # adaLN-Zero starts with a zero output: perturb so labels matter
        for p in cond.net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        cond.ema.module.load_state_dict(cond.net.state_dict())
    labels = torch.tensor([1, 2])
    plain = torch.cat(list(generate_uint8(cond, [0, 1], cfg.sampler, 2, class_labels=labels,
                                          progress=False)))
    guided = torch.cat(list(generate_uint8(cond, [0, 1], sampler_config(cfg.sampler, cfg=2.0), 1,
                                           class_labels=labels, progress=False)))
    assert guided.shape == (2, 1, 16, 16) and not torch.equal(guided, plain)
