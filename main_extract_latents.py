#!/usr/bin/env python
"""Encode an ImageFolder split into VAE latent shards for the latent path (data.name=latents).

    python main_extract_latents.py --images /data/imagenet/train --out latents/in256/train \
        --vae stabilityai/sd-vae-ft-ema --flip
    python main_extract_latents.py --images /data/imagenet/val --out latents/in256/val
    python main_extract_latents.py --devices 8 ...      # one shard stream per GPU (Lightning
                                                        # Fabric DDP; torchrun / SLURM work too)

ADM centre crop to --image-size, posterior mean of the VAE (model.vae.*), optional horizontal-
flip copy, float16 shards of --shard-size images plus per-channel statistics. Run the same
command again after an interruption: finished shards are kept, a partial one is redone.
"""

from __future__ import annotations

import argparse

from ssl_diffusion.app.cli import check_device, run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True, help="ImageFolder split: <dir>/<class>/*")
    parser.add_argument("--out", required=True, help="output folder of this split's shards")
    parser.add_argument("--vae", default=None, help="model.vae.path (hub id or local folder); "
                        "default: the SD VAE (stabilityai/sd-vae-ft-ema)")
    parser.add_argument("--vae-subfolder", default=None, help="model.vae.subfolder")
    parser.add_argument("--download", action="store_true",
                        help="allow fetching a hub VAE once (model.vae.local_files_only=false)")
    parser.add_argument("--image-size", type=int, default=256, help="ADM centre-crop size (px)")
    parser.add_argument("--flip", action="store_true", help="also store the flipped image's latent")
    parser.add_argument("--shard-size", type=int, default=1024, help="images per shard")
    parser.add_argument("--batch-size", type=int, default=64, help="images per VAE call")
    parser.add_argument("--workers", type=int, default=4, help="image-decoding processes")
    parser.add_argument("--device", default=None, help="cuda | cpu (default: cuda if available)")
    parser.add_argument("--devices", type=int, default=1,
                        help="processes per node, one device each (as trainer.devices)")
    parser.add_argument("--num-nodes", type=int, default=1, help="as trainer.num_nodes")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    import torch
    from tqdm.auto import tqdm

    from ssl_diffusion.app.latent_extraction import extract_latents, launch
    from ssl_diffusion.errors import UserError
    from ssl_diffusion.models.config import VAEConfig
    from ssl_diffusion.models.vae import load_vae

    cfg = VAEConfig(dtype=args.dtype, local_files_only=not args.download,
                    subfolder=args.vae_subfolder)
    if args.vae is not None:
        cfg.path = args.vae
    check_device(args.device)
    if args.devices < 1 or args.num_nodes < 1:
        raise UserError(f"--devices {args.devices} and --num-nodes {args.num_nodes} must be >= 1")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    accelerator = "gpu" if device.startswith("cuda") else "cpu"
    run = launch(args.devices, accelerator, args.num_nodes)
    rank, world, barrier = run.rank, run.world, run.barrier
    vae = load_vae(cfg, device=str(run.device) if accelerator == "gpu" else device)
    bar = tqdm(unit="img", desc=f"encoding (rank {rank}/{world})", dynamic_ncols=True,
               disable=args.quiet)
    try:
        result = extract_latents(args.images, args.out, vae, image_size=args.image_size,
                                 flip=args.flip, shard_size=args.shard_size,
                                 batch_size=args.batch_size, workers=args.workers,
                                 rank=rank, world=world,
                                 on_images=bar.update, barrier=barrier)
    finally:
        bar.close()
    if rank == 0:
        stats = "" if result.stats is None else f"; channel mean {[round(m, 4) for m in result.stats.mean]} std {[round(s, 4) for s in result.stats.std]}"
        print(f"done: {result.num_images} images in {result.num_shards} shards under "
              f"{result.out_dir} ({result.shards_encoded} encoded now){stats}")
    return 0


if __name__ == "__main__":
    run_cli(main)
