"""The whole latent path on CPU with tiny stand-ins, for ddae and ddaepp:

synthetic ImageFolder -> latent extraction (tiny random AutoencoderKL) -> training from the
ImageNet-256 recipe at a tiny size -> sampling -> VAE decoding -> FID / IS against an ADM-format
reference batch (stand-in Inception with logits; FID checked against scipy) -> the main_sample_latent
CLI -> linear probe on float16-sharded cached features.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import linalg
from torch import nn

from ssl_diffusion.app.latent_extraction import extract_latents
from ssl_diffusion.app.latent_generation import AdmReference, DecodedGenerator, latent_fid
from ssl_diffusion.data.latents import adm_center_crop
from ssl_diffusion.errors import UserError
from ssl_diffusion.eval.inception import InceptionFeatureNet, WeightSource
from ssl_diffusion.models.config import VAEConfig
from ssl_diffusion.models.vae import load_vae

from ..generation.helpers import save_stand_in
from .helpers import make_image_folder, make_vae_folder

ROOT = Path(__file__).resolve().parents[2]
SIZE = 16


class StandInWithLogits(nn.Module):
    """uint8 (N, 3, H, W) -> (2048 pooled-pixel projection, 1008 logits): shaped like
    torch-fidelity's Inception output, not a metric of quality."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.proj = nn.Parameter(torch.randn(3 * 16, 2048, generator=g) / 4, requires_grad=False)
        self.head = nn.Parameter(torch.randn(2048, 1008, generator=g) / 40, requires_grad=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        pooled = nn.functional.adaptive_avg_pool2d(x.float() / 127.5 - 1, 4).flatten(1)
        return torch.tanh(pooled @ self.proj)  # (N, 2048)

    def forward(self, x: torch.Tensor):
        f = self.features(x)
        return f, f @ self.head  # (N, 2048), (N, 1008)


def _stand_in_net() -> InceptionFeatureNet:
    source = WeightSource("user-state-dict", "stand-in", "0" * 40, False)
    return InceptionFeatureNet(StandInWithLogits(), source, has_logits=True)


def _frechet(a: np.ndarray, b: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 sqrtm(S1 S2)) with scipy's sqrtm. Both covariances live
    in the span Q of the centred rows (n << 2048), so sqrtm runs on Q^T S Q: S1 S2 = Q (Q^T S1 Q)
    (Q^T S2 Q) Q^T has the same non-zero spectrum (a full 2048-d sqrtm takes a minute)."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    q, _ = np.linalg.qr(np.concatenate([a - mu1, b - mu2]).T)  # (2048, n1 + n2)
    covmean = linalg.sqrtm((q.T @ s1 @ q) @ (q.T @ s2 @ q)).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    make_image_folder(root / "images" / "train", classes=2, per_class=12)
    make_image_folder(root / "images" / "val", classes=2, per_class=4, seed=1)
    vae_dir = make_vae_folder(root / "vae")
    vae = load_vae(VAEConfig(path=str(vae_dir)))
    for split in ("train", "val"):
        extract_latents(root / "images" / split, root / "latents" / split, vae, image_size=SIZE,
                        flip=True, shard_size=8, batch_size=4)
    # ADM-format reference batch: the ADM-cropped val images, uint8 NHWC under arr_0
    files = sorted((root / "images" / "val").rglob("*.png"))
    ref = np.stack([np.asarray(adm_center_crop(Image.open(f), SIZE)) for f in files])
    np.savez(root / "ref.npz", arr_0=ref)
    return root, vae


def _train(root: Path, method: str) -> Path:
    from ssl_diffusion.app.pretrain import pretrain
    from ssl_diffusion.config import load_config

    recipe = ROOT / "recipes" / "imagenet256" / f"{method}_dit-b_cond.yaml"
    cfg = load_config(recipe, [
        f"data.root={root / 'latents'}", "data.batch_size=8", "data.num_workers=0",
        "data.val_fraction=0.2", "model.preset=LightningDiT-tiny", "trainer.max_epochs=null",
        "trainer.max_steps=4", "trainer.devices=1", "trainer.accelerator=cpu",
        "trainer.strategy=auto", "trainer.precision=32-true", "trainer.progress_bar=false",
        "trainer.log_every_n_steps=1", "logger.wandb.enabled=false", "eval.online_linear=false",
        "optim.warmup_steps=0", "optim.lr=1e-3", "sampler.steps=3", "eval.features.shard_rows=7",
        f"run.root={root / 'runs'}", f"run.name={method}",
        "eval.linear.optimizer=sgd", "eval.linear.batch_size=8", "eval.linear.epochs=3",
        "eval.linear.warmup_epochs=0",
    ])
    return Path(pretrain(cfg)["run_dir"])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ddae", "ddaepp"])
def test_latent_path_end_to_end(latents, method, tmp_path):
    from ssl_diffusion.app.evaluate import run_linear
    from ssl_diffusion.app.generation import class_labels_for, sampler_config
    from ssl_diffusion.app.loading import load_method

    root, vae = latents
    run_dir = _train(root, method)
    loaded = load_method(run_dir / "last.ckpt")
    assert loaded.info.kind == "latent" and loaded.info.channels == 4
    assert (loaded.method.net.selfcond is not None) == (method == "ddaepp")

    # sample -> decode -> FID / IS against the ADM batch, with a stand-in that has logits
    gen = DecodedGenerator(loaded.method, vae)
    seeds = list(range(12))
    scfg = sampler_config(loaded.cfg.sampler, cfg=2.0)
    labels = class_labels_for(gen, seeds, None)
    images: list[torch.Tensor] = []
    net = _stand_in_net()
    from ssl_diffusion.eval.fid_config import FIDConfig

    fid_cfg = FIDConfig(cache_dir=str(tmp_path / "fidcache"), batch_size=5, is_splits=2)
    result = latent_fid(gen, AdmReference(root / "ref.npz"), seeds, scfg, net=net,
                        fid_cfg=fid_cfg, batch_size=5, class_labels=labels, progress=False,
                        tap=lambda b, s: images.append(b.clone()))
    gen_u8 = torch.cat(images)
    assert gen_u8.shape == (12, 3, SIZE, SIZE) and gen_u8.dtype == torch.uint8
    ref_u8 = torch.from_numpy(np.load(root / "ref.npz")["arr_0"]).permute(0, 3, 1, 2)
    with torch.no_grad():
        fa = net.net.features(gen_u8).double().numpy()
        fb = net.net.features(ref_u8).double().numpy()
    assert result["fid"] == pytest.approx(_frechet(fa, fb), rel=1e-4, abs=1e-6)
    assert result["is"] is not None and result["is"] >= 1.0
    assert (result["cfg"], result["cfg_max_sigma"]) == (2.0, pytest.approx(8.0909))
    assert result["n_gen"] == 12 and result["n_ref"] == 8
    # a seed gives the same image whatever the batch: seeds 3..5 alone
    again = torch.cat(list(__import__("ssl_diffusion.app.generation", fromlist=["x"]).generate_uint8(
        gen, seeds[3:6], scfg, 2, class_labels=labels[3:6], progress=False)))
    assert (again.int() - gen_u8[3:6].int()).abs().max() <= 1

    # the CLI: TorchScript stand-in (no logits -> IS reported as missing), streamed .npz
    import main_sample_latent

    weights = save_stand_in(tmp_path / "standin.pt")
    code = main_sample_latent.main([
        "--ckpt", str(run_dir / "last.ckpt"), "--n", "6", "--ref", str(root / "ref.npz"),
        "--fid-weights", weights, "--npz", "--batch-size", "4", "--device", "cpu", "--quiet",
        "--vae", str(root / "vae"), f"eval.fid.cache_dir={tmp_path / 'fidcache2'}"])
    assert code == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    entry = metrics["fid_latent"]["n6_cfg1.5_int8.0909"]
    assert entry["is"] is None and "logits" in entry["is_note"]
    npz = np.load(run_dir / "samples_n6_cfg1.5_int8.0909.npz")
    assert npz["arr_0"].shape == (6, SIZE, SIZE, 3) and npz["arr_1"].tolist() == [0, 1] * 3

    # linear probe on float16-sharded cached features of the latents
    probe = run_linear(run_dir / "last.ckpt", splits=("val", "test"), progress=False,
                       device="cpu")
    assert 0.0 <= probe["test_top1"] <= 100.0
    shards = sorted((run_dir / "features").glob("train-*.shards/part_*.npy"))
    assert len(shards) == 3 and np.load(shards[0]).dtype == np.float16  # 19 rows / 7 per shard


def test_adm_reference_streams_the_array_and_rejects_bad_files(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (7, 8, 8, 3)).astype(np.uint8)
    np.savez_compressed(tmp_path / "ref.npz", arr_0=arr, mu=np.zeros(3))
    ref = AdmReference(tmp_path / "ref.npz")
    got = torch.cat(list(ref.batches(batch_size=3))).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(got, arr)
    assert (ref.n, ref.resolution) == (7, 8)
    (tmp_path / "not.npz").write_text("hello")
    np.savez(tmp_path / "nokey.npz", images=arr)
    np.savez(tmp_path / "float.npz", arr_0=arr.astype(np.float32))
    np.savez(tmp_path / "grey.npz", arr_0=arr[..., 0])
    for name, match in [("missing.npz", "not found"), ("not.npz", "not an .npz"),
                        ("nokey.npz", "has no arr_0"), ("float.npz", "float32"),
                        ("grey.npz", r"\(7, 8, 8\)")]:
        with pytest.raises(UserError, match=match) as info:
            AdmReference(tmp_path / name)
        assert "\n" not in str(info.value)


@pytest.mark.slow
def test_cli_bad_inputs_are_one_line_errors(latents, tmp_path):
    from tests.conftest import run_script

    root, _ = latents
    proc = run_script("main_extract_latents", "--images", str(root / "images" / "train"),
                      "--out", str(tmp_path / "x"), "--vae", str(tmp_path / "no_vae"),
                      cwd=tmp_path, timeout=600)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "model.vae.path" in proc.stderr
    proc = run_script("main_extract_latents", "--images", str(tmp_path / "nothing"),
                      "--out", str(tmp_path / "x"), "--vae", str(root / "vae"), "--device", "cpu",
                      cwd=tmp_path, timeout=600)
    assert proc.returncode == 2 and "image folder not found" in proc.stderr


@pytest.mark.slow
def test_cli_extraction_on_two_processes_writes_the_same_shards(latents, tmp_path):
    """``--devices 2`` launches two processes with Lightning Fabric (gloo on CPU), the engine
    under training; they share the shards and write byte-identical files to the library call's
    single-process extraction."""
    from tests.conftest import run_script

    root, _ = latents
    out = tmp_path / "two"
    proc = run_script("main_extract_latents", "--images", str(root / "images" / "train"),
                      "--out", str(out), "--vae", str(root / "vae"), "--device", "cpu",
                      "--devices", "2", "--image-size", str(SIZE), "--flip", "--shard-size", "8",
                      "--batch-size", "4", "--workers", "0", "--quiet", cwd=tmp_path,
                      timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ref = root / "latents" / "train"
    names = sorted(p.name for p in ref.iterdir() if p.suffix == ".npy")
    assert names and names == sorted(p.name for p in out.iterdir() if p.suffix == ".npy")
    for name in names:
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    assert json.loads((out / "stats.json").read_text()) == json.loads(
        (ref / "stats.json").read_text())
