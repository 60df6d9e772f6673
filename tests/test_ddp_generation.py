"""Generation and evaluation under DDP (CPU, gloo, 2 processes x 1 thread).

* Sampling with per-sample seeds: rank r of 2 generates seeds r, r + 2, ...; together they are
  byte for byte the images one process generates, and the all-reduced FID / KID equal the
  single-process numbers (forked ranks, fast).
* Feature caching (``eval/features.py``): only rank 0 writes ``features/``; the other rank
  computes the same features without writing and then reads rank 0's files (forked, fast).
* The in-training FID callback under ``trainer.strategy=ddp trainer.devices=2``: the FID it
  records equals a single-process evaluation of the saved checkpoint with the same seeds
  (``main_pretrain.py`` subprocess, slow).

Images are generated one per batch (``eval.fid.batch_size=1``), so every image comes from the
same sequence of kernels in both settings and equality is exact on any machine; batch-size
independence itself is tested in tests/generation.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from tests.conftest import ROOT, run_script
from tests.generation.helpers import TINY, pretrain_tiny, save_stand_in
from tests.test_ddp import DDP, WORLD, run_on_ranks

N_IMAGES = 5  # odd: rank 0 generates 3 images (seeds 0, 2, 4), rank 1 two (1, 3)


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory) -> str:
    return save_stand_in(tmp_path_factory.mktemp("inception") / "stand_in.pt")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    return pretrain_tiny(tmp_path_factory.mktemp("runs")) / "last.ckpt"


def _fid_eval(ckpt: Path, weights: str, cache_dir: str | None, rank: int = 0,
              world: int = 1) -> dict:
    """The FID callback's protocol on ``ckpt``: this rank's images (with seeds) and the result."""
    from ssl_diffusion.app.generation import FIDStage, sampler_config
    from ssl_diffusion.app.loading import load_method

    loaded = load_method(ckpt)
    cfg = loaded.cfg
    f = dataclasses.replace(cfg.eval.fid, n=N_IMAGES, ref_n=6, weights=weights,
                            cache_dir=cache_dir, batch_size=1, kid_subset_size=4)
    scfg = sampler_config(cfg.sampler, sampler=f.sampler, steps=f.steps, cfg=f.cfg)
    seen: dict[int, torch.Tensor] = {}

    def tap(batch: torch.Tensor, seeds: list[int]) -> None:
        seen.update(zip(seeds, batch))

    result = FIDStage(cfg, f).evaluate(
        loaded.method, list(range(f.seed, f.seed + f.n)), scfg, batch_size=f.batch_size,
        use_ema=f.use_ema, rank=rank, world=world, progress=False, tap=tap,
        barrier=dist.barrier if world > 1 else None)
    return {"result": result, "seeds": sorted(seen), "images": [seen[s] for s in sorted(seen)]}


def _fid_on_rank(ckpt: Path, weights: str, cache_dir: str, rank: int) -> dict:
    return _fid_eval(ckpt, weights, cache_dir, rank, WORLD)


def test_sharded_sampling_and_fid_under_gloo_match_one_process(tmp_path, tiny_ckpt, stand_in):
    single = _fid_eval(tiny_ckpt, stand_in, None)
    ranks = run_on_ranks(functools.partial(_fid_on_rank, tiny_ckpt, stand_in,
                                           str(tmp_path / "fid_cache")), tmp_path)
    assert [r["seeds"] for r in ranks] == [[0, 2, 4], [1, 3]]  # seeds r, r + W, ...
    by_seed = {s: img for r in ranks for s, img in zip(r["seeds"], r["images"])}
    for s, img in zip(single["seeds"], single["images"]):
        assert torch.equal(by_seed[s], img), f"seed {s}: DDP image differs from one process"
    assert single["images"][0].float().std() > 5  # real images, not a constant

    want = single["result"]
    assert want["n_gen"] == N_IMAGES and want["world_size"] == 1 and want["fid"] > 0
    assert ranks[0]["result"]["reference"]["from_cache"] is False  # rank 0 computed it
    assert ranks[1]["result"]["reference"]["from_cache"] is True  # rank 1 read rank 0's cache
    for r in ranks:
        got = r["result"]
        assert got["world_size"] == WORLD and got["n_gen"] == N_IMAGES
        assert got["seeds"] == want["seeds"] == "0-4"
        for key in ("fid", "kid_mean", "kid_std"):
            assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key


# --------------------------------------------------------------------------- feature cache


def _cache_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _features_on_rank(ckpt: Path, cache_dir: Path, rank: int) -> dict:
    """Rank 1 extracts first (rank 0 waits), then rank 0, then rank 1 again."""
    from ssl_diffusion.app.loading import load_method
    from ssl_diffusion.eval.features import FeatureExtractor

    ex = FeatureExtractor(load_method(ckpt), cache_dir=cache_dir, progress=False, device="cpu")
    out: dict = {}
    for turn in range(3):
        if turn % 2 != rank:
            fs = ex.extract("val", limit=6)
            out[f"turn{turn}"] = {"files": _cache_files(cache_dir), "cached": fs.from_cache,
                                  "feats": torch.from_numpy(fs.feats)}
        dist.barrier()
    return out


def test_feature_cache_is_written_by_rank_zero_only(tmp_path, tiny_ckpt):
    cache = tmp_path / "features"
    ranks = run_on_ranks(functools.partial(_features_on_rank, tiny_ckpt, cache), tmp_path)
    first, own, again = ranks[1]["turn0"], ranks[0]["turn1"], ranks[1]["turn2"]
    assert not first["cached"] and first["files"] == []  # rank 1 computed, wrote nothing
    assert not own["cached"] and len(own["files"]) == 3  # rank 0 wrote feats, labels, json
    assert all(not name.endswith(".tmp") for name in own["files"])
    assert again["cached"] and again["files"] == own["files"]  # rank 1 reads rank 0's files
    assert torch.equal(first["feats"], own["feats"]) and torch.equal(again["feats"], own["feats"])
    assert first["feats"].shape[0] == 6


# --------------------------------------------------------------------------- in-training FID


@pytest.mark.slow
def test_in_training_fid_under_ddp_equals_one_process(tmp_path, stand_in):
    root = tmp_path / "runs"
    root.mkdir()
    recipe, cache = ROOT / "recipes" / "quickstart_ddaepp.yaml", tmp_path / "fid_cache"
    proc = run_script("main_pretrain", "--config", str(recipe), *TINY, *DDP,
                      "eval.fid.enabled=true", f"eval.fid.n={N_IMAGES}", "eval.fid.ref_n=6",
                      f"eval.fid.weights={stand_in}", f"eval.fid.cache_dir={cache}",
                      "eval.fid.batch_size=1", "eval.fid.kid_subset_size=4",
                      "eval.fid.every_n_epochs=0", "eval.fid.steps=2", f"run.root={root}",
                      "run.name=r", cwd=root, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = root / "r"
    recorded = json.loads((run_dir / "metrics.json").read_text())["fid"]
    assert recorded["world_size"] == WORLD and recorded["n_gen"] == N_IMAGES
    assert recorded["step"] == 2 and recorded["seeds"] == "0-4"

    single = _fid_eval(run_dir / "last.ckpt", stand_in, None)["result"]
    assert (single["steps"], single["sampler"], single["weights"]) == (
        recorded["steps"], recorded["sampler"], recorded["weights"])
    for key in ("fid", "kid_mean", "kid_std"):
        assert recorded[key] == pytest.approx(single[key], rel=1e-9, abs=1e-12), key
    logged = [line.split(",") for line in (run_dir / "metrics.csv").read_text().splitlines()]
    col = logged[0].index("val/fid")
    values = [float(row[col]) for row in logged[1:] if row[col]]
    assert values == [pytest.approx(recorded["fid"], rel=1e-6)]  # logged once, by rank 0
