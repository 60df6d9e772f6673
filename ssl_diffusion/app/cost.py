"""Estimated training cost (GPU-hours) of a recipe, for ``main_pretrain.py --dry-run``.

``THROUGHPUT`` holds training images per second per GPU for the presets the ImageNet-256
recipes use. Every figure is an ESTIMATE unless its ``source`` says "measured": it is derived
from the forward compute per image (DiT paper Table 4 "Gflops" for the DiT-B/L/XL sizes at 256
tokens, which are multiply-accumulates: 24 x (12 D^2 T + 2 T^2 D) = 80.5 G for L/2, so FLOPs are
twice that; LightningDiT's SwiGLU at 2/3 width keeps them), times 3 for forward + backward, at an
assumed 35% bf16 utilisation of an A100 (312 TFLOP/s peak) or H100 (989 TFLOP/s). The EMA
update, data loading and the ~1% of self-conditioning are ignored; contrastive
self-distillation adds two truncated passes (``CSD_FACTOR``). Treat the result as an order of
magnitude and replace the entries with measured ones (``benchmarks/``) when you have them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MFU = 0.35  # assumed model-FLOP utilisation (bf16)
PEAK_TFLOPS = {"A100": 312.0, "H100": 989.0}  # dense bf16
CSD_FACTOR = 1.6  # contrastive self-distillation: diffusion pass + 2 truncated passes [INF]
IMAGENET_TRAIN = 1_281_167  # ImageNet-1k training images


@dataclass(frozen=True)
class Throughput:
    gmacs_fwd: float  # forward multiply-accumulates per image, in G (256 tokens)
    source: str  # where the figure comes from; "measured" only for measured figures

    def images_per_s(self, gpu: str) -> float:
        flops = 3 * 2 * self.gmacs_fwd * 1e9  # forward + backward, 2 FLOPs per MAC
        return PEAK_TFLOPS[gpu] * 1e12 * MFU / flops


# DiT Table 4: B/2 23.01, L/2 80.71, XL/2 118.64 G(MAC) at 32x32x4 latents (256 tokens); the
# patch-1 presets on 16x16 latents (VA-VAE f16) also have 256 tokens, so the same figure.
THROUGHPUT: dict[str, Throughput] = {
    "LightningDiT-B/1": Throughput(23.0, "estimated from DiT-B/2 compute (DiT Table 4), not measured"),
    "LightningDiT-B/2": Throughput(23.0, "estimated from DiT-B/2 compute (DiT Table 4), not measured"),
    "LightningDiT-L/1": Throughput(80.7, "estimated from DiT-L/2 compute (DiT Table 4), not measured"),
    "LightningDiT-L/2": Throughput(80.7, "estimated from DiT-L/2 compute (DiT Table 4), not measured"),
    "DiT-B/2": Throughput(23.0, "estimated from DiT Table 4, not measured"),
    "DiT-L/2": Throughput(80.7, "estimated from DiT Table 4, not measured"),
    "DiT-XL/2": Throughput(118.6, "estimated from DiT Table 4, not measured"),
}


def train_images(cfg: Any, dataset_size: int) -> int:
    """Images the run will process: max_steps x global batch, or max_epochs x dataset."""
    t = cfg.trainer
    global_batch = cfg.data.batch_size * t.devices * t.num_nodes
    if t.max_steps is not None:
        return t.max_steps * global_batch
    usable = round(dataset_size * (1 - cfg.data.val_fraction))
    return t.max_epochs * (usable // global_batch) * global_batch


def estimate(cfg: Any, dataset_size: int = IMAGENET_TRAIN) -> dict[str, Any] | None:
    """GPU-hours on A100 and H100 for ``cfg`` (None when its preset has no entry)."""
    entry = THROUGHPUT.get(cfg.model.preset)
    if entry is None or cfg.method not in ("ddae", "ddaepp"):
        return None
    images = train_images(cfg, dataset_size)
    factor = CSD_FACTOR if cfg.contrastive.weight > 0 else 1.0
    hours = {gpu: images * factor / entry.images_per_s(gpu) / 3600 for gpu in PEAK_TFLOPS}
    devices = cfg.trainer.devices * cfg.trainer.num_nodes
    return {"preset": cfg.model.preset, "train_images": images, "dataset_size": dataset_size,
            "gpu_hours": hours, "wall_hours_on_devices": {g: h / devices for g, h in hours.items()},
            "devices": devices, "source": entry.source, "mfu_assumed": MFU}


def format_estimate(est: dict[str, Any] | None) -> str:
    if est is None:
        return "# cost: no throughput entry for this preset (see ssl_diffusion/app/cost.py)"
    gh, wh = est["gpu_hours"], est["wall_hours_on_devices"]
    return (f"# cost (ESTIMATED, {est['source']}; MFU {est['mfu_assumed']:.0%} assumed): "
            f"{est['train_images'] / 1e6:.1f}M training images of {est['preset']} = "
            f"{gh['A100']:.0f} A100 GPU-hours ({wh['A100']:.1f} h on {est['devices']}) or "
            f"{gh['H100']:.0f} H100 GPU-hours ({wh['H100']:.1f} h on {est['devices']})")


def dry_run_estimate(cfg: Any) -> str:
    """The cost line of ``--dry-run``: the dataset size is read from the latent manifest when
    ``data.root`` holds extracted latents, else ImageNet-1k's for the latent recipes."""
    from pathlib import Path

    size = IMAGENET_TRAIN
    manifest = Path(cfg.data.root).expanduser() / "train" / "manifest.json"
    if cfg.data.name == "latents" and manifest.is_file():
        import json

        size = int(json.loads(manifest.read_text()).get("num_images", size))
    elif cfg.data.name != "latents":
        return "# cost: estimates exist for the ImageNet-256 latent recipes only (ssl_diffusion/app/cost.py)"
    return format_estimate(estimate(cfg, size))


__all__ = ["THROUGHPUT", "Throughput", "dry_run_estimate", "estimate", "format_estimate", "train_images"]
