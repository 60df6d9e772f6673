"""Run directories: ``runs/<name>/`` holds the resolved config, checkpoints, ``metrics.json``,
logs and images. Results are never deleted: reusing a directory created by a different recipe is
refused unless ``run.overwrite=true``, which moves the old directory aside rather than removing it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

# atomic_write_text is used here and stays importable from ssl_diffusion.run
from ssl_diffusion.atomic import atomic_write_text
from ssl_diffusion.config import dump_config, to_dict
from ssl_diffusion.errors import UserError

# Keys that may change between invocations of the same run (length, hardware, evaluation,
# logging); anything else means the directory belongs to a different experiment.
MUTABLE_PREFIXES = (
    "run.", "logger.", "eval.", "trainer.max_steps", "trainer.max_epochs", "trainer.accelerator",
    "trainer.devices", "trainer.num_nodes", "trainer.strategy", "trainer.progress_bar",
    "trainer.log_every_n_steps", "trainer.ckpt_every_n_steps", "trainer.last_ckpt_every_n_steps",
    "trainer.on_nonfinite", "data.num_workers", "data.root", "data.download",
)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(old: dict, new: dict) -> list[str]:
    a, b = _flatten(old), _flatten(new)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key.startswith(MUTABLE_PREFIXES):
            continue
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            diffs.append(f"{key}: {a.get(key, '<unset>')!r} -> {b.get(key, '<unset>')!r}")
    return diffs


def run_name(cfg: Any, recipe: str | Path | None) -> str:
    if cfg.run.name:
        return cfg.run.name
    return Path(recipe).stem if recipe else cfg.method


def prepare_run_dir(cfg: Any, recipe: str | Path | None) -> Path:
    """Create (or validate for reuse) the run directory and save the resolved config."""
    run_dir = Path(cfg.run.root) / run_name(cfg, recipe)
    saved = run_dir / "config.yaml"
    if saved.is_file():
        try:
            old = yaml.safe_load(saved.read_text()) or {}
        except yaml.YAMLError:
            old = {}
        diffs = config_differences(old, to_dict(cfg))
        if diffs and not cfg.run.overwrite:
            shown = "; ".join(diffs[:3]) + (f"; ... ({len(diffs)} differences)" if len(diffs) > 3 else "")
            raise UserError(
                f"run directory {run_dir} belongs to a different experiment ({shown}); choose "
                f"another run.name=..., or run.overwrite=true to move the old run aside"
            )
        if diffs:
            backup = run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
            run_dir.rename(backup)
            print(f"run.overwrite=true: moved the previous run to {backup}")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved, dump_config(cfg))
    return run_dir


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def update_metrics(run_dir: Path, update: dict) -> dict:
    """Merge ``update`` into ``run_dir/metrics.json`` (nested keys merged, others kept)."""
    path = Path(run_dir) / "metrics.json"
    current: dict = {}
    if path.is_file():
        try:
            current = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} is not valid JSON ({exc}); fix or move it away") from None
    merged = _merge(current, update)
    atomic_write_text(path, json.dumps(merged, indent=2, sort_keys=True) + "\n")
    return merged
