"""solo-learn plugin, end to end with solo-learn's own scripts on a generated PNG folder.

solo's ``main_pretrain.py`` trains ``ddaepp`` (with DDAE++ self-distillation) for two tiny epochs
on CPU with its online kNN; ``main_linear.py`` probes the checkpoint; the converted checkpoint
samples images with ``main_sample.py`` and gives the same features through ``load_encoder`` as
the solo backbone. Skipped when the solo-learn snapshot (``../shared/vendor/solo-learn``, or
``$SSL_DIFFUSION_SHARED/vendor/solo-learn``) or an installed solo-learn is missing.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers_imagefolder import make_png_folder
from tests.integrations.solo_helpers import ROOT, run_solo, solo_snapshot

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(solo_snapshot() is None, reason="solo-learn snapshot (../shared/vendor) absent"),
    pytest.mark.skipif(importlib.util.find_spec("solo") is None,
                       reason="solo-learn not installed (.ci/run installs the snapshot)"),
]

EPOCHS, BATCH, TRAIN_IMAGES = 2, 8, 40  # 5 classes x 8 train images: 5 steps per epoch
WARMUP = 20  # contrastive lambda ramp: its logged value shows the step counter reached the method
TINY = [
    f"max_epochs={EPOCHS}", f"optimizer.batch_size={BATCH}", "augmentations.0.crop_size=16",
    "backbone.kwargs.config.model.preset=DiT-tiny", "++backbone.kwargs.config.model.patch_size=4",
    (f"++backbone.kwargs.config.contrastive={{weight: 0.5, warmup_steps: {WARMUP}, "
     "proj_hidden_dim: 32, proj_output_dim: 16, pred_hidden_dim: 32}"),
    "++backbone.kwargs.config.ema.decay=0.9",
]


def _ckpt(folder: Path) -> Path:
    found = sorted(folder.rglob("*.ckpt"))
    assert len(found) == 1, found
    return found[0]


def _metrics(log_dir: Path) -> list[dict[str, str]]:
    with open(next(log_dir.rglob("metrics.csv"))) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("solo")
    data = make_png_folder(work / "data")
    (work / "pretrain").mkdir()
    run_solo("main_pretrain.py", "ddaepp_custom", work / "pretrain", f"dataset_root={data}", *TINY)
    return {"work": work, "data": data, "ckpt": _ckpt(work / "pretrain" / "trained_models"),
            "logs": work / "pretrain" / "lightning_logs"}


def test_main_pretrain_trains_ddaepp_with_online_knn(pretrained):
    from ssl_diffusion.app.checkpoint import load_checkpoint_file
    from ssl_diffusion.methods.base import META_KEY

    rows = _metrics(pretrained["logs"])
    knn = [float(r["val_knn_acc1"]) for r in rows if r.get("val_knn_acc1")]
    assert len(knn) == EPOCHS and all(0.0 <= a <= 100.0 for a in knn)
    train = [r for r in rows if r.get("train_loss_diffusion_epoch")]
    assert len(train) == EPOCHS
    for r in train:
        assert np.isfinite(float(r["train_loss_diffusion_epoch"]))
        assert np.isfinite(float(r["train_loss_contrastive_epoch"]))
    # lambda = 0.5 * step / WARMUP, averaged over an epoch's steps: only a method that sees
    # solo's step counter ramps it (a method without a trainer would read step 0 throughout)
    steps_per_epoch = TRAIN_IMAGES // BATCH
    for epoch, r in enumerate(train):
        steps = np.arange(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch)
        expected = float(np.mean(0.5 * steps / WARMUP))
        assert float(r["train_contrastive_lambda_epoch"]) == pytest.approx(expected, rel=1e-5)
    ckpt = load_checkpoint_file(pretrained["ckpt"])  # weights_only: safe to load, has our metadata
    assert ckpt["global_step"] == EPOCHS * steps_per_epoch
    assert ckpt[META_KEY]["method"] == "ddaepp"
    assert ckpt[META_KEY]["solo"]["backbone_kwargs"]["input_mean"] == pytest.approx([0.485, 0.456, 0.406])
    # the EMA was updated after every optimiser step
    assert int(ckpt["state_dict"]["backbone.method.ema.num_updates"]) == ckpt["global_step"]
    keys = [k for k in ckpt["state_dict"] if not k.startswith("classifier.")]
    assert keys and all(k.startswith("backbone.method.") for k in keys)


def test_main_linear_probes_with_every_backbone_tensor(pretrained):
    from ssl_diffusion.errors import UserError
    from ssl_diffusion.integrations.solo import backbone_factory

    work = pretrained["work"] / "linear"
    work.mkdir()
    run_solo("main_linear.py", "linear_custom", work, f"dataset_root={pretrained['data']}",
             "max_epochs=1", "optimizer.batch_size=16",
             f"pretrained_feature_extractor='{pretrained['ckpt']}'")
    rows = _metrics(work / "lightning_logs")
    assert any(r.get("val_acc1") for r in rows)
    pre = torch.load(pretrained["ckpt"], map_location="cpu", weights_only=True)["state_dict"]
    lin = torch.load(_ckpt(work / "trained_models"), map_location="cpu", weights_only=True)["state_dict"]
    pre_keys = {k for k in pre if k.startswith("backbone.")}
    assert pre_keys == {k for k in lin if k.startswith("backbone.")}
    # a tensor the probe's load had missed would still hold its random initialisation
    assert all(torch.equal(pre[k], lin[k]) for k in pre_keys)
    # main_linear.py's own load, in process: strip `backbone.`, load non-strictly
    backbone = backbone_factory("ddaepp")(method="ddaepp", checkpoint=str(pretrained["ckpt"]))
    state = {k[len("backbone."):]: v for k, v in pre.items() if k.startswith("backbone.")}
    result = backbone.load_state_dict(state, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    partial = {k: v for k, v in state.items() if not k.startswith("method.net.")}
    with pytest.raises(UserError, match="tensors missing"):
        backbone.load_state_dict(partial, strict=False)


def test_converted_checkpoint_samples_and_matches_solo_features(pretrained, tmp_path):
    from ssl_diffusion.app.encoder import load_encoder
    from ssl_diffusion.integrations.solo import backbone_factory
    from ssl_diffusion.integrations.solo_convert import convert_solo_checkpoint

    out = convert_solo_checkpoint(pretrained["ckpt"], tmp_path / "run" / "last.ckpt",
                                  [f"data.root={pretrained['data']}"])
    assert out.method == "ddaepp" and out.global_step == EPOCHS * (TRAIN_IMAGES // BATCH)
    encoder = load_encoder(out.path)
    backbone = backbone_factory("ddaepp")(checkpoint=str(pretrained["ckpt"]))
    state = torch.load(pretrained["ckpt"], map_location="cpu", weights_only=True)["state_dict"]
    backbone.load_state_dict({k[len("backbone."):]: v for k, v in state.items()
                              if k.startswith("backbone.")})
    backbone.eval()
    paths = sorted((pretrained["data"] / "val").rglob("*.png"))[:6]
    images = [Image.open(p).convert("RGB") for p in paths]
    x01 = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255
                       for im in images])  # (6, 3, 16, 16) in [0, 1]
    mean = torch.tensor(backbone.spec.input_mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.spec.input_std).view(1, 3, 1, 1)
    solo_feats = backbone((x01 - mean) / std)  # as solo's pipeline normalises
    ours = encoder(torch.stack([encoder.transform(im) for im in images]))
    assert solo_feats.shape == ours.shape == (6, encoder.feature_dim)
    torch.testing.assert_close(solo_feats, ours, rtol=1e-4, atol=1e-5)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "main_sample.py"), "--ckpt", str(out.path), "--n", "4",
         "--steps", "2", "--quiet"], check=False, cwd=ROOT, capture_output=True, text=True,
        timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    grid = Image.open(out.path.parent / "samples.png")
    assert min(grid.size) >= 16
    # the project's other checkpoint tools on the converted file: FID (stand-in Inception),
    # kNN and the layer x noise sweep each store their entry in the run's metrics.json
    from tests.generation.helpers import save_stand_in

    weights = save_stand_in(tmp_path / "standin.pt")
    knn = ["eval.knn.k=[3,5]", "eval.knn.report_k=5"]
    for script, args in (
        ("main_sample.py", ["--n", "4", "--steps", "2", "--fid", "--ref-n", "4",
                            f"eval.fid.weights={weights}", f"eval.fid.cache_dir={tmp_path}/fid"]),
        ("main_knn.py", knn),
        ("main_sweep.py", ["--layers", "block0,block1", "--noises", "0.05", *knn]),
    ):
        proc = subprocess.run([sys.executable, str(ROOT / script), "--ckpt", str(out.path),
                               "--quiet", *args], check=False, cwd=ROOT, capture_output=True,
                              text=True, timeout=1200)
        assert proc.returncode == 0, f"{script}: {proc.stderr[-2000:]}"
    metrics = json.loads((out.path.parent / "metrics.json").read_text())
    assert metrics["fid"]["n_gen"] == 4 and metrics["fid"]["fid"] >= 0
    assert 0 <= metrics["knn"]["test_top1"] <= 100
    assert metrics["sweep"]["chosen"]["layer"] in ("block0", "block1")
