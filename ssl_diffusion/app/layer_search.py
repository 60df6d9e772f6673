"""Self-conditioning source-layer search by short-run training loss (DDAE++ §2.3).

The paper picks the source layer k by the training (denoising) loss of short parallel runs, not
by probe accuracy. Here every candidate (and the baseline without self-conditioning) trains the
same recipe with the same seed, data order and noise draws for ``steps`` steps; the score is the
mean ``train/loss_diffusion`` over the last ``tail`` fraction of logged steps. Lowest wins.
"""

from __future__ import annotations

import copy
import csv
import io
from dataclasses import replace
from pathlib import Path
from typing import Any

from ssl_diffusion.app.pretrain import pretrain
from ssl_diffusion.app.run_dir import update_metrics
from ssl_diffusion.atomic import atomic_write_text
from ssl_diffusion.config import Config
from ssl_diffusion.errors import UserError

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
                     tail: float = 0.25, include_baseline: bool = True) -> dict[str, Any]:
    """Train one short run per candidate source layer; return and save the ranking."""
    if cfg.method != "ddaepp":
        raise UserError(f"the source-layer search needs method=ddaepp (got `{cfg.method}`)")
    base_name = cfg.run.name or Path(recipe).stem
    out_dir = Path(cfg.run.root) / f"{base_name}-layer-search"
    rows = []
    names = ([BASELINE] if include_baseline else []) + list(candidates)
    for name in names:
        c = copy.deepcopy(cfg)
        c.run = replace(c.run, name=f"{base_name}-layer-search/{name}")
        c.trainer = replace(c.trainer, max_steps=steps, max_epochs=None,
                            log_every_n_steps=max(1, min(c.trainer.log_every_n_steps, steps // 20 or 1)))
        c.eval = replace(c.eval, online_knn=False, online_linear=False)
        c.selfcond = replace(c.selfcond, enabled=name != BASELINE,
                             source_layer=c.selfcond.source_layer if name == BASELINE else name)
        result = pretrain(c, recipe)
        loss = tail_loss(Path(result["run_dir"]) / "metrics.csv", tail=tail)
        rows.append({"source_layer": name, "tail_loss": loss, "steps": result["steps"],
                     "params": result["params"]})
        print(f"layer search: {name}: tail loss {loss:.5f}")
    chosen = min((r for r in rows if r["source_layer"] != BASELINE), key=lambda r: r["tail_loss"])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_dir / "layer_search.csv", buf.getvalue())
    lines = ["| source layer | tail loss | steps |", "|---|---|---|"]
    lines += [f"| {r['source_layer']}{' (chosen)' if r is chosen else ''} | {r['tail_loss']:.5f} | "
              f"{r['steps']} |" for r in rows]
    summary = {"chosen": chosen["source_layer"], "steps": steps, "tail": tail,
               "metric": "mean train/loss_diffusion over the last tail fraction", "rows": rows}
    atomic_write_text(out_dir / "layer_search.md", "\n".join(lines) + "\n\nchosen: "
                      f"`selfcond.source_layer={chosen['source_layer']}`\n")
    update_metrics(out_dir, {"layer_search": summary})
    return summary
