"""Builds data, method and trainer from a config, runs pretraining, and reloads checkpoints."""

from __future__ import annotations

import logging
import os
import sys
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from ssl_diffusion.app.callbacks.fid import fid_callbacks
from ssl_diffusion.app.checkpoint import (
    AtomicCheckpoint,
    check_compatible,
    load_checkpoint_file,
)
from ssl_diffusion.app.loggers import ResumableCSVLogger, truncate_metrics_csv
from ssl_diffusion.app.run_dir import pin_schedule, prepare_run_dir, run_name, update_metrics
from ssl_diffusion.app.signals import GracefulInterrupt, RunInterrupted
from ssl_diffusion.config import Config
from ssl_diffusion.data.datasets import Splits, build_splits
from ssl_diffusion.data.info import DataInfo
from ssl_diffusion.data.module import SSLDataModule
from ssl_diffusion.data.transforms import eval_transform, train_transform
from ssl_diffusion.errors import UserError
from ssl_diffusion.methods.base import SSLMethod
from ssl_diffusion.registry import METHODS


def quiet_lightning() -> None:
    """Silence Lightning's advice that does not apply to CPU research runs."""
    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (".*does not have many workers.*", ".*GPU available but not used.*",
                    ".*LeafSpec.*", ".*is not resumable.*", ".*sync_dist=True.*",
                    ".*Trying to infer the `batch_size`.*", ".*TPU available.*",
                    ".*The number of training batches.*", ".*Checkpoint directory.*",
                    r".*module\(s\) in eval mode.*",
                    # data.val_fraction=0: the online-eval val loader is empty by design
                    ".*Total length of `DataLoader` across ranks is zero.*"):
        warnings.filterwarnings("ignore", message=pattern)


def is_launch_rank_zero() -> bool:
    """Whether this process is global rank 0, decided before the trainer exists.

    Lightning's DDP launcher re-runs the command once per extra device with ``LOCAL_RANK`` and
    ``NODE_RANK`` set, after rank 0 has prepared the run directory; torchrun sets ``RANK``.
    Only rank 0 writes the run directory; the others read what it wrote.
    """
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"]) == 0
    if "LOCAL_RANK" in env:
        return int(env["LOCAL_RANK"]) == 0 and int(env.get("NODE_RANK", 0)) == 0
    return int(env.get("SLURM_PROCID", 0)) == 0


def method_class(cfg: Config) -> type:
    return METHODS.get(cfg.method)


def build_method(cfg: Config, info: DataInfo) -> SSLMethod:
    method = method_class(cfg)(cfg, info)
    method.validate_config()
    return method


def build_datamodule(cfg: Config, splits: Splits, method_cls: type) -> SSLDataModule:
    preset = cfg.aug.preset or method_cls.default_aug
    train_tf = train_transform(preset, splits.info, cfg.aug, method_cls.normalization)
    eval_tf = eval_transform(splits.info, method_cls.normalization)
    return SSLDataModule(cfg, splits, train_tf, eval_tf)


def _loggers(cfg: Config, run_dir: Path, name: str, rank_zero: bool = True) -> list:
    loggers = [ResumableCSVLogger(run_dir)]
    w = cfg.logger.wandb
    if w.enabled and w.mode != "disabled":
        from pytorch_lightning.loggers import WandbLogger  # wandb is optional (air-gapped nodes)

        id_file = run_dir / "wandb_id.txt"
        if rank_zero and not id_file.exists():
            id_file.write_text(uuid.uuid4().hex[:12])
        # Other ranks never start a wandb run (Lightning logs from rank 0 only).
        run_id = id_file.read_text().strip() if id_file.exists() else None
        loggers.append(WandbLogger(name=name, project=w.project, entity=w.entity, tags=w.tags,
                                   save_dir=str(run_dir), offline=w.mode == "offline",
                                   id=run_id, resume="allow"))
    return loggers


def make_trainer(cfg: Config, run_dir: Path, callbacks: list, loggers: list | bool) -> Any:
    t, e = cfg.trainer, cfg.eval
    val_kwargs: dict[str, Any] = {"check_val_every_n_epoch": e.every_n_epochs}
    if e.every_n_steps > 0:
        val_kwargs = {"val_check_interval": e.every_n_steps, "check_val_every_n_epoch": None}
    if not (e.online_knn or e.online_linear):
        val_kwargs["limit_val_batches"] = 0
    return pl.Trainer(
        max_steps=t.max_steps if t.max_steps is not None else -1,
        max_epochs=t.max_epochs if t.max_epochs is not None else (-1 if t.max_steps else None),
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,
        log_every_n_steps=t.log_every_n_steps,
        gradient_clip_val=cfg.optim.grad_clip,
        deterministic=t.deterministic,
        enable_checkpointing=False,  # AtomicCheckpoint does it (temp file + rename)
        enable_progress_bar=t.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # ResumableSampler shards by rank itself
        default_root_dir=str(run_dir),
        callbacks=callbacks,
        logger=loggers,
        **val_kwargs,
    )


