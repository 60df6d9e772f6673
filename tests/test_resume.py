"""Resume: a run interrupted after step k and restarted with the same command ends with exactly
the weights, optimiser state and EMA of an unbroken run (CPU, deterministic, no workers).

The fake dataset gives 4 training batches per epoch, so the saved steps below fall in the middle
of an epoch: the resumed run must skip the batches it already consumed and replay the RNG.
"""

from __future__ import annotations

import csv
import signal
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

from ssl_diffusion.app import pretrain as engine
from ssl_diffusion.app.checkpoint import load_checkpoint_file
from ssl_diffusion.app.signals import RunInterrupted
from ssl_diffusion.methods.base import warmup_cosine
from tests.conftest import tiny_config
from tests.helpers_checkpoints import assert_same_checkpoints, flat_tensors

STEPS = 7
BATCHES_PER_EPOCH = 4  # 40 fake images, 10% val -> 36 train, batch 8, drop_last


class SignalBeforeStep(pl.Callback):
    """Sends this process SIGINT (a real Ctrl-C) at the start of step ``step + 1``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            signal.raise_signal(signal.SIGINT)


class SimulatedCrash(RuntimeError):
    pass


class CrashBeforeStep(pl.Callback):
    """Raises at the start of the step that would make ``global_step`` reach ``step + 1``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise SimulatedCrash(f"simulated crash before step {self.step + 1}")


def _assert_same_state(a: Path, b: Path) -> None:
    assert_same_checkpoints(a, b, STEPS)


def _run(
    root: Path,
    method: str,
    *overrides: str,
    callback: pl.Callback | None = None,
    raises: type[BaseException] | None = None,
    monkeypatch=None,
) -> dict:
    cfg = tiny_config(
        root,
        f"method={method}",
        "run.name=r",
        "trainer.deterministic=true",
        "trainer.last_ckpt_every_n_steps=2",
        "ema.enabled=true",
        *overrides,
    )
    if callback is None:
        return engine.pretrain(cfg, None)
    original = engine.make_trainer

    def with_callback(cfg, run_dir, callbacks, loggers):
        return original(cfg, run_dir, [*callbacks, callback], loggers)

    monkeypatch.setattr(engine, "make_trainer", with_callback)
    with pytest.raises(raises):
        engine.pretrain(cfg, None)
    monkeypatch.setattr(engine, "make_trainer", original)
    return {}


@pytest.mark.parametrize(
    "method,crash_before,saved_step",
    [
        ("simclr", 3, 2),  # saved mid-epoch (epoch 0, 2 of 4 batches done); step 3 is lost
        ("simclr", 5, 4),  # saved on the last batch of epoch 0, before its validation
        ("dino", 3, 2),
    ],
)
def test_interrupted_run_resumes_to_identical_weights(
    tmp_path, monkeypatch, method, crash_before, saved_step
):
    unbroken = _run(tmp_path / "a", method, f"trainer.max_steps={STEPS}")
    _run(
        tmp_path / "b",
        method,
        f"trainer.max_steps={STEPS}",
        callback=CrashBeforeStep(crash_before),
        raises=SimulatedCrash,
        monkeypatch=monkeypatch,
    )
    partial = load_checkpoint_file(tmp_path / "b" / "r" / "last.ckpt")
    assert partial["global_step"] == saved_step
    resumed = _run(tmp_path / "b", method, f"trainer.max_steps={STEPS}")
    assert resumed["steps"] == unbroken["steps"] == STEPS
    _assert_same_state(tmp_path / "a" / "r" / "last.ckpt", tmp_path / "b" / "r" / "last.ckpt")
    # The training curve of the interrupted invocation is kept in metrics.csv.
    with open(tmp_path / "b" / "r" / "metrics.csv", newline="") as f:
        logged = {int(row["step"]) for row in csv.DictReader(f) if row["train/loss"]}
    assert logged == set(range(STEPS))


