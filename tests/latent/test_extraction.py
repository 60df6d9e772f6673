"""Latent extraction: ADM crop, VAE loading, shards + statistics, resume after an interruption,
the ``latents`` dataset, and one-line errors for bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_diffusion.app.latent_extraction import extract_latents
from ssl_diffusion.data.latents import LatentManifest, adm_center_crop, shard_name
from ssl_diffusion.errors import UserError
from ssl_diffusion.models.config import VAEConfig
from ssl_diffusion.models.vae import load_vae

from .helpers import make_image_folder, make_vae_folder

SIZE = 16  # pixels after the crop; the tiny VAE is f2 -> latents (4, 8, 8)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent")
    images = make_image_folder(root / "images" / "train")
    make_image_folder(root / "images" / "val", per_class=2, seed=1)
    vae_dir = make_vae_folder(root / "vae")
    return root, images, load_vae(VAEConfig(path=str(vae_dir)))


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def test_adm_center_crop_halves_then_resizes_then_crops():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (130, 200, 3)).astype(np.uint8))  # W=200, H=130
    out = adm_center_crop(img, 32)
    # 200x130 -> box-halve (min 130 >= 64) 100x65 -> again (65 >= 64) 50x32 -> ratio 1 -> crop
    half = img.resize((100, 65), Image.BOX).resize((50, 32), Image.BOX)
    ref = half.resize((50, 32), Image.BICUBIC).crop((9, 0, 41, 32))
    assert out.size == (32, 32)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
    same = Image.fromarray(rng.integers(0, 255, (32, 32, 3)).astype(np.uint8))
    np.testing.assert_array_equal(np.asarray(adm_center_crop(same, 32)), np.asarray(same))


def test_extraction_writes_shards_and_exact_statistics(setup, tmp_path):
    _, images, vae = setup
    res = extract_latents(images, tmp_path / "train", vae, image_size=SIZE, flip=True,
                          shard_size=4, batch_size=2)
    assert (res.num_images, res.num_shards, res.shards_encoded) == (12, 3, 3)
    z = np.concatenate([np.load(tmp_path / "train" / f"{shard_name(k)}.latents.npy")
                        for k in range(3)])
    assert z.shape == (12, 2, 4, 8, 8) and z.dtype == np.float16
    z64 = z.astype(np.float64)
    np.testing.assert_allclose(res.stats.mean, z64.mean(axis=(0, 1, 3, 4)), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(res.stats.std, z64.std(axis=(0, 1, 3, 4)), rtol=1e-7)
    # view 0 is the posterior mean of the ADM-cropped image; view 1 that of its mirror image
    first = min((images / "c0").iterdir())
    px = np.array(adm_center_crop(Image.open(first), SIZE))
    x = torch.from_numpy(px).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        ref = vae.vae.encode(x).latent_dist.mean
        ref_flip = vae.vae.encode(x.flip(-1)).latent_dist.mean
    np.testing.assert_allclose(z[0, 0], ref[0].numpy(), atol=2e-3)
    np.testing.assert_allclose(z[0, 1], ref_flip[0].numpy(), atol=2e-3)
    labels = np.concatenate([np.load(tmp_path / "train" / f"{shard_name(k)}.labels.npy")
                             for k in range(3)])
    assert labels.tolist() == [0] * 6 + [1] * 6


def test_interrupted_extraction_resumes_to_identical_shards(setup, tmp_path):
    _, images, vae = setup
    kw = {"image_size": SIZE, "flip": True, "shard_size": 4, "batch_size": 2}
    extract_latents(images, tmp_path / "full", vae, **kw)

    seen = []

    def killer(n: int) -> None:
        seen.append(n)
        if sum(seen) >= 6:  # shard 0 done, shard 1 half encoded
            raise KeyboardInterrupt

    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        extract_latents(images, out, vae, on_images=killer, **kw)
    assert (out / f"{shard_name(0)}.latents.npy").exists()
    assert not (out / f"{shard_name(1)}.latents.npy").exists()
    assert not (out / "stats.json").exists()
    # a process killed while writing leaves its temporary file behind
    (out / f".{shard_name(1)}.latents.npy.abc123.tmp").write_bytes(b"partial")
    before = (out / f"{shard_name(0)}.latents.npy").stat().st_mtime_ns
    res = extract_latents(images, out, vae, **kw)
    assert res.shards_encoded == 2  # shard 0 kept, shards 1 and 2 encoded
    assert (out / f"{shard_name(0)}.latents.npy").stat().st_mtime_ns == before
    assert _files(out) == _files(tmp_path / "full")  # same bytes, no leftover temporary file
    extract_latents(images, tmp_path / "workers", vae, workers=2, **kw)  # decoded in 2 processes
    assert _files(tmp_path / "workers") == _files(tmp_path / "full")


def test_resume_with_other_settings_is_refused(setup, tmp_path):
    _, images, vae = setup
    extract_latents(images, tmp_path / "a", vae, image_size=SIZE, shard_size=4, batch_size=2)
    with pytest.raises(UserError, match="another extraction.*flip"):
        extract_latents(images, tmp_path / "a", vae, image_size=SIZE, flip=True, shard_size=4,
                        batch_size=2)


def _extract_both(root: Path, images_root: Path, vae, out: Path, flip: bool = True) -> Path:
    for split in ("train", "val"):
        extract_latents(images_root / split, out / split, vae, image_size=SIZE, flip=flip,
                        shard_size=4, batch_size=2)
    return out


def test_latents_dataset_serves_normalised_views(setup, tmp_path):
    from ssl_diffusion.config import load_config
    from ssl_diffusion.data.datasets import build_splits
    from ssl_diffusion.data.transforms import eval_transform, train_transform

    root, _, vae = setup
    out = _extract_both(root, root / "images", vae, tmp_path / "lat")
    cfg = load_config(None, ["data.name=latents", f"data.root={out}", "data.val_fraction=0",
                             "trainer.max_steps=1"])
    splits = build_splits(cfg.data)
    info = splits.info
    assert (info.kind, info.channels, info.image_size, info.num_classes) == ("latent", 4, 8, 2)
    assert len(splits.train) == 12 and len(splits.test) == 4
    allz = torch.stack([splits.train[i][0] for i in range(12)])  # (12, 2, 4, 8, 8)
    assert torch.allclose(allz.mean(dim=(0, 1, 3, 4)), torch.zeros(4), atol=1e-3)
    assert torch.allclose(allz.std(dim=(0, 1, 3, 4), unbiased=False), torch.ones(4), atol=1e-3)
    z, _ = splits.train[0]
    assert torch.equal(eval_transform(info, "symmetric")(z), z[0])
    flips = [train_transform("diffusion", info, cfg.aug, "symmetric")(z)[0] for _ in range(40)]
    assert any(torch.equal(v, z[1]) for v in flips) and any(torch.equal(v, z[0]) for v in flips)


def test_bad_latents_and_vae_inputs_give_one_line_errors(setup, tmp_path):
    from ssl_diffusion.config import load_config
    from ssl_diffusion.data.datasets import build_splits

    root, _, vae = setup
    with pytest.raises(UserError, match="model.vae.path=.*not a folder"):
        load_vae(VAEConfig(path=str(tmp_path / "missing_vae")))
    with pytest.raises(UserError, match="not in the local cache"):
        load_vae(VAEConfig(path="nobody-org/no-such-vae-xyz"))
    out = _extract_both(root, root / "images", vae, tmp_path / "lat")

    def splits():
        cfg = load_config(None, ["data.name=latents", f"data.root={out}", "trainer.max_steps=1"])
        return build_splits(cfg.data)

    # a shard of the wrong shape (e.g. latents of another VAE copied in)
    path = out / "train" / f"{shard_name(1)}.latents.npy"
    good = path.read_bytes()
    np.save(path, np.zeros((4, 2, 3, 8, 8), dtype=np.float16))
    with pytest.raises(UserError, match=r"has shape \(4, 2, 3, 8, 8\), expected \(n, 2, 4, 8, 8\)"):
        s = splits()
        s.train.dataset[5]
    path.write_bytes(good)
    # a val split extracted with other channels
    m = json.loads((out / "val" / "manifest.json").read_text())
    m["latent_shape"] = [8, 8, 8]
    (out / "val" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match="do not match the training split"):
        splits()
    with pytest.raises(UserError, match="holds no extracted latents"):
        LatentManifest.load(tmp_path)
