"""Side-by-side comparison: train recipes x seeds, run the shared evaluators, write a report.

For every (recipe, seed) the run lives in ``<out>/<recipe stem>-s<seed>/``; a finished run is not
retrained and an interrupted one resumes, and an evaluation already stored in its metrics.json is
not recomputed. One failing run never loses the others: the report lists it with its error.
Outputs in ``<out>``: ``comparison.json`` (every run and the aggregates), ``comparison.md``
(mean ± std over seeds per metric, wall time, parameters, images/s) and ``comparison.png``
(linear accuracy vs FID, one point per run).
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ssl_diffusion.app import evaluate as runner
from ssl_diffusion.app.evaluate import raw_pixel_scores
from ssl_diffusion.app.generation import run_fid_from_checkpoint
from ssl_diffusion.app.paired import markdown as paired_markdown
from ssl_diffusion.app.paired import paired_analysis
from ssl_diffusion.app.pretrain import pretrain
from ssl_diffusion.app.run_dir import read_metrics
from ssl_diffusion.app.signals import RunInterrupted
from ssl_diffusion.atomic import atomic_write, atomic_write_text
from ssl_diffusion.config import Config, load_config
from ssl_diffusion.errors import UserError
from ssl_diffusion.registry import METHODS
from ssl_diffusion.version import __version__


@dataclass
class CompareOptions:
    out: Path
    seeds: list[int]
    overrides: list[str] = field(default_factory=list)  # applied to every recipe
    sweep: bool = True  # layer x noise sweep (selection on val) for diffusion methods
    sweep_layers: list[str] | None = None
    sweep_noises: list[float] | None = None
    fid: bool = True
    fid_n: int = 1000  # generated images per run (fixed for all arms)
    fid_ref_n: int | None = 5000  # reference images (cached once per dataset split)
    fid_sampler: str | None = None  # None = each recipe's sampler
    fid_steps: int | None = None
    linear: bool = True
    limit: int | None = None  # cap on images per split (e.g. a 10k kNN gallery / probe set)
    raw_pixels: bool = True  # add the raw-pixel baseline under the same protocol
    paired: bool = True  # paired differences of every recipe against the first one
    bootstrap_resamples: int = 100  # per seed, for the FID / KID difference intervals
    command: str = ""  # the command line, recorded in the report


@dataclass
class RunRecord:
    recipe: str
    seed: int
    run_dir: str
    method: str = ""
    status: str = "pending"  # ok | failed
    error: str | None = None
    failed_stage: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


def _finished(cfg: Config, run_dir: Path) -> bool:
    pre = read_metrics(run_dir).get("pretrain")
    if not pre or not (run_dir / "last.ckpt").is_file():
        return False
    if cfg.trainer.max_steps is not None:
        return pre.get("steps", 0) >= cfg.trainer.max_steps
    return pre.get("epochs", 0) >= cfg.trainer.max_epochs


def _stage(record: RunRecord, name: str, fn: Callable[[], Any]) -> bool:
    try:
        fn()
        return True
    except RunInterrupted:
        raise  # Ctrl-C / SIGTERM stops the whole comparison (the run resumes on the next call)
    except Exception as exc:  # noqa: BLE001 - a failing run must not stop the comparison
        record.status, record.failed_stage = "failed", name
        record.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        (Path(record.run_dir)).mkdir(parents=True, exist_ok=True)
        (Path(record.run_dir) / f"compare_{name}_error.txt").write_text(traceback.format_exc())
        return False


def run_one(recipe: str, seed: int, opts: CompareOptions) -> RunRecord:
    stem = Path(recipe).stem
    run_dir = opts.out / f"{stem}-s{seed}"
    record = RunRecord(recipe=recipe, seed=seed, run_dir=str(run_dir))
    overrides = [*opts.overrides, f"seed={seed}", f"run.root={opts.out}", f"run.name={stem}-s{seed}"]
    holder: dict[str, Any] = {}

    def configure() -> None:
        holder["cfg"] = load_config(recipe, overrides)
        record.method = holder["cfg"].method

    if not _stage(record, "config", configure):
        return record
    cfg = holder["cfg"]
    if not _finished(cfg, run_dir) and not _stage(record, "train", lambda: pretrain(cfg, recipe)):
        return _collect(record)
    ckpt = run_dir / "last.ckpt"
    done = read_metrics(run_dir)
    stages: list[tuple[str, Callable[[], Any]]] = []
    lim = opts.limit
    if "knn" not in done:
        stages.append(("knn", lambda: runner.run_knn(ckpt, progress=False, limit=lim)))
    if opts.linear and "linear" not in done:
        stages.append(("linear", lambda: runner.run_linear(ckpt, progress=False, limit=lim)))
    generative = METHODS.get(cfg.method).generative
    if generative and opts.sweep and "sweep" not in done:
        stages.append(("sweep", lambda: runner.run_sweep(
            ckpt, layers=opts.sweep_layers, noises=opts.sweep_noises, metric="both",
            progress=False, limit=lim)))
    if generative and opts.fid and "fid" not in done:
        stages.append(("fid", lambda: _fid(ckpt, opts)))
    for name, fn in stages:
        _stage(record, name, fn)  # later stages still run after a failing one
    return _collect(record)


def raw_pixel_baseline(recipe: str, opts: CompareOptions) -> dict[str, Any]:
    """``evaluate.raw_pixel_scores`` under the recipes' protocol, cached in ``<out>``."""
    cache = opts.out / "raw_pixels.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    result = raw_pixel_scores(load_config(recipe, opts.overrides), limit=opts.limit,
                              linear=opts.linear)
    atomic_write_text(cache, json.dumps(result, indent=2, default=str) + "\n")
    return result


