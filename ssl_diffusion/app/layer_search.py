"""Self-conditioning source-layer search by short-run training loss (DDAE++ §2.3).

The paper picks the source layer k by the training (denoising) loss of short parallel runs, not
by probe accuracy. Here every candidate (and the baseline without self-conditioning) trains the
same recipe for ``steps`` steps at each of several seeds; for one seed all of them share base
weights, data order and noise (paired arms). The score is the mean ``train/loss_diffusion`` over
the last ``tail`` fraction of logged steps, averaged over seeds; lowest wins. Each candidate's
per-seed difference to the baseline is reported with its spread and 95% t-interval.
"""

from __future__ import annotations

import copy
import csv
import io
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ssl_diffusion.app.pretrain import pretrain
from ssl_diffusion.app.run_dir import update_metrics
from ssl_diffusion.atomic import atomic_write_text
from ssl_diffusion.config import Config
from ssl_diffusion.errors import UserError
from ssl_diffusion.eval.paired import paired_difference

BASELINE = "none"  # the candidate name of the run without self-conditioning


def tail_loss(metrics_csv: Path, key: str = "train/loss_diffusion", tail: float = 0.25) -> float:
    """Mean of ``key`` over the last ``tail`` fraction of the rows that logged it."""
    with open(metrics_csv, newline="") as f:
        values = [float(r[key]) for r in csv.DictReader(f) if r.get(key) not in (None, "")]
    if not values:
        raise UserError(f"{metrics_csv} has no `{key}` values; train longer than log_every_n_steps")
    n = max(1, round(len(values) * tail))
    return sum(values[-n:]) / n


def run_layer_search(cfg: Config, recipe: str, candidates: list[str], steps: int,
                     tail: float = 0.25, include_baseline: bool = True,
                     seeds: Sequence[int] = (0, 1)) -> dict[str, Any]:
    """Short runs per (candidate source layer, seed); the ranking with paired differences.

    For one seed every candidate and the baseline share base weights, data order and noise
    (paired arms), so each candidate's tail loss minus the baseline's at the same seed measures
    the layer alone; the report gives those differences per seed with their mean, sd and 95%
    t-interval. The chosen layer has the lowest mean tail loss over seeds.
    """
    if cfg.method != "ddaepp":
        raise UserError(f"the source-layer search needs method=ddaepp (got `{cfg.method}`)")
    seeds = [int(s) for s in dict.fromkeys(seeds)]
    if not seeds:
        raise UserError("no seeds for the layer search; pass --seeds 0 1")
    base_name = cfg.run.name or Path(recipe).stem
    out_dir = Path(cfg.run.root) / f"{base_name}-layer-search"
    names = ([BASELINE] if include_baseline else []) + list(candidates)
    losses: dict[str, dict[int, float]] = {name: {} for name in names}
    rows = []
    for seed in seeds:
        for name in names:
            c = copy.deepcopy(cfg)
            c.seed = seed
            c.run = replace(c.run, root=str(out_dir), name=f"{name}-s{seed}")
            c.trainer = replace(c.trainer, max_steps=steps, max_epochs=None,
                                log_every_n_steps=max(1, min(c.trainer.log_every_n_steps,
                                                             steps // 20 or 1)))
            c.eval = replace(c.eval, online_knn=False, online_linear=False)
            c.selfcond = replace(c.selfcond, enabled=name != BASELINE,
                                 source_layer=c.selfcond.source_layer if name == BASELINE else name)
            result = pretrain(c, recipe)
            loss = tail_loss(Path(result["run_dir"]) / "metrics.csv", tail=tail)
            losses[name][seed] = loss
            rows.append({"source_layer": name, "seed": seed, "tail_loss": loss,
                         "steps": result["steps"], "params": result["params"]})
            print(f"layer search: {name} seed {seed}: tail loss {loss:.5f}")
    summary_rows = []
    for name in names:
        per_seed = [losses[name][s] for s in seeds]
        row: dict[str, Any] = {"source_layer": name, "mean_tail_loss": sum(per_seed) / len(seeds),
                               "tail_loss": per_seed}
        if include_baseline and name != BASELINE:
            row["vs_baseline"] = paired_difference([losses[BASELINE][s] for s in seeds],
                                                   per_seed).to_dict()
        summary_rows.append(row)
    chosen = min((r for r in summary_rows if r["source_layer"] != BASELINE),
                 key=lambda r: r["mean_tail_loss"])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_dir / "layer_search.csv", buf.getvalue())
    intro = (f"Tail loss: mean train/loss_diffusion over the last {tail:.0%} of logged steps "
             f"({steps} steps, seeds {', '.join(map(str, seeds))}). Difference to the baseline "
             f"(no self-conditioning) is paired by seed: same base weights, data and noise.")
    header = ("| source layer | tail loss per seed | mean | vs baseline: per seed | mean | sd | "
              "95% t-interval |")
    lines = [intro, "", header, "|---|---|---|---|---|---|---|"]
    for r in summary_rows:
        per_seed = ", ".join(f"{v:.5f}" for v in r["tail_loss"])
        d = r.get("vs_baseline")
        if d is None:
            delta = "– | – | – | –"
        else:
            sd = "–" if d["std"] != d["std"] else f"{d['std']:.5f}"
            ci = "–" if d["ci_low"] != d["ci_low"] else f"[{d['ci_low']:+.5f}, {d['ci_high']:+.5f}]"
            delta = (f"{', '.join(f'{v:+.5f}' for v in d['diffs'])} | {d['mean']:+.5f} | {sd} | "
                     f"{ci}")
        mark = " (chosen)" if r is chosen else ""
        lines.append(f"| {r['source_layer']}{mark} | {per_seed} | {r['mean_tail_loss']:.5f} | "
                     f"{delta} |")
    summary = {"chosen": chosen["source_layer"], "steps": steps, "tail": tail, "seeds": seeds,
               "metric": "mean train/loss_diffusion over the last tail fraction",
               "candidates": summary_rows, "runs": rows}
    atomic_write_text(out_dir / "layer_search.md", "\n".join(lines) + "\n\nchosen: "
                      f"`selfcond.source_layer={chosen['source_layer']}`\n")
    update_metrics(out_dir, {"layer_search": summary})
    return summary
