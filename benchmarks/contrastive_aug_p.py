"""Pick ``contrastive.aug_p`` (geometric augmentation probability of the self-distillation views)
on the VALIDATION split: a small, same-seed measurement on sklearn's digits (no download).

    python benchmarks/contrastive_aug_p.py --root runs/aug_p --steps 200 --values 0.12 0.5

Each value trains the DDAE++ quickstart (tiny DiT, flow objective) with contrastive
self-distillation on for ``--steps`` steps, same seed (so the same base weights, data order and
diffusion noise: only the augmentation probability differs). Then, with the EMA weights:

* val kNN top-1: DINO weighted kNN of the validation images' features (auto layer, sigma 0.1)
  against the train split, the representation metric;
* val diffusion loss: the objective's loss on the *un-augmented* validation images (zero aug
  vector) at fixed noise levels and noise, which is what sampling asks for.

Prints one table and writes ``aug_p.json`` under ``--root``.
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
from ssl_diffusion.diffusion.augment import AUG_DIM
from ssl_diffusion.eval.online import online_knn

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "quickstart_ddaepp.yaml"
CONTRASTIVE = ["contrastive.weight=0.5", "contrastive.warmup_steps=50", "contrastive.student_sigma=0.1",
               "contrastive.proj_hidden_dim=256", "contrastive.proj_output_dim=64",
               "contrastive.pred_hidden_dim=256"]
QUIET = ["eval.online_knn=false", "eval.online_linear=false", "logger.wandb.enabled=false",
         "trainer.progress_bar=false"]


def stack(dataset, transform) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack([transform(x) for x in xs]), torch.tensor(ys)


@torch.no_grad()
def val_diffusion_loss(method, x: torch.Tensor, seed: int = 123) -> float:
    """Mean diffusion loss of the EMA net on un-augmented images, fixed sigma and noise draws."""
    g = torch.Generator().manual_seed(seed)
    net = method.feature_net(True).eval()
    sigma = method.objective.sample_train_sigma(len(x), generator=g)  # (N,)
    noise = torch.randn(x.shape, generator=g)  # (N, C, H, W)
    aug = x.new_zeros(len(x), AUG_DIM)  # "no augmentation", as at sampling time
    return float(method.objective.loss(net, x, aug_labels=aug, sigma=sigma, noise=noise)["loss_diffusion"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="runs/aug_p")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--values", type=float, nargs="+", default=[0.12, 0.5])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    root = Path(args.root)
    results = {}
    for aug_p in args.values:
        name = f"aug_p{aug_p:g}"
        cfg = load_config(str(RECIPE), [*CONTRASTIVE, *QUIET, f"contrastive.aug_p={aug_p}",
                                        f"trainer.max_steps={args.steps}", f"seed={args.seed}",
                                        f"run.root={root}", f"run.name={name}"])
        t0 = time.time()
        summary = pretrain(cfg)
        train_s = time.time() - t0
        method = load_method(Path(summary["run_dir"]) / "last.ckpt").method
        splits = build_splits(method.cfg.data)
        tf = eval_transform(splits.info, "symmetric")
        (bank_x, bank_y), (val_x, val_y) = stack(splits.train, tf), stack(splits.val, tf)
        feats = {k: method.extract_features(v) for k, v in (("bank", bank_x), ("val", val_x))}
        knn = online_knn(feats["bank"], bank_y, feats["val"], val_y, splits.info.num_classes)
        results[name] = {"aug_p": aug_p, "steps": summary["steps"], "train_wall_s": round(train_s, 1),
                         "val_knn_top1": knn["knn_top1"], "val_diffusion_loss": val_diffusion_loss(method, val_x),
                         "n_val": len(val_x), "n_bank": len(bank_x)}
        print(name, results[name], flush=True)
    root.mkdir(parents=True, exist_ok=True)
    (root / "aug_p.json").write_text(json.dumps(results, indent=2))
    print("\n| aug_p | steps | train s | val kNN top-1 | val diffusion loss (no aug) |\n|---|---|---|---|---|")
    for r in results.values():
        print(f"| {r['aug_p']:g} | {r['steps']} | {r['train_wall_s']} | {r['val_knn_top1']:.2f} | "
              f"{r['val_diffusion_loss']:.4f} |")


if __name__ == "__main__":
    main()
