"""Fault injection (issue 13): a tiny training run is SIGKILLed several times — during a
checkpoint write (complete temporary, not yet renamed), right after one, during a metrics.csv
rewrite, and at a random moment — and restarted each time with the same command (each run is
``main_pretrain.py``'s ``main`` in a forked child, so no interpreter start-up is paid). The final
weights and optimiser state equal an unbroken run's, and metrics.csv holds every step's row
exactly once. The kill points are drawn from a seeded RNG (``FAULT_SEED``, default 0).
"""

from __future__ import annotations

import contextlib
import csv
import os
import random
import signal
import time
from pathlib import Path

import pytest

from ssl_diffusion.app.checkpoint import load_checkpoint_file
from ssl_diffusion.app.cli import run_cli
from ssl_diffusion.app.pretrain import pretrain
from ssl_diffusion.config import load_config
from tests.conftest import TINY
from tests.helpers_checkpoints import assert_same_checkpoints

STEPS = 12  # 3 epochs of 4 batches
ARGS = [*TINY, "method=simclr", "trainer.max_steps=12", "trainer.last_ckpt_every_n_steps=2",
        "trainer.deterministic=true", "eval.online_knn=false", "eval.online_linear=false",
        "optim.schedule=constant", "run.name=r"]


def _recipe(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text("method: simclr\n")
    return path


def _install_kill(mode: str, k: int) -> None:
    """In the child: SIGKILL itself at the k-th rename of a checkpoint (``ckpt_*``) or
    metrics.csv (``csv_*``) temporary, just before (a complete temporary is left behind) or
    just after it (nothing after the new file is written)."""
    real_replace = os.replace
    count = [0]

    def replace(src, dst, *args, **kwargs):
        name = Path(src).name
        hit = (mode.startswith("ckpt") and name.endswith(".ckpt.tmp")) or (
            mode.startswith("csv") and name.startswith(".metrics.csv."))
        count[0] += hit
        if hit and count[0] == k and mode.endswith("before_rename"):
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst, *args, **kwargs)
        if hit and count[0] == k and mode.endswith("after_rename"):
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace


def _start(root: Path, mode: str, k: int, main_pretrain) -> int:
    """Run main_pretrain.py's ``main`` in a forked child (no interpreter start-up: torch and
    Lightning are already imported) with an injected kill; returns the child's pid."""
    args = ["--config", str(_recipe(root)), *ARGS, f"run.root={root / 'runs'}"]
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:  # the child never returns into pytest
        if mode not in ("none", "random"):
            _install_kill(mode, k)
        run_cli(main_pretrain.main, args)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os._exit(code)


def _wait(pid: int, timeout: float = 170) -> int:
    """The child's exit code, or minus the signal that killed it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    raise AssertionError("the training child did not finish in time")


def _kill_at_random(pid: int, run_dir: Path, rng: random.Random) -> None:
    """SIGKILL the child a random moment after it took the run lock (training has started)."""
    deadline = time.time() + 120
    while not (run_dir / ".lock").exists() and time.time() < deadline:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return
        time.sleep(0.02)
    time.sleep(rng.uniform(0.2, 2.0))
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _step(run_dir: Path) -> int:
    return int(load_checkpoint_file(run_dir / "last.ckpt")["global_step"])


def _rows(run_dir: Path) -> list[int]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]


@pytest.mark.slow
def test_hard_kills_during_writes_lose_nothing(tmp_path, main_pretrain):
    rng = random.Random(int(os.environ.get("FAULT_SEED", "0")))
    unbroken = tmp_path / "unbroken"  # in-process (one intra-op thread, like the subprocesses)
    unbroken.mkdir()
    cfg = load_config(_recipe(unbroken), [*ARGS, f"run.root={unbroken / 'runs'}"])
    pretrain(cfg, _recipe(unbroken))

    faulty = tmp_path / "faulty"
    faulty.mkdir()
    run_dir = faulty / "runs" / "r"
    faults = [("ckpt_before_rename", rng.randint(1, 2)), ("csv_before_rename", rng.randint(2, 8)),
              ("ckpt_after_rename", rng.randint(1, 2)), ("random", 0), ("ckpt_after_rename", 1)]
    for mode, k in faults:
        done = (run_dir / "last.ckpt").is_file() and _step(run_dir) == STEPS
        pid = _start(faulty, mode, k, main_pretrain)
        if mode == "random":
            _kill_at_random(pid, run_dir, rng)
        code = _wait(pid)
        # the kill happened, unless the run was already complete (a random kill came too late)
        expected = (-signal.SIGKILL, 0) if mode == "random" or done else (-signal.SIGKILL,)
        assert code in expected, (mode, k, code)
    assert _wait(_start(faulty, "none", 0, main_pretrain)) == 0

    assert_same_checkpoints(unbroken / "runs" / "r" / "last.ckpt", run_dir / "last.ckpt", STEPS,
                            context=f" after the kills {faults}")
    assert _rows(run_dir) == list(range(STEPS)), f"rows after the kills {faults}"
    assert _rows(unbroken / "runs" / "r") == list(range(STEPS))
    assert not list(run_dir.glob(".*.tmp"))  # the final run removed the killed writes' leftovers
