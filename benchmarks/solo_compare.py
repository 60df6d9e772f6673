"""solo-learn ddaepp vs solo-learn SimCLR, both measured by this project's kNN and linear probe.

    python benchmarks/solo_compare.py export --data /work/shared/data --out fmnist_png \
        --train-per-class 100 --test-per-class 50
    python benchmarks/solo_compare.py evaluate --data fmnist_png --ddaepp DDAEPP.ckpt \
        --simclr SIMCLR.ckpt --out docs/results/solo/metrics.json

``export`` writes a class-balanced Fashion-MNIST subset as PNG folders (train/<class>/, val/<class>/
from the official test split), the layout of solo-learn's ``custom`` dataset and of this
project's ``imagefolder`` dataset. ``evaluate`` builds this project's splits of that folder
(train minus a held-out val fraction as the kNN bank / probe training set, val, test = val/
folder), extracts frozen features with each checkpoint and runs the same weighted kNN and linear
probe (``eval.runner.knn_on_features`` / ``linear_on_features``) on both:

* ddaepp: the solo checkpoint converted to this project's format, through ``load_encoder``
  (the configured layer and noise level, EMA weights, inputs in [-1, 1]);
* SimCLR: solo-learn's own backbone (``backbone.name`` from its args.json, fc removed) as a plain
  frozen feature extractor, inputs normalised as solo's eval pipeline of custom data does
  (ImageNet mean/std), at the native resolution.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def export(data: Path, out: Path, train_per_class: int, test_per_class: int, seed: int) -> None:
    import torchvision

    for split, train, per in (("train", True, train_per_class), ("val", False, test_per_class)):
        ds = torchvision.datasets.FashionMNIST(str(data), train=train, download=False)
        labels = ds.targets.numpy()
        rng = np.random.default_rng(seed)
        for k, name in enumerate(ds.classes):
            folder = out / split / f"{k}_{name.replace('/', '-').replace(' ', '_')}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in rng.permutation(np.flatnonzero(labels == k))[:per]:
                ds[int(i)][0].save(folder / f"{int(i)}.png")


@torch.no_grad()
def features(model: Callable, transform: Callable, dataset, batch_size: int = 100) -> tuple:
    feats, labels = [], []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        x = torch.stack([transform(img.convert("RGB")) for img, _ in items])  # (B, 3, H, W)
        feats.append(model(x).float().numpy())
        labels.extend(label for _, label in items)
    return np.concatenate(feats), np.asarray(labels, dtype=np.int64)


def simclr_backbone(ckpt: Path) -> nn.Module:
    """solo-learn's backbone of a SimCLR checkpoint, as main_linear.py rebuilds it."""
    from solo.methods.base import BaseMethod

    args = json.loads((ckpt.parent / "args.json").read_text())
    backbone = BaseMethod._BACKBONES[args["backbone"]["name"]]("simclr", **args["backbone"]["kwargs"])
    backbone.fc = nn.Identity()
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return backbone.eval()


def evaluate(data: Path, ddaepp: Path, simclr: Path, out: Path | None, seed: int) -> dict:
    from torchvision import transforms as T

    from ssl_diffusion.app.encoder import load_encoder
    from ssl_diffusion.app.evaluate import knn_on_features, linear_on_features
    from ssl_diffusion.config import load_config
    from ssl_diffusion.data.datasets import build_splits
    from ssl_diffusion.eval.features import FeatureSet
    from ssl_diffusion.integrations.solo_convert import convert_solo_checkpoint

    torch.manual_seed(seed)
    cfg = load_config(None, ["data.name=imagefolder", f"data.root={data}", "trainer.max_steps=1",
                             "eval.linear.epochs=30", "eval.linear.warmup_epochs=3",
                             f"eval.linear.seed={seed}"])
    splits = build_splits(cfg.data)
    with tempfile.TemporaryDirectory() as tmp:
        converted = convert_solo_checkpoint(ddaepp, Path(tmp) / "last.ckpt", [f"data.root={data}"])
        encoder = load_encoder(converted.path)
        arms = {
            "solo ddaepp (converted, load_encoder)": (encoder, encoder.transform),
            "solo simclr (frozen backbone)": (simclr_backbone(simclr), T.Compose(
                [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])),
        }
        results = {}
        for name, (model, transform) in arms.items():
            sets = {s: FeatureSet(*features(model, transform, getattr(splits, s)))
                    for s in ("train", "val", "test")}
            queries = {"val": sets["val"], "test": sets["test"]}
            n = splits.info.num_classes
            knn = knn_on_features(sets["train"], queries, n, cfg.eval.knn)
            lin = linear_on_features(sets["train"], queries, n, cfg.eval.linear, torch.device("cpu"))
            results[name] = {"feature_dim": int(sets["train"].feats.shape[1]),
                             "knn_test_top1": knn["test_top1"], "knn_val_top1": knn["val_top1"],
                             "linear_test_top1": lin["test_top1"], "linear_val_top1": lin["val_top1"]}
    report = {"split": {s: len(getattr(splits, s)) for s in ("train", "val", "test")},
              "knn": {"k": cfg.eval.knn.report_k, "temperature": cfg.eval.knn.temperature},
              "linear": {"epochs": cfg.eval.linear.epochs, "optimizer": cfg.eval.linear.optimizer},
              "results": results}
    print(json.dumps(report, indent=2))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("--data", type=Path, required=True, help="torchvision root holding FashionMNIST/")
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--train-per-class", type=int, default=100)
    e.add_argument("--test-per-class", type=int, default=50)
    e.add_argument("--seed", type=int, default=0)
    v = sub.add_parser("evaluate")
    v.add_argument("--data", type=Path, required=True, help="the exported folder (train/, val/)")
    v.add_argument("--ddaepp", type=Path, required=True, help="solo checkpoint of the ddaepp run")
    v.add_argument("--simclr", type=Path, required=True, help="solo checkpoint of the SimCLR run")
    v.add_argument("--out", type=Path, help="write the report (JSON) here")
    v.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.cmd == "export":
        export(args.data, args.out, args.train_per_class, args.test_per_class, args.seed)
    else:
        evaluate(args.data, args.ddaepp, args.simclr, args.out, args.seed)


if __name__ == "__main__":
    main()
