#!/usr/bin/env python
"""Offline weighted kNN (DINO protocol) of a checkpoint's frozen features.

    python main_knn.py --ckpt runs/<run>/last.ckpt [eval.knn.k=[20]] [--limit N] [--device cuda]

Bank: the train split (train minus the held-out val split); queries: val (selection) and test
(reported). Features are cached in runs/<run>/features/; results go to runs/<run>/metrics.json
under `knn` with their protocol.
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
    from ssl_diffusion.app.evaluate import run_knn

    r = run_knn(args.ckpt, args.overrides, **kwargs)
    p = r["protocol"]
    print(f"knn (k={p['report_k']}, T={p['temperature']}, bank {p['bank_size']}): "
          f"{percent(r, 'val')} | {percent(r, 'test')}")
    return 0


if __name__ == "__main__":
    run_cli(main)
