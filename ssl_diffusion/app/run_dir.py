"""Run directories: ``runs/<name>/`` holds the resolved config, checkpoints, ``metrics.json``,
logs and images. Results are never deleted: reusing a directory created by a different recipe is
refused unless ``run.overwrite=true``, which moves the old directory aside rather than removing it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssl_diffusion.app.file_lock import locked

# atomic_write_text is used here and stays importable from ssl_diffusion.app.run_dir
from ssl_diffusion.atomic import atomic_write_text
from ssl_diffusion.config import Config, deep_merge, dump_config, resume_safe_keys, to_dict
from ssl_diffusion.config.loader import load_yaml_text
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


MAX_NAME_BYTES = 255  # longest file name on common file systems (ext4, xfs, apfs, ntfs)
# Temporary files only a training command writes in its run directory (under the run lock):
# a killed checkpoint or config/CSV rewrite leaves one behind; the next run removes them.
STALE_TEMPORARIES = (".*.ckpt.tmp", ".config.yaml.*.tmp", ".metrics.csv.*.tmp")


def check_run_name(name: str, key: str = "run.name") -> str:
    """``name`` when it is one folder name (a run never leaves ``run.root`` or takes it over)."""
    seps = {os.sep, "/"} | ({os.altsep} if os.altsep else set())
    if name in ("", ".", "..") or any(sep in name for sep in seps) or "\0" in name:
        raise UserError(
            f"{key}=`{name}` is not a run name: it must be one folder name under run.root "
            f"(no `/`, not `.` or `..`), e.g. run.name=my_run; set run.root=... for another "
            f"parent folder")
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise UserError(f"{key} is {len(name.encode('utf-8', 'surrogateescape'))} bytes long; "
                        f"file names may have at most {MAX_NAME_BYTES}: choose a shorter run.name")
    return name


def run_name(cfg: Config, recipe: str | Path | None) -> str:
    if cfg.run.name:
        return check_run_name(cfg.run.name)
    if recipe:
        return check_run_name(Path(recipe).stem, f"the recipe file name `{Path(recipe).name}`")
    return cfg.method


def run_directory(cfg: Config, recipe: str | Path | None) -> Path:
    """``run.root/<run name>``, after checking that neither is a file (nothing is created)."""
    root = Path(cfg.run.root)
    if root.exists() and not root.is_dir():
        raise UserError(f"run.root={root} is a file, not a folder; point run.root at a folder")
    run_dir = root / run_name(cfg, recipe)
    if run_dir.is_symlink() and not run_dir.exists():
        raise UserError(f"run directory {run_dir} is a dangling symlink; remove it or choose "
                        f"another run.name=...")
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} exists and is a file, not a folder; move it "
                        f"away or choose another run.name=...")
    return run_dir


@dataclass
class RunDirState:
    """What an existing run directory holds, read without changing it."""

    run_dir: Path
    exists: bool
    move_aside: bool  # run.overwrite=true and the directory belongs to another experiment


def read_saved_config(path: Path) -> dict:
    """The run's saved ``config.yaml`` as a dict; a damaged one is a ``UserError`` saying so."""
    try:
        data = load_yaml_text(path.read_text(), str(path))
    except UserError as exc:
        raise UserError(f"{path} is corrupt ({exc}); restore it, or run.overwrite=true to move "
                        f"this run aside and start again") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path} ({exc}); restore it, or run.overwrite=true to move "
                        f"this run aside and start again") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is corrupt (not a mapping of keys); restore it, or "
                        f"run.overwrite=true to move this run aside and start again")
    return data


