#!/usr/bin/env python
"""Nearest-neighbour retrieval demo: a query and its k most similar gallery images.

    python main_retrieval.py --ckpt runs/<run>/last.ckpt --query img.png [--k 8]
    python main_retrieval.py --ckpt runs/<run>/last.ckpt --query 17 --split test --gallery train

The query is an index into --split or an image file (converted to the dataset's channels,
resized and normalised like the dataset). Writes runs/<run>/retrieval.png (or --out).
"""

from __future__ import annotations

import argparse

from ssl_diffusion.app.cli import run_cli


def main(argv: list[str] | None = None) -> int:
    from ssl_diffusion.app.eval_cli import add_eval_args, eval_kwargs

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--query", required=True, help="index into --split, or an image file")
    parser.add_argument("--k", type=int, default=8, help="neighbours to show (default 8)")
    parser.add_argument("--split", default="test", help="split of an index query (default test)")
    parser.add_argument("--gallery", default="train", help="split searched (default train)")
    parser.add_argument("--out", default=None, help="figure path (default runs/<run>/retrieval.png)")
    add_eval_args(parser, limit=False)
    args = parser.parse_args(argv)
    kwargs = eval_kwargs(args)
    from ssl_diffusion.app.retrieval import run_retrieval

    r = run_retrieval(args.ckpt, args.query, args.overrides, k=args.k, split=args.split,
                      gallery=args.gallery, out=args.out, **kwargs)
    q = r["query"]
    print(f"query {q['source']}" + (f" ({q['class_name']})" if q["class_name"] else "") + ":")
    for rank, n in enumerate(r["neighbors"], 1):
        print(f"  {rank:2d}. {r['gallery']}[{n['index']}] {n['class_name']:>12s}  sim {n['similarity']:.4f}")
    print(f"wrote {r['image']}")
    return 0


if __name__ == "__main__":
    run_cli(main)
