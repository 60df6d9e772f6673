"""Train-step time of ddaepp (self-conditioning) over ddae (baseline) for the same preset.

    python benchmarks/selfcond_overhead.py --arch dit --preset DiT-S/2 --image-size 32 --batch 16

Both methods are built from the same config except the method name, and one full training step
(diffusion loss, backward, AdamW step, EMA update) of each is timed alternately, the order
flipping every repeat, so load drifts hit both alike. Prints the medians, the ratio
ddaepp/ddae (DDAE++ claims ~1% overhead; target <= 1.02) and the parameter overhead.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssl_diffusion.config import load_config
from ssl_diffusion.data.datasets import DataInfo
from ssl_diffusion.registry import METHODS


def build(method: str, args: argparse.Namespace):
    cfg = load_config(None, [
        f"method={method}", "trainer.max_steps=1000", f"model.arch={args.arch}",
        f"model.preset={args.preset}", f"diffusion.objective={args.objective}",
        "eval.online_linear=false", "logger.wandb.enabled=false",
    ])
    info = DataInfo("bench", 10, args.channels, args.image_size, [0.5] * args.channels,
                    [0.5] * args.channels)
    torch.manual_seed(0)
    m = METHODS.get(method)(cfg, info).to(args.device)
    params = [p for _, p in m.trainable_named_parameters()]
    return m, torch.optim.AdamW(params, lr=1e-4)


def step(m, opt, x, labels) -> None:
    out = m.training_loss([x], labels)
    opt.zero_grad(set_to_none=True)
    out["loss"].backward()
    opt.step()
    m.ema.update(m.net)
    if x.is_cuda:
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="dit", choices=["dit", "unet", "uvit"])
    p.add_argument("--preset", default="DiT-S/2")
    p.add_argument("--objective", default="flow", choices=["ddpm", "edm", "flow"])
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0 = default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = {name: build(name, args) for name in ("ddae", "ddaepp")}
    x = torch.rand(args.batch, args.channels, args.image_size, args.image_size, device=args.device) * 2 - 1
    labels = torch.zeros(args.batch, dtype=torch.long, device=args.device)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(args.warmup + args.repeats):
        order = list(runs) if r % 2 == 0 else list(runs)[::-1]
        for name in order:
            t0 = time.perf_counter()
            step(*runs[name], x, labels)
            if r >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(v) * 1e3 for name, v in times.items()}
    n_params = {name: sum(p.numel() for p in m.net.parameters()) for name, (m, _) in runs.items()}
    print(f"{args.arch} {args.preset} {args.image_size}px batch {args.batch} on {args.device} "
          f"({args.repeats} interleaved repeats)")
    for name in runs:
        print(f"  {name:7s} median train step {med[name]:8.1f} ms   params {n_params[name]:,}")
    print(f"train-step time ratio ddaepp/ddae: {med['ddaepp'] / med['ddae']:.3f} (target <= 1.02)")
    print(f"parameter ratio ddaepp/ddae: {n_params['ddaepp'] / n_params['ddae']:.4f}")


if __name__ == "__main__":
    main()
