"""The node half of the air-gapped replication (``benchmarks/gpu_compare.py --node``).

On one GPU node with a fixed stack (no lightly, faiss, wandb or FID packages; no package index),
within a wall-clock budget (600 s by default, start to finish):

1. unpack the kit (``kit.py``) into torchvision's layout under ``--work``;
2. probe the ddae recipe's throughput (``probe.py``) and plan the step count (``plan.py``);
3. for seed 0, then seed 1: train ddae and ddaepp (``recipes/fmnist_paired/``; same seed = same
   base init, data order and noise) with bf16 autocast and torch.compile (CUDA), then per arm run
   the layer x noise sweep with kNN and the linear probe (cells chosen on validation, the chosen
   cell reported on test; the project's ``app.evaluate.run_sweep``) and draw ``--n-samples``
   images from the EMA weights, image i from seed i, quantised to uint8;
4. write at most 8 files to ``$OUT``: ``node_metrics.json``, ``environment.json``,
   ``node_log.txt`` and one ``samples-<arm>-s<seed>.npz`` per arm (compressed; ``images`` uint8
   (N, C, H, W), ``seeds``, and the sweep's test predictions as ``pred__*`` for McNemar).

A watchdog writes what exists and exits 3 shortly before the budget ends, so the command always
ends in time and always leaves its metrics and log. FID/KID are not computed here (the node has
no Inception package): ``gpu_compare.py --collect`` does that on the CPU.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.gpu_kit.kit import read_kit, unpack_kit
from benchmarks.gpu_kit.plan import EvalWork, eval_seconds, plan_steps
from benchmarks.gpu_kit.probe import count_step_flops, mfu, peak_for, probe
from ssl_diffusion.atomic import atomic_write, atomic_write_text
from ssl_diffusion.errors import UserError

REPO = Path(__file__).resolve().parents[2]
# arm A, arm B: the paired Fashion-MNIST recipes (issue 12; max_steps is set by the plan)
RECIPES = ["recipes/fmnist_paired/ddae_dit.yaml", "recipes/fmnist_paired/ddaepp_dit.yaml"]
METRICS_FILE, ENV_FILE, LOG_FILE = "node_metrics.json", "environment.json", "node_log.txt"
MAX_OUT_FILES, MAX_FILE_MIB = 8, 16
# --tiny: a CPU simulation of the whole path in about a minute (tiny DiT, a few steps)
TINY = ["model.preset=DiT-tiny", "model.patch_size=4", "eval.knn.k=[5]", "eval.knn.report_k=5",
        "eval.linear.epochs=2", "eval.linear.warmup_epochs=0", "eval.features.layer=block3",
        "selfcond.source_layer=block1", "sampler.steps=2", "optim.warmup_steps=0"]


@dataclass
class NodeOptions:
    kit: Path
    out: Path  # $OUT: at most 8 files come back from it
    work: Path  # run directories and the unpacked data (not brought back)
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    budget_s: float = 600.0  # the whole command, start to finish
    margin_s: float = 45.0  # planned end = budget - margin (interpreter exit, file writes)
    tiny: bool = False
    n_samples: int = 5000
    batch_size: int = 256  # training batch on the GPU (the CPU recipe uses 128)
    num_workers: int = 8  # data-loader workers per loader (the node has 16 cores)
    probe_steps: int = 20
    min_steps: int = 50
    efficiency: float = 0.8  # planned training step time = probe step time / efficiency
    safety: float = 1.5  # planned evaluation time = estimate x safety
    sweep_layers: list[str] = field(
        default_factory=lambda: ["block3", "block5", "block6", "block7"])
    sweep_noises: list[float] = field(default_factory=lambda: [0.05, 0.15])
    peak_tflops: float | None = None  # dense bf16 peak for MFU; None = from the GPU's name
    command: str = ""
    started: float | None = None  # time.monotonic() at process start (the budget counts from it)


class Tee:
    """A text stream that writes to the original stream and to the log file."""

    def __init__(self, stream: Any, log: Any) -> None:
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.log.write(text)
        self.log.flush()
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()
        self.log.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


class NodeReport:
    """The metrics and environment of the run, rewritten atomically after every stage (and by
    the watchdog), so ``$OUT`` always holds the latest complete JSON."""

    def __init__(self, out: Path, start: float) -> None:
        self.out, self.start = out, start
        self.lock = threading.RLock()
        self.metrics: dict[str, Any] = {"kind": "gpu_compare_node", "format": 1,
                                        "status": "running", "runs": [], "skipped": [],
                                        "timeline": []}
        self.env: dict[str, Any] = {}

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def event(self, text: str) -> None:
        with self.lock:
            self.metrics["timeline"].append({"t_s": round(self.elapsed(), 1), "event": text})
        print(f"[node {self.elapsed():6.1f} s] {text}", flush=True)

    def write(self, status: str | None = None) -> None:
        with self.lock:
            if status is not None:
                self.metrics["status"] = status
            self.metrics["elapsed_s"] = round(self.elapsed(), 1)
            metrics = json.dumps(self.metrics, indent=2, default=str) + "\n"
            env = json.dumps(self.env, indent=2, default=str) + "\n"
            atomic_write_text(self.out / METRICS_FILE, metrics)
            atomic_write_text(self.out / ENV_FILE, env)


def _error_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _stage(run: dict, name: str, fn: Callable[[], Any], report: NodeReport) -> Any:
    """Run one stage of an arm; a failure is recorded in the run and the next stage still runs."""
    t0 = time.monotonic()
    try:
        result = fn()
    except Exception as exc:  # noqa: BLE001 - one failing stage must not lose the other arms
        run.setdefault("errors", {})[name] = _error_line(exc)
        run["status"] = "failed"
        traceback.print_exc()
        report.event(f"{run['name']}: {name} FAILED: {_error_line(exc)}")
        return None
    run.setdefault("stage_s", {})[name] = round(time.monotonic() - t0, 2)
    return result


def _overrides(opts: NodeOptions, data_root: Path, cuda: bool, compiled: bool) -> list[str]:
    common = [f"data.root={data_root}", f"run.root={opts.work / 'runs'}",
              "logger.wandb.enabled=false", "trainer.progress_bar=false", "eval.online_knn=false",
              "eval.online_linear=false", "run.overwrite=true"]
    if opts.tiny:
        return [*common, *TINY, "data.batch_size=8", "data.num_workers=0",
                "trainer.accelerator=cpu"]
    device = (["trainer.accelerator=gpu", "trainer.devices=1", "trainer.precision=bf16-mixed",
               f"trainer.compile={str(compiled).lower()}"] if cuda else ["trainer.accelerator=cpu"])
    # last.ckpt (weights, EMA, AdamW: ~90 MB) every 2000 steps, not the recipe's 50: at GPU speed
    # the recipe's interval would write it every few seconds; it is always written at the end
    return [*common, *device, f"data.batch_size={opts.batch_size}",
            f"data.num_workers={opts.num_workers}", "trainer.last_ckpt_every_n_steps=2000"]


PRED_PREFIX = "pred__"  # samples-*.npz keys carrying the sweep's test predictions (McNemar)


def save_samples(path: Path, images: np.ndarray, seeds: list[int],
                 predictions: dict[str, np.ndarray] | None = None) -> Path:
    """uint8 (N, C, H, W) images, their seeds and (optionally) the sweep's test-set predictions
    (``PRED_PREFIX`` + key of ``predictions/sweep.npz``) as one compressed ``.npz``: the node
    brings back at most 8 files, so each arm's per-example outputs travel together."""
    extra = {PRED_PREFIX + k: v for k, v in (predictions or {}).items()}
    return atomic_write(path, lambda f: np.savez_compressed(
        f, images=images, seeds=np.asarray(seeds, dtype=np.int64), **extra))


