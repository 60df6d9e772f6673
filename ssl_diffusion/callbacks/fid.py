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

from ssl_diffusion.errors import UserError


def check_fid_config(f: Any) -> None:
    """Range checks of ``eval.fid`` that types cannot express (one-line UserErrors)."""
    from ssl_diffusion.generation import check_ref_split

    if f.n < 2:
        raise UserError(f"eval.fid.n={f.n} is invalid; FID needs at least 2 generated images")
    if f.ref_n is not None and f.ref_n < 2:
        raise UserError(f"eval.fid.ref_n={f.ref_n} is invalid; use >= 2 images or null (whole split)")
    if f.every_n_epochs < 0:
        raise UserError(f"eval.fid.every_n_epochs={f.every_n_epochs} is invalid; use >= 0 "
                        f"(0 = only at the end of training)")
    if f.batch_size < 1:
        raise UserError(f"eval.fid.batch_size={f.batch_size} is invalid; it must be >= 1")
    check_ref_split(f.ref_split)


def fid_callbacks(cfg: Any, method: Any, run_dir: Path, splits: Any = None) -> list[pl.Callback]:
    """``[FIDCallback]`` when ``eval.fid.enabled`` (else ``[]``), after checking everything that
    could fail hours later: the method can generate, the sampler and FID knobs are valid, and
    the Inception weights are found offline."""
    f = cfg.eval.fid
    if not f.enabled:
        return []
    from ssl_diffusion.eval.inception import find_inception_weights
    from ssl_diffusion.generation import can_generate, check_guidance

    if not can_generate(method):
        raise UserError(f"eval.fid.enabled=true but method {cfg.method} cannot generate images; "
                        f"set eval.fid.enabled=false or use method=ddae/ddaepp")
    check_fid_config(f)
    callback = FIDCallback(cfg, run_dir, splits)
    check_guidance(method, callback.sampler_cfg)
    find_inception_weights(f.weights)
    return [callback]


class FIDCallback(pl.Callback):
    def __init__(self, cfg: Any, run_dir: Path, splits: Any = None) -> None:
        from ssl_diffusion.generation import sampler_config

        self.cfg, self.run_dir, self.splits = cfg, Path(run_dir), splits
        self.fid_cfg = cfg.eval.fid
        f = self.fid_cfg
        self.sampler_cfg = sampler_config(cfg.sampler, sampler=f.sampler, steps=f.steps, cfg=f.cfg)
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
            from ssl_diffusion.run import update_metrics

            update_metrics(self.run_dir, {"fid": result})

    def evaluate(self, trainer: pl.Trainer, pl_module: Any) -> dict:
        from ssl_diffusion.generation import FIDStage, class_labels_for

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


__all__ = ["FIDCallback", "check_fid_config", "fid_callbacks"]