def _fid(ckpt: Path, opts: CompareOptions) -> dict:
    return run_fid_from_checkpoint(ckpt, n=opts.fid_n, ref_n=opts.fid_ref_n,
                                   sampler=opts.fid_sampler, steps=opts.fid_steps, progress=False)


def _collect(record: RunRecord) -> RunRecord:
    """Flatten the run's metrics.json into the numbers the report tabulates."""
    m = read_metrics(Path(record.run_dir))
    pre = m.get("pretrain", {})
    out: dict[str, Any] = {}
    if pre:
        wall = pre.get("train_wall_time_s") or float("nan")
        out.update(steps=pre.get("steps"), images_seen=pre.get("images_seen"), params=pre.get("params"),
                   train_wall_time_s=wall, images_per_s=(pre.get("images_seen") or 0) / wall if wall else None)
    knn, linear, sweep, fid = m.get("knn", {}), m.get("linear", {}), m.get("sweep", {}), m.get("fid", {})
    out["knn_top1"] = _get(knn, "test", "knn_top1")
    top1 = _get(linear, "test_top1")  # 0.0 is a result, not a missing value
    out["linear_top1"] = top1 if top1 is not None else _get(linear, "test", "top1")
    chosen = sweep.get("chosen") or {}
    if chosen:
        out["sweep_cell"] = f"{chosen.get('layer')}@{chosen.get('noise')}"
        out["sweep_knn_top1"] = chosen.get("test_knn_top1")
        out["sweep_linear_top1"] = chosen.get("test_linear_top1")
    out["fid"] = fid.get("fid")
    out["kid"] = fid.get("kid_mean")
    record.metrics = {k: v for k, v in out.items() if v is not None}
    if record.status == "pending":
        record.status = "ok"
    return record


def _get(d: dict, *keys: str) -> Any:
    for key in keys:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


# ----------------------------------------------------------------------------- report

REPORT_METRICS = [
    ("sweep_cell", "val-chosen (layer@sigma)"),
    ("knn_top1", "kNN top-1 (test, %)"),
    ("linear_top1", "linear top-1 (test, %)"),
    ("sweep_knn_top1", "kNN top-1 @ val-chosen cell (test, %)"),
    ("sweep_linear_top1", "linear top-1 @ val-chosen cell (test, %)"),
    ("fid", "FID"),
    ("kid", "KID"),
    ("train_wall_time_s", "train wall time (s)"),
    ("images_per_s", "train images/s"),
    ("images_seen", "images seen"),
    ("params", "trainable parameters"),
]


def mean_std(values: list[float]) -> tuple[float, float | None]:
    if len(values) == 1:
        return values[0], None
    return statistics.fmean(values), statistics.stdev(values)


