#!/usr/bin/env python
"""Train recipes x seeds side by side, run the shared evaluators, and write a report.

    python main_compare.py --recipes recipes/quickstart.yaml recipes/quickstart_ddaepp.yaml --seeds 0
    python main_compare.py --recipes recipes/fmnist/ddae_dit.yaml recipes/fmnist/simclr.yaml@0 --seeds 0 1 2

RECIPE@SEEDS restricts one recipe to some seeds. Finished runs are skipped, interrupted ones
resume. Writes <out>/comparison.{md,json,png}.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ssl_diffusion.app.cli import run_cli


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", required=True, help="recipe files (RECIPE or RECIPE@SEED,...)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--out", default="runs/compare", help="folder for the runs and the report")
    p.add_argument("--no-sweep", action="store_true", help="skip the layer x noise sweep")
    p.add_argument("--sweep-layers", default=None, help="comma-separated layers for the sweep")
    p.add_argument("--sweep-noises", default=None, help="comma-separated noise levels (sigma)")
    p.add_argument("--no-linear", action="store_true", help="skip the offline linear probe")
    p.add_argument("--no-fid", action="store_true", help="skip FID for generative methods")
    p.add_argument("--fid-n", type=int, default=1000, help="generated images per run")
    p.add_argument("--fid-ref-n", type=int, default=5000, help="reference images (cached)")
    p.add_argument("--fid-sampler", default=None)
    p.add_argument("--fid-steps", type=int, default=None)
    p.add_argument("--limit", type=int, default=None,
                   help="cap on images per split for kNN gallery / probe / queries (e.g. 10000)")
    p.add_argument("--no-raw-pixels", action="store_true", help="skip the raw-pixel baseline row")
    p.add_argument("--no-paired", action="store_true",
                   help="skip the paired differences of every recipe against the first one")
    p.add_argument("--bootstrap-resamples", type=int, default=100,
                   help="resamples per seed of the FID / KID difference bootstrap")
    p.add_argument("overrides", nargs="*", help="key=value overrides applied to every recipe")
    args = p.parse_args(argv)
    from ssl_diffusion.app.compare import CompareOptions, compare
    from ssl_diffusion.errors import UserError

    if args.fid_n < 2 or (args.fid_ref_n is not None and args.fid_ref_n < 2):
        raise UserError("--fid-n and --fid-ref-n must be >= 2 (FID needs a covariance)")
    bad_seeds = [s for s in args.seeds if not 0 <= s < 2**32]
    if bad_seeds:
        raise UserError(f"--seeds {bad_seeds[0]} is invalid; seeds must lie in [0, 2**32 - 1]")
    if args.bootstrap_resamples < 2:
        raise UserError(f"--bootstrap-resamples {args.bootstrap_resamples} must be >= 2")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit {args.limit} must be >= 1")
    noises = None
    if args.sweep_noises:
        try:
            noises = [float(v) for v in args.sweep_noises.split(",")]
        except ValueError:
            raise UserError(f"--sweep-noises `{args.sweep_noises}` must be comma-separated numbers") from None
    opts = CompareOptions(
        out=Path(args.out), seeds=args.seeds, overrides=args.overrides, sweep=not args.no_sweep,
        sweep_layers=args.sweep_layers.split(",") if args.sweep_layers else None,
        sweep_noises=noises, fid=not args.no_fid, fid_n=args.fid_n, fid_ref_n=args.fid_ref_n,
        fid_sampler=args.fid_sampler, fid_steps=args.fid_steps, linear=not args.no_linear,
        limit=args.limit, raw_pixels=not args.no_raw_pixels, paired=not args.no_paired,
        bootstrap_resamples=args.bootstrap_resamples,
        command="python main_compare.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
    )
    result = compare(args.recipes, opts)
    failed = [r for r in result["runs"] if r["status"] != "ok"]
    print(f"wrote {opts.out}/comparison.md ({len(result['runs'])} runs, {len(failed)} failed)")
    if failed:  # the report is written either way; the exit code says not everything ran
        raise UserError(f"{len(failed)} of {len(result['runs'])} runs failed (e.g. "
                        f"{Path(failed[0]['recipe']).stem} seed {failed[0]['seed']}: "
                        f"{failed[0]['error']}); see {opts.out}/comparison.md")
    return 0


if __name__ == "__main__":
    run_cli(main)
