"""A CSV logger that survives resumes.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it starts, which would erase
the history of a resumed run. This one keeps the file, drops only the rows logged after the
checkpoint being resumed (they will be logged again), and adds rows by an atomic rewrite, so a
hard kill never leaves a truncated file.
"""

from __future__ import annotations

import csv
import netrc
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from ssl_diffusion.atomic import AtomicFile
from ssl_diffusion.errors import UserError


class _KeepingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                header = next(csv.reader(f), [])
            self.metrics_keys = sorted(header)

    def save(self) -> None:
        """Write the file anew with the pending rows, atomically: a kill at any moment leaves
        either the old or the new complete file (Lightning appends in place, and rewrites the
        whole file in place when a new column appears, which a kill would truncate)."""
        if not self.metrics:
            return
        self._record_new_keys()
        rows: list[dict] = []
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                rows = list(csv.DictReader(f))
        with AtomicFile(self.metrics_file_path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(rows)
            writer.writerows(self.metrics)
        self.metrics = []


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` writing ``<save_dir>/metrics.csv`` without deleting earlier rows."""

    def __init__(self, save_dir: str | Path) -> None:
        super().__init__(save_dir=str(save_dir), name="", version="")

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment


def _step_of(row: dict, path: Path) -> int | None:
    text = row.get("step") or ""
    if text == "":
        return None
    try:
        return int(float(text))
    except ValueError:
        raise UserError(f"{path} is corrupt (step `{text}` is not a number); fix it or move it "
                        f"away") from None


def check_metrics_csv(path: str | Path) -> None:
    """A resumed run's ``metrics.csv`` must be readable before anything is written."""
    path = Path(path)
    if not path.is_file():
        return
    try:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                _step_of(row, path)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path} is unreadable ({exc}); fix it or move it away") from None


def truncate_metrics_csv(path: str | Path, last_step: int) -> None:
    """Drop rows with ``step`` >= ``last_step`` (logged after the checkpoint being resumed).

    Rows are logged with the step *before* the optimizer step increments it, so the rows of
    steps 0..last_step-1 belong to the checkpoint at global step ``last_step``.
    """
    path = Path(path)
    if not path.is_file():
        return
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        rows = [r for r in reader if _step_of(r, path) is None or _step_of(r, path) < last_step]
    with AtomicFile(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def check_wandb_online(cfg: Any) -> None:
    """``logger.wandb.mode=online`` needs an API key and a reachable server; checked before the
    run directory is written (wandb itself gives up only after minutes of retries)."""
    w = cfg.logger.wandb
    if not (w.enabled and w.mode == "online") or os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        return
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    if not os.environ.get("WANDB_API_KEY"):
        try:
            auth = netrc.netrc().authenticators(host)
        except (OSError, netrc.NetrcParseError):
            auth = None
        if not auth:
            raise UserError(f"logger.wandb.mode=online needs a wandb API key for {host} (run "
                            f"`wandb login` or set WANDB_API_KEY); or use logger.wandb.mode=offline "
                            f"and `wandb sync` later")
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as exc:
        raise UserError(f"logger.wandb.mode=online but {host} cannot be reached ({exc}); use "
                        f"logger.wandb.mode=offline and `wandb sync` later") from None