def test_extending_a_finished_run_matches_an_unbroken_run(tmp_path):
    """max_steps=3 (stops mid-epoch), then the same command with max_steps=7.

    A constant learning rate: extending a run keeps its schedules (their length is pinned to the
    first leg, trainer.schedule_steps), which differ from a 7-step run's under a cosine schedule.
    """
    const = "optim.schedule=constant"
    _run(tmp_path / "a", "simclr", const, f"trainer.max_steps={STEPS}")
    _run(tmp_path / "b", "simclr", const, "trainer.max_steps=3")
    assert load_checkpoint_file(tmp_path / "b" / "r" / "last.ckpt")["global_step"] == 3
    resumed = _run(tmp_path / "b", "simclr", const, f"trainer.max_steps={STEPS}")
    assert resumed["steps"] == STEPS
    _assert_same_state(tmp_path / "a" / "r" / "last.ckpt", tmp_path / "b" / "r" / "last.ckpt")
    saved = yaml.safe_load((tmp_path / "b" / "r" / "config.yaml").read_text())["trainer"]
    assert saved["schedule_steps"] == 3 and saved["max_steps"] == STEPS  # schedules kept
    # Running the finished command once more trains nothing and leaves the weights alone.
    again = _run(tmp_path / "b", "simclr", const, f"trainer.max_steps={STEPS}")
    assert again["steps"] == STEPS
    _assert_same_state(tmp_path / "a" / "r" / "last.ckpt", tmp_path / "b" / "r" / "last.ckpt")


def test_ctrl_c_mid_epoch_saves_a_checkpoint_that_resumes_exactly(tmp_path, monkeypatch):
    """The graceful-interrupt path: the step in flight finishes, last.ckpt is written mid-epoch
    (3 of 4 batches of epoch 0) and the rerun continues from exactly there."""
    _run(tmp_path / "a", "simclr", f"trainer.max_steps={STEPS}")
    _run(
        tmp_path / "b",
        "simclr",
        f"trainer.max_steps={STEPS}",
        callback=SignalBeforeStep(2),
        raises=RunInterrupted,
        monkeypatch=monkeypatch,
    )
    saved = load_checkpoint_file(tmp_path / "b" / "r" / "last.ckpt")
    assert (saved["global_step"], saved["epoch"]) == (3, 0)
    assert _run(tmp_path / "b", "simclr", f"trainer.max_steps={STEPS}")["steps"] == STEPS
    _assert_same_state(tmp_path / "a" / "r" / "last.ckpt", tmp_path / "b" / "r" / "last.ckpt")


# --------------------------------------------------------------------------- later epochs

LATE_STEPS = 11  # epochs 0, 1 and 3 batches of epoch 2 (4 batches per epoch)
DIFFUSION_TINY = ("model.arch=dit", "model.preset=DiT-tiny", "model.patch_size=4",
                  "diffusion.objective=flow", "eval.online_knn=false", "eval.online_linear=false")
METHOD_OVERRIDES = {"simclr": (), "dino": (), "ddae": DIFFUSION_TINY, "ddaepp": DIFFUSION_TINY}


