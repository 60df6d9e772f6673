"""Throughput probe of the node run: FLOPs per training step, step time, evaluation costs.

Before any arm trains, ``probe`` builds the ddae recipe's method on the node's device and measures,
on synthetic batches of the real shape:

* FLOPs of one eager training step (diffusion loss forward + backward), counted by
  ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention; elementwise ops
  are not counted, as in the usual MFU convention);
* the compile time (the first steps after ``compile_networks``) and the steady step time with bf16
  autocast (CUDA only; on CPU the step runs in float32, eager);
* images/s of feature extraction and of sampling, and the time of one linear-probe epoch and one
  kNN evaluation on features of the real size: the inputs of the step-count plan (``plan.py``).

MFU = FLOPs per step x steps per second / the GPU's dense bf16 peak (``PEAK_BF16_TFLOPS``, or the
figure passed with ``--peak-tflops``); the peak used is written beside the number.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s. Matched by
# substring of torch.cuda.get_device_name(), first match wins.
PEAK_BF16_TFLOPS = [
    ("H200", 989.4, "NVIDIA H200 SXM data sheet: 1,979 TFLOPS bf16 with sparsity, 989 dense"),
    ("H100 PCIe", 756.0, "NVIDIA H100 PCIe data sheet: 1,513 with sparsity, 756 dense"),
    ("H100", 989.4, "NVIDIA H100 SXM data sheet: 1,979 TFLOPS bf16 with sparsity, 989 dense"),
    ("A100", 312.0, "NVIDIA A100 data sheet: 312 TFLOPS bf16 dense"),
    ("L40S", 362.0, "NVIDIA L40S data sheet: 733 with sparsity, 362 dense"),
]


@dataclass
class PeakAssumption:
    tflops: float | None  # dense bf16 peak used for MFU; None = unknown (no MFU)
    source: str  # where the figure comes from


@dataclass
class ProbeResult:
    device: str
    batch_size: int
    flops_per_step: int  # counted by FlopCounterMode, one eager training step (fwd + bwd)
    compiled: bool  # torch.compile used (False on CPU or when compiling failed)
    compile_error: str | None
    compile_s: float  # warm-up steps after compile_networks (includes compilation)
    step_s: float  # steady seconds per training step (median of the timed steps)
    train_images_per_s: float
    feature_images_per_s: float  # extract_features at eval batch size
    sample_images_per_s: float  # full sampler (recipe's steps) at the sampling batch size
    probe_epoch_s: float  # one linear-probe epoch on (n_train, D) features
    knn_s: float  # one kNN evaluation, n_train bank x n_val queries
    wall_s: float


def peak_for(gpu: str | None, given: float | None) -> PeakAssumption:
    if given is not None:
        return PeakAssumption(given, "given with --peak-tflops")
    for key, tflops, source in PEAK_BF16_TFLOPS:
        if gpu and key in gpu:
            return PeakAssumption(tflops, source)
    return PeakAssumption(None, f"no dense bf16 peak known for {gpu or 'this device (no GPU)'}; "
                                f"pass --peak-tflops")


def mfu(flops_per_step: int, steps_per_s: float, peak: PeakAssumption) -> float | None:
    """Model FLOPs utilisation: counted FLOPs per step x steps/s / peak FLOP/s."""
    if peak.tflops is None or steps_per_s <= 0:
        return None
    return flops_per_step * steps_per_s / (peak.tflops * 1e12)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def count_step_flops(method: Any, x: torch.Tensor, labels: torch.Tensor) -> int:
    """FLOPs of one eager training step (loss forward + backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        method.training_loss([x], labels)["loss"].backward()
    method.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def probe(cfg: Any, info: Any, device: torch.device, *, steps: int, compile_net: bool,
          n_train: int, n_val: int, gen_batch: int, eval_batch: int) -> ProbeResult:
    """Measure the ddae recipe ``cfg`` on ``device`` (see the module docstring)."""
    from ssl_diffusion.app.evaluate import knn_on_features, linear_on_features
    from ssl_diffusion.app.generation import sampler_config
    from ssl_diffusion.app.pretrain import build_method
    from ssl_diffusion.eval.features import FeatureSet

    start = time.perf_counter()
    torch.manual_seed(0)
    method = build_method(cfg, info).to(device)
    b = cfg.data.batch_size
    shape = (info.channels, info.image_size, info.image_size)
    x = torch.rand(b, *shape, device=device) * 2 - 1  # (B, C, H, W) in [-1, 1]
    labels = torch.randint(0, info.num_classes, (b,), device=device)
    flops = count_step_flops(method, x, labels)
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-4)
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> None:
        with amp:
            loss = method.training_loss([x], labels)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    compiled, error = False, None
    if compile_net:
        try:
            method.compile_networks()
            compile_s = _timed(lambda: [step() for _ in range(2)], device)
            compiled = True
        except Exception as exc:  # noqa: BLE001 - no compiler on the node: train eagerly
            text = str(exc).strip()
            error = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
            method = build_method(cfg, info).to(device)
            opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-4)
    if not compiled:
        compile_s = _timed(lambda: [step() for _ in range(2)], device)
    times = sorted(_timed(step, device) for _ in range(max(steps, 1)))
    step_s = times[len(times) // 2]

    # evaluation loads the checkpoint into an eager float32 model: time that, not the compiled one
    eager = build_method(cfg, info).to(device).eval()
    xe = torch.rand(eval_batch, *shape, device=device) * 2 - 1  # (B, C, H, W)
    eager.extract_features(xe)  # warm-up (allocator, cuBLAS handles)
    feature_ips = eval_batch / _timed(lambda: eager.extract_features(xe), device)
    scfg = sampler_config(cfg.sampler)
    seeds = list(range(gen_batch))
    sample_s = _timed(lambda: eager.generate(seeds, sampler_config(scfg, steps=2)), device)
    sample_ips = gen_batch / (sample_s * max(scfg.steps, 1) / 2)

    d = eager.feature_dim
    g = torch.Generator().manual_seed(0)
    train = FeatureSet(torch.randn(n_train, d, generator=g).numpy(),
                       torch.randint(0, info.num_classes, (n_train,), generator=g).numpy())
    val = FeatureSet(torch.randn(n_val, d, generator=g).numpy(),
                     torch.randint(0, info.num_classes, (n_val,), generator=g).numpy())
    one_epoch = dataclasses.replace(cfg.eval.linear, epochs=1, warmup_epochs=0)
    probe_epoch_s = _timed(lambda: linear_on_features(train, {"val": val}, info.num_classes,
                                                      one_epoch, device), device)
    knn_s = _timed(lambda: knn_on_features(train, {"val": val}, info.num_classes, cfg.eval.knn,
                                           device=device), device)
    return ProbeResult(
        device=str(device), batch_size=b, flops_per_step=flops, compiled=compiled,
        compile_error=error, compile_s=round(compile_s, 3), step_s=step_s,
        train_images_per_s=b / step_s, feature_images_per_s=feature_ips,
        sample_images_per_s=sample_ips, probe_epoch_s=probe_epoch_s, knn_s=knn_s,
        wall_s=round(time.perf_counter() - start, 2))


__all__ = ["PEAK_BF16_TFLOPS", "PeakAssumption", "ProbeResult", "count_step_flops", "mfu",
           "peak_for", "probe"]
