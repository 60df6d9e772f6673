#!/usr/bin/env python
"""Do the quickstart recipes transfer to a user's own small dataset? (issue 12, item 8)

Exports a class-balanced Fashion-MNIST subset as an ImageFolder (tests/helpers_imagefolder.py),
trains the SimCLR quickstart (recipes/quickstart.yaml) on it and times its training (W), then
trains the DDAE++ quickstart (recipes/quickstart_ddaepp.yaml) on the same folder for a
**time-equal** budget: a short pilot run measures DDAE++'s seconds per step, and the main run
gets ``trainer.max_steps = round(W / s_per_step)`` (``--ddaepp-steps N`` fixes it instead).
Both last.ckpt files are scored with this project's weighted kNN (``app.evaluate.run_knn``;
``test`` = the folder's val/, ``val`` = the held-out part of train/), DDAE++ samples are written
to samples.png, and a table is printed and saved as JSON.

    nice -n 10 python benchmarks/quickstart_transfer.py --out /tmp/qt [--n-train 2000 --n-val 500]
        [--ddaepp key=value ...] [--simclr key=value ...]

In-training online evaluation is switched off for both runs (eval.every_n_epochs is set past
the end), so training wall time is optimisation only; wandb is off.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ssl_diffusion.app import evaluate
from ssl_diffusion.app.generation import (
    GRID_MAX,
    GRID_MIN_WIDTH,
    class_labels_for,
    generate_uint8,
    layered_sampler_config,
)
from ssl_diffusion.app.image_files import save_grid
from ssl_diffusion.app.loading import load_method
from ssl_diffusion.app.pretrain import pretrain
from ssl_diffusion.config import load_config
from tests.helpers_imagefolder import export_fashion_mnist

COMMON = ["data.name=imagefolder", "data.num_workers=0", "logger.wandb.enabled=false",
          "trainer.progress_bar=false", "eval.every_n_epochs=100000"]


def train(recipe: str, folder: Path, runs: Path, name: str, extra: list[str]) -> dict:
    overrides = [*COMMON, f"data.root={folder}", f"run.root={runs}", f"run.name={name}", *extra]
    cfg = load_config(ROOT / recipe, overrides)
    t0 = time.time()
    out = pretrain(cfg, ROOT / recipe)
    out["total_wall_s"] = round(time.time() - t0, 2)
    return out


def knn(run_dir: Path) -> dict:
    res = evaluate.run_knn(run_dir / "last.ckpt", splits=("val", "test"), progress=False,
                           cache=False, write_metrics=False)
    return {"knn_val_top1": res["val_top1"], "knn_test_top1": res["test_top1"]}


def samples(run_dir: Path) -> Path:
    loaded = load_method(run_dir / "last.ckpt")
    seeds = list(range(GRID_MAX))
    scfg = layered_sampler_config(loaded.cfg)
    images = torch.cat(list(generate_uint8(
        loaded.method, seeds, scfg, class_labels=class_labels_for(loaded.method, seeds, None),
        progress=False)))
    return save_grid(images, run_dir / "samples.png", min_width=GRID_MIN_WIDTH)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder for the export, runs and JSON")
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-val", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--pilot-steps", type=int, default=50, help="DDAE++ steps timed to set the budget")
    ap.add_argument("--ddaepp-steps", type=int, default=None, help="fixed DDAE++ steps (no pilot)")
    ap.add_argument("--reuse-simclr", action="store_true",
                    help="reuse a finished runs/simclr (its recorded training time) instead of retraining")
    ap.add_argument("--simclr", nargs="*", default=[], help="extra overrides of the SimCLR run")
    ap.add_argument("--ddaepp", nargs="*", default=[], help="extra overrides of the DDAE++ run")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.out.resolve()
    folder = out / "fashion_mnist_folder"
    if not (folder / "val").is_dir():
        export_fashion_mnist(folder, args.n_train, args.n_val)
    runs = out / "runs"

    done = runs / "simclr" / "metrics.json"
    if args.reuse_simclr and done.is_file():  # a finished SimCLR run of an earlier invocation
        simclr = {**json.loads(done.read_text())["pretrain"], "run_dir": str(runs / "simclr")}
    else:
        simclr = train("recipes/quickstart.yaml", folder, runs, "simclr", args.simclr)
    w = simclr["train_wall_time_s"]
    budget = "fixed"
    steps = args.ddaepp_steps
    pilot = None
    if steps is None:
        budget = "time-equal"
        p = train("recipes/quickstart_ddaepp.yaml", folder, runs, "ddaepp_pilot",
                  [*args.ddaepp, f"trainer.max_steps={args.pilot_steps}"])
        pilot = {"steps": int(p["steps"]), "train_wall_time_s": p["train_wall_time_s"]}
        steps = max(1, round(w / (p["train_wall_time_s"] / max(1, int(p["steps"])))))
    ddaepp = train("recipes/quickstart_ddaepp.yaml", folder, runs, "ddaepp",
                   [*args.ddaepp, f"trainer.max_steps={steps}"])
    rows = {}
    for name, res in (("simclr", simclr), ("ddaepp", ddaepp)):
        run_dir = Path(res["run_dir"])
        rows[name] = {"steps": int(res["steps"]), "train_wall_time_s": res["train_wall_time_s"],
                      **knn(run_dir)}
    grid = samples(Path(ddaepp["run_dir"]))
    gap = rows["simclr"]["knn_test_top1"] - rows["ddaepp"]["knn_test_top1"]
    report = {"folder": str(folder), "n_train_images": args.n_train, "n_val_images": args.n_val,
              "threads": args.threads, "budget": budget, "pilot": pilot,
              "simclr_overrides": args.simclr, "ddaepp_overrides": args.ddaepp, "runs": rows,
              "gap_test_points": round(gap, 2), "within_10_points": bool(gap <= 10.0),
              "samples_png": str(grid)}
    (out / "quickstart_transfer.json").write_text(json.dumps(report, indent=2))
    print(f"\n{'method':8} {'steps':>6} {'train s':>8} {'kNN val':>8} {'kNN test':>9}")
    for name, r in rows.items():
        print(f"{name:8} {r['steps']:6d} {r['train_wall_time_s']:8.1f} {r['knn_val_top1']:8.2f} "
              f"{r['knn_test_top1']:9.2f}")
    print(f"budget: {budget}; SimCLR - DDAE++ (test kNN) = {gap:.2f} points; samples: {grid}")
    print(f"json: {out / 'quickstart_transfer.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