def _samples(ckpt: Path, n: int, batch: int, path: Path) -> dict:
    """Generate, then save with the sweep's test predictions when the sweep wrote them."""
    from ssl_diffusion.app.generation import generate_uint8, generation_protocol
    from ssl_diffusion.app.loading import load_method

    loaded = load_method(ckpt)
    method = loaded.method.to("cuda" if torch.cuda.is_available() else "cpu")
    seeds = list(range(loaded.cfg.eval.fid.seed, loaded.cfg.eval.fid.seed + n))
    t0 = time.monotonic()
    images = torch.cat(list(generate_uint8(method, seeds, loaded.cfg.sampler, batch_size=batch,
                                           use_ema=True, progress=False))).numpy()
    seconds = time.monotonic() - t0
    pred_file = ckpt.parent / "predictions" / "sweep.npz"
    predictions = None
    if pred_file.is_file():
        with np.load(pred_file) as z:
            predictions = {k: z[k] for k in z.files}
    save_samples(path, images, seeds, predictions)
    return {"file": path.name, "n": n, "shape": list(images.shape), "time_s": round(seconds, 2),
            "predictions": sorted(predictions or {}),
            "images_per_s": round(n / seconds, 1),
            "protocol": generation_protocol(method, seeds, loaded.cfg.sampler, True, None)}