def inspect_run_dir(cfg: Config, run_dir: Path) -> RunDirState:
    """Validate an existing run directory for this command without touching it: its config
    (same experiment, readable) and its ``metrics.json`` (valid JSON)."""
    if not run_dir.is_dir():
        return RunDirState(run_dir, False, False)
    saved = run_dir / "config.yaml"
    if saved.exists() or saved.is_symlink():
        try:
            diffs = config_differences(read_saved_config(saved), to_dict(cfg))
        except UserError:
            if not cfg.run.overwrite:
                raise
            diffs = ["config.yaml unreadable"]
        if diffs and not cfg.run.overwrite:
            shown = "; ".join(diffs[:3]) + (f"; ... ({len(diffs)} differences)" if len(diffs) > 3 else "")
            raise UserError(
                f"run directory {run_dir} belongs to a different experiment ({shown}); choose "
                f"another run.name=..., or run.overwrite=true to move the old run aside"
            )
        if diffs:
            return RunDirState(run_dir, True, True)
    read_metrics(run_dir)
    return RunDirState(run_dir, True, False)


def move_aside(run_dir: Path) -> Path:
    """``run.overwrite=true``: rename the old run to ``<name>.old-<time>`` (nothing deleted)."""
    backup = run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while backup.exists():
        backup = run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
        n += 1
    run_dir.rename(backup)
    print(f"run.overwrite=true: moved the previous run to {backup}")
    return backup


def clean_stale_temporaries(run_dir: Path) -> list[Path]:
    """Remove the temporaries a killed training command left (call with the run lock held)."""
    removed = []
    for pattern in STALE_TEMPORARIES:
        for path in run_dir.glob(pattern):
            if path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def write_config(cfg: Config, run_dir: Path) -> None:
    atomic_write_text(run_dir / "config.yaml", dump_config(cfg))


def pin_schedule(cfg: Config, recipe: str | Path | None) -> None:
    """Extending a run keeps its lr and teacher-momentum schedules as they were.

    Both schedules span ``trainer.schedule_steps`` (None = the run's length). When a run is
    resumed with another ``trainer.max_steps``, the length of its first leg is pinned there
    (and saved in config.yaml), so the steps already taken keep their meaning and the extra
    steps run at the schedules' final values. Runs every rank (reads, never writes).
    """
    run_dir = run_directory(cfg, recipe)
    t = cfg.trainer
    saved = run_dir / "config.yaml"
    if (t.schedule_steps is not None or cfg.run.overwrite or not cfg.run.resume
            or not saved.is_file() or not (run_dir / "last.ckpt").exists()):
        return
    old = read_saved_config(saved).get("trainer", {})
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
    run_dir = run_directory(cfg, recipe)
    if inspect_run_dir(cfg, run_dir).move_aside:
        move_aside(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(cfg, run_dir)
    return run_dir


def read_metrics(run_dir: str | Path) -> dict:
    """``run_dir/metrics.json`` as a dict ({} when absent); a corrupt file is a one-line error."""
    path = Path(run_dir) / "metrics.json"
    if not (path.exists() or path.is_symlink()):
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); fix or move it away") from None
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc.strerror}); fix or move it away") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object; fix or move it away")
    return data


def _rewrite_metrics(run_dir: str | Path, change: Callable[[dict], dict]) -> dict:
    """``metrics.json`` <- ``change(current)``, under its lock and atomically (concurrent
    writers, evaluation CLIs or other runs, lose no key)."""
    path = Path(run_dir) / "metrics.json"
    with locked(path):
        new = change(read_metrics(run_dir))
        atomic_write_text(path, json.dumps(new, indent=2, sort_keys=True) + "\n")
    return new


def update_metrics(run_dir: Path, update: dict) -> dict:
    """Merge ``update`` into ``run_dir/metrics.json`` (nested keys merged, others kept)."""
    return _rewrite_metrics(run_dir, lambda current: deep_merge(current, update))


def store_metrics_entry(run_dir: str | Path, key: str, entry: dict) -> None:
    """Replace ``metrics.json[key]`` with ``entry`` (atomic; other keys kept).

    Replaced rather than merged, so numbers of an earlier protocol (other k, other cells) never
    linger beside the new ones.
    """
    _rewrite_metrics(run_dir, lambda current: {**current, key: entry})
