"""Paired statistics of a comparison: arm B against a baseline arm A, seed by seed.

For one seed both arms start from the same base weights and see the same data order and noise,
so the comparison is made on differences B - A:

* **across seeds**: per-seed differences of linear and kNN top-1 (at the validation-chosen
  cell for diffusion methods), FID and KID, with mean, sample std and a 95% Student-t interval
  (``eval.paired.paired_difference``);
* **within each seed, at the example level**: McNemar's test on the two arms' test-set
  predictions (linear and kNN; ``predictions/*.npz`` written by the evaluators) and a paired
  bootstrap over the generated images (same seeds in both arms) of the FID and KID differences
  (``fid_features.npz`` written by the FID stage; the reference statistics from their cache).

A difference is called real only when its interval excludes 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ssl_diffusion.app.run_dir import read_metrics
from ssl_diffusion.eval.fid import load_reference_stats
from ssl_diffusion.eval.fid_config import FIDConfig
from ssl_diffusion.eval.paired import bootstrap_generation_difference, mcnemar, paired_difference

# metric -> (preferred key, fallback key) in a run record's flattened metrics
METRICS = {
    "linear_top1": ("sweep_linear_top1", "linear_top1"),
    "knn_top1": ("sweep_knn_top1", "knn_top1"),
    "fid": ("fid", None),
    "kid": ("kid", None),
}
LABELS = {"linear_top1": "linear top-1 (%)", "knn_top1": "kNN top-1 (%)", "fid": "FID",
          "kid": "KID"}


def _value(metrics: dict, metric: str) -> float | None:
    first, second = METRICS[metric]
    value = metrics.get(first, metrics.get(second) if second else None)
    return None if value is None else float(value)


def _predictions(run_dir: Path, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(pred, label) on test for the headline number: the sweep's chosen cell, else the plain
    evaluator's."""
    kind = "linear" if metric == "linear_top1" else "knn"
    sweep = run_dir / "predictions" / "sweep.npz"
    if sweep.is_file():
        with np.load(sweep) as z:
            if f"test_{kind}_pred" in z:
                return z[f"test_{kind}_pred"], z[f"test_{kind}_label"]
    plain = run_dir / "predictions" / f"{kind}.npz"
    if plain.is_file():
        with np.load(plain) as z:
            if "test_pred" in z:
                return z["test_pred"], z["test_label"]
    return None


def _generated(run_dir: Path) -> tuple[np.ndarray, np.ndarray] | None:
    path = run_dir / "fid_features.npz"
    if not path.is_file():
        return None
    with np.load(path) as z:
        order = np.argsort(z["key"], kind="stable")  # the key is a hash of the image index
        return z["features"][order], z["key"][order]


