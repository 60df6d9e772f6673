#!/usr/bin/env python
"""Do the quickstart recipes transfer to a user's own small dataset? (issue 12, item 8)

Exports a class-balanced Fashion-MNIST subset as an ImageFolder (tests/helpers_imagefolder.py)
and, for each seed, trains on that folder:

1. ``simclr``: the SimCLR quickstart (recipes/quickstart.yaml), unchanged; its training wall
   time is W;
2. ``ddaepp_recipe``: the DDAE++ quickstart (recipes/quickstart_ddaepp.yaml), unchanged (its
   own ``trainer.max_steps``): what a user gets by pointing the recipe at the folder; its
   seconds per step set the next budget;
3. ``ddaepp_equal``: the same recipe for ``round(W / seconds_per_step)`` steps, the SimCLR
   run's wall time (``--ddaepp-steps N`` fixes the count instead).

All runs of one seed share ``seed=S`` and run one after another in one process, on the same
core(s). Every last.ckpt is scored with this project's weighted kNN (``app.evaluate.run_knn``;
``val`` = the held-out part of train/, used for choices; ``test`` = the folder's val/, reported);
the time-equal DDAE++ run writes samples.png (64 EMA samples) and, with ``--kid-n N``, KID / FID
of N samples against ``--kid-ref-n`` of the folder's train images (offline TF-Inception; slow on a CPU).

Each seed's result is written to ``<out>/seed<S>.json`` as soon as it is done (a finished seed
is skipped on a re-run), and the report ``<out>/quickstart_transfer.json`` pools every seed file
present: per seed the gap SimCLR - DDAE++ on test kNN, and across seeds the paired mean
difference with its 95% Student-t interval (``eval.paired.paired_difference``). To use two
cores, run one process per core with different ``--seeds`` and the same ``--out``; the last to
finish (or ``--report-only``) writes the pooled report:

    taskset -c 0 python benchmarks/quickstart_transfer.py --out /tmp/qt --seeds 0 2 &
    taskset -c 1 python benchmarks/quickstart_transfer.py --out /tmp/qt --seeds 1
    python benchmarks/quickstart_transfer.py --out /tmp/qt --report-only

In-training online evaluation is switched off for every run (eval.every_n_epochs is set past
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
from ssl_diffusion.app.generation import run_fid_from_checkpoint, write_sample_grid
from ssl_diffusion.app.loading import load_method
from ssl_diffusion.app.pretrain import pretrain
from ssl_diffusion.config import load_config
from ssl_diffusion.eval.paired import paired_difference
from tests.helpers_imagefolder import export_fashion_mnist

SIMCLR, DDAEPP = "recipes/quickstart.yaml", "recipes/quickstart_ddaepp.yaml"
COMMON = ["data.name=imagefolder", "data.num_workers=0", "logger.wandb.enabled=false",
          "trainer.progress_bar=false", "eval.every_n_epochs=100000"]
ARMS = ("simclr", "ddaepp_recipe", "ddaepp_equal")
THRESHOLD = 10.0  # issue 12 item 8: DDAE++ kNN within 10 points of SimCLR's


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
    return write_sample_grid(loaded.method, loaded.cfg, run_dir / "samples.png", progress=False)


def kid(run_dir: Path, n: int, ref_n: int, cache_dir: Path) -> dict:
    """KID / FID of n EMA samples against ref_n train images (the FID stage's own code)."""
    res = run_fid_from_checkpoint(run_dir / "last.ckpt", n=n, ref_n=ref_n, progress=False,
                                  overrides=[f"eval.fid.cache_dir={cache_dir}"])
    return {"kid": res["kid_mean"], "kid_std": res["kid_std"], "fid": res["fid"], "fid_n": n,
            "fid_ref_n": res["n_ref"]}


def row(res: dict) -> dict:
    return {"run_dir": str(res["run_dir"]), "steps": int(res["steps"]),
            "train_wall_time_s": res["train_wall_time_s"], **knn(Path(res["run_dir"]))}


def run_seed(seed: int, folder: Path, out: Path, args: argparse.Namespace) -> dict:
    runs = out / "runs" / f"seed{seed}"
    common = [f"seed={seed}"]
    simclr = train(SIMCLR, folder, runs, "simclr", [*common, *args.simclr])
    w = simclr["train_wall_time_s"]
    recipe = train(DDAEPP, folder, runs, "ddaepp_recipe", [*common, *args.ddaepp])
    per_step = recipe["train_wall_time_s"] / max(1, int(recipe["steps"]))
    steps = args.ddaepp_steps or max(1, round(w / per_step))
    equal = train(DDAEPP, folder, runs, "ddaepp_equal",
                  [*common, *args.ddaepp, f"trainer.max_steps={steps}"])
    rows = {"simclr": row(simclr), "ddaepp_recipe": row(recipe), "ddaepp_equal": row(equal)}
    equal_dir = Path(equal["run_dir"])
    rows["ddaepp_equal"]["samples_png"] = str(samples(equal_dir))
    if args.kid_n:
        rows["ddaepp_equal"].update(kid(equal_dir, args.kid_n, args.kid_ref_n, out / "fid_cache"))
    return {"seed": seed, "budget": "fixed" if args.ddaepp_steps else "time-equal",
            "ddaepp_seconds_per_step": round(per_step, 4), "runs": rows,
            "gap_test_points": {arm: round(rows["simclr"]["knn_test_top1"]
                                           - rows[arm]["knn_test_top1"], 2) for arm in ARMS[1:]}}


def pooled(out: Path) -> dict:
    """Every seed<S>.json in ``out`` -> per-seed gaps and paired intervals across seeds."""
    seeds = [json.loads(p.read_text()) for p in sorted(out.glob("seed*.json"))]
    if not seeds:
        raise SystemExit(f"no seed*.json in {out}: run some seeds first")
    report: dict = {"seeds": [s["seed"] for s in seeds], "threshold_points": THRESHOLD,
                    "per_seed": seeds, "paired": {}}
    for arm in ARMS[1:]:
        for split in ("val", "test"):
            key = f"knn_{split}_top1"
            diff = paired_difference([s["runs"][arm][key] for s in seeds],
                                     [s["runs"]["simclr"][key] for s in seeds])
            report["paired"][f"{arm}/{split}"] = diff.to_dict()
        gaps = [s["gap_test_points"][arm] for s in seeds]
        report[f"{arm}_every_seed_within"] = bool(max(gaps) <= THRESHOLD)
    return report


def print_report(report: dict) -> None:
    print(f"\n{'seed':>4} {'arm':14} {'steps':>6} {'train s':>8} {'kNN val':>8} {'kNN test':>9}")
    for s in report["per_seed"]:
        for arm in ARMS:
            r = s["runs"][arm]
            print(f"{s['seed']:4d} {arm:14} {r['steps']:6d} {r['train_wall_time_s']:8.1f} "
                  f"{r['knn_val_top1']:8.2f} {r['knn_test_top1']:9.2f}")
    for name, d in report["paired"].items():
        ci = f"[{d['ci_low']:+.2f}, {d['ci_high']:+.2f}]" if d["n"] > 1 else "(one seed: no interval)"
        print(f"SimCLR - {name}: mean {d['mean']:+.2f} points, 95% t-interval {ci}, "
              f"per seed {', '.join(f'{v:+.2f}' for v in d['diffs'])}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder for the export, runs and JSON")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-val", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--ddaepp-steps", type=int, default=None,
                    help="fixed steps of the ddaepp_equal run (default: SimCLR's wall time)")
    ap.add_argument("--kid-n", type=int, default=0, help="KID/FID of this many samples (0 = off)")
    ap.add_argument("--kid-ref-n", type=int, default=1000, help="train images of the KID reference")
    ap.add_argument("--report-only", action="store_true", help="pool the finished seeds only")
    ap.add_argument("--simclr", nargs="*", default=[], help="extra overrides of the SimCLR runs")
    ap.add_argument("--ddaepp", nargs="*", default=[], help="extra overrides of the DDAE++ runs")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.out.resolve()
    if not args.report_only:
        folder = out / "fashion_mnist_folder"
        if not (folder / "val").is_dir():
            export_fashion_mnist(folder, args.n_train, args.n_val)
        for seed in args.seeds:
            done = out / f"seed{seed}.json"
            if done.is_file():
                print(f"seed {seed}: done ({done})")
                continue
            result = {"folder": str(folder), "n_train_images": args.n_train,
                      "n_val_images": args.n_val, "threads": args.threads,
                      "simclr_overrides": args.simclr, "ddaepp_overrides": args.ddaepp,
                      **run_seed(seed, folder, out, args)}
            done.write_text(json.dumps(result, indent=2))
    report = pooled(out)
    (out / "quickstart_transfer.json").write_text(json.dumps(report, indent=2))
    print_report(report)
    print(f"json: {out / 'quickstart_transfer.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
