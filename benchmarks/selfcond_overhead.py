"""Cost of ddaepp (self-conditioning) over ddae (baseline) for the same preset: parameters,
training FLOPs and train-step time.

    python benchmarks/selfcond_overhead.py --arch dit --preset DiT-S/2 --image-size 32 --batch 16
    python benchmarks/selfcond_overhead.py --all-presets --repeats 0   # counts only, 4 presets

Both methods are built from the same config except the method name.

* Parameter ratio: parameters of the two denoisers.
* FLOP ratio: ``torch.utils.flop_counter.FlopCounterMode`` over one training step's forward and
  backward (``training_loss`` + ``loss.backward()``) at ``--flops-batch`` images (default 1;
  FLOPs are linear in the batch). It counts matmul / conv / attention FLOPs (elementwise ops,
  pooling and the optimiser are not counted). Neither ratio depends on machine load; the issue 12
  requirement is <= 1.010 for both on DiT-S/2, DiT-B/2, DDPM++-56.5M and UViT-S/2.
* Time ratio: one full training step (diffusion loss, backward, AdamW step, EMA update) of each
  arm timed alternately, the order flipping every repeat, so load drifts hit both alike; medians
  (``--repeats 0`` skips timing). On a shared CPU this ratio is noisy (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssl_diffusion.config import load_config
from ssl_diffusion.data.info import DataInfo
from ssl_diffusion.registry import METHODS

# The four presets of the issue 12 overhead requirement: (arch, preset).
PRESETS = [("dit", "DiT-S/2"), ("dit", "DiT-B/2"), ("unet", "DDPM++-56.5M"), ("uvit", "UViT-S/2")]


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


def count_flops(m, x: torch.Tensor, labels: torch.Tensor) -> int:
    """Matmul/conv/attention FLOPs of one training step's forward + backward."""
    with FlopCounterMode(display=False) as counter:
        out = m.training_loss([x], labels)
        out["loss"].backward()
    m.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def count_ratios(runs: dict, args: argparse.Namespace) -> dict[str, float]:
    """Parameter and FLOP counts of both arms and their ratios ddaepp/ddae."""
    n = args.flops_batch
    x = torch.rand(n, args.channels, args.image_size, args.image_size, device=args.device) * 2 - 1
    labels = torch.zeros(n, dtype=torch.long, device=args.device)
    params = {name: sum(p.numel() for p in m.net.parameters()) for name, (m, _) in runs.items()}
    flops = {name: count_flops(m, x, labels) for name, (m, _) in runs.items()}
    return {"params_ddae": params["ddae"], "params_ddaepp": params["ddaepp"],
            "param_ratio": params["ddaepp"] / params["ddae"], "flops_ddae": flops["ddae"],
            "flops_ddaepp": flops["ddaepp"], "flop_ratio": flops["ddaepp"] / flops["ddae"]}


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


def time_steps(runs: dict, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Median wall / CPU ms per train step of each arm, interleaved (order flips each repeat)."""
    x = torch.rand(args.batch, args.channels, args.image_size, args.image_size, device=args.device) * 2 - 1
    labels = torch.zeros(args.batch, dtype=torch.long, device=args.device)
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
    return {name: {"wall_ms": statistics.median(times[name]) * 1e3,
                   "cpu_ms": statistics.median(cpu[name]) * 1e3,
                   "fastest_cpu_ms": min(cpu[name]) * 1e3} for name in runs}


def measure(args: argparse.Namespace) -> dict:
    runs = {name: build(name, args) for name in ("ddae", "ddaepp")}
    row = {"arch": args.arch, "preset": args.preset, **count_ratios(runs, args)}
    if args.repeats > 0:
        t = time_steps(runs, args)
        row.update({"ms_ddae": t["ddae"]["wall_ms"], "ms_ddaepp": t["ddaepp"]["wall_ms"],
                    "time_ratio": t["ddaepp"]["wall_ms"] / t["ddae"]["wall_ms"],
                    "cpu_ratio": t["ddaepp"]["cpu_ms"] / t["ddae"]["cpu_ms"],
                    "fastest_cpu_ratio": t["ddaepp"]["fastest_cpu_ms"] / t["ddae"]["fastest_cpu_ms"]})
    return row


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    timed = args.repeats > 0
    print(f"\n{args.image_size}px, {args.channels} ch, FLOPs at batch {args.flops_batch} (forward + "
          f"backward)" + (f", time at batch {args.batch}, {args.repeats} interleaved repeats on "
                          f"{args.device}" if timed else ""))
    head = "| preset | params ddae | params ddaepp | param ratio | GFLOPs ddae | GFLOPs ddaepp | FLOP ratio |"
    print(head + (" time ratio (wall) | CPU ratio |" if timed else ""))
    print("|---" * (head.count("|") - 1 + (2 if timed else 0)) + "|")
    for r in rows:
        line = (f"| {r['preset']} | {r['params_ddae']:,} | {r['params_ddaepp']:,} | {r['param_ratio']:.4f} | "
                f"{r['flops_ddae'] / 1e9:.4f} | {r['flops_ddaepp'] / 1e9:.4f} | {r['flop_ratio']:.5f} |")
        if timed:
            line += f" {r['time_ratio']:.3f} | {r['cpu_ratio']:.3f} |"
        print(line, flush=True)
    ok = all(r["param_ratio"] <= 1.010 and r["flop_ratio"] <= 1.010 for r in rows)
    print(f"param ratio and FLOP ratio <= 1.010 for every preset: {'yes' if ok else 'NO'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="dit", choices=["dit", "unet", "uvit"])
    p.add_argument("--preset", default="DiT-S/2")
    p.add_argument("--all-presets", action="store_true",
                   help="DiT-S/2, DiT-B/2, DDPM++-56.5M and UViT-S/2 (ignores --arch/--preset)")
    p.add_argument("--objective", default="flow", choices=["ddpm", "edm", "flow"])
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--flops-batch", type=int, default=1, help="images in the FLOP-counted step")
    p.add_argument("--repeats", type=int, default=10, help="timed repeats (0: counts only)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0 = default)")
    p.add_argument("--profile", type=int, default=0, metavar="STEPS",
                   help="instead of timing, profile STEPS steps of each and print the ops that differ")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.profile:
        runs = {name: build(name, args) for name in ("ddae", "ddaepp")}
        x = torch.rand(args.batch, args.channels, args.image_size, args.image_size, device=args.device) * 2 - 1
        profile_ops(runs, x, torch.zeros(args.batch, dtype=torch.long, device=args.device), args.profile)
        return
    presets = PRESETS if args.all_presets else [(args.arch, args.preset)]
    rows = []
    for arch, preset in presets:
        args.arch, args.preset = arch, preset
        rows.append(measure(args))
    print_table(rows, args)


if __name__ == "__main__":
    main()
