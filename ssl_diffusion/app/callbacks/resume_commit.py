"""Rewrite a resumed run's files only once it has really resumed.

A resumed run's ``config.yaml`` (the new command's config, e.g. a longer ``trainer.max_steps``)
and the ``metrics.csv`` rows logged after its checkpoint (they will be logged again) are
rewritten in ``on_train_start``: after Lightning has restored every part of the checkpoint into
the built model, optimiser and loops, and before the first new row is logged. A resume refused
or failing before that point leaves both files as they were. Both rewrites are atomic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from ssl_diffusion.app.loggers import truncate_metrics_csv
from ssl_diffusion.app.run_dir import write_config


class CommitResume(pl.Callback):
    """Rank 0: save ``cfg`` as ``config.yaml`` and drop the rows with step >= ``resume_step``."""

    def __init__(self, cfg: Any, run_dir: Path, resume_step: int) -> None:
        self.cfg, self.run_dir, self.resume_step = cfg, Path(run_dir), resume_step
        self.done = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.done or not trainer.is_global_zero:
            return
        truncate_metrics_csv(self.run_dir / "metrics.csv", self.resume_step)
        write_config(self.cfg, self.run_dir)
        self.done = True
