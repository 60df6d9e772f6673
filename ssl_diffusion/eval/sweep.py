"""The layer x noise sweep of diffusion features (DDAE, Xiang et al. 2023, Sec. 4; DDAE++ 2025).

A diffusion model's representation is a function of the tapped layer and the noise level. The
sweep evaluates a grid of (layer, noise) cells with the kNN and/or linear protocol on the
**validation** split (held out of train), selects the best cell there, and only then evaluates
that one cell on **test**. Test numbers of the other cells are never computed, so the reported
accuracy is not selected on test.

Defaults: every layer when the model has at most 8, else 6 evenly spaced layers plus the default
tap; 5 log-spaced sigmas in [0.01, 1] (clipped to the objective's range), where DDAE found the
useful features (sigma ~0.06 on CIFAR-10, i.e. DDPM t ~ 11/1000).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ssl_diffusion.diffusion.noise import from_sigma, to_sigma
from ssl_diffusion.errors import UserError, did_you_mean

METRICS = ("knn", "linear", "both")
DEFAULT_SIGMA_RANGE = (0.01, 1.0)  # VE sigma range of the default noise grid
MAX_DEFAULT_LAYERS = 8  # models with more layers get an evenly spaced subset


def default_layers(net: Any) -> list[str]:
    """Every layer of small models; 6 evenly spaced layers plus the default tap otherwise."""
    names = list(net.layer_names)
    if len(names) <= MAX_DEFAULT_LAYERS:
        return names
    picks = set(np.linspace(0, len(names) - 1, 6).round().astype(int).tolist())
    picks.add(names.index(net.default_feature_layer))
    return [names[i] for i in sorted(picks)]


def default_noises(objective: Any, unit: str, count: int = 5) -> list[float]:
    """``count`` log-spaced sigmas in [0.01, 1] clipped to the objective's range, in ``unit``."""
    lo = max(DEFAULT_SIGMA_RANGE[0], objective.sigma_min)
    hi = min(DEFAULT_SIGMA_RANGE[1], objective.sigma_max)
    if lo >= hi:  # a schedule outside the usual range: span all of it
        lo, hi = objective.sigma_min, objective.sigma_max
    sigmas = np.exp(np.linspace(math.log(lo), math.log(hi), count))
    out = []
    for s in sigmas:
        value = float(f"{from_sigma(float(s), unit):.4g}")  # readable values in configs
        if not lo * (1 - 1e-5) <= to_sigma(value, unit) <= hi * (1 + 1e-5):
            value = from_sigma(float(s), unit)
        out.append(value)
    return out


def parse_list(text: str | None, kind: type, flag: str) -> list | None:
    """``"a,b,c"`` -> a list of ``kind`` (None stays None); one-line errors for bad items."""
    if text is None:
        return None
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise UserError(f"{flag} is empty; give a comma-separated list, e.g. {flag} "
                        f"{'0.05,0.1' if kind is float else 'block1,block2'}")
    if kind is float:
        try:
            return [float(t) for t in items]
        except ValueError:
            bad = next(t for t in items if not _is_float(t))
            raise UserError(f"{flag}: `{bad}` is not a number; e.g. {flag} 0.05,0.1,0.2") from None
    return items


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise UserError(f"unknown sweep metric `{metric}`; choose one of {', '.join(METRICS)}"
                        f"{did_you_mean(metric, METRICS)}")
    return metric


def metrics_of(metric: str) -> list[str]:
    return ["knn", "linear"] if metric == "both" else [metric]


# --------------------------------------------------------------------------- selection


def select_cell(rows: Sequence[dict], metric: str) -> dict:
    """The grid row of ``metric`` with the best validation top-1 (then top-5; then grid order).

    Rows hold ``layer``, ``noise``, ``metric``, ``val_top1``, ``val_top5``; test numbers are not
    part of the grid, so the choice cannot depend on them.
    """
    candidates = [r for r in rows if r["metric"] == metric]
    if not candidates:
        raise UserError(f"the sweep grid has no `{metric}` results to select from")
    best = candidates[0]
    for r in candidates[1:]:
        if (r["val_top1"], r["val_top5"]) > (best["val_top1"], best["val_top5"]):
            best = r
    return best


