"""FID against network evaluations: every sampler at several step counts, on the same seeds.

    python benchmarks/sampler_nfe.py --ckpt runs/quickstart_ddaepp/last.ckpt --n 200
    python benchmarks/sampler_nfe.py --ckpt CKPT --n 200 --steps 4,8,16,32 --samplers euler,heun

For each (sampler, steps) the script generates images for seeds 0..n-1 (EMA weights unless
--raw), counts the denoiser calls per image (NFE, measured with a forward hook, not computed),
times sampling, and scores the images with the checkpoint's eval.fid protocol (reference split,
Inception weights; the reference statistics are computed once and cached). Images that are
byte-identical to an earlier row's (e.g. deterministic DDIM and Euler, which take the same step
in VE space) are scored once and marked. Small-n FID is biased upward: compare rows only with
each other (same n, same reference); KID is unbiased.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="ddae/ddaepp checkpoint")
    p.add_argument("--n", type=int, default=200, help="images per row (same seeds 0..n-1 in every row)")
    p.add_argument("--steps", default="4,8,16,32", help="comma-separated step counts")
    p.add_argument("--samplers", default="euler,heun,ddim,ddpm", help="comma-separated samplers")
    p.add_argument("--eta", type=float, help="stochasticity for ddim/heun (default: checkpoint's)")
    p.add_argument("--ref-n", type=int, help="reference images (default: eval.fid.ref_n)")
    p.add_argument("--batch-size", type=int, default=200, help="images per sampling batch")
    p.add_argument("--raw", action="store_true", help="raw weights instead of the EMA")
    p.add_argument("--fid-weights", help="Inception weights file (default: offline search)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = p.parse_args(argv)

    import torch

    from ssl_diffusion.app.generation import (
        FIDStage,
        fid_metrics,
        generate_uint8,
        require_generator,
        sampler_config,
    )
    from ssl_diffusion.app.loading import load_method
    from ssl_diffusion.app.pretrain import quiet_lightning
    from ssl_diffusion.eval.fid import extract_stats

    quiet_lightning()
    loaded = load_method(args.ckpt, args.overrides)
    method, cfg = loaded.method, loaded.cfg
    require_generator(method)
    fid_cfg = dataclasses.replace(cfg.eval.fid, n=args.n, ref_n=args.ref_n or cfg.eval.fid.ref_n,
                                  weights=args.fid_weights or cfg.eval.fid.weights)
    stage = FIDStage(cfg, fid_cfg)
    key = stage.reference_key(method.info.image_size)
    t0 = time.time()
    ref = stage.reference(key)
    print(f"# {args.ckpt} (step {loaded.ckpt.get('global_step')}, {cfg.method}, "
          f"{cfg.diffusion.objective}, {'raw' if args.raw else 'EMA'} weights); seeds 0-{args.n - 1}; "
          f"reference {key.dataset}/{key.split} n={ref.n} ({'cached' if ref.from_cache else 'computed'} "
          f"in {time.time() - t0:.0f} s); {stage.net.feature_net_id}; "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'sampler':<8} {'steps':>5} {'NFE':>4} {'sample_s':>8} {'FID':>8} {'KID':>8}  note")
    seeds = list(range(args.n))
    net = method.feature_net(not args.raw)
    calls = [0]
    net.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    scored: dict[str, tuple[str, dict]] = {}
    for sampler in args.samplers.split(","):
        for steps in (int(s) for s in args.steps.split(",")):
            scfg = sampler_config(cfg.sampler, sampler=sampler, steps=steps,
                                  eta=args.eta if sampler in ("ddim", "heun") else None)
            calls[0] = 0
            t0 = time.time()
            batches = list(generate_uint8(method, seeds, scfg, args.batch_size, not args.raw,
                                          progress=False))
            sample_s = time.time() - t0
            nfe = calls[0] / len(batches)  # one network call per batch per evaluation
            digest = hashlib.sha1(b"".join(b.numpy().tobytes() for b in batches)).hexdigest()
            note = ""
            if digest in scored:
                note, res = f"same images as {scored[digest][0]}", scored[digest][1]
            else:
                gen = extract_stats(iter(batches), stage.net, batch_size=fid_cfg.batch_size,
                                    kid_max_n=fid_cfg.kid_max_n)
                res = fid_metrics(gen, ref, key, fid_cfg, stage.net)
                scored[digest] = (f"{sampler}/{steps}", res)
            kid = f"{res['kid_mean']:.4f}" if res["kid_mean"] is not None else "-"
            print(f"{sampler:<8} {steps:>5} {nfe:>4.0f} {sample_s:>8.1f} {res['fid']:>8.2f} "
                  f"{kid:>8}  {note}", flush=True)
    return 0


if __name__ == "__main__":
    from ssl_diffusion.app.cli import run_cli

    run_cli(main)
