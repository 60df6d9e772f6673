"""load_encoder: the same features as the method, the sweep's default cell, lightly interop."""

from __future__ import annotations

import json

import pytest
import torch

from ssl_diffusion import load_encoder
from ssl_diffusion.errors import UserError


def _batch(lm, split="val", n=4) -> tuple[torch.Tensor, torch.Tensor]:
    from ssl_diffusion.eval.features import FeatureExtractor

    ex = FeatureExtractor(lm, cache_dir=False, progress=False)
    items = [ex.dataset(split)[i] for i in range(n)]
    return torch.stack([ex.transform(img) for img, _ in items]), torch.tensor([y for _, y in items])


def test_encoder_equals_extract_features(trained_ckpt, loaded):
    lm = loaded("ddaepp")
    x, _ = _batch(lm)
    enc = load_encoder(trained_ckpt("ddaepp"), layer="block1", noise=0.2)
    assert not enc.training and enc.feature_dim == lm.method.net.feature_dims["block1"]
    want = lm.method.extract_features(x, "block1", 0.2, True)
    torch.testing.assert_close(enc(x), want, rtol=0, atol=0)
    enc.train()  # stays frozen: the wrapped method never leaves eval mode
    assert not enc.method.training
    assert not any(p.requires_grad for p in enc.parameters())
    raw = load_encoder(trained_ckpt("ddaepp"), layer="block1", noise=0.2, use_ema=False)
    torch.testing.assert_close(raw(x), lm.method.extract_features(x, "block1", 0.2, False))

    s = loaded("simclr")
    xs, _ = _batch(s)
    torch.testing.assert_close(load_encoder(trained_ckpt("simclr"))(xs),
                               s.method.extract_features(xs), rtol=0, atol=0)
    with pytest.raises(UserError, match="without layer/noise"):
        load_encoder(trained_ckpt("simclr"), layer="block1")


def test_encoder_defaults_to_the_sweep_choice(run_copy, loaded):
    ckpt = run_copy("ddaepp")
    cfg_default = load_encoder(ckpt)
    assert cfg_default.layer == loaded("ddaepp").method.feature_layer
    assert cfg_default.sigma == pytest.approx(0.06)  # eval.features.noise default
    metrics = json.loads((ckpt.parent / "metrics.json").read_text())
    metrics["sweep"] = {"chosen": {"layer": "block3", "noise": 0.0, "noise_unit": "logsnr"}}
    (ckpt.parent / "metrics.json").write_text(json.dumps(metrics))
    enc = load_encoder(ckpt)
    assert enc.layer == "block3" and enc.sigma == pytest.approx(1.0)  # logSNR 0 = sigma 1
    assert enc.description["noise_unit"] == "logsnr"
    assert load_encoder(ckpt, layer="block0").layer == "block0"


def test_encoder_as_lightly_knn_classifier_backbone(trained_ckpt, loaded):
    import pytorch_lightning as pl
    import torch.nn.functional as F
    from lightly.utils.benchmarking import KNNClassifier, knn_predict
    from torch.utils.data import DataLoader, TensorDataset

    from ssl_diffusion.eval.config import KNNConfig
    from ssl_diffusion.eval.knn import KNNEvaluator, knn_search, weighted_knn_predict

    lm = loaded("simclr")
    enc = load_encoder(trained_ckpt("simclr"))
    bank_x, bank_y = _batch(lm, "train", 36)
    query_x, query_y = _batch(lm, "test", 16)
    knn = KNNClassifier(enc, num_classes=10, knn_k=5, knn_t=0.07, train_dataloader_idx=0,
                        val_dataloader_idx=1)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    loaders = [DataLoader(TensorDataset(bank_x, bank_y), batch_size=12),
               DataLoader(TensorDataset(query_x, query_y), batch_size=16)]
    results = trainer.validate(knn, dataloaders=loaders, verbose=False)
    lightly_top1 = results[1]["val_knn_top1/dataloader_idx_1"]
    with torch.no_grad():
        bank, queries = enc(bank_x), enc(query_x)
    ours = KNNEvaluator(KNNConfig(k=[5], report_k=5)).evaluate(bank, bank_y, queries, query_y, 10)
    assert 100 * lightly_top1 == pytest.approx(ours["knn_top1"], abs=1e-4)
    # Per-query predictions too: lightly's knn_predict against our weighted vote.
    bank_n, query_n = F.normalize(bank, dim=1), F.normalize(queries, dim=1)
    theirs = knn_predict(query_n, bank_n.T, bank_y, 10, knn_k=5, knn_t=0.07)[:, 0]
    nn = knn_search(bank, queries, 5)
    scores = weighted_knn_predict(nn.similarities, bank_y[nn.indices], 10, 0.07)
    assert torch.equal(scores.argmax(dim=1), theirs)
