"""Checkpoints: atomic writes, resumable state, and safe loading of untrusted files.

* ``last.ckpt`` is written to a temporary file and renamed, so a crash never leaves a half
  file; periodic ``step-N.ckpt`` copies are kept when ``trainer.ckpt_every_n_steps`` > 0.
* Resume state beyond Lightning's own: batches consumed in the current epoch (the sampler skips
  them) and the global RNG states (one per rank under DDP), restored right before the first
  resumed step.
* Loading uses ``torch.load(weights_only=True)``: a checkpoint carrying a pickled payload is
  refused, and one from another method or architecture is refused with a message naming both.
"""

from __future__ import annotations

import os
import random
import stat
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist

from ssl_diffusion.data.info import DataInfo
from ssl_diffusion.errors import UserError
from ssl_diffusion.methods.base import META_KEY


class AtomicCheckpoint(pl.Callback):
    def __init__(self, run_dir: Path, every_n_steps: int, periodic_every_n_steps: int = 0,
                 datamodule: Any = None) -> None:
        self.run_dir = Path(run_dir)
        self.every = every_n_steps
        self.periodic = periodic_every_n_steps
        self.datamodule = datamodule
        self.batches_in_epoch = 0
        self.epoch = 0  # the epoch those batches belong to
        self._pending_rng: dict | None = None
        self._saved_step = -1  # global step of the last last.ckpt written by this run
        self._row_logged_step = -1  # step whose metrics row save() logged ahead of Lightning
        self.enabled = True  # switched off after a failure so a broken state is never saved

    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.ckpt"

    def save(self, trainer: pl.Trainer, path: Path | None = None) -> None:
        if not self.enabled:
            return
        path = path or self.last_path
        self._log_row_before_saving(trainer)
        for logger in trainer.loggers:  # logged rows up to this step are on disk with the ckpt
            logger.save()
        # Not through ssl_diffusion.atomic: save_checkpoint is collective (every rank calls it
        # and sharded strategies write from every rank), so the temporary name must be the same
        # on all ranks rather than a per-process mkstemp name; Lightning writes the file.
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            trainer.save_checkpoint(tmp)
        except OSError as exc:  # a write error (disk full, ulimit -f) carries no file name
            if exc.filename is None:
                exc.filename = str(tmp)
            raise
        if trainer.is_global_zero:
            os.replace(tmp, path)
        if path == self.last_path:
            self._saved_step = trainer.global_step

    def _log_row_before_saving(self, trainer: pl.Trainer) -> None:
        """Log this step's metrics row now, before the checkpoint that covers the step.

        Lightning logs a step's row only after ``on_train_batch_end``, i.e. after a checkpoint
        saved there; a hard kill in between would lose that row for good (the resumed run starts
        after the step). So the row is logged here and Lightning's own call for this step is
        skipped once. Uses the trainer's logger connector (private Lightning API, 2.x).
        """
        if not (trainer.training and trainer.loggers) or self._row_logged_step == trainer.global_step:
            return
        connector = trainer._logger_connector
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        if (connector._first_loop_iter is None or trainer.fit_loop._should_accumulate()
                or progress.processed <= progress.completed):
            return  # not between a step's end and its logging (e.g. on_train_end)
        if not connector.should_update_logs:
            return
        self._row_logged_step = trainer.global_step
        connector.log_metrics(connector.metrics["log"])

        def skip_once() -> None:  # Lightning's call for this step: already logged above
            del connector.update_train_step_metrics  # later steps use the class method again

        connector.update_train_step_metrics = skip_once

    # -------------------------------------------------------------- Lightning hooks
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending_rng is None:
            self.batches_in_epoch = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._pending_rng is not None:  # first step after a resume: continue the RNG stream
            set_rng_state(self._pending_rng)
            self._pending_rng = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches_in_epoch, self.epoch = batch_idx + 1, trainer.current_epoch
        step = trainer.global_step
        if self.periodic and step % self.periodic == 0 and step > 0:
            self.save(trainer, self.run_dir / f"step-{step:07d}.ckpt")
        # At max_steps save here, mid-epoch: by on_train_end Lightning has already counted the
        # unfinished epoch as done, and a longer rerun would skip the rest of it.
        if step % self.every == 0 or 0 < trainer.max_steps <= step:
            self.save(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.batches_in_epoch = 0

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Not when this step is saved already (max_steps, or a graceful interrupt): Lightning
        # has since counted the unfinished epoch as done, which would lose its remaining batches.
        if trainer.global_step != self._saved_step:
            self.save(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.enabled = False  # never overwrite the last good checkpoint with a failing state

    def state_dict(self) -> dict[str, Any]:
        # Called on every rank (Trainer.save_checkpoint is collective); rank 0 writes the file.
        state = {"batches_in_epoch": self.batches_in_epoch, "epoch": self.epoch,
                 "rng": get_rng_state()}
        if _world_size() > 1:  # each rank draws its own stream (SSLMethod.on_train_start)
            per_rank: list[Any] = [None] * _world_size()
            dist.all_gather_object(per_rank, state["rng"])
            state["rng_per_rank"] = per_rank
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches_in_epoch = int(state.get("batches_in_epoch", 0))
        epoch = state.get("epoch")  # absent in older checkpoints: the first epoch iterated
        self.epoch = int(epoch) if epoch is not None else 0
        world, per_rank = _world_size(), state.get("rng_per_rank")
        if world == 1:
            self._pending_rng = state.get("rng")
        elif per_rank is not None and len(per_rank) == world:
            self._pending_rng = per_rank[dist.get_rank()]
        else:  # another device count: the streams cannot continue; keep the fresh per-rank seeds
            self._pending_rng = None
        if self.datamodule is not None and self.batches_in_epoch:
            self.datamodule.resume_from_batch(self.batches_in_epoch, None if epoch is None else int(epoch))


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": _python_state_to_tensor(random.getstate()),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(_python_state_from_tensor(state["python"]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state_to_tensor(state: tuple) -> dict[str, Any]:
    version, internal, gauss = state
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss}


def _python_state_from_tensor(d: dict[str, Any]) -> tuple:
    return d["version"], tuple(int(v) for v in d["internal"].tolist()), d["gauss"]


# ---------------------------------------------------------------------------- safe loading


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """A checkpoint of this project: ``read_checkpoint_file`` plus its metadata, checked."""
    ckpt = read_checkpoint_file(path)
    if META_KEY not in ckpt:
        raise UserError(f"{path} was not written by ssl_diffusion (no `{META_KEY}` metadata)")
    _check_contents(ckpt, Path(path))
    return ckpt


def read_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of any Lightning checkpoint (a dict with a
    ``state_dict``), with one-line errors for every way a file can be bad."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise UserError(f"checkpoint {path} is a dangling symlink (its target "
                        f"{os.readlink(path)} is gone); restore the target or remove the link")
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise UserError(f"checkpoint path {path} is a directory; pass a .ckpt file (e.g. {path}/last.ckpt)")
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):  # a FIFO or device would block or never end
        raise UserError(f"checkpoint path {path} is not a regular file (a pipe, socket or "
                        f"device); pass a .ckpt file")
    if info.st_size == 0:
        raise UserError(f"checkpoint {path} is empty (0 bytes: an interrupted copy or write); "
                        f"restore it or use an earlier step-N.ckpt")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise UserError(f"cannot read checkpoint {path} ({exc.strerror}); check its "
                        f"permissions") from None
    # torch.save writes a zip archive (legacy: a pickle, protocol byte 0x80); anything else is
    # another kind of file, not a damaged checkpoint (an empty file is a truncated one)
    if head and not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise UserError(f"{path} is not a PyTorch checkpoint (neither a zip archive nor a pickle); "
                        f"pass a checkpoint written by main_pretrain.py, e.g. runs/<run>/last.ckpt")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - classify the failure for the user
        text = str(exc)
        if "Weights only load failed" in text or "weights_only" in text:
            raise UserError(
                f"refusing to load {path}: it contains pickled Python objects beyond tensors "
                f"(unsafe with weights_only=True); only load checkpoints you trust via "
                f"ssl_diffusion's own tools"
            ) from None
        raise UserError(f"checkpoint {path} is corrupt or truncated ({text.splitlines()[0][:120]}); "
                        f"restore it or use an earlier step-N.ckpt") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UserError(f"{path} is not a ssl_diffusion/Lightning checkpoint (no state_dict)")
    return ckpt


