#!/usr/bin/env python
"""Layer x noise sweep of a diffusion checkpoint's features, selected on validation.

    python main_sweep.py --ckpt runs/<run>/last.ckpt [--layers block1,block2] [--noises 0.05,0.1]
                         [--metric knn|linear|both] [--write-recipe recipes/mine.yaml] [key=value ...]

Every (layer, noise) cell is evaluated on the val split; the best cell alone is evaluated on
test. Noise levels are in eval.features.noise_unit (sigma or logsnr). Writes sweep.csv,
sweep.png and metrics.json["sweep"] (with `chosen`) into the run directory; --write-recipe merges
eval.features.{layer, noise, noise_unit} into a YAML recipe.
"""

from __future__ import annotations

import argparse

from ssl_diffusion.app.cli import run_cli


def main(argv: list[str] | None = None) -> int:
    from ssl_diffusion.app.eval_cli import add_eval_args, eval_kwargs

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", default=None, help="comma-separated layer names (default: all / a spread)")
    parser.add_argument("--noises", default=None,
                        help="comma-separated noise levels in eval.features.noise_unit (default: 5 log-spaced)")
    parser.add_argument("--metric", default="knn", help="knn | linear | both (default knn)")
    parser.add_argument("--select-by", default=None, help="metric that picks the cell (default: --metric; linear for both)")
    parser.add_argument("--probe-epochs", type=int, default=None, help="linear-probe epochs per cell")
    parser.add_argument("--write-recipe", default=None, help="YAML that receives eval.features")
    add_eval_args(parser)
    args = parser.parse_args(argv)
    kwargs = eval_kwargs(args)
    from ssl_diffusion.app.evaluate import run_sweep
    from ssl_diffusion.eval.sweep import parse_list

    r = run_sweep(args.ckpt, args.overrides, layers=parse_list(args.layers, str, "--layers"),
                  noises=parse_list(args.noises, float, "--noises"), metric=args.metric,
                  select_by=args.select_by, probe_epochs=args.probe_epochs,
                  write_recipe=args.write_recipe, **kwargs)
    c = r["chosen"]
    tests = ", ".join(f"{m} test top-1 {c[f'test_{m}_top1']:.2f}% top-5 {c[f'test_{m}_top5']:.2f}%"
                      for m in ("knn", "linear") if f"test_{m}_top1" in c)
    val = c[f"val_{c['select_by']}_top1"]
    print(f"chosen on val ({c['select_by']} top-1 {val:.2f}%): "
          f"eval.features.layer={c['layer']} eval.features.noise={c['noise']:g} "
          f"({c['noise_unit']}) -> {tests}")
    if c["noise_at_grid_edge"]:
        print(f"note: the chosen noise {c['noise']:g} is at the edge of the grid "
              f"{min(r['noises']):g}..{max(r['noises']):g}; consider extending --noises beyond it")
    print(f"wrote {r['files']['csv']}, {r['files']['png']}")
    if "recipe" in r:
        print(f"{r['recipe']['action']} {r['recipe']['path']}")
    return 0


if __name__ == "__main__":
    run_cli(main)
