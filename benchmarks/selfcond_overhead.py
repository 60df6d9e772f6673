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
from ssl_diffusion.data.info import DataInfo
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


def profile_ops(runs: dict, x: torch.Tensor, labels: torch.Tensor, steps: int, top: int = 12) -> None:
    """Per-op self CPU time and call counts of both arms (torch.profiler), largest differences first:
    shows whether self-conditioning adds work beyond its few small ops, independent of timer noise."""
    from torch.profiler import ProfilerActivity, profile

    table: dict[str, dict[str, tuple[float, int]]] = {}
    for name, (m, opt) in runs.items():
        step(m, opt, x, labels)  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step(m, opt, x, labels)
        table[name] = {e.key: (e.self_cpu_time_total / 1e3 / steps, e.count // steps)
                       for e in prof.key_averages()}
    a, b = table["ddae"], table["ddaepp"]
    total = {name: sum(t for t, _ in ops.values()) for name, ops in table.items()}
    print(f"profiled self CPU time per step: ddae {total['ddae']:.0f} ms, ddaepp {total['ddaepp']:.0f} ms "
          f"(ratio {total['ddaepp'] / total['ddae']:.3f})")
    extra_calls = {k: b.get(k, (0, 0))[1] - a.get(k, (0, 0))[1] for k in set(a) | set(b)}
    print("ops called more often per step by ddaepp: " + ", ".join(
        f"{k} +{n}" for k, n in sorted(extra_calls.items(), key=lambda kv: -kv[1]) if n > 0))
    print("\n| op | ddae ms/step | calls | ddaepp ms/step | calls |\n|---|---|---|---|---|")
    for k in sorted(set(a) | set(b), key=lambda k: -abs(b.get(k, (0, 0))[0] - a.get(k, (0, 0))[0]))[:top]:
        (ta, na), (tb, nb) = a.get(k, (0.0, 0)), b.get(k, (0.0, 0))
        print(f"| {k} | {ta:.1f} | {na} | {tb:.1f} | {nb} |")


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
    p.add_argument("--profile", type=int, default=0, metavar="STEPS",
                   help="instead of timing, profile STEPS steps of each and print the ops that differ")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = {name: build(name, args) for name in ("ddae", "ddaepp")}
    x = torch.rand(args.batch, args.channels, args.image_size, args.image_size, device=args.device) * 2 - 1
    labels = torch.zeros(args.batch, dtype=torch.long, device=args.device)
    if args.profile:
        profile_ops(runs, x, labels, args.profile)
        return
    times: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}  # process CPU time, all threads
    for r in range(args.warmup + args.repeats):
        order = list(runs) if r % 2 == 0 else list(runs)[::-1]
        for name in order:
            t0, c0 = time.perf_counter(), time.process_time()
            step(*runs[name], x, labels)
            if r >= args.warmup:
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    med = {name: statistics.median(v) * 1e3 for name, v in times.items()}
    med_cpu = {name: statistics.median(v) * 1e3 for name, v in cpu.items()}
    low_cpu = {name: min(v) * 1e3 for name, v in cpu.items()}  # least disturbed step
    n_params = {name: sum(p.numel() for p in m.net.parameters()) for name, (m, _) in runs.items()}
    print(f"{args.arch} {args.preset} {args.image_size}px batch {args.batch} on {args.device} "
          f"({args.repeats} interleaved repeats)")
    for name in runs:
        print(f"  {name:7s} median train step {med[name]:8.1f} ms wall, {med_cpu[name]:8.1f} ms CPU   "
              f"params {n_params[name]:,}")
    print(f"train-step time ratio ddaepp/ddae: {med['ddaepp'] / med['ddae']:.3f} wall, "
          f"{med_cpu['ddaepp'] / med_cpu['ddae']:.3f} CPU, {low_cpu['ddaepp'] / low_cpu['ddae']:.3f} "
          f"fastest-step CPU (target <= 1.02)")
    print(f"parameter ratio ddaepp/ddae: {n_params['ddaepp'] / n_params['ddae']:.4f}")


if __name__ == "__main__":
    main()
