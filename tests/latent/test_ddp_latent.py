"""The latent path under torch.distributed (CPU, gloo, 2 forked processes x 1 thread):
rank-sharded extraction writes the same bytes as one process, and sharded sampling + decoding +
FID/KID/IS (all-reduced statistics) equal the single-process numbers for the same seeds."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist

from ssl_diffusion.app.latent_extraction import extract_latents
from ssl_diffusion.app.latent_generation import AdmReference, DecodedGenerator, latent_fid
from ssl_diffusion.eval.fid_config import FIDConfig
from ssl_diffusion.models.config import VAEConfig
from ssl_diffusion.models.vae import load_vae
from tests.test_ddp import run_on_ranks

from .helpers import make_image_folder, make_vae_folder
from .test_end_to_end import ROOT, SIZE, _stand_in_net, _train

KW = {"image_size": SIZE, "flip": True, "shard_size": 4, "batch_size": 2}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from PIL import Image

    from ssl_diffusion.data.latents import adm_center_crop

    root = tmp_path_factory.mktemp("ddp_latent")
    make_image_folder(root / "images" / "train", classes=2, per_class=10)
    make_image_folder(root / "images" / "val", classes=2, per_class=3, seed=1)
    make_vae_folder(root / "vae")
    vae = load_vae(VAEConfig(path=str(root / "vae")))
    for split in ("train", "val"):
        extract_latents(root / "images" / split, root / "latents" / split, vae, **KW)
    files = sorted((root / "images" / "val").rglob("*.png"))
    np.savez(root / "ref.npz", arr_0=np.stack([np.asarray(adm_center_crop(Image.open(f), SIZE))
                                               for f in files]))
    run_dir = _train(root, "ddaepp")
    return root, run_dir


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def _fid(root: Path, run_dir: Path, cache: str, rank: int = 0, world: int = 1) -> dict:
    from ssl_diffusion.app.generation import class_labels_for, sampler_config
    from ssl_diffusion.app.loading import load_method

    loaded = load_method(run_dir / "last.ckpt")
    gen = DecodedGenerator(loaded.method, load_vae(VAEConfig(path=str(root / "vae"))))
    seeds = list(range(7))
    scfg = sampler_config(loaded.cfg.sampler, cfg=2.0)
    fid_cfg = FIDConfig(cache_dir=cache, batch_size=1, is_splits=1, kid_subset_size=3)
    barrier = dist.barrier if world > 1 else None
    res = latent_fid(gen, AdmReference(root / "ref.npz"), seeds, scfg, net=_stand_in_net(),
                     fid_cfg=fid_cfg, batch_size=1, class_labels=class_labels_for(gen, seeds, None),
                     rank=rank, world=world, barrier=barrier, progress=False)
    return {k: res[k] for k in ("fid", "kid_mean", "is", "n_gen", "n_ref")}


def _on_rank(rank: int, root: Path, run_dir: Path, out: Path) -> dict:
    vae = load_vae(VAEConfig(path=str(root / "vae")))
    extract_latents(root / "images" / "train", out / "train", vae, rank=rank,
                    world=dist.get_world_size(), barrier=dist.barrier, **KW)
    return _fid(root, run_dir, str(out / "fidcache"), rank, dist.get_world_size())


@pytest.mark.slow
def test_sharded_extraction_and_fid_equal_one_process(setup, tmp_path):
    root, run_dir = setup
    results = run_on_ranks(functools.partial(_on_rank, root=root, run_dir=run_dir,
                                             out=tmp_path / "ddp"), tmp_path)
    assert _files(tmp_path / "ddp" / "train") == _files(root / "latents" / "train")
    single = _fid(root, run_dir, str(tmp_path / "single_cache"))
    assert results[0] == results[1]  # every rank reports the all-reduced numbers
    assert results[0]["n_gen"] == 7
    for key in ("fid", "kid_mean", "is"):
        assert results[0][key] == pytest.approx(single[key], rel=1e-6, abs=1e-9), key


def test_decoding_with_the_wrong_vae_is_a_one_line_error(setup, tmp_path):
    from ssl_diffusion.app.loading import load_method
    from ssl_diffusion.errors import UserError

    _, run_dir = setup
    loaded = load_method(run_dir / "last.ckpt")
    other = load_vae(VAEConfig(path=str(make_vae_folder(tmp_path / "vae8", latent_channels=8))))
    with pytest.raises(UserError, match="8, 8, 8.*trained on \\(4, 8, 8\\)") as info:
        DecodedGenerator(loaded.method, other)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_self_distillation_recipe_trains_on_latents(setup):
    """The contrastive self-distillation variant runs on latents (views augmented on the latent
    tensor) and logs its contrastive term."""
    import json

    from ssl_diffusion.app.pretrain import pretrain
    from ssl_diffusion.config import load_config

    root, _ = setup
    recipe = ROOT / "recipes" / "imagenet256" / "ddaepp_csd_dit-b_uncond.yaml"
    cfg = load_config(recipe, [
        f"data.root={root / 'latents'}", "data.batch_size=8", "data.num_workers=0",
        "data.val_fraction=0.2", "model.preset=LightningDiT-tiny", "trainer.max_epochs=null",
        "trainer.max_steps=2", "trainer.devices=1", "trainer.accelerator=cpu",
        "trainer.strategy=auto", "trainer.precision=32-true", "trainer.progress_bar=false",
        "trainer.log_every_n_steps=1", "logger.wandb.enabled=false", "eval.online_linear=false",
        "contrastive.warmup_steps=0", "contrastive.proj_hidden_dim=32",
        "contrastive.proj_output_dim=16", "contrastive.pred_hidden_dim=32",
        f"run.root={root / 'runs'}", "run.name=csd",
    ])
    run_dir = Path(pretrain(cfg)["run_dir"])
    rows = (run_dir / "metrics.csv").read_text()
    assert "loss_contrastive" in rows
    assert json.loads((run_dir / "metrics.json").read_text())["pretrain"]["steps"] == 2