def check_trainer_config(cfg: Config) -> None:
    """Accelerator / devices / strategy / precision errors as one line before any file is
    written (Lightning checks them only when the Trainer is built, after the run directory)."""
    t = cfg.trainer
    try:
        pl.Trainer(accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
                   strategy=t.strategy, precision=t.precision, logger=False,
                   enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False)
    except (ValueError, RuntimeError, ImportError, MisconfigurationException) as exc:
        text = str(exc).strip()
        raise UserError(
            f"trainer.accelerator={t.accelerator} trainer.devices={t.devices} "
            f"trainer.strategy={t.strategy} trainer.precision={t.precision} cannot run here: "
            f"{text.splitlines()[0] if text else type(exc).__name__}") from None


def _resume_step(cfg: Config, method: SSLMethod, run_dir: Path) -> int | None:
    """Global step of ``run_dir/last.ckpt`` when the run resumes from it (after checking that it
    is a readable checkpoint of this method and architecture), else None."""
    last = run_dir / "last.ckpt"
    if not (cfg.run.resume and last.exists()):
        return None
    ckpt = load_checkpoint_file(last)
    check_compatible(ckpt, cfg.method, method.arch_name(), last)
    return int(ckpt.get("global_step", 0))


def pretrain(cfg: Config, recipe: str | Path | None = None) -> dict[str, Any]:
    """Train ``cfg.method`` on ``cfg.data``; resume from ``last.ckpt`` when present."""
    try:
        return _pretrain(cfg, recipe)
    finally:
        _finish_wandb()


def _finish_wandb() -> None:
    """Close this run's wandb run, so the next pretrain() in the same process (main_compare,
    main_layer_search) starts its own instead of logging into this one."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def _pretrain(cfg: Config, recipe: str | Path | None) -> dict[str, Any]:
    quiet_lightning()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    pin_schedule(cfg, recipe)  # an extended run keeps its schedules (before the method is built)
    splits = build_splits(cfg.data)  # data errors surface before any file is written
    method_cls = method_class(cfg)
    method = build_method(cfg, splits.info)
    datamodule = build_datamodule(cfg, splits, method_cls)
    # eval.fid is checked (method can generate, Inception weights found) before any file is written
    fid_cbs = fid_callbacks(cfg, method, Path(cfg.run.root) / run_name(cfg, recipe), splits)
    check_trainer_config(cfg)
    if cfg.trainer.compile:
        method.compile_networks()  # nn.Module.compile: in place, checkpoint keys unchanged
    run_dir = Path(cfg.run.root) / run_name(cfg, recipe)
    # The checkpoint to resume is checked before prepare_run_dir rewrites config.yaml, so a bad
    # last.ckpt leaves the run directory as it was; with run.overwrite=true the old run may be
    # moved aside first, so it is checked after.
    resume_step = None if cfg.run.overwrite else _resume_step(cfg, method, run_dir)
    rank_zero = is_launch_rank_zero()
    if rank_zero:
        run_dir = prepare_run_dir(cfg, recipe)
    if cfg.run.overwrite:
        resume_step = _resume_step(cfg, method, run_dir)
    resume = run_dir / "last.ckpt" if resume_step is not None else None
    if resume is not None and rank_zero:
        truncate_metrics_csv(run_dir / "metrics.csv", resume_step)
    ckpt_cb = AtomicCheckpoint(run_dir, cfg.trainer.last_ckpt_every_n_steps,
                               cfg.trainer.ckpt_every_n_steps, datamodule)
    interrupt = GracefulInterrupt(ckpt_cb)
    loggers = _loggers(cfg, run_dir, run_dir.name, rank_zero)
    trainer = make_trainer(cfg, run_dir, [ckpt_cb, interrupt, *fid_cbs], loggers)
    start = time.time()
    try:
        trainer.fit(method, datamodule=datamodule, ckpt_path=str(resume) if resume else None,
                    weights_only=True if resume else None)
    finally:
        interrupt.restore()
    train_time = time.time() - start
    if interrupt.requested is not None:
        raise RunInterrupted(
            f"interrupted at step {trainer.global_step}; checkpoint saved to {ckpt_cb.last_path} — "
            f"run the same command again to resume", interrupt.requested)
    online = {}
    if cfg.eval.online_knn or cfg.eval.online_linear:
        trainer.validate(method, datamodule=datamodule, verbose=False)
        online = dict(method.last_online_metrics)
    world = trainer.world_size
    result = {
        "method": cfg.method,
        "dataset": cfg.data.name,
        "recipe": str(recipe) if recipe else None,
        "steps": int(trainer.global_step),
        "epochs": int(trainer.current_epoch),
        "images_seen": int(trainer.global_step) * cfg.data.batch_size * world,
        # trainable parameters: not the EMA / momentum-teacher copies, not the online probe
        "params": sum(p.numel() for _, p in method.trainable_named_parameters()),
        "train_wall_time_s": round(train_time, 2),
        "online": online,
        "online_protocol": method.online_protocol(),
    }
    if trainer.is_global_zero:
        update_metrics(run_dir, {"pretrain": result})
    return {"run_dir": str(run_dir), "global_rank": trainer.global_rank, **result}


__all__ = ["build_datamodule", "build_method", "pretrain"]
