"""SIGTERM / SIGINT during training: save a resumable checkpoint, then stop.

The first signal only sets a flag; at the end of the current step the run writes ``last.ckpt``
(atomically) and stops, and ``pretrain`` raises ``RunInterrupted`` whose message says how to
resume. A second Ctrl-C exits at once (exit code 130) without touching the checkpoint. During
the final evaluation after training, a signal stops at once with ``RunInterrupted`` (130/143).
Under DDP the ranks agree at every step end whether any of them was signalled (a signal may
reach one rank only, or reach them in different steps), so all of them save and stop together.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist

from ssl_diffusion.errors import UserError

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class RunInterrupted(UserError):
    """Training stopped on a signal after saving a checkpoint."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = EXIT_CODES.get(signum, 1)


class GracefulInterrupt(pl.Callback):
    def __init__(self, checkpoint: Any) -> None:
        self.checkpoint = checkpoint  # the AtomicCheckpoint callback
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            print("\nsecond interrupt: exiting now (last.ckpt is the previous one)", file=sys.stderr)
            os._exit(130)
        self.requested = signum
        print(f"\n{signal.Signals(signum).name} received: saving a checkpoint at the end of this "
              f"step, then stopping (press Ctrl-C again to exit at once)", file=sys.stderr)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Installed after Lightning's own signal connector, so these handlers take precedence.
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not in the main thread (e.g. some notebooks): keep defaults
                pass

    def _agreed_request(self, trainer: pl.Trainer, device: torch.device) -> int | None:
        """The signal any rank received (the largest number), or None; collective under DDP."""
        if trainer.world_size == 1 or not dist.is_initialized():
            return self.requested
        flag = torch.tensor([self.requested or 0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.requested = self._agreed_request(trainer, pl_module.device)
        if self.requested is not None and not trainer.should_stop:
            trainer.should_stop = True  # first: Lightning logs a stopping step's row, and the
            self.checkpoint.save(trainer)  # checkpoint logs it ahead (see AtomicCheckpoint.save)

    @contextlib.contextmanager
    def final_evaluation(self, step: int, last_path: Any) -> Iterator[None]:
        """While training is over and the final evaluation runs: a signal stops it at once and
        the command exits 130/143 saying that rerunning it finishes the evaluation (nothing of
        training is lost; ``last.ckpt`` holds the final step)."""

        def stop(signum: int, frame: Any) -> None:
            raise RunInterrupted(
                f"{signal.Signals(signum).name} during the final evaluation: training finished "
                f"(step {step}, {last_path}) but metrics.json was not updated — run the same "
                f"command again to evaluate", signum)

        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, stop)
            except ValueError:  # not in the main thread: keep the defaults
                pass
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.restore()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.restore()