def aggregate(records: list[RunRecord]) -> dict[str, dict[str, Any]]:
    by_recipe: dict[str, list[RunRecord]] = {}
    for r in records:
        by_recipe.setdefault(r.recipe, []).append(r)
    agg = {}
    for recipe, runs in by_recipe.items():
        row: dict[str, Any] = {"method": runs[0].method, "seeds": [r.seed for r in runs],
                               "failed": [r.seed for r in runs if r.status != "ok"]}
        cells = sorted({str(r.metrics["sweep_cell"]) for r in runs if "sweep_cell" in r.metrics})
        if cells:
            row["sweep_cell"] = cells
        for key, _ in REPORT_METRICS:
            if key == "sweep_cell":
                continue
            # a run that failed at a later stage still contributes the numbers it produced
            vals = [float(r.metrics[key]) for r in runs if isinstance(r.metrics.get(key), (int, float))
                    and not math.isnan(float(r.metrics[key]))]
            if vals:
                mean, std = mean_std(vals)
                row[key] = {"mean": mean, "std": std, "n": len(vals)}
        agg[recipe] = row
    return agg


def _fmt(cell: Any, key: str) -> str:
    if cell is None or cell == []:
        return "–"
    if isinstance(cell, list):
        return ", ".join(cell)
    digits = {"images_seen": 0, "params": 0, "train_wall_time_s": 0, "images_per_s": 1, "kid": 4}.get(key, 2)
    mean = f"{cell['mean']:,.{digits}f}"
    return mean if cell["std"] is None else f"{mean} ± {cell['std']:,.{digits}f}"


def environment() -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=False).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"version": __version__, "commit": commit, "python": platform.python_version(),
            "torch": torch.__version__, "cpu": cpu, "cpu_count": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def write_markdown(path: Path, agg: dict, records: list[RunRecord], opts: CompareOptions,
                   env: dict, raw: dict[str, Any] | None = None,
                   paired: dict[str, Any] | None = None) -> None:
    lines = ["# Comparison", "", f"Command: `{opts.command}`", "",
             f"ssl_diffusion {env['version']} (commit {env['commit']}), torch {env['torch']}, "
             f"{env['cpu']} x{env['cpu_count']}" + (f", GPU {env['gpu']}" if env["gpu"] else "") +
             f", {env['date']}.", ""]
    keys = [k for k, _ in REPORT_METRICS if any(k in row for row in agg.values())]
    header = "| recipe | method | seeds | " + " | ".join(dict(REPORT_METRICS)[k] for k in keys) + " |"
    lines += [header, "|" + "---|" * (3 + len(keys))]
    for recipe, row in agg.items():
        cells = " | ".join(_fmt(row.get(k), k) for k in keys)
        seeds = f"{len(row['seeds'])}" + (f" ({len(row['failed'])} failed)" if row["failed"] else "")
        lines.append(f"| {Path(recipe).stem} | {row['method']} | {seeds} | {cells} |")
    if raw and "error" not in raw:
        pix = {"knn_top1": raw.get("knn_top1"), "linear_top1": raw.get("linear_top1")}
        cells = " | ".join(f"{pix[k]:.2f}" if pix.get(k) is not None else "–" for k in keys)
        lines.append(f"| raw pixels | – | – | {cells} |")
    elif raw:
        lines += ["", f"Raw-pixel baseline failed: {raw['error']}"]
    lines += ["", "Mean ± sample standard deviation over seeds (no ± with one seed). kNN: DINO "
              "weighted kNN (cosine, T and k from eval.knn) with the train split as gallery; "
              "linear: BN (no affine) + linear probe on frozen train-split features; diffusion "
              "methods: the (layer, noise) cell chosen on the validation split, reported on test."
              + (f" Every split capped at {opts.limit} images." if opts.limit else ""), ""]
    lines += paired_markdown(paired or {})
    failed = [r for r in records if r.status != "ok"]
    if failed:
        lines += ["## Failed runs", ""]
        lines += [f"- {Path(r.recipe).stem} seed {r.seed}: stage `{r.failed_stage}`: {r.error}" for r in failed]
        lines.append("")
    lines += ["## Runs", "", "| run | status | " + " | ".join(keys) + " |", "|" + "---|" * (2 + len(keys))]
    for r in records:
        vals = " | ".join(f"{r.metrics[k]:.4g}" if isinstance(r.metrics.get(k), float) else
                          str(r.metrics.get(k, "–")) for k in keys)
        lines.append(f"| {Path(r.run_dir).name} | {r.status} | {vals} |")
    atomic_write_text(path, "\n".join(lines) + "\n")