def _sweep_summary(entry: dict) -> dict:
    keep = ("selection", "metric", "select_by", "noise_unit", "use_ema", "seed", "knn", "linear",
            "split_sizes", "dataset", "chosen_features")
    protocol = {k: v for k, v in entry["protocol"].items() if k in keep}
    return {"chosen": entry["chosen"], "grid": entry["grid"], "layers": entry["layers"],
            "noises": entry["noises"], "protocol": protocol,
            "wall_time_s": entry.get("wall_time_s")}


def run_arm(recipe: str, seed: int, steps: int, overrides: list[str], opts: NodeOptions,
            report: NodeReport, flops_per_step: int | None) -> dict:
    from ssl_diffusion.app.evaluate import run_sweep
    from ssl_diffusion.app.pretrain import pretrain
    from ssl_diffusion.config import load_config

    stem = Path(recipe).stem
    run: dict[str, Any] = {"recipe": recipe, "seed": seed, "name": f"{stem}-s{seed}",
                           "status": "ok", "flops_per_step": flops_per_step}
    with report.lock:
        report.metrics["runs"].append(run)
    cfg = load_config(REPO / recipe, [*overrides, f"seed={seed}", f"run.name={run['name']}",
                                      f"trainer.max_steps={steps}"])
    run["method"] = cfg.method
    report.event(f"{run['name']}: training {steps} steps")
    pre = _stage(run, "train", lambda: pretrain(cfg, str(REPO / recipe)), report)
    report.write()
    if pre is None:
        return run
    run["pretrain"] = {k: pre[k] for k in ("steps", "images_seen", "params", "train_wall_time_s")}
    run["pretrain"]["images_per_s"] = pre["images_seen"] / max(pre["train_wall_time_s"], 1e-9)
    ckpt = Path(pre["run_dir"]) / "last.ckpt"
    gpu = torch.cuda.is_available()
    report.event(f"{run['name']}: sweep {opts.sweep_layers} x {opts.sweep_noises}")
    sweep = _stage(run, "sweep", lambda: run_sweep(
        ckpt, layers=opts.sweep_layers, noises=opts.sweep_noises, metric="both", progress=False,
        batch_size=2048 if gpu else 64, cache=False), report)
    if sweep is not None:
        run["sweep"] = _sweep_summary(sweep)
    report.write()
    report.event(f"{run['name']}: sampling {opts.n_samples} images")
    path = opts.out / f"samples-{run['name']}.npz"
    samples = _stage(run, "samples",
                     lambda: _samples(ckpt, opts.n_samples, 1000 if gpu else 8, path), report)
    if samples is not None:
        run["samples"] = samples
    report.write()
    return run


def environment(report: NodeReport, probe_result: Any, peak: Any, cuda: bool) -> dict:
    from ssl_diffusion.app.compare import environment as base_environment

    env = base_environment()
    steps_per_s = 1.0 / probe_result.step_s
    env.update({
        "cuda_build": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
        "bf16_autocast": cuda, "torch_compile": probe_result.compiled,
        "compile_error": probe_result.compile_error,
        "train_images_per_s_probe": round(probe_result.train_images_per_s, 1),
        "steps_per_s_probe": round(steps_per_s, 3),
        "flops_per_step": probe_result.flops_per_step,
        "flops_counted_by": "torch.utils.flop_counter.FlopCounterMode, one eager ddae training "
                            "step (forward + backward of the diffusion loss)",
        "peak_bf16_tflops_assumed": peak.tflops, "peak_source": peak.source,
        "mfu_probe": mfu(probe_result.flops_per_step, steps_per_s, peak),
        "mfu_definition": "FLOPs per training step x steps per second / dense bf16 peak",
    })
    return env


