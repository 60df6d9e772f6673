#!/usr/bin/env python
"""Sample a latent ddae/ddaepp checkpoint, decode with its VAE, and score FID/IS (ImageNet-256).

    python main_sample_latent.py --ckpt runs/ddaepp_dit-b_cond/last.ckpt --n 10000 \
        --ref VIRTUAL_imagenet256_labeled.npz --cfg 1.5 --fid-weights weights-inception-2015-12-05-6726825d.pth
    python main_sample_latent.py --devices 8 --ckpt CKPT --n 50000 --ref REF.npz --npz

Image i is drawn from seed i (--seed-start + i) alone, so results do not depend on the batch
size or the GPU count; class labels are seed mod 1000 for class-conditional models. Latents are
de-normalised with the training statistics and decoded by the VAE the latents were extracted
with (or --vae), then quantised to uint8; batches are streamed (never all in memory). With
--ref (an ADM reference batch .npz), FID / KID / IS are merged into the run's metrics.json under
`fid_latent` -> `<tag>`; IS needs torch-fidelity's Inception weights (--fid-weights; the offline
TorchScript network has no classifier and the result then says so). --npz streams the images
into an ADM-evaluator .npz (one per rank with --devices N).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ssl_diffusion.app.cli import check_device, run_cli


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint of a latent ddae/ddaepp run")
    p.add_argument("--n", type=int, required=True, help="number of images (10000 / 50000)")
    p.add_argument("--seed-start", type=int, default=0, help="image i uses seed start + i")
    p.add_argument("--ref", help="ADM reference batch .npz (arr_0 uint8 N x H x W x 3)")
    p.add_argument("--ref-n", type=int, help="use the first N reference images (default all)")
    g = p.add_argument_group("sampler (default: the checkpoint's sampler.* config)")
    g.add_argument("--sampler", help="euler | heun | ddim | ddpm")
    g.add_argument("--steps", type=int)
    g.add_argument("--cfg", type=float, help="guidance scale (1 = off)")
    g.add_argument("--cfg-max-sigma", type=float, help="guidance interval: no guidance above "
                   "this sigma (LightningDiT 0.11 = 8.09); <= 0 means guidance at every step")
    g.add_argument("--shift", type=float, help="timestep shift (LightningDiT 0.3 = 3.333 here)")
    p.add_argument("--vae", help="VAE folder / hub id (default: the one the latents came from)")
    p.add_argument("--vae-dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--fid-weights", help="Inception weights (torch-fidelity .pth gives IS)")
    p.add_argument("--npz", action="store_true", help="write the images as an ADM-format .npz")
    p.add_argument("--out", help="output folder (default: the checkpoint's run directory)")
    p.add_argument("--batch-size", type=int, default=64, help="images per sampling batch")
    p.add_argument("--raw", action="store_true", help="raw weights instead of the EMA")
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda if available)")
    p.add_argument("--devices", type=int, default=1,
                   help="processes per node, one device each (Lightning Fabric, as training)")
    p.add_argument("--num-nodes", type=int, default=1, help="as trainer.num_nodes")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import torch

    from ssl_diffusion.app.generation import (
        class_labels_for,
        generate_uint8,
        sampler_config,
        save_grid,
    )
    from ssl_diffusion.app.image_files import NpzWriter
    from ssl_diffusion.app.latent_extraction import launch
    from ssl_diffusion.app.latent_generation import AdmReference, DecodedGenerator, latent_fid
    from ssl_diffusion.app.loading import load_method
    from ssl_diffusion.app.run_dir import update_metrics
    from ssl_diffusion.errors import UserError
    from ssl_diffusion.eval.inception import load_inception
    from ssl_diffusion.models.vae import load_vae

    if args.n < 1:
        raise UserError(f"--n {args.n} must be >= 1")
    check_device(args.device)
    ref = AdmReference(args.ref) if args.ref else None  # bad reference files fail before sampling
    if args.devices < 1 or args.num_nodes < 1:
        raise UserError(f"--devices {args.devices} and --num-nodes {args.num_nodes} must be >= 1")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    accelerator = "gpu" if device.startswith("cuda") else "cpu"
    run = launch(args.devices, accelerator, args.num_nodes)  # torchrun / SLURM detected too
    rank, world, barrier = run.rank, run.world, run.barrier
    if accelerator == "gpu":
        device = str(run.device)
    loaded = load_method(args.ckpt, list(args.overrides))
    method, cfg = loaded.method, loaded.cfg
    latent = loaded.info.latent or {}
    vae_cfg = dataclasses.replace(cfg.model.vae, path=args.vae or latent.get("vae", cfg.model.vae.path),
                                  dtype=args.vae_dtype)
    gen = DecodedGenerator(method.to(device), load_vae(vae_cfg, device=device))
    max_sigma = args.cfg_max_sigma
    base = cfg.sampler if max_sigma is None else dataclasses.replace(
        cfg.sampler, cfg_max_sigma=max_sigma if max_sigma > 0 else None)
    scfg = sampler_config(base, sampler=args.sampler, steps=args.steps, cfg=args.cfg,
                          shift=args.shift)
    seeds = list(range(args.seed_start, args.seed_start + args.n))
    labels = class_labels_for(gen, seeds, None)
    out = Path(args.out) if args.out else loaded.path.parent
    tag = f"n{args.n}_cfg{scfg.cfg:g}" + ("" if scfg.cfg_max_sigma is None else
                                          f"_int{scfg.cfg_max_sigma:g}")
    writer = None
    if args.npz:
        name = f"samples_{tag}.npz" if world == 1 else f"samples_{tag}.rank{rank}.npz"
        shard = len(seeds[rank::world])
        writer = NpzWriter(out / name, shard, gen.info.image_size, gen.info.image_size,
                           with_labels=labels is not None)
    shard_labels = None if labels is None else labels[rank::world]
    done = [0]

    def tap(batch: torch.Tensor, batch_seeds: list[int]) -> None:
        if writer is not None:
            lab = None if shard_labels is None else shard_labels[done[0]:done[0] + len(batch)]
            writer.write(batch, lab)
        if done[0] == 0 and rank == 0:
            save_grid(batch[:64], out / f"samples_{tag}.png")
        done[0] += len(batch)

    try:
        if ref is not None:
            fid_cfg = dataclasses.replace(cfg.eval.fid, ref_n=args.ref_n,
                                          **({"weights": args.fid_weights} if args.fid_weights else {}))
            net = load_inception(fid_cfg.weights, device=device)
            result = latent_fid(gen, ref, seeds, scfg, net=net, fid_cfg=fid_cfg,
                                batch_size=args.batch_size, use_ema=not args.raw,
                                class_labels=labels, rank=rank, world=world, barrier=barrier,
                                progress=not args.quiet, tap=tap)
            if rank == 0:
                result["checkpoint"] = str(loaded.path)
                update_metrics(out, {"fid_latent": {tag: result}})
                is_text = (f"IS {result['is']:.2f}" if result["is"] is not None
                           else "IS n/a (no Inception logits: pass --fid-weights torch-fidelity .pth)")
                print(f"FID {result['fid']:.3f}, {is_text} ({result['n_gen']} images vs "
                      f"{result['n_ref']} reference) -> {out / 'metrics.json'}")
        else:
            for batch in generate_uint8(gen, seeds[rank::world], scfg, args.batch_size,
                                        not args.raw, shard_labels, not args.quiet):
                tap(batch, [])
            if rank == 0:
                print(f"generated {args.n} images -> {out}")
        if writer is not None:
            writer.close()
    finally:
        if writer is not None:
            writer.abort()
    return 0


if __name__ == "__main__":
    run_cli(main)
