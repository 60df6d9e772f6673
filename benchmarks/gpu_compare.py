"""One-command GPU replication of DDAE vs DDAE++ (2 seeds each) within a wall-clock budget.

    python benchmarks/gpu_compare.py --data-root ../shared/data            # on a single GPU, ~12 min
    python benchmarks/gpu_compare.py --tiny --out /tmp/gpu_compare_smoke   # CPU smoke test

It measures the training throughput of the ddae recipe with a short probe, sets the number of
steps so that 4 trainings plus their evaluation fit in ``--budget-minutes``, then runs the
comparison tool (the same evaluators and report as main_compare.py) with bf16 autocast and
torch.compile on. The report records each arm's train images/s and the GPU name.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssl_diffusion.app.compare import CompareOptions, compare
from ssl_diffusion.config import load_config

REPO = Path(__file__).resolve().parents[1]
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-minutes", type=float, default=12.0, help="whole command, wall clock")
    p.add_argument("--train-fraction", type=float, default=0.55,
                   help="share of the budget spent training (the rest: evaluation, FID, compile)")
    p.add_argument("--data-root", default=str(REPO.parent / "shared/data"))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--out", default="runs/gpu_compare")
    p.add_argument("--fid-n", type=int, default=5000)
    p.add_argument("--probe-steps", type=int, default=30)
    p.add_argument("--tiny", action="store_true", help="CPU smoke test: fake data, a few steps")
    args = p.parse_args()
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
