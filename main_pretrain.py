#!/usr/bin/env python
"""Pretrain any registered method from a recipe.

    python main_pretrain.py --config recipes/quickstart.yaml [key=value ...] [--dry-run]

Writes runs/<name>/ (config.yaml, last.ckpt, metrics.csv, metrics.json); running the same
command again resumes from last.ckpt.
"""

from __future__ import annotations

import argparse

from ssl_diffusion.app.cli import run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="recipe YAML (see recipes/)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=3e-4")
    args = parser.parse_args(argv)

    from ssl_diffusion.config import dump_config, load_config

    cfg = load_config(args.config, args.overrides)
    if args.dry_run:
        from ssl_diffusion.app.cost import dry_run_estimate

        print(dump_config(cfg), end="")
        print(dry_run_estimate(cfg))  # a YAML comment line: the output still parses
        return 0
    from ssl_diffusion.app.pretrain import pretrain

    result = pretrain(cfg, args.config)
    if result["global_rank"] != 0:  # DDP: the other ranks ran the same command; rank 0 reports
        return 0
    online = ", ".join(f"{k}={v:.4f}" for k, v in result["online"].items())
    print(f"done: {result['run_dir']} (step {result['steps']}) {online}")
    return 0


if __name__ == "__main__":
    run_cli(main)