def _arm_throughput(report: NodeReport, peak: Any) -> list[dict]:
    rows = []
    for run in report.metrics["runs"]:
        pre = run.get("pretrain")
        if not pre:
            continue
        steps_per_s = pre["steps"] / max(pre["train_wall_time_s"], 1e-9)
        rows.append({"run": run["name"], "train_images_per_s": round(pre["images_per_s"], 1),
                     "steps_per_s": round(steps_per_s, 3),
                     "mfu_end_to_end": mfu(run["flops_per_step"], steps_per_s, peak)
                     if run.get("flops_per_step") else None})
    return rows


def check_out_files(out: Path) -> list[str]:
    """Problems with ``$OUT`` against the node's limits (8 files, 16 MiB each)."""
    files = [f for f in out.iterdir() if f.is_file()]
    problems = ([f"{len(files)} files in {out}, more than {MAX_OUT_FILES}"]
                if len(files) > MAX_OUT_FILES else [])
    problems += [f"{f.name} is {f.stat().st_size / 2**20:.1f} MiB, over {MAX_FILE_MIB} MiB"
                 for f in files if f.stat().st_size > MAX_FILE_MIB * 2**20]
    return problems


def _watchdog(report: NodeReport, opts: NodeOptions) -> threading.Timer:
    def stop() -> None:
        report.event(f"time limit: stopping at {report.elapsed():.0f} s of {opts.budget_s:.0f} s")
        report.write("stopped at the time limit")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(3)  # the main thread may be inside a CUDA kernel or a data loader

    timer = threading.Timer(max(opts.budget_s - 15.0 - report.elapsed(), 1.0), stop)
    timer.daemon = True
    timer.start()
    return timer


def run_node(opts: NodeOptions) -> int:
    start = opts.started if opts.started is not None else time.monotonic()
    opts.out.mkdir(parents=True, exist_ok=True)
    report = NodeReport(opts.out, start)
    log = open(opts.out / LOG_FILE, "w")  # noqa: SIM115 - open for the whole run, closed below
    sys.stdout, sys.stderr = Tee(sys.__stdout__, log), Tee(sys.__stderr__, log)
    timer = _watchdog(report, opts)
    try:
        return _run(opts, report)
    except BaseException as exc:  # the metrics and log still come back, with the error
        report.event(f"stopped: {_error_line(exc)}")
        report.write(f"failed: {_error_line(exc)}")
        raise
    finally:
        timer.cancel()
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        log.close()


