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
from ssl_diffusion.app.callbacks.resume_commit import CommitResume
from ssl_diffusion.app.checkpoint import (
    AtomicCheckpoint,
    check_compatible,
    check_weights_fit,
    load_checkpoint_file,
)
from ssl_diffusion.app.file_lock import RunLock
from ssl_diffusion.app.loggers import ResumableCSVLogger, check_metrics_csv, check_wandb_online
from ssl_diffusion.app.resources import check_resources
from ssl_diffusion.app.run_dir import (
    clean_stale_temporaries,
    inspect_run_dir,
    move_aside,
    pin_schedule,
    run_directory,
    update_metrics,
    write_config,
)
from ssl_diffusion.app.signals import GracefulInterrupt, RunInterrupted
from ssl_diffusion.config import Config
from ssl_diffusion.data.datasets import Splits, build_splits
from ssl_diffusion.data.info import DataInfo
from ssl_diffusion.data.module import SSLDataModule
from ssl_diffusion.data.transforms import eval_transform, train_transform
from ssl_diffusion.errors import UserError, require
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


def wandb_wanted(cfg: Config) -> bool:
    """Whether the wandb logger is on; then wandb must be installed (it is optional: an
    air-gapped node has none), else a one-line error before any file is written."""
    w = cfg.logger.wandb
    if not (w.enabled and w.mode != "disabled"):
        return False
    require("wandb", "logger.wandb.enabled=true (set logger.wandb.enabled=false to skip)")
    return True


def _loggers(cfg: Config, run_dir: Path, name: str, rank_zero: bool = True) -> list:
    loggers = [ResumableCSVLogger(run_dir)]
    w = cfg.logger.wandb
    if wandb_wanted(cfg):
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
    """Global step of ``run_dir/last.ckpt`` when the run resumes from it, else None; first
    checks everything about it that can be checked without changing the run: a regular,
    readable checkpoint of this method and architecture whose weights fit the model as built."""
    last = run_dir / "last.ckpt"
    if not (cfg.run.resume and (last.exists() or last.is_symlink())):
        return None
    ckpt = load_checkpoint_file(last)  # a dangling symlink or a FIFO is an error, not "no run"
    check_compatible(ckpt, cfg.method, method.arch_name(), last)
    check_weights_fit(method, ckpt["state_dict"], last)
    if not ckpt.get("optimizer_states"):
        raise UserError(f"checkpoint {last} holds no optimizer state, so the run cannot resume "
                        f"exactly; restore it, or use run.resume=false to start again")
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
    run_dir = run_directory(cfg, recipe)  # run.name / run.root errors before any work
    check_resources(cfg)
    check_wandb_online(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    pin_schedule(cfg, recipe)  # an extended run keeps its schedules (before the method is built)
    splits = build_splits(cfg.data)  # data errors surface before any file is written
    method_cls = method_class(cfg)
    method = build_method(cfg, splits.info)
    datamodule = build_datamodule(cfg, splits, method_cls)
    # eval.fid is checked (method can generate, Inception weights found) before any file is written
    fid_cbs = fid_callbacks(cfg, method, run_dir, splits)
    check_trainer_config(cfg)
    wandb_wanted(cfg)
    if cfg.trainer.compile:
        method.compile_networks()  # nn.Module.compile: in place, checkpoint keys unchanged
    rank_zero = is_launch_rank_zero()
    # Everything that can be checked is checked before any file of the run is touched: the
    # directory and its config, metrics.json, the checkpoint to resume (readable, of this
    # method, weights that fit). Rank 0 holds the run lock from here on, so a second command
    # on the same run directory stops with the holder's name instead of interleaving writes.
    lock = RunLock(run_dir)
    if rank_zero and run_dir.is_dir():
        lock.acquire()
    try:
        state = inspect_run_dir(cfg, run_dir)
        resume_step = None if state.move_aside else _resume_step(cfg, method, run_dir)
        if resume_step is not None:
            check_metrics_csv(run_dir / "metrics.csv")
        if rank_zero:
            if state.move_aside:
                lock.release()
                move_aside(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            if not lock.held:
                lock.acquire()
            lock.write_holder()
            clean_stale_temporaries(run_dir)
            if resume_step is None:  # a new run: its config now; a resumed one once resumed
                write_config(cfg, run_dir)
        return _fit_and_evaluate(cfg, recipe, method, datamodule, fid_cbs, run_dir, resume_step,
                                 rank_zero)
    finally:
        lock.release()


def _fit_and_evaluate(cfg: Config, recipe: str | Path | None, method: SSLMethod,
                      datamodule: SSLDataModule, fid_cbs: list, run_dir: Path,
                      resume_step: int | None, rank_zero: bool) -> dict[str, Any]:
    resume = run_dir / "last.ckpt" if resume_step is not None else None
    ckpt_cb = AtomicCheckpoint(run_dir, cfg.trainer.last_ckpt_every_n_steps,
                               cfg.trainer.ckpt_every_n_steps, datamodule)
    interrupt = GracefulInterrupt(ckpt_cb)
    commit = [CommitResume(cfg, run_dir, resume_step)] if resume is not None and rank_zero else []
    loggers = _loggers(cfg, run_dir, run_dir.name, rank_zero)
    trainer = make_trainer(cfg, run_dir, [*commit, ckpt_cb, interrupt, *fid_cbs], loggers)
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
    # A signal from here on stops the evaluation and exits 130/143 (training is complete).
    with interrupt.final_evaluation(trainer.global_step, ckpt_cb.last_path):
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
