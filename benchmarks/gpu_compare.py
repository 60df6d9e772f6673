"""One-command GPU replication of DDAE vs DDAE++ (2 seeds each) within a wall-clock budget.

    python benchmarks/gpu_compare.py --data-root ../shared/data            # on a single GPU, ~12 min
    python benchmarks/gpu_compare.py --tiny --out /tmp/gpu_compare_smoke   # CPU smoke test

It measures the training throughput of the ddae recipe with a short probe, sets the number of
steps so that 4 trainings plus their evaluation fit in ``--budget-minutes``, then runs the
comparison tool (the same evaluators and report as main_compare.py) with bf16 autocast and
torch.compile on. The report records each arm's train images/s and the GPU name.

Air-gapped node (a fixed stack without lightly, faiss, wandb or the FID packages; see
benchmarks/README.md and benchmarks/gpu_kit/):

    python benchmarks/gpu_kit/pack.py                                   # here: writes kit/
    OUT=/path/to/empty python benchmarks/gpu_compare.py --node --kit kit   # on the node, <= 10 min
    python benchmarks/gpu_compare.py --collect /path/to/node_out --kit kit # back on the CPU: FID/KID
"""

from __future__ import annotations

import time

STARTED = time.monotonic()  # --node: the 10-minute budget counts from here, before torch loads

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssl_diffusion.app.compare import CompareOptions, compare
from ssl_diffusion.config import load_config

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = "runs/gpu_compare"
RECIPES = [REPO / "recipes/fmnist/ddae_dit.yaml", REPO / "recipes/fmnist/ddaepp_dit.yaml"]
TINY = ["data.name=fake", "data.image_size=16", "data.fake_channels=1", "data.fake_size=64",
        "data.batch_size=8", "data.num_workers=0", "model.preset=DiT-tiny", "model.patch_size=4",
        "eval.bank_size=32", "eval.knn.k=[5]", "eval.knn.report_k=5", "eval.linear.epochs=2",
        "eval.linear.warmup_epochs=0", "eval.features.layer=block3", "selfcond.source_layer=block1"]


def probe_images_per_s(recipe: Path, overrides: list[str], steps: int) -> float:
    """Train ``steps`` steps of the recipe in a throw-away run and return images/s."""
    from ssl_diffusion.app.pretrain import pretrain

    cfg = load_config(recipe, [*overrides, f"trainer.max_steps={steps}", "run.root=/tmp/gpu_compare_probe",
                               f"run.name=probe-{int(time.time())}", "eval.online_knn=false",
                               "eval.online_linear=false", "logger.wandb.enabled=false"])
    result = pretrain(cfg, str(recipe))
    return result["images_seen"] / max(result["train_wall_time_s"], 1e-6)


