#!/usr/bin/env python
"""Pick the DDAE++ self-conditioning source layer by the loss of short runs (paper §2.3).

    python main_layer_search.py --config recipes/quickstart_ddaepp.yaml --layers block0,block1,block2 --steps 200

Writes runs/<name>-layer-search/{layer_search.csv, layer_search.md, metrics.json} and prints the
override to use: selfcond.source_layer=<chosen>.
"""

from __future__ import annotations

import argparse

from ssl_diffusion.app.cli import run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a ddaepp recipe")
    parser.add_argument("--layers", required=True, help="comma-separated candidate layer names")
    parser.add_argument("--steps", type=int, default=500, help="training steps per candidate")
    parser.add_argument("--tail", type=float, default=0.25, help="fraction of final steps averaged")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run without self-conditioning")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1],
                        help="seeds; every candidate and the baseline run at each (paired)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    args = parser.parse_args(argv)
    from ssl_diffusion.app.layer_search import run_layer_search
    from ssl_diffusion.config import load_config
    from ssl_diffusion.errors import UserError

    if args.steps < 1 or not 0 < args.tail <= 1:
        raise UserError("--steps must be >= 1 and --tail in (0, 1]")
    cfg = load_config(args.config, args.overrides)
    if cfg.method != "ddaepp":  # before building it: other methods have no denoiser layers
        raise UserError(f"the source-layer search needs method=ddaepp (got `{cfg.method}`); pass a "
                        f"ddaepp recipe such as recipes/quickstart_ddaepp.yaml")
    layers = [name.strip() for name in args.layers.split(",") if name.strip()]
    if not layers:
        raise UserError("--layers is empty; give layer names such as block1,block3")
    from ssl_diffusion.app.pretrain import build_method
    from ssl_diffusion.data.datasets import build_splits

    probe = build_method(cfg, build_splits(cfg.data).info)  # validates names before any run
    for name in layers:
        probe.net.check_layer(name)
    if any(not 0 <= s < 2**32 for s in args.seeds):
        raise UserError(f"--seeds {args.seeds} must lie in [0, 2**32 - 1]")
    summary = run_layer_search(cfg, args.config, layers, args.steps, args.tail,
                               not args.no_baseline, args.seeds)
    print(f"chosen: selfcond.source_layer={summary['chosen']}")
    return 0


if __name__ == "__main__":
    run_cli(main)
