"""Recipe search for the Fashion-MNIST replication (issue: pick the DDAE recipe whose features
beat raw pixels like-for-like at the smallest budget), selected on the VALIDATION split only.

    python benchmarks/fmnist_recipe_search.py --root runs/fmnist_search --steps 400 \
        --candidates dit_flow dit_edm dit_ddpm

Each candidate is a ``ddae`` (baseline, no self-conditioning) config trained for ``--steps``
steps at batch 128 with the same seed and data order; then the EMA model's pooled features at
every (layer, sigma) of a small grid are scored by DINO weighted kNN (k=20, T=0.07, cosine) with
the first 10k images of the train split as the gallery and the 6k validation images as queries.
Raw pixels get the same protocol. Prints one table and writes ``search.json`` under ``--root``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssl_diffusion.app.loading import load_method
from ssl_diffusion.app.pretrain import pretrain
from ssl_diffusion.config import load_config
from ssl_diffusion.data.datasets import build_splits
from ssl_diffusion.data.transforms import eval_transform
from ssl_diffusion.eval.online import online_knn

DATA = ["data.name=fashion_mnist", f"data.root={Path(__file__).resolve().parents[2] / 'shared/data'}",
        "data.batch_size=128", "data.num_workers=0", "data.val_fraction=0.1"]
DIT = ["model.arch=dit", "model.preset=DiT-cpu", "model.patch_size=4"]
COMMON = ["method=ddae", "optim.name=adamw", "optim.lr=3e-4", "optim.weight_decay=0.0",
          "optim.warmup_steps=50", "optim.schedule=constant", "optim.grad_clip=1.0",
          "ema.decay=0.999", "eval.online_knn=false", "eval.online_linear=false",
          "logger.wandb.enabled=false", "trainer.progress_bar=false", "trainer.accelerator=cpu"]

CANDIDATES: dict[str, list[str]] = {
    "dit_flow": DIT + ["diffusion.objective=flow"],  # the pilot recipe
    "dit_edm": DIT + ["diffusion.objective=edm"],
    "dit_ddpm": DIT + ["diffusion.objective=ddpm"],
    "dit_flow_lowt": DIT + ["diffusion.objective=flow", "diffusion.t_mean=-1.0"],
    "dit_edm_lr1e-3": DIT + ["diffusion.objective=edm", "optim.lr=1e-3"],
    "dit_flow_lr1e-3": DIT + ["diffusion.objective=flow", "optim.lr=1e-3"],
    "dit_small_p2_flow": ["model.arch=dit", "model.preset=DiT-tiny", "model.width=128",
                          "model.depth=6", "model.heads=4", "model.patch_size=2",
                          "diffusion.objective=flow"],
    "dit_small_flow": ["model.arch=dit", "model.preset=DiT-cpu", "model.width=128",
                       "model.depth=6", "model.heads=4", "model.patch_size=4",
                       "diffusion.objective=flow"],
    "unet_edm": ["model.arch=unet", "model.preset=UNet-tiny", "model.width=32",
                 "model.channel_mult=[1,2,2]", "model.depth=1", "model.attn_resolutions=[7]",
                 "diffusion.objective=edm"],
}
SIGMAS = [0.05, 0.15, 0.4]
BANK = 10_000


def to_tensor(dataset, transform, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    n = len(dataset) if n is None else min(n, len(dataset))
    xs, ys = zip(*(dataset[i] for i in range(n)))
    return torch.stack([transform(x) for x in xs]), torch.tensor(ys)


def multi_tap_features(method, x: torch.Tensor, layers: list[str], sigma: float, bs: int = 500):
    """{layer: (N, D)} pooled features of every layer at ``sigma``, in batches of ``bs`` (the
    method's own extractor: EMA weights, per-image seeded noise)."""
    parts = [method.extract_features_multi(x[i : i + bs], layers, sigma) for i in range(0, len(x), bs)]
    return {layer: torch.cat([part[layer] for part in parts]) for layer in layers}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="runs/fmnist_search")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--candidates", nargs="+", default=list(CANDIDATES))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    root = Path(args.root)
    results_path = root / "search.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    cfg0 = load_config(None, [*COMMON, *DATA, *CANDIDATES["dit_flow"], "trainer.max_steps=1"])
    splits = build_splits(cfg0.data)
    tf = eval_transform(splits.info, "symmetric")
    bank_x, bank_y = to_tensor(splits.train, tf, BANK)
    val_x, val_y = to_tensor(splits.val, tf)
    if "raw_pixels" not in results:
        raw = online_knn(bank_x.flatten(1), bank_y, val_x.flatten(1), val_y, 10)
        results["raw_pixels"] = {"val_knn_top1": raw["knn_top1"]}
    print(f"raw pixels: val kNN top-1 {results['raw_pixels']['val_knn_top1']:.2f}")
    for name in args.candidates:
        if name in results:
            print(f"{name}: done before: {results[name]['best']}")
            continue
        overrides = [*COMMON, *DATA, *CANDIDATES[name], f"trainer.max_steps={args.steps}",
                     f"seed={args.seed}", f"run.root={root}", f"run.name={name}"]
        cfg = load_config(None, overrides)
        t0 = time.time()
        summary = pretrain(cfg)
        train_s = time.time() - t0
        loaded = load_method(Path(summary["run_dir"]) / "last.ckpt")
        method = loaded.method
        layers = method.net.layer_names
        grid = {}
        for sigma in SIGMAS:
            fb = multi_tap_features(method, bank_x, layers, sigma)
            fv = multi_tap_features(method, val_x, layers, sigma)
            for layer in layers:
                grid[f"{layer}@{sigma}"] = online_knn(fb[layer], bank_y, fv[layer], val_y, 10)["knn_top1"]
        best = max(grid, key=grid.get)
        results[name] = {"overrides": CANDIDATES[name], "steps": summary["steps"],
                         "images_seen": summary["images_seen"], "params": summary["params"],
                         "train_wall_s": round(train_s, 1), "grid_val_knn_top1": grid,
                         "best": {"cell": best, "val_knn_top1": grid[best]}}
        root.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=2))
        print(f"{name}: best {best} val kNN {grid[best]:.2f} (train {train_s:.0f} s)", flush=True)
    print("\n| candidate | images seen | train s | best cell | val kNN top-1 |\n|---|---|---|---|---|")
    print(f"| raw pixels | - | - | - | {results['raw_pixels']['val_knn_top1']:.2f} |")
    for name in args.candidates:
        r = results[name]
        print(f"| {name} | {r['images_seen']} | {r['train_wall_s']} | {r['best']['cell']} | "
              f"{r['best']['val_knn_top1']:.2f} |")


if __name__ == "__main__":
    main()
