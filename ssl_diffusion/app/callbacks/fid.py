"""In-training FID: the ``eval.fid`` protocol run from inside ``trainer.fit``.

Every ``eval.fid.every_n_epochs`` epochs (0 = only once, at the end of training) the callback
generates ``eval.fid.n`` images (seeds ``eval.fid.seed + i``) with the recipe's sampler (and the
``eval.fid.sampler/steps/cfg`` overrides), logs ``val/fid`` and ``val/kid`` to the run's loggers,
and at the end of training merges the final result, with its protocol, into ``metrics.json``
under ``fid``.

DDP: rank r of W generates seeds ``seed + i`` for i = r, r + W, ...; the float64 Inception
statistics are all-reduced, so the number does not depend on the GPU count. Reference statistics
are computed once (rank 0 first, then the other ranks read the on-disk cache) and kept in memory.
Sampling uses per-image generators only, so the global RNG stream of training is untouched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from ssl_diffusion.app.generation import (
    FIDStage,
    check_guidance,
    class_labels_for,
    layered_sampler_config,
)
from ssl_diffusion.app.run_dir import update_metrics
from ssl_diffusion.config import Config
from ssl_diffusion.errors import UserError
from ssl_diffusion.eval.inception import find_inception_weights
from ssl_diffusion.methods.base import SSLMethod


def fid_callbacks(cfg: Config, method: SSLMethod, run_dir: Path, splits: Any = None) -> list[pl.Callback]:
    """``[FIDCallback]`` when ``eval.fid.enabled`` (else ``[]``), after checking everything that
    could fail hours later: the method can generate, the sampler and FID knobs are valid, and
    the Inception weights are found offline."""
    f = cfg.eval.fid
    if not f.enabled:
        return []
    if not method.generative:
        raise UserError(f"eval.fid.enabled=true but method {cfg.method} cannot generate images; "
                        f"set eval.fid.enabled=false or use method=ddae/ddaepp")
    callback = FIDCallback(cfg, run_dir, splits)
    check_guidance(method, callback.sampler_cfg)
    find_inception_weights(f.weights)
    return [callback]


class FIDCallback(pl.Callback):
    def __init__(self, cfg: Config, run_dir: Path, splits: Any = None) -> None:
        self.cfg, self.run_dir, self.splits = cfg, Path(run_dir), splits
        self.fid_cfg = cfg.eval.fid
        self.sampler_cfg = layered_sampler_config(cfg, fid=True)
        self.stage: Any = None  # FIDStage, built on the first evaluation (module's device known)
        self.last: tuple[int, dict] | None = None  # (global step, result) of the last evaluation

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        every = self.fid_cfg.every_n_epochs
        if every > 0 and (trainer.current_epoch + 1) % every == 0:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.last is not None and self.last[0] == trainer.global_step:
            result = self.last[1]  # the last epoch-end evaluation was at this very step
        else:
            result = self.evaluate(trainer, pl_module)
        if trainer.is_global_zero:
            update_metrics(self.run_dir, {"fid": result})

    def evaluate(self, trainer: pl.Trainer, pl_module: Any) -> dict:
        f = self.fid_cfg
        if self.stage is None:
            self.stage = FIDStage(self.cfg, f, splits=self.splits, device=pl_module.device)
        seeds = list(range(f.seed, f.seed + f.n))
        world = trainer.world_size
        result = self.stage.evaluate(
            pl_module, seeds, self.sampler_cfg, batch_size=f.batch_size, use_ema=f.use_ema,
            class_labels=class_labels_for(pl_module, seeds, None), rank=trainer.global_rank,
            world=world, barrier=trainer.strategy.barrier if world > 1 else None,
            progress=trainer.is_global_zero and self.cfg.trainer.progress_bar,
        )
        result.update({"step": int(trainer.global_step), "epoch": int(trainer.current_epoch)})
        metrics = {"val/fid": result["fid"]}
        if result["kid_mean"] is not None:
            metrics["val/kid"] = result["kid_mean"]
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
        self.last = (trainer.global_step, result)
        return result


__all__ = ["FIDCallback", "fid_callbacks"]
