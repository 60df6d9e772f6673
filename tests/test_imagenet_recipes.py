"""The ImageNet-256 latent recipes resolve, name their paper row, and --dry-run prints a cost
estimate computed from the throughput table (checked against a hand computation)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ssl_diffusion.app.cost import IMAGENET_TRAIN, THROUGHPUT, estimate, train_images
from ssl_diffusion.config import dump_config, load_config

from .conftest import run_script

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes" / "imagenet256").glob("*.yaml"))


def test_all_eight_arms_and_the_variant_exist():
    names = {p.stem for p in RECIPES}
    for size in ("b", "l"):
        for cond in ("cond", "uncond"):
            assert {f"ddae_dit-{size}_{cond}", f"ddaepp_dit-{size}_{cond}"} <= names
    assert "ddaepp_csd_dit-b_uncond" in names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_resolves_and_names_its_source(recipe):
    cfg = load_config(recipe)
    text = recipe.read_text()
    assert "README" in text or "spec" in text  # the row it mirrors
    assert "[INF]" in text  # and what is inferred
    assert cfg.data.name == "latents" and cfg.diffusion.objective == "flow"
    assert cfg.sampler.clip_x0 is False and cfg.model.preset in THROUGHPUT
    assert cfg.data.batch_size * cfg.trainer.devices == 1024  # LightningDiT's global batch
    expected_epochs = {"b_uncond": 400, "b_cond": 100, "l_uncond": 200, "l_cond": 100}
    key = recipe.stem.split("dit-")[1]
    assert cfg.trainer.max_epochs == expected_epochs[key]
    assert cfg.ddae.class_conditional == key.endswith("_cond")
    tmp = recipe.parent / f".roundtrip-{recipe.name}"
    tmp.write_text(dump_config(cfg))
    try:
        assert load_config(tmp) == cfg
    finally:
        tmp.unlink()


def test_cost_estimate_matches_a_hand_computation():
    cfg = load_config(ROOT / "recipes" / "imagenet256" / "ddaepp_dit-b_cond.yaml")
    usable = round(IMAGENET_TRAIN * 0.99)
    images = 100 * (usable // 1024) * 1024
    assert train_images(cfg, IMAGENET_TRAIN) == images
    est = estimate(cfg)
    per_s = 312e12 * 0.35 / (3 * 2 * 23.0e9)  # A100 bf16, 35% MFU, 23 GMAC forward
    assert est["gpu_hours"]["A100"] == pytest.approx(images / per_s / 3600)
    csd = estimate(load_config(ROOT / "recipes" / "imagenet256" / "ddaepp_csd_dit-b_uncond.yaml"))
    assert csd["gpu_hours"]["A100"] > estimate(load_config(
        ROOT / "recipes" / "imagenet256" / "ddaepp_dit-b_uncond.yaml"))["gpu_hours"]["A100"]


def test_dry_run_prints_config_and_estimated_cost(tmp_path):
    recipe = ROOT / "recipes" / "imagenet256" / "ddae_dit-l_uncond.yaml"
    proc = run_script("main_pretrain", "--config", str(recipe), "--dry-run", cwd=tmp_path,
                      timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["model"]["preset"] == "LightningDiT-L/2"
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("# cost (ESTIMATED") and "GPU-hours" in last
    assert not list(tmp_path.iterdir())  # nothing written
