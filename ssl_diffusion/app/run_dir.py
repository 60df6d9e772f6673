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

# atomic_write_text is used here and stays importable from ssl_diffusion.app.run_dir
from ssl_diffusion.atomic import atomic_write_text
from ssl_diffusion.config import Config, deep_merge, dump_config, resume_safe_keys, to_dict
from ssl_diffusion.errors import UserError

# Keys that may change between invocations of the same run (length, hardware, evaluation,
# logging) are marked on the config fields themselves (``config.sections.resumable``); anything
# else means the directory belongs to a different experiment.
RESUME_SAFE = tuple(resume_safe_keys(Config))


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
        if key in RESUME_SAFE or key.startswith(tuple(k for k in RESUME_SAFE if k.endswith("."))):
            continue
        if key == "trainer.schedule_steps" and a.get(key) is None:
            continue  # pinned when a run is extended (pin_schedule), not a different experiment
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            diffs.append(f"{key}: {a.get(key, '<unset>')!r} -> {b.get(key, '<unset>')!r}")
    return diffs


def run_name(cfg: Config, recipe: str | Path | None) -> str:
    if cfg.run.name:
        return cfg.run.name
    return Path(recipe).stem if recipe else cfg.method


def _saved_config(path: Path) -> dict:
    try:
        old = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        old = {}
    return old if isinstance(old, dict) else {}


def pin_schedule(cfg: Config, recipe: str | Path | None) -> None:
    """Extending a run keeps its lr and teacher-momentum schedules as they were.

    Both schedules span ``trainer.schedule_steps`` (None = the run's length). When a run is
    resumed with another ``trainer.max_steps``, the length of its first leg is pinned there
    (and saved in config.yaml), so the steps already taken keep their meaning and the extra
    steps run at the schedules' final values. Runs every rank (reads, never writes).
    """
    run_dir = Path(cfg.run.root) / run_name(cfg, recipe)
    t = cfg.trainer
    saved = run_dir / "config.yaml"
    if (t.schedule_steps is not None or cfg.run.overwrite or not cfg.run.resume
            or not saved.is_file() or not (run_dir / "last.ckpt").exists()):
        return
    old = _saved_config(saved).get("trainer", {})
    if not isinstance(old, dict):
        return
    if old.get("schedule_steps") is not None:
        t.schedule_steps = int(old["schedule_steps"])
        return
    if (old.get("max_steps"), old.get("max_epochs")) == (t.max_steps, t.max_epochs):
        return
    if old.get("max_steps") is None:
        raise UserError(
            f"{run_dir} was trained with trainer.max_epochs={old.get('max_epochs')}; changing its "
            f"length on resume would stretch its lr and teacher-momentum schedules. Keep the "
            f"length, or pin them with trainer.schedule_steps=<steps of the first leg>")
    t.schedule_steps = int(old["max_steps"])
    print(f"extending {run_dir.name} from {old['max_steps']} steps: the lr and teacher-momentum "
          f"schedules keep their length (trainer.schedule_steps={t.schedule_steps})")


def prepare_run_dir(cfg: Config, recipe: str | Path | None) -> Path:
    """Create (or validate for reuse) the run directory and save the resolved config."""
    run_dir = Path(cfg.run.root) / run_name(cfg, recipe)
    saved = run_dir / "config.yaml"
    if saved.is_file():
        old = _saved_config(saved)
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


def read_metrics(run_dir: str | Path) -> dict:
    """``run_dir/metrics.json`` as a dict ({} when absent); a corrupt file is a one-line error."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); fix or move it away") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object; fix or move it away")
    return data


def update_metrics(run_dir: Path, update: dict) -> dict:
    """Merge ``update`` into ``run_dir/metrics.json`` (nested keys merged, others kept)."""
    path = Path(run_dir) / "metrics.json"
    merged = deep_merge(read_metrics(run_dir), update)
    atomic_write_text(path, json.dumps(merged, indent=2, sort_keys=True) + "\n")
    return merged


def store_metrics_entry(run_dir: str | Path, key: str, entry: dict) -> None:
    """Replace ``metrics.json[key]`` with ``entry`` (atomic; other keys kept).

    Replaced rather than merged, so numbers of an earlier protocol (other k, other cells) never
    linger beside the new ones.
    """
    current = read_metrics(run_dir)
    current[key] = entry
    atomic_write_text(Path(run_dir) / "metrics.json",
                      json.dumps(current, indent=2, sort_keys=True) + "\n")