def _check_contents(ckpt: dict[str, Any], path: Path) -> None:
    """The entries every reader relies on, with the types they need (one line each)."""
    meta = ckpt[META_KEY]
    problem = None
    if not isinstance(meta, dict):
        problem = f"`{META_KEY}` is not a mapping"
    elif not isinstance(meta.get("method"), str):
        problem = f"`{META_KEY}.method` is missing"
    elif not isinstance(meta.get("config"), dict):
        problem = f"`{META_KEY}.config` is missing"
    elif not isinstance(meta.get("data_info"), dict) or not _valid_data_info(meta["data_info"]):
        problem = f"`{META_KEY}.data_info` (the dataset's channels, size, mean, std) is missing or incomplete"
    elif not isinstance(ckpt["state_dict"], dict):
        problem = "`state_dict` is not a mapping of tensors"
    else:
        for key in ("global_step", "epoch"):
            value = ckpt.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                problem = f"`{key}` is {value!r}, not a step count"
                break
    if problem:
        raise UserError(f"checkpoint {path} is damaged or was edited: {problem}; restore it or "
                        f"use an earlier step-N.ckpt")


def _valid_data_info(info: dict[str, Any]) -> bool:
    names = {f.name for f in fields(DataInfo)}
    required = {f.name for f in fields(DataInfo) if f.name != "class_names"}
    return required <= set(info) <= names


def check_weights_fit(method: torch.nn.Module, state_dict: dict[str, Any], path: Path,
                      optional_prefixes: tuple[str, ...] = ()) -> None:
    """Every tensor of ``state_dict`` fits ``method`` (same names and shapes), so that loading
    cannot fail halfway; ``optional_prefixes`` may be missing from the file."""
    own = method.state_dict()
    missing = [k for k in own if k not in state_dict and not k.startswith(optional_prefixes)]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: {tuple(state_dict[k].shape)} in the file, {tuple(own[k].shape)} now"
              for k in own if k in state_dict and isinstance(state_dict[k], torch.Tensor)
              and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        example = shapes[0] if shapes else (missing or unexpected)[0]
        raise UserError(
            f"checkpoint {path} does not match the model as configured now (missing "
            f"{len(missing)}, unexpected {len(unexpected)}, {len(shapes)} of other shape; e.g. "
            f"{example}); drop the overrides that change the model, or choose another run.name=...")


def describe(meta: dict[str, Any]) -> str:
    cfg = meta.get("config", {})
    arch = meta.get("arch") or cfg.get("backbone", {}).get("name")
    return f"method `{meta.get('method')}` ({arch})"


def check_compatible(ckpt: dict[str, Any], method: str, arch: str | None, path: Path) -> None:
    meta = ckpt[META_KEY]
    if meta.get("method") != method or (arch is not None and meta.get("arch") != arch):
        theirs = describe(meta)
        raise UserError(
            f"checkpoint {path} is from {theirs}, but this run is method `{method}` ({arch}); "
            f"use a checkpoint of the same method/architecture or another run.name"
        )

