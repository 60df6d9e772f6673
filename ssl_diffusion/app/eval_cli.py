"""Command-line options shared by the offline evaluation CLIs (main_knn/linear/sweep/retrieval)."""

from __future__ import annotations

import argparse
from typing import Any

from ssl_diffusion.app.cli import check_device
from ssl_diffusion.errors import UserError


def add_eval_args(parser: argparse.ArgumentParser, limit: bool = True) -> None:
    """``--ckpt``, positional ``key=value`` overrides and the extraction options."""
    parser.add_argument("--ckpt", required=True, help="checkpoint, e.g. runs/<run>/last.ckpt")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per forward pass (default: data.batch_size)")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    if limit:
        parser.add_argument("--limit", type=int, default=None,
                            help="use only the first N images of each split (quick checks)")
    parser.add_argument("--no-cache", action="store_true",
                        help="do not read or write <run_dir>/features/")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*",
                        help="typed config overrides, e.g. eval.knn.k=[20] data.root=/data")


def eval_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of the ``eval.runner`` functions from parsed options."""
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size} must be >= 1")
    kwargs = {"progress": not args.quiet, "batch_size": args.batch_size, "device": args.device,
              "cache": not args.no_cache}
    if getattr(args, "limit", None) is not None:
        if args.limit < 1:
            raise UserError(f"--limit {args.limit} must be >= 1")
        kwargs["limit"] = args.limit
    if args.device is not None and args.device.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device `{args.device}` is not a torch device; use cpu or cuda")
    if args.device is not None and args.device != "cpu":
        check_device(args.device)
    return kwargs


def percent(result: dict, split: str) -> str:
    return (f"{split} top-1 {result[f'{split}_top1']:.2f}% top-5 {result[f'{split}_top5']:.2f}%")
