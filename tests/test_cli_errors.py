"""The CLI error contract of main_pretrain.py: bad input -> one line ``error: ...`` on stderr,
exit code 2, no traceback; run directories and checkpoints are never destroyed.

Most cases run ``main`` in-process through ``run_cli`` (the code path of the script); one real
subprocess checks the script end to end.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssl_diffusion.app.checkpoint import load_checkpoint_file
from tests.conftest import TINY, run_script


@pytest.fixture
def recipe(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text("method: simclr\ntrainer: {max_steps: 3}\n")
    return path


def _args(recipe: Path, tmp_path: Path, *overrides: str) -> list[str]:
    return ["--config", str(recipe), *TINY, f"run.root={tmp_path / 'runs'}", *overrides]


def _user_error(result) -> str:
    code, out, err = result
    assert code == 2, (code, out, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_unknown_key_in_a_real_subprocess(tmp_path, recipe):
    proc = run_script("main_pretrain", *_args(recipe, tmp_path, "optim.lrr=0.1"), cwd=tmp_path,
                      timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        "error: unknown key `optim.lrr` in the command line — did you mean `optim.lr`?"
    )
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["trainer.max_steps=abc"], "wrong type for `trainer.max_steps`"),
        (["trainer.max_steps=-1"], "invalid value -1 for `trainer.max_steps`"),
        (["optim.name=adamx"], "invalid value 'adamx' for `optim.name`"),
        (["method=simclrr"], "unknown method `simclrr`; available: "),
        (["data.name=cifar11"], "unknown dataset `cifar11`; available: "),
        (["backbone.name=resnet19"], "unknown backbone `resnet19`; available: "),
        (
            ["data.name=cifar10", "data.root=/nonexistent/cifar"],
            "dataset `cifar10` not found under /nonexistent/cifar",
        ),
    ],
)
def test_user_errors_are_one_line(cli, tmp_path, recipe, overrides, expected):
    line = _user_error(cli(*_args(recipe, tmp_path, *overrides)))
    assert line.startswith(f"error: {expected}")
    assert not (tmp_path / "runs").exists(), "nothing is written before the input is valid"


def test_missing_recipe(cli, tmp_path):
    line = _user_error(cli("--config", str(tmp_path / "nope.yaml"), "trainer.max_steps=1"))
    assert "recipe file not found" in line and "nope.yaml" in line


def test_internal_errors_are_one_line_with_exit_1(cli, tmp_path, recipe, monkeypatch):
    from ssl_diffusion.app import pretrain as engine

    def broken(cfg, recipe=None):
        raise ZeroDivisionError("division by zero\nsecond line")

    monkeypatch.setattr(engine, "pretrain", broken)
    code, _, err = cli(*_args(recipe, tmp_path))
    assert code == 1 and "Traceback" not in err
    assert err.strip() == (
        "error: ZeroDivisionError: division by zero (internal error; rerun with "
        "SSL_DIFFUSION_DEBUG=1 for the traceback)"
    )


def test_error_inside_a_dataloader_worker(cli, tmp_path):
    """A bad image met by a worker process is reported as the worker's own one-line error."""
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(8):
                pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")
    bad = root / "train" / "b" / "9.png"
    bad.write_bytes(b"not a png")
    recipe = tmp_path / "folder.yaml"
    recipe.write_text("method: simclr\ntrainer: {max_steps: 3}\n")
    line = _user_error(
        cli(
            *_args(
                recipe,
                tmp_path,
                "data.name=imagefolder",
                f"data.root={root}",
                "data.num_workers=2",
                "data.val_fraction=0",
            )
        )
    )
    assert line.startswith(f"error: unreadable image {bad}")


# --------------------------------------------------------------------------- run directories


def _copy_run(trained_run, tmp_path: Path) -> Path:
    """A copy of the session's trained simclr run, as runs/tiny/ of the `recipe` fixture."""
    src = Path(trained_run("simclr")["run_dir"])
    dst = tmp_path / "runs" / "tiny"
    shutil.copytree(src, dst)
    return dst


def test_truncated_checkpoint_is_reported_and_kept(cli, trained_run, tmp_path, recipe):
    run_dir = _copy_run(trained_run, tmp_path)
    ckpt = run_dir / "last.ckpt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    before = ckpt.read_bytes()
    line = _user_error(cli(*_args(recipe, tmp_path)))
    assert line.startswith(f"error: checkpoint {ckpt} is corrupt or truncated")
    assert "step-N.ckpt" in line  # the fix: restore it or use a periodic copy
    assert ckpt.read_bytes() == before, "the broken checkpoint must not be touched"
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["tiny"]


def test_run_directory_of_another_experiment_is_refused(cli, trained_run, tmp_path, recipe):
    run_dir = _copy_run(trained_run, tmp_path)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    line = _user_error(cli(*_args(recipe, tmp_path, "optim.lr=2e-3")))
    assert str(run_dir) in line and "optim.lr: 0.001 -> 0.002" in line
    assert "run.overwrite=true" in line and "run.name=" in line
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


def test_overwrite_moves_the_old_run_aside_and_starts_fresh(cli, trained_run, tmp_path, recipe):
    run_dir = _copy_run(trained_run, tmp_path)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    code, out, err = cli(
        *_args(recipe, tmp_path, "optim.lr=2e-3", "run.overwrite=true", "trainer.max_steps=2")
    )
    assert code == 0, err
    moved = [p for p in run_dir.parent.iterdir() if p.name.startswith("tiny.old-")]
    assert len(moved) == 1 and "moved the previous run" in out
    assert {p.name: p.read_bytes() for p in moved[0].iterdir() if p.is_file()} == before
    fresh = load_checkpoint_file(run_dir / "last.ckpt")
    assert fresh["global_step"] == 2  # trained from scratch, not resumed from the old run
    assert fresh["ssl_diffusion"]["config"]["optim"]["lr"] == 2e-3
