#!/usr/bin/env python
"""Generate images from a ddae/ddaepp checkpoint, optionally with FID / KID against its dataset.

    python main_sample.py --ckpt runs/<run>/last.ckpt --n 64
    python main_sample.py --ckpt runs/<run>/last.ckpt --n 50000 --fid --npz   # FID-50k
    python main_sample.py --ckpt CKPT --seeds 0-9,100-109 --sampler heun --steps 18 --png-dir

Image i is drawn from seed i (default seeds: eval.fid.seed + 0..n-1), so a seed gives the same
image whatever --batch-size or machine. EMA weights are used unless --raw. Writes into the
checkpoint's run directory (or --out): samples.png (grid of the first 64 images), samples.npz
with --npz (ADM-evaluator format: arr_0, uint8 NHWC RGB), one PNG per seed with --png-dir, and
with --fid the result and its protocol merged into metrics.json under `fid`. Sampler options
override the checkpoint's sampler.* config (with --fid, after eval.fid.sampler/steps/cfg);
trailing key=value pairs override any config key (e.g. eval.fid.cache_dir=/tmp/fid).

Small-n FID (a few hundred to 2k images, fine on a CPU) is biased upward and only comparable at
equal n and reference set; the result says so. KID is unbiased at any n.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ssl_diffusion.app.cli import run_cli
from ssl_diffusion.errors import UserError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint of a ddae/ddaepp run (last.ckpt)")
    p.add_argument("--n", type=int, help="number of images (default: the number of --seeds)")
    p.add_argument("--seeds", help="seeds, e.g. 0-63 or 0,5,9 or 0-9,20-29 (one image each)")
    g = p.add_argument_group("sampler (default: the checkpoint's sampler.* config)")
    g.add_argument("--sampler", help="euler | heun | ddim | ddpm")
    g.add_argument("--steps", type=int, help="sampler steps")
    g.add_argument("--eta", type=float, help="stochasticity (0 = deterministic)")
    g.add_argument("--cfg", type=float, help="classifier-free guidance scale (1 = off)")
    g.add_argument("--shift", type=float, help="sampling-grid shift (1 = none)")
    p.add_argument("--batch-size", type=int, default=64, help="images per sampling batch (memory only)")
    p.add_argument("--raw", action="store_true", help="sample from the raw weights instead of the EMA")
    labels = p.add_mutually_exclusive_group()
    labels.add_argument("--class-label", type=int, help="class of every image (conditional models)")
    labels.add_argument("--classes", choices=["all"], help="all: seed s gets class s mod K (default "
                        "for conditional models)")
    p.add_argument("--out", help="output directory (default: the checkpoint's directory)")
    p.add_argument("--npz", action="store_true", help="also write samples.npz (ADM evaluator format)")
    p.add_argument("--png-dir", nargs="?", const="samples", help="also write one PNG per seed into "
                   "this folder (relative to --out; default name: samples)")
    p.add_argument("--fid", action="store_true", help="compute FID/KID (and IS where possible)")
    p.add_argument("--ref-n", type=int, help="reference images (default eval.fid.ref_n; null = split)")
    p.add_argument("--fid-weights", help="Inception weights file (default: eval.fid.weights / offline search)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1 ...")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    return p


def _seeds(args: argparse.Namespace, first_seed: int) -> list[int]:
    from ssl_diffusion.app.generation import MAX_IMAGES, parse_seeds

    if args.n is not None and args.n < 1:
        raise UserError(f"--n {args.n} is invalid; generate at least 1 image")
    if args.n is not None and args.n > MAX_IMAGES:
        raise UserError(f"--n {args.n:,} is more than one call generates (at most {MAX_IMAGES:,}); "
                        f"split the job into --seeds ranges, e.g. --seeds 0-{MAX_IMAGES - 1}")
    if args.seeds is None:
        if args.n is None:
            raise UserError("say how many images: --n N (seeds eval.fid.seed + 0..N-1) or --seeds 0-63")
        return list(range(first_seed, first_seed + args.n))
    seeds = parse_seeds(args.seeds)  # at most MAX_IMAGES
    if args.n is not None and args.n != len(seeds):
        raise UserError(f"--n {args.n} but --seeds {args.seeds} gives {len(seeds)} seeds; drop --n "
                        f"or make them agree")
    return seeds


def _device(name: str) -> str:
    import torch

    from ssl_diffusion.app.cli import check_device

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return check_device(name)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size} is invalid; it must be >= 1")
    if args.ref_n is not None and args.ref_n < 2:
        raise UserError(f"--ref-n {args.ref_n} is invalid; FID needs >= 2 reference images")

    import torch

    from ssl_diffusion.app.generation import (
        GRID_MAX,
        GRID_MIN_WIDTH,
        FIDStage,
        NpzWriter,
        check_guidance,
        class_labels_for,
        format_seeds,
        generate_uint8,
        layered_sampler_config,
        require_generator,
        run_fid,
        sampler_nfe,
        save_grid,
        save_png_folder,
    )
    from ssl_diffusion.app.loading import load_method
    from ssl_diffusion.app.pretrain import quiet_lightning

    quiet_lightning()
    loaded = load_method(args.ckpt, args.overrides)
    method, cfg = loaded.method, loaded.cfg
    require_generator(method)
    fid_cfg = cfg.eval.fid
    seeds = _seeds(args, fid_cfg.seed)
    scfg = layered_sampler_config(cfg, fid=args.fid, sampler=args.sampler, steps=args.steps,
                                  eta=args.eta, guidance=args.cfg, shift=args.shift)
    check_guidance(method, scfg)
    classes = args.class_label if args.class_label is not None else args.classes
    labels = class_labels_for(method, seeds, classes)
    method.to(_device(args.device))
    out = Path(args.out) if args.out else loaded.path.parent
    png_dir = out / args.png_dir if args.png_dir else None
    for flag, folder in (("--out", out), ("--png-dir", png_dir)):
        if folder is not None and folder.exists() and not folder.is_dir():
            raise UserError(f"{flag} {folder} is an existing file, not a folder; pass a folder "
                            f"(it is created when missing)")
    from ssl_diffusion.app.os_errors import check_writable

    check_writable(out, "the samples", "choose a writable --out folder")  # before sampling
    stage = None
    if args.fid:
        if len(seeds) < 2:
            raise UserError(f"--fid needs at least 2 images, got --n {len(seeds)}")
        overrides = {"n": len(seeds)}
        if args.ref_n is not None:
            overrides["ref_n"] = args.ref_n
        if args.fid_weights is not None:
            overrides["weights"] = args.fid_weights
        fid_cfg = dataclasses.replace(fid_cfg, **overrides)
        stage = FIDStage(cfg, fid_cfg, device=method.device)  # weights checked before sampling

    grid: list = []
    npz = (NpzWriter(out / "samples.npz", len(seeds), method.info.image_size,
                     method.info.image_size, with_labels=labels is not None) if args.npz else None)
    done = 0

    def sink(batch, batch_seeds) -> None:
        nonlocal done
        shown = sum(len(b) for b in grid)
        if shown < GRID_MAX:
            grid.append(batch[: GRID_MAX - shown])
        if npz is not None:
            npz.write(batch, None if labels is None else labels[done : done + len(batch)])
        if png_dir is not None:
            save_png_folder(batch, batch_seeds, png_dir)
        done += len(batch)

    use_ema = not args.raw
    result = None
    try:
        if stage is not None:
            extra = {"checkpoint": str(loaded.path),
                     "checkpoint_step": int(loaded.ckpt.get("global_step", 0))}
            result = run_fid(method, cfg, out, len(seeds), scfg, seeds=seeds,
                             batch_size=args.batch_size, use_ema=use_ema, class_labels=labels,
                             fid_cfg=fid_cfg, stage=stage, progress=not args.quiet, tap=sink,
                             extra=extra)
        else:
            batches = generate_uint8(method, seeds, scfg, args.batch_size, use_ema, labels,
                                     not args.quiet)
            for start, batch in zip(range(0, len(seeds), args.batch_size), batches):
                sink(batch, seeds[start : start + len(batch)])
        written = [save_grid(torch.cat(grid), out / "samples.png", min_width=GRID_MIN_WIDTH)]
        if npz is not None:
            written.append(npz.close())
    finally:
        if npz is not None:
            npz.abort()  # no-op after a successful close
    if png_dir is not None:
        written.append(png_dir)
    weights = "EMA" if use_ema and method.ema is not None else "raw weights"
    line = (f"{len(seeds)} images ({scfg.sampler}, {scfg.steps} steps, NFE {sampler_nfe(scfg)}, "
            f"{weights}, seeds {format_seeds(seeds)}) -> {', '.join(str(p) for p in written)}")
    if result is not None:
        kid = f", KID {result['kid_mean']:.4f}" if result["kid_mean"] is not None else ""
        kid += f", IS {result['is']:.2f}" if result["is"] is not None else ""
        line += (f"; FID {result['fid']:.2f}{kid} (n={result['n_gen']} vs {fid_cfg.ref_split} "
                 f"n={result['n_ref']}) in {out / 'metrics.json'}")
        if result["warning"]:
            line += " [small n: biased upward, compare only at equal n]"
    print(line)
    return 0


if __name__ == "__main__":
    run_cli(main)
