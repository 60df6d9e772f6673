"""Forward+backward speed of our DiT vs the reference facebookresearch/DiT ``models.py``.

The reference is loaded from a path you supply (it is never vendored here) and needs ``timm``:

    git clone https://github.com/facebookresearch/DiT /tmp/DiT && pip install timm
    python benchmarks/dit_reference_speed.py --ref /tmp/DiT/models.py

Both models get the same size (default DiT-S/2 on 32x32 inputs with 4 channels, the 256 px
latent setting) and the same weights: the reference is randomised (its adaLN-Zero and output
layers start at zero, which would make the equivalence check vacuous) and copied into ours,
and the script first prints the largest output difference. Timings interleave the two models
repeat by repeat and report medians, so drifts in machine load hit both alike.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssl_diffusion.models import ModelConfig, build_denoiser, count_params
from ssl_diffusion.models.presets import DIT_PRESETS

# Reference state-dict key -> our key (everything else has the same name).
RENAMES = [
    (r"^x_embedder\.", "x_embed."),
    (r"^t_embedder\.", "t_embed."),
    (r"^y_embedder\.embedding_table\.", "y_embed.table."),
    (r"\.adaLN_modulation\.1\.", ".adaLN."),
    (r"^final_layer\.", "final."),
]


def load_reference(path: str):
    if importlib.util.find_spec("timm") is None:
        sys.exit("error: the reference DiT needs timm; install it with `pip install timm`")
    if not Path(path).is_file():
        sys.exit(f"error: --ref {path} is not a file; point it at DiT's models.py")
    spec = importlib.util.spec_from_file_location("reference_dit_models", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def copy_reference_weights(ref: torch.nn.Module, ours: torch.nn.Module) -> None:
    state = {}
    for key, value in ref.state_dict().items():
        if key == "pos_embed":
            continue  # ours recomputes the same fixed sin-cos table (checked below)
        for pattern, repl in RENAMES:
            key = re.sub(pattern, repl, key)
        state[key] = value
    ours.load_state_dict(state, strict=True)


def step_time(fn, sync) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call. On a shared CPU the CPU time is the
    steadier number: it does not count the time the process waits for a core."""
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    sync()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", required=True, help="path to facebookresearch/DiT models.py")
    parser.add_argument("--preset", default="DiT-S/2", choices=sorted(DIT_PRESETS))
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    size = DIT_PRESETS[args.preset]
    reference = load_reference(args.ref)
    torch.manual_seed(0)
    ref = reference.DiT(
        input_size=args.image_size,
        patch_size=size["patch_size"],
        in_channels=args.channels,
        hidden_size=size["width"],
        depth=size["depth"],
        num_heads=size["heads"],
        class_dropout_prob=0.1,
        num_classes=args.num_classes,
        learn_sigma=False,
    )
    ours = build_denoiser(
        ModelConfig(arch="dit", preset=args.preset),
        None,
        in_channels=args.channels,
        image_size=args.image_size,
        num_classes=args.num_classes,
    )
    with torch.no_grad():
        for p in ref.parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn_like(p))
    copy_reference_weights(ref, ours)
    ref, ours = ref.to(device), ours.to(device)

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, args.channels, args.image_size, args.image_size, generator=gen)
    t = torch.randint(0, 1000, (args.batch,), generator=gen).float()
    t_ours = t / 1000.0  # our denoisers take O(1) noise labels and scale them by 1000 inside
    y = torch.randint(0, args.num_classes, (args.batch,), generator=gen)
    x, t, y = x.to(device), t.to(device), y.to(device)

    ref.eval()
    ours.eval()
    with torch.no_grad():
        diff = (ours(x, t_ours, y).pred - ref(x, t, y)).abs().max().item()
        pos_diff = (ours.pos_embed - ref.pos_embed).abs().max().item()
    ref.train()  # no dropout in either; the reference also drops labels (CFG) in train mode
    ours.train()

    def run_ref():
        ref.zero_grad(set_to_none=True)
        ref(x, t, y).square().mean().backward()

    def run_ours():
        ours.zero_grad(set_to_none=True)
        ours(x, t_ours, y).pred.square().mean().backward()

    for _ in range(args.warmup):
        run_ref()
        run_ours()
    times = {"ours": [], "reference": []}
    for r in range(args.repeats):  # alternate who goes first
        order = [("ours", run_ours), ("reference", run_ref)]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            times[name].append(step_time(fn, sync))

    wall = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, device {device}"
    )
    print(
        f"{args.preset} @ {args.image_size}px x{args.channels}ch, batch {args.batch}, "
        f"params ours {count_params(ours):,} / reference "
        f"{sum(p.numel() for p in ref.parameters() if p.requires_grad):,}"
    )
    print(f"max |ours - reference| output {diff:.2e}, pos-embed {pos_diff:.2e}")
    for name in ("ours", "reference"):
        spread = ", ".join(f"{w * 1e3:.0f}" for w in sorted(w for w, _ in times[name]))
        print(
            f"{name:>9}: median fwd+bwd wall {wall[name] * 1e3:.1f} ms, "
            f"cpu {cpu[name] * 1e3:.1f} ms  (sorted wall ms: {spread})"
        )
    print(f"ratio ours/reference (wall): {wall['ours'] / wall['reference']:.3f}")
    if device.type == "cpu":
        print(f"ratio ours/reference (cpu time): {cpu['ours'] / cpu['reference']:.3f}")


if __name__ == "__main__":
    main()