def _run(opts: NodeOptions, report: NodeReport) -> int:
    from ssl_diffusion.app.pretrain import build_method, quiet_lightning
    from ssl_diffusion.config import load_config
    from ssl_diffusion.data.datasets import build_splits

    quiet_lightning()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    # fp32 matmuls stay full precision (no TF32): the kNN's exact re-ranking certifies its
    # neighbours against the matmul's rounding, which TF32 would loosen 8000-fold
    planned_end = opts.budget_s - opts.margin_s
    report.metrics.update(command=opts.command, options=dataclasses.asdict(opts), recipes=RECIPES)
    report.event(f"device {torch.cuda.get_device_name(0) if cuda else 'cpu'}; budget "
                 f"{opts.budget_s:.0f} s, planned end {planned_end:.0f} s")
    kit = read_kit(opts.kit)
    data_root = unpack_kit(kit, opts.work / "data")
    report.metrics["kit"] = {"path": str(opts.kit), "manifest": kit.manifest}
    report.event(f"kit unpacked into {data_root}")

    overrides = _overrides(opts, data_root, cuda, compiled=True)
    cfg = load_config(REPO / RECIPES[0], [*overrides, "trainer.max_steps=1"])
    splits = build_splits(cfg.data)
    sizes = {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)}
    report.metrics["split_sizes"] = sizes
    result = probe(cfg, splits.info, device, steps=3 if opts.tiny else opts.probe_steps,
                   compile_net=cuda, n_train=sizes["train"], n_val=sizes["val"],
                   gen_batch=8 if opts.tiny else 1000, eval_batch=64 if opts.tiny else 2048)
    report.metrics["probe"] = dataclasses.asdict(result)
    peak = peak_for(torch.cuda.get_device_name(0) if cuda else None, opts.peak_tflops)
    report.env = environment(report, result, peak, cuda)
    report.event(f"probe: {result.train_images_per_s:.0f} train images/s (step "
                 f"{result.step_s * 1e3:.1f} ms, compile {result.compile_s:.1f} s, "
                 f"compiled={result.compiled}); "
                 f"{result.flops_per_step / 1e9:.2f} GFLOP/step; MFU {report.env['mfu_probe']}")
    if cuda and not result.compiled:
        overrides = _overrides(opts, data_root, cuda, compiled=False)
    report.metrics["overrides"] = overrides
    flops = {RECIPES[0]: result.flops_per_step}
    for recipe in RECIPES[1:]:
        cfg_b = load_config(REPO / recipe, [*overrides, "trainer.max_steps=1"])
        torch.manual_seed(0)
        method = build_method(cfg_b, splits.info).to(device)
        b = cfg_b.data.batch_size
        shape = (splits.info.channels, splits.info.image_size, splits.info.image_size)
        flops[recipe] = count_step_flops(method, torch.rand(b, *shape, device=device) * 2 - 1,
                                         torch.zeros(b, dtype=torch.long, device=device))
        del method

    work = EvalWork(n_train=sizes["train"], n_val=sizes["val"], n_test=sizes["test"],
                    layers=len(opts.sweep_layers), noises=len(opts.sweep_noises),
                    probe_epochs=cfg.eval.linear.epochs, n_samples=opts.n_samples)
    eval_s = eval_seconds(work, result.feature_images_per_s, result.sample_images_per_s,
                          result.probe_epoch_s, result.knn_s, fixed_s=10.0, safety=opts.safety)
    plan = plan_steps(planned_end - report.elapsed(), len(opts.seeds), result.step_s,
                      opts.efficiency, result.compile_s + 10.0, eval_s, opts.min_steps)
    steps = 3 if opts.tiny else plan.steps
    report.metrics["plan"] = {**plan.as_dict(), "steps_used": steps,
                              "note": "tiny: steps fixed at 3" if opts.tiny else None}
    report.event(f"plan: {steps} steps per arm ({steps * result.batch_size} images), est. "
                 f"{plan.pair_s:.0f} s per pair for {plan.n_pairs} pairs in "
                 f"{plan.available_s:.0f} s")
    if plan.below_minimum and not opts.tiny:
        report.event(f"warning: the budget allows fewer than {opts.min_steps} steps; using "
                     f"{opts.min_steps}, the run may stop at the time limit")
    report.write()

    last_pair_s = 0.0
    for i, seed in enumerate(opts.seeds):
        left = planned_end - report.elapsed()
        if i > 0 and left < last_pair_s:
            skipped = opts.seeds[i:]
            report.metrics["skipped"].append({"seeds": skipped, "reason": (
                f"{left:.0f} s left, the last pair took {last_pair_s:.0f} s")})
            report.event(f"skipping seeds {skipped}: {left:.0f} s left < {last_pair_s:.0f} s "
                         f"per pair")
            break
        t0 = time.monotonic()
        for recipe in RECIPES:
            run_arm(recipe, seed, steps, overrides, opts, report, flops.get(recipe))
            with report.lock:  # kept current, so a run stopped by the watchdog still has it
                report.env["arms"] = _arm_throughput(report, peak)
            report.write()
        last_pair_s = time.monotonic() - t0
        report.event(f"seed {seed} pair done in {last_pair_s:.0f} s")
    failed = [r["name"] for r in report.metrics["runs"] if r["status"] != "ok"]
    report.write("complete" if not failed else f"complete with failed arms: {', '.join(failed)}")
    for problem in check_out_files(opts.out):
        report.event(f"warning: {problem}")
    report.event(f"done in {report.elapsed():.0f} s; outputs in {opts.out}")
    return 1 if failed else 0


def options_from_env(out: str | None) -> Path:
    """``--out`` or ``$OUT``: the folder whose files come back from the node."""
    value = out or os.environ.get("OUT")
    if not value:
        raise UserError("--node needs an output folder: set OUT=DIR (an empty folder) or pass "
                        "--out DIR")
    return Path(value)


__all__ = [
    "PRED_PREFIX",
    "RECIPES",
    "TINY",
    "NodeOptions",
    "check_out_files",
    "options_from_env",
    "run_node",
    "save_samples",
]
