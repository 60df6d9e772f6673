"""A CSV logger that survives resumes.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it starts, which would erase
the history of a resumed run. This one keeps the file, drops only the rows logged after the
checkpoint being resumed (they will be logged again), and appends.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from ssl_diffusion.atomic import AtomicFile


class _KeepingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                header = next(csv.reader(f), [])
            self.metrics_keys = sorted(header)


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
        rows = [r for r in reader if r.get("step", "") == "" or int(float(r["step"])) < last_step]
    with AtomicFile(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
