"""Why DiT features trail raw pixels on Fashion-MNIST: how much global average pooling loses.

    python benchmarks/fmnist_pooling_diagnostic.py --ckpt runs/fmnist/ddae_dit-s0/last.ckpt \
        --layer block6 --sigma 0.05

The shared protocol (and DDAE/DDAE++'s) pools a DiT layer's tokens by their mean. This script
scores, on the VALIDATION split, the same layer and noise level pooled three ways: the token mean
(the protocol), a 2x2 grid of token means, and all tokens concatenated, next to raw pixels under
the same kNN (DINO weighted, cosine, k=20, T=0.07; gallery: the first 10k train images; queries:
the validation split). It is a diagnostic only: the comparison keeps the mean-pooled protocol for
every method. Prints one markdown table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fmnist_recipe_search import BANK, to_tensor  # the search's gallery size and loader

from ssl_diffusion.app.loading import load_method
from ssl_diffusion.data.datasets import build_splits
from ssl_diffusion.data.transforms import eval_transform
from ssl_diffusion.eval.online import online_knn


def token_features(method, x: torch.Tensor, layer: str, sigma: float, bs: int = 500) -> torch.Tensor:
    """(N, T, D) tokens of ``layer`` at noise level ``sigma``: the method's own feature extractor
    (EMA weights, per-image seeded noise), with the block's unpooled output caught by a hook."""
    net = method.feature_net()
    grabbed: list[torch.Tensor] = []
    block = net.blocks[net.layer_names.index(layer)]
    hook = block.register_forward_hook(lambda _m, _i, out: grabbed.append(out.float()))
    try:
        for i in range(0, len(x), bs):
            method.extract_features_multi(x[i : i + bs], [layer], sigma)
    finally:
        hook.remove()
    return torch.cat(grabbed)  # (N, T, D)


def pooled(tokens: torch.Tensor, how: str) -> torch.Tensor:
    n, t, d = tokens.shape
    if how == "mean":
        return tokens.mean(1)  # (N, D)
    if how == "all":
        return tokens.flatten(1)  # (N, T*D)
    side = round(t**0.5)
    grid = tokens.transpose(1, 2).reshape(n, d, side, side)  # (N, D, s, s)
    return F.adaptive_avg_pool2d(grid, 2).flatten(1)  # (N, 4*D)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="a ddae/ddaepp DiT checkpoint")
    p.add_argument("--layer", default="block6")
    p.add_argument("--sigma", type=float, default=0.05)
    args = p.parse_args()
    method = load_method(Path(args.ckpt)).method
    if getattr(method.net, "blocks", None) is None or args.layer not in method.net.layer_names:
        raise SystemExit(f"error: {args.ckpt} has no DiT layer `{args.layer}`")
    splits = build_splits(method.cfg.data)
    tf = eval_transform(splits.info, "symmetric")
    bank_x, bank_y = to_tensor(splits.train, tf, BANK)
    val_x, val_y = to_tensor(splits.val, tf)
    raw = online_knn(bank_x.flatten(1), bank_y, val_x.flatten(1), val_y, 10)["knn_top1"]
    rows = [("raw pixels", bank_x[0].numel(), raw)]
    fb = token_features(method, bank_x, args.layer, args.sigma)
    fv = token_features(method, val_x, args.layer, args.sigma)
    for how, label in [("mean", "token mean (the protocol)"), ("grid", "2x2 grid of token means"),
                       ("all", "all tokens concatenated")]:
        bank, queries = pooled(fb, how), pooled(fv, how)
        acc = online_knn(bank, bank_y, queries, val_y, 10)["knn_top1"]
        rows.append((f"{args.layer}@{args.sigma}: {label}", bank.shape[1], acc))
    print(f"checkpoint {args.ckpt}; val kNN top-1 (k=20, T=0.07, {len(bank_y)} gallery, {len(val_y)} queries)")
    print("\n| features | dim | val kNN top-1 (%) |\n|---|---|---|")
    for label, dim, acc in rows:
        print(f"| {label} | {dim} | {acc:.2f} |")

if __name__ == "__main__":
    main()