def summarize(rows: Sequence[dict], select_by: str,
              test_of: Callable[[dict], dict[str, dict[str, float]]]) -> dict:
    """Select on validation, then evaluate only the chosen cell on test.

    Args:
        rows: the validation grid (see :func:`select_cell`).
        select_by: the metric whose validation top-1 picks the cell (``knn`` | ``linear``).
        test_of: ``cell -> {metric: {"test_top1", "test_top5"}}``, called once, for the chosen cell.

    Returns:
        ``{"layer", "noise", "sigma", "select_by", "val_<metric>_top1", "val_<metric>_top5",
        "test_<metric>_top1", "test_<metric>_top5"}`` for every metric of the grid.
    """
    chosen = select_cell(rows, select_by)
    cell = {"layer": chosen["layer"], "noise": chosen["noise"], "sigma": chosen["sigma"]}
    out = {**cell, "select_by": select_by}
    for r in rows:
        if (r["layer"], r["sigma"]) == (cell["layer"], cell["sigma"]):
            out[f"val_{r['metric']}_top1"] = r["val_top1"]
            out[f"val_{r['metric']}_top5"] = r["val_top5"]
    for metric, acc in test_of(dict(cell)).items():
        out[f"test_{metric}_top1"], out[f"test_{metric}_top5"] = acc["test_top1"], acc["test_top5"]
    return out


# --------------------------------------------------------------------------- outputs


CSV_FIELDS = ("metric", "layer", "noise", "noise_unit", "sigma", "logsnr", "val_top1", "val_top5",
              "chosen")


def grid_csv(rows: Sequence[dict], noise_unit: str, chosen: dict) -> str:
    """CSV text of the validation grid, one row per (metric, layer, noise)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({
            "metric": r["metric"], "layer": r["layer"], "noise": f"{r['noise']:.6g}",
            "noise_unit": noise_unit, "sigma": f"{r['sigma']:.6g}",
            "logsnr": f"{from_sigma(r['sigma'], 'logsnr'):.4f}",
            "val_top1": f"{r['val_top1']:.4f}", "val_top5": f"{r['val_top5']:.4f}",
            "chosen": int((r["layer"], r["sigma"]) == (chosen["layer"], chosen["sigma"])),
        })
    return buf.getvalue()


def plot_grid(rows: Sequence[dict], layers: Sequence[str], noises: Sequence[float],
              noise_unit: str, chosen: dict, title: str) -> bytes:
    """PNG heatmap(s) of validation top-1 (layers x noise levels), the chosen cell outlined."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    fig = Figure(figsize=(1.2 + 1.1 * len(noises) * len(metrics) + 1.2 * len(metrics),
                          1.4 + 0.45 * len(layers)), layout="constrained")
    FigureCanvasAgg(fig)  # Agg canvas: no global backend, safe in notebooks and headless runs
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        grid = np.full((len(layers), len(noises)), np.nan)
        for r in rows:
            if r["metric"] == metric:
                grid[layers.index(r["layer"]), _index(noises, r["noise"])] = r["val_top1"]
        im = ax.imshow(grid, cmap="viridis", aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            if np.isfinite(v):
                light = v < np.nanmin(grid) + 0.6 * (np.nanmax(grid) - np.nanmin(grid) + 1e-9)
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=8,
                        color="white" if light else "black")
        ci, cj = layers.index(chosen["layer"]), _index(noises, chosen["noise"])
        ax.add_patch(Rectangle((cj - 0.5, ci - 0.5), 1, 1, fill=False, edgecolor="red", lw=2))
        ax.set_xticks(range(len(noises)), [f"{n:.3g}" for n in noises])
        ax.set_yticks(range(len(layers)), list(layers))
        ax.set_xlabel(f"noise ({noise_unit})")
        ax.set_ylabel("layer")
        ax.set_title(f"{metric}: val top-1 (%)")
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(title, fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _index(noises: Sequence[float], value: float) -> int:
    return int(np.argmin([abs(n - value) for n in noises]))


__all__ = [
    "METRICS",
    "check_metric",
    "default_layers",
    "default_noises",
    "grid_csv",
    "metrics_of",
    "parse_list",
    "plot_grid",
    "select_cell",
    "summarize",
]
