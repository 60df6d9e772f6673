#!/usr/bin/env python
"""The demo behind `make demo`: pretrain a recipe, then print what the run gives.

    python main_demo.py --config recipes/quickstart_ddaepp.yaml [key=value ...]

Trains (or resumes) like main_pretrain.py, then writes runs/<name>/samples.png (diffusion
methods) and prints kNN and linear top-1 on the test split beside raw pixels of the same split.
"""

from __future__ import annotations

import argparse

from ssl_diffusion.app.cli import run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="recipe YAML (see recipes/)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=3e-4")
    args = parser.parse_args(argv)

    from ssl_diffusion.app.demo import run_demo
    from ssl_diffusion.config import load_config

    result = run_demo(load_config(args.config, args.overrides), args.config)
    print("\n".join(result.lines))
    return 0


if __name__ == "__main__":
    run_cli(main)
