#!/usr/bin/env python
"""Offline linear probe (BN without affine + Linear, MAE recipe) on a checkpoint's frozen features.

    python main_linear.py --ckpt runs/<run>/last.ckpt [eval.linear.epochs=30] [--device cuda]

Trained on the train split (train minus the held-out val split), reported on val (selection)
and test. Features are cached in runs/<run>/features/; results go to runs/<run>/metrics.json
under `linear` with their protocol.
"""

from __future__ import annotations

import argparse

from ssl_diffusion.app.cli import run_cli


def main(argv: list[str] | None = None) -> int:
    from ssl_diffusion.app.eval_cli import add_eval_args, eval_kwargs, percent

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_eval_args(parser)
    args = parser.parse_args(argv)
    kwargs = eval_kwargs(args)
    from ssl_diffusion.app.evaluate import run_linear

    r = run_linear(args.ckpt, args.overrides, **kwargs)
    p = r["protocol"]
    print(f"linear ({p['epochs']} epochs, {p['optimizer']}, train {p['train_size']}): "
          f"{percent(r, 'val')} | {percent(r, 'test')}")
    return 0


if __name__ == "__main__":
    run_cli(main)