def write_plot(path: Path, records: list[RunRecord]) -> None:
    import matplotlib  # here: the plotting backend is chosen before pyplot loads

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    colors: dict[str, str] = {}
    plotted = 0
    for r in records:
        acc = r.metrics.get("sweep_linear_top1", r.metrics.get("linear_top1"))
        if acc is None:
            continue
        label = Path(r.recipe).stem
        first = label not in colors
        color = colors.setdefault(label, f"C{len(colors)}")
        fid = r.metrics.get("fid")
        if fid is None:  # a method that cannot generate: its accuracy as a horizontal line
            ax.axhline(acc, color=color, linestyle="--", linewidth=1,
                       label=f"{label} (no FID)" if first else None)
        else:
            ax.scatter(fid, acc, color=color, label=label if first else None)
        plotted += 1
    # paired lines: the runs of one seed (same base weights, data order and noise) joined
    by_seed: dict[int, list[tuple[float, float]]] = {}
    for r in records:
        acc = r.metrics.get("sweep_linear_top1", r.metrics.get("linear_top1"))
        if acc is not None and r.metrics.get("fid") is not None:
            by_seed.setdefault(r.seed, []).append((r.metrics["fid"], acc))
    for seed, points in sorted(by_seed.items()):
        if len(points) > 1:
            xs, ys = zip(*points)
            ax.plot(xs, ys, color="0.6", linewidth=0.8, zorder=0,
                    label="same seed (paired)" if seed == min(by_seed) else None)
    ax.set_xlabel("FID (lower is better)")
    ax.set_ylabel("linear top-1 % (test; val-chosen cell)")
    ax.set_title("Linear accuracy vs FID, one point per run")
    if plotted:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no run has a linear accuracy", ha="center",
                transform=ax.transAxes)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)


def parse_recipe_spec(spec: str, default_seeds: list[int]) -> tuple[str, list[int]]:
    """``path.yaml`` (all seeds) or ``path.yaml@0,1`` (these seeds only)."""
    path, _, seeds = spec.partition("@")
    if not seeds:
        return path, list(default_seeds)
    try:
        return path, [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"bad recipe spec `{spec}`: use RECIPE or RECIPE@SEED[,SEED...]") from None


def compare(recipes: list[str], opts: CompareOptions) -> dict[str, Any]:
    if not recipes:
        raise UserError("--recipes is empty; give one or more recipe files")
    plan = [parse_recipe_spec(spec, opts.seeds) for spec in recipes]
    for recipe, seeds in plan:
        if not Path(recipe).is_file():
            raise UserError(f"recipe file not found: {recipe}")
        if not seeds:
            raise UserError(f"no seeds for {recipe}; pass --seeds or RECIPE@SEED")
    opts.out.mkdir(parents=True, exist_ok=True)
    records = []
    for recipe, seeds in plan:
        for seed in seeds:
            record = run_one(recipe, seed, opts)
            status = record.status if record.status == "ok" else f"FAILED ({record.failed_stage}: {record.error})"
            print(f"compare: {Path(recipe).stem} seed {seed}: {status}", flush=True)
            records.append(record)
    agg = aggregate(records)
    env = environment()
    raw = None
    if opts.raw_pixels:
        try:
            raw = raw_pixel_baseline(plan[0][0], opts)
        except Exception as exc:  # noqa: BLE001 - the baseline must not lose the report
            raw = {"error": f"{type(exc).__name__}: {exc}"}
    paired = paired_analysis(records, plan[0][0], opts.bootstrap_resamples) if opts.paired else None
    result = {"command": opts.command, "environment": env, "aggregate": agg, "raw_pixels": raw,
              "paired": paired, "runs": [r.__dict__ for r in records]}
    atomic_write_text(opts.out / "comparison.json", json.dumps(result, indent=2, default=str) + "\n")
    write_markdown(opts.out / "comparison.md", agg, records, opts, env, raw, paired)
    write_plot(opts.out / "comparison.png", records)
    return result