def _digest(obj) -> str:
    """A hash of every tensor in a (nested) batch or RNG state."""
    import hashlib

    h = hashlib.sha1()
    for key, t in sorted(flat_tensors(obj).items()):
        h.update(key.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class BatchRecorder(pl.Callback):
    """Records, per optimiser step, the epoch, batch index, a digest of the batch and of the
    global torch RNG state the step starts from (a replayed step overwrites its entry)."""

    def __init__(self) -> None:
        self.steps: dict[int, tuple] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.steps[trainer.global_step] = (trainer.current_epoch, batch_idx, _digest(batch),
                                           _digest(torch.get_rng_state()))


def _invoke(root: Path, method: str, max_steps: int, monkeypatch, recorder: BatchRecorder,
            stop: pl.Callback | None = None, raises: type[BaseException] | None = None) -> None:
    cfg = tiny_config(root, f"method={method}", "run.name=r", "trainer.deterministic=true",
                      "trainer.last_ckpt_every_n_steps=3", "ema.enabled=true",
                      "optim.schedule=constant", f"trainer.max_steps={max_steps}",
                      *METHOD_OVERRIDES[method])
    original = engine.make_trainer
    extra = [recorder] + ([stop] if stop is not None else [])
    monkeypatch.setattr(engine, "make_trainer",
                        lambda c, d, cbs, lg: original(c, d, [*cbs, *extra], lg))
    try:
        if raises is None:
            engine.pretrain(cfg, None)
        else:
            with pytest.raises(raises):
                engine.pretrain(cfg, None)
    finally:
        monkeypatch.setattr(engine, "make_trainer", original)


def _assert_same_full_state(a: Path, b: Path, steps: int) -> None:
    ca, cb = assert_same_checkpoints(a, b, steps,
                                     entries=("state_dict", "optimizer_states", "lr_schedulers"))
    assert ca["epoch"] == cb["epoch"]
    assert ca["lr_schedulers"] == cb["lr_schedulers"]


@pytest.mark.parametrize("method", ["simclr", "dino", "ddae", "ddaepp"])
def test_stops_in_later_epochs_resume_bit_exact(tmp_path, monkeypatch, method):
    """Issue 13: a run stopped three times in epochs 1 and 2 (Ctrl-C at step 5, a crash that
    falls back to the checkpoint of step 6, Ctrl-C at step 10) ends with the weights, optimiser
    and scheduler state of an unbroken run, having seen the same batches in the same order with
    the same RNG state at every step."""
    unbroken = BatchRecorder()
    _invoke(tmp_path / "a", method, LATE_STEPS, monkeypatch, unbroken)
    assert sorted(unbroken.steps) == list(range(LATE_STEPS))

    resumed = BatchRecorder()
    b = tmp_path / "b"
    _invoke(b, method, LATE_STEPS, monkeypatch, resumed, SignalBeforeStep(4), RunInterrupted)
    saved = load_checkpoint_file(b / "r" / "last.ckpt")
    assert (saved["global_step"], saved["epoch"]) == (5, 1)  # epoch 1: 1 of 4 batches
    _invoke(b, method, LATE_STEPS, monkeypatch, resumed, CrashBeforeStep(7), SimulatedCrash)
    saved = load_checkpoint_file(b / "r" / "last.ckpt")
    assert (saved["global_step"], saved["epoch"]) == (6, 1)  # mid-epoch 1: 2 of 4 batches
    _invoke(b, method, LATE_STEPS, monkeypatch, resumed, SignalBeforeStep(9), RunInterrupted)
    saved = load_checkpoint_file(b / "r" / "last.ckpt")
    assert (saved["global_step"], saved["epoch"]) == (10, 2)  # mid-epoch 2: 2 of 4 batches
    _invoke(b, method, LATE_STEPS, monkeypatch, resumed)

    assert resumed.steps == unbroken.steps  # same batches, positions and RNG at every step
    _assert_same_full_state(tmp_path / "a" / "r" / "last.ckpt", b / "r" / "last.ckpt", LATE_STEPS)
    with open(b / "r" / "metrics.csv", newline="") as f:
        logged = [int(row["step"]) for row in csv.DictReader(f) if row["train/loss"]]
    assert logged == list(range(LATE_STEPS))  # every step's row, once, in order


def test_extending_a_run_finished_in_a_later_epoch_matches_an_unbroken_run(tmp_path, monkeypatch):
    """Issue 13's reproduction: max_steps=6 (ends in epoch 1), then max_steps=11 (SimCLR, whose
    schedule with optim.schedule=constant does not depend on max_steps)."""
    unbroken, resumed = BatchRecorder(), BatchRecorder()
    _invoke(tmp_path / "a", "simclr", LATE_STEPS, monkeypatch, unbroken)
    _invoke(tmp_path / "b", "simclr", 6, monkeypatch, resumed)
    _invoke(tmp_path / "b", "simclr", LATE_STEPS, monkeypatch, resumed)
    assert resumed.steps == unbroken.steps
    _assert_same_full_state(tmp_path / "a" / "r" / "last.ckpt", tmp_path / "b" / "r" / "last.ckpt",
                            LATE_STEPS)


def test_extending_keeps_the_schedules_of_the_first_leg(tmp_path):
    """Cosine lr: the extended run's first steps have the 3-step run's lr, the extra steps the
    schedule's final value (not a stretched 7-step cosine)."""
    _run(tmp_path / "b", "simclr", "optim.warmup_steps=0", "trainer.max_steps=3")
    _run(tmp_path / "b", "simclr", "optim.warmup_steps=0", f"trainer.max_steps={STEPS}")
    with (tmp_path / "b" / "r" / "metrics.csv").open() as f:
        lrs = {int(r["step"]): float(r["train/lr"]) for r in csv.DictReader(f) if r["train/lr"]}
    assert set(lrs) >= {0, 1, 2, 3, STEPS - 1}
    base = lrs[0]
    for step, lr in lrs.items():  # min_lr_ratio 0: the extra steps run at lr 0
        expect = base * warmup_cosine(min(step, 3), 3, 0, 0.0, "cosine")
        assert lr == pytest.approx(expect, rel=1e-5, abs=1e-9), (step, lr, expect)
    assert lrs[1] < base and lrs[STEPS - 1] == 0.0