def _kid_subsets(run_dir: Path) -> int:
    """The KID subset count the run's reported KID used (its config.yaml, else the default)."""
    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        return int(saved["eval"]["fid"]["kid_subsets"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return FIDConfig().kid_subsets


def within_seed(run_a: Path, run_b: Path, resamples: int = 100) -> dict[str, Any]:
    """Example-level tests of one seed: McNemar (linear, kNN) and the generation bootstrap."""
    out: dict[str, Any] = {}
    for metric in ("linear_top1", "knn_top1"):
        pa, pb = _predictions(run_a, metric), _predictions(run_b, metric)
        if pa is None or pb is None:
            continue
        if not np.array_equal(pa[1], pb[1]):
            out[metric] = {"error": "the two runs' test labels differ (other split or limit)"}
            continue
        out[metric] = mcnemar(pa[0], pb[0], pa[1]).to_dict()
    ga, gb = _generated(run_a), _generated(run_b)
    fid_a = read_metrics(run_a).get("fid", {})
    ref_path = (fid_a.get("reference") or {}).get("cache")
    if ga is not None and gb is not None and ref_path and Path(ref_path).is_file():
        if len(ga[1]) == len(gb[1]) and np.array_equal(ga[1], gb[1]):  # same image indices
            boot = bootstrap_generation_difference(
                ga[0], gb[0], load_reference_stats(ref_path), resamples=resamples, seed=0,
                kid_subset_size=int(fid_a.get("kid_subset_size") or 1000),
                kid_subsets=_kid_subsets(run_a))
            out["generation"] = boot.to_dict()
        else:
            out["generation"] = {"error": "the runs generated different image indices"}
    return out


def paired_analysis(records: Sequence[Any], baseline: str, resamples: int = 100) -> dict:
    """Every other recipe against ``baseline`` on the seeds both finished."""
    by_recipe: dict[str, dict[int, Any]] = {}
    for r in records:
        if r.status == "ok":
            by_recipe.setdefault(r.recipe, {})[r.seed] = r
    base = by_recipe.get(baseline, {})
    result: dict[str, Any] = {"baseline": baseline, "comparisons": {}}
    for recipe, runs in by_recipe.items():
        if recipe == baseline:
            continue
        seeds = sorted(set(base) & set(runs))
        if not seeds:
            continue
        entry: dict[str, Any] = {"seeds": seeds, "across_seeds": {}, "within_seed": {}}
        for metric in METRICS:
            a = [_value(base[s].metrics, metric) for s in seeds]
            b = [_value(runs[s].metrics, metric) for s in seeds]
            if any(v is None for v in a + b):
                continue
            entry["across_seeds"][metric] = paired_difference(a, b).to_dict()
        for s in seeds:
            entry["within_seed"][str(s)] = within_seed(Path(base[s].run_dir),
                                                       Path(runs[s].run_dir), resamples)
        result["comparisons"][recipe] = entry
    return result


def _ci(d: dict, digits: int) -> str:
    if d.get("ci_low") is None or d["ci_low"] != d["ci_low"]:  # nan: one seed
        return "–"
    return f"[{d['ci_low']:+.{digits}f}, {d['ci_high']:+.{digits}f}]"


def markdown(analysis: dict) -> list[str]:
    """The paired section of comparison.md."""
    if not analysis.get("comparisons"):
        return []
    base = Path(analysis["baseline"]).stem
    lines = ["## Paired differences (B - A)", "",
             (f"A = `{base}` (baseline); for one seed both arms share base weights, data order and "
             f"noise. Across seeds: mean of per-seed differences with a 95% Student-t interval. "
             f"Within a seed: McNemar's test on test-set predictions (accuracy difference with "
             f"its 95% interval, p-value) and a paired bootstrap over the generated images (95% "
             f"percentile interval). A difference is real only when its interval excludes 0."), ""]
    for recipe, e in analysis["comparisons"].items():
        b = Path(recipe).stem
        lines += [f"### {b} - {base} (seeds {', '.join(map(str, e['seeds']))})", "",
                  "| metric | per-seed B - A | mean | sd | 95% t-interval | excludes 0 |",
                  "|---|---|---|---|---|---|"]
        for metric, d in e["across_seeds"].items():
            digits = 4 if metric == "kid" else 2
            diffs = ", ".join(f"{v:+.{digits}f}" for v in d["diffs"])
            sd = "–" if d["std"] != d["std"] else f"{d['std']:.{digits}f}"
            lines.append(f"| {LABELS[metric]} | {diffs} | {d['mean']:+.{digits}f} | {sd} | "
                         f"{_ci(d, digits)} | {'yes' if d['excludes_zero'] else 'no'} |")
        lines += ["", "| seed | test | B - A | 95% interval | p | excludes 0 |",
                  "|---|---|---|---|---|---|"]
        for seed, w in e["within_seed"].items():
            for metric in ("linear_top1", "knn_top1"):
                m = w.get(metric)
                if not m or "error" in m:
                    continue
                pts = {k: 100 * m[k] for k in ("acc_diff", "ci_low", "ci_high")}  # points
                lines.append(
                    f"| {seed} | McNemar, {LABELS[metric]} (b={m['b']}, c={m['c']}, "
                    f"n={m['n']}) | {pts['acc_diff']:+.2f} | [{pts['ci_low']:+.2f}, "
                    f"{pts['ci_high']:+.2f}] | {m['p_value']:.3g} | "
                    f"{'yes' if m['excludes_zero'] else 'no'} |")
            g = w.get("generation")
            if g and "error" not in g:
                for metric in ("fid", "kid"):
                    d = g.get(metric)
                    if d is None:
                        continue
                    digits = 4 if metric == "kid" else 2
                    lines.append(
                        f"| {seed} | bootstrap {metric.upper()} ({d['resamples']} resamples, "
                        f"n={g['n_a']}) | {d['point']:+.{digits}f} | [{d['ci_low']:+.{digits}f}, "
                        f"{d['ci_high']:+.{digits}f}] | – | {'yes' if d['excludes_zero'] else 'no'} |")
        lines.append("")
    return lines


__all__ = ["markdown", "paired_analysis", "within_seed"]