def air_gapped(args: argparse.Namespace) -> int:
    """``--node`` or ``--collect``; a bad input is one ``error:`` line and exit code 2."""
    from ssl_diffusion.errors import UserError

    command = "python benchmarks/gpu_compare.py " + " ".join(sys.argv[1:])
    try:
        if args.node and args.collect:
            raise UserError("--node and --collect are two steps on two machines; give one")
        if args.node:
            from benchmarks.gpu_kit.node import NodeOptions, options_from_env, run_node

            opts = NodeOptions(kit=Path(args.kit), out=options_from_env(args.out if args.out !=
                                                                       DEFAULT_OUT else None),
                               work=Path(args.work), seeds=args.seeds, budget_s=args.budget_s,
                               tiny=args.tiny, n_samples=16 if args.tiny else args.n_samples,
                               peak_tflops=args.peak_tflops, command=command, started=STARTED)
            if args.tiny:
                opts.sweep_layers, opts.sweep_noises = ["block1", "block3"], [0.05, 0.2]
            return run_node(opts)
        from benchmarks.gpu_kit.collect import CollectOptions, collect

        result = collect(CollectOptions(
            node_dir=Path(args.collect), kit=Path(args.kit), report=Path(args.report),
            work=Path(args.work), fid_weights=args.fid_weights,
            fid_ref_n=args.fid_ref_n or None, fid_cache_dir=args.fid_cache_dir,
            raw_pixels=not args.no_raw_pixels, command=command))
        print(f"collect: report {args.report}/comparison.md ({len(result['runs'])} runs)")
        return 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-minutes", type=float, default=12.0, help="whole command, wall clock")
    p.add_argument("--train-fraction", type=float, default=0.55,
                   help="share of the budget spent training (the rest: evaluation, FID, compile)")
    p.add_argument("--data-root", default=str(REPO.parent / "shared/data"))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--out", default=DEFAULT_OUT, help="report folder; with --node: $OUT if unset")
    p.add_argument("--fid-n", type=int, default=5000)
    p.add_argument("--probe-steps", type=int, default=30)
    p.add_argument("--tiny", action="store_true", help="CPU smoke test: fake data, a few steps")
    node = p.add_argument_group("air-gapped node (benchmarks/gpu_kit)")
    node.add_argument("--node", action="store_true", help="run on the node: train, evaluate, sample "
                      "into $OUT (or --out) within --budget-s")
    node.add_argument("--collect", metavar="DIR", help="on the CPU: FID/KID of the node's samples in "
                      "DIR and the comparison report in --report")
    node.add_argument("--kit", default="kit", help="kit folder written by benchmarks/gpu_kit/pack.py")
    node.add_argument("--work", default="runs/gpu_node", help="scratch folder (runs, unpacked data)")
    node.add_argument("--budget-s", type=float, default=600.0, help="--node: the whole command, s")
    node.add_argument("--n-samples", type=int, default=5000, help="--node: samples per arm")
    node.add_argument("--peak-tflops", type=float, default=None,
                      help="--node: dense bf16 peak for MFU (default: from the GPU's name)")
    node.add_argument("--report", default="runs/gpu_node_report", help="--collect: report folder")
    node.add_argument("--fid-weights", default=None, help="--collect: eval.fid.weights (Inception)")
    node.add_argument("--fid-ref-n", type=int, default=5000,
                      help="--collect: reference images from the train split (0 = all)")
    node.add_argument("--fid-cache-dir", default=None, help="--collect: reference statistics cache")
    node.add_argument("--no-raw-pixels", action="store_true", help="--collect: skip the raw-pixel row")
    args = p.parse_args()
    if args.node or args.collect:
        raise SystemExit(air_gapped(args))
    start = time.time()
    gpu = torch.cuda.is_available() and not args.tiny
    overrides = [f"data.root={args.data_root}", "logger.wandb.enabled=false"]
    if gpu:
        overrides += ["trainer.accelerator=gpu", "trainer.precision=bf16-mixed", "trainer.compile=true",
                      "data.num_workers=8", "data.batch_size=256"]
    else:
        overrides += ["trainer.accelerator=cpu"]
    if args.tiny:
        overrides += TINY
        steps, fid_n, ref_n = 3, 8, 8
    else:
        ips = probe_images_per_s(RECIPES[0], overrides, args.probe_steps)
        batch = load_config(RECIPES[0], overrides).data.batch_size
        runs = 2 * len(args.seeds)
        per_run_s = args.budget_minutes * 60 * args.train_fraction / runs - (time.time() - start) / runs
        steps = max(50, int(per_run_s * ips / batch))
        fid_n, ref_n = args.fid_n, args.fid_n
        print(f"probe: {ips:.0f} train images/s -> {steps} steps per run", flush=True)
    opts = CompareOptions(
        out=Path(args.out), seeds=args.seeds, overrides=[*overrides, f"trainer.max_steps={steps}"],
        sweep_noises=[0.05, 0.2] if args.tiny else None, fid_n=fid_n, fid_ref_n=ref_n,
        command="python benchmarks/gpu_compare.py " + " ".join(sys.argv[1:]),
    )
    result = compare([str(r) for r in RECIPES], opts)
    env = result["environment"]
    print(f"device: {env['gpu'] or env['cpu']}; total {time.time() - start:.0f} s; report "
          f"{opts.out}/comparison.md")
    for recipe, row in result["aggregate"].items():
        ips = row.get("images_per_s", {}).get("mean")
        print(f"  {Path(recipe).stem}: train images/s {ips:.1f}" if ips else f"  {Path(recipe).stem}: -")
    failed = [run for run in result["runs"] if run.get("status") == "failed"]
    if failed:
        print(f"{len(failed)} of {len(result['runs'])} runs failed; see {opts.out}/comparison.md", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
