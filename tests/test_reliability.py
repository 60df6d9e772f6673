"""Issue 13, one test class per class of input or fault (tried as a hostile or careless user):

* run names stay one folder under run.root; a run directory that is a file, a dangling symlink
* a refused resume (weights that do not fit, damaged checkpoint contents, corrupt config.yaml,
  metrics.json or metrics.csv) leaves every file of the run byte-identical
* nothing logged before a checkpoint is lost by resuming from it
* a second process on a run directory stops with the holder's name; metrics.json updates
  from concurrent processes lose no key
* a signal during the final evaluation exits 143 and the rerun finishes it
* bounded resources: FIFO checkpoints, a shared-fragment `defaults:` graph, num_workers, devices
* OS errors (file too large via ulimit -f, read-only, disk full) and bad values are one line,
  exit 2; duplicate YAML keys, NaN values, main_compare with a failed run, stale temporaries

Every CLI case checks the contract: exit 2 (143 after SIGTERM), one line ``error: ...``.
"""

from __future__ import annotations

import argparse
import csv
import errno
import hashlib
import importlib.util
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from ssl_diffusion.app import pretrain as engine
from ssl_diffusion.app.checkpoint import META_KEY, load_checkpoint_file
from ssl_diffusion.app.cli import run_cli
from ssl_diffusion.app.file_lock import RunLock
from ssl_diffusion.config import load_config
from ssl_diffusion.errors import UserError
from tests.conftest import ROOT, TINY, subprocess_env


@pytest.fixture
def recipe(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text("method: simclr\ntrainer: {max_steps: 2, log_every_n_steps: 1}\n")
    return path


def _args(recipe: Path, tmp_path: Path, *overrides: str) -> list[str]:
    return ["--config", str(recipe), *TINY, f"run.root={tmp_path / 'runs'}",
            "eval.online_knn=false", "eval.online_linear=false", *overrides]


def _one_line(result, code: int = 2) -> str:
    rc, out, err = result
    assert rc == code, (rc, out, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (hidden ones too): content hash, link target or 'dir'."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_dir():
            out[rel] = "dir"
        elif not path.is_file():  # a FIFO: reading it would block
            out[rel] = "special"
        else:
            out[rel] = hashlib.sha1(path.read_bytes()).hexdigest()
    return out


def _rows(run_dir: Path) -> list[int]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]


@pytest.fixture
def finished(cli, recipe, tmp_path) -> Path:
    """A finished 2-step run ``runs/r`` (and a neighbour ``runs/other``)."""
    assert cli(*_args(recipe, tmp_path, "run.name=other"))[0] == 0
    assert cli(*_args(recipe, tmp_path, "run.name=r"))[0] == 0
    return tmp_path / "runs" / "r"


# --------------------------------------------------------------------------- run names


@pytest.mark.parametrize("name", ["../escaped_run", "/abs/path", ".", "..", "a/b", "x" * 300])
def test_a_run_name_is_one_folder_under_run_root(cli, recipe, tmp_path, finished, name):
    before = _snapshot(tmp_path)
    line = _one_line(cli(*_args(recipe, tmp_path, f"run.name={name}", "run.overwrite=true")))
    assert "run.name" in line
    assert _snapshot(tmp_path) == before  # nothing created, moved or rewritten anywhere
    assert not Path("/abs/path").exists()


def test_a_run_directory_that_is_a_file_or_a_dangling_link(cli, recipe, tmp_path, finished):
    (tmp_path / "runs" / "f").write_text("not a folder")
    os.symlink(tmp_path / "gone", tmp_path / "runs" / "link")
    before = _snapshot(tmp_path)
    assert "is a file, not a folder" in _one_line(cli(*_args(recipe, tmp_path, "run.name=f")))
    assert "dangling symlink" in _one_line(cli(*_args(recipe, tmp_path, "run.name=link")))
    line = _one_line(cli(*_args(recipe, tmp_path, f"run.root={tmp_path / 'runs' / 'f'}")))
    assert "is a file, not a folder" in line
    assert _snapshot(tmp_path) == before


# --------------------------------------------------------------------------- refused resumes


def _edit_checkpoint(path: Path, edit) -> None:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    edit(ckpt)
    torch.save(ckpt, path)


@pytest.mark.parametrize("case,expected", [
    ("weights", "does not match the model as configured now"),
    ("data_info", "data_info"),
    ("step", "is 'ten', not a step count"),
    ("config_yaml", "config.yaml is corrupt"),
    ("metrics_json", "metrics.json is not valid JSON"),
    ("metrics_csv", "metrics.csv is corrupt"),
    ("dangling_last", "dangling symlink"),
    ("fifo_last", "not a regular file"),
    ("empty_last", "is empty (0 bytes"),
])
def test_a_refused_resume_changes_no_file_of_the_run(cli, recipe, tmp_path, finished, case,
                                                    expected):
    """Everything is validated before the run is touched (issue 13 item 3): no rewritten
    config.yaml, no truncated metrics.csv, no lock or temporary file left behind."""
    last = finished / "last.ckpt"
    extra = ["trainer.max_steps=4"]
    if case == "weights":  # a mutable key that changes the modules: the online probe
        extra.append("eval.online_linear=true")
    elif case == "data_info":
        _edit_checkpoint(last, lambda c: c[META_KEY].pop("data_info"))
    elif case == "step":
        _edit_checkpoint(last, lambda c: c.update(global_step="ten"))
    elif case == "config_yaml":
        (finished / "config.yaml").write_text("method: simclr\ntrainer: [unclosed\n")
    elif case == "metrics_json":
        (finished / "metrics.json").write_text("{truncated")
    elif case == "metrics_csv":
        lines = (finished / "metrics.csv").read_text().splitlines()
        cells = lines[1].split(",")
        cells[lines[0].split(",").index("step")] = "garbage"
        (finished / "metrics.csv").write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    elif case == "dangling_last":
        last.rename(finished / "moved.ckpt")
        os.symlink(finished / "nowhere.ckpt", last)
    elif case == "fifo_last":
        last.unlink()
        os.mkfifo(last)
    elif case == "empty_last":
        last.write_bytes(b"")
    before = _snapshot(tmp_path)
    assert expected in _one_line(cli(*_args(recipe, tmp_path, "run.name=r", *extra)))
    assert _snapshot(tmp_path) == before


@pytest.mark.slow
def test_a_failed_write_keeps_the_history(tmp_path, recipe):
    """ulimit -f below the checkpoint size: the resumed run fails with one line naming the
    file and the limit, exit 2; the rows and checkpoint of the earlier run survive, and the
    rerun without the limit removes the partial temporary and continues."""
    args = _args(recipe, tmp_path, "run.name=r")
    env = subprocess_env()

    def run(*extra: str, limit: int | None = None) -> subprocess.CompletedProcess:
        def preexec() -> None:
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        return subprocess.run([sys.executable, str(ROOT / "main_pretrain.py"), *args, *extra],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=170,
                              preexec_fn=preexec, check=False)

    assert run().returncode == 0
    run_dir = tmp_path / "runs" / "r"
    size = (run_dir / "last.ckpt").stat().st_size
    before = _snapshot(run_dir)
    failed = run("trainer.max_steps=4", "trainer.last_ckpt_every_n_steps=1", limit=size // 2)
    assert failed.returncode == 2, failed.stderr
    line = failed.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and "ulimit -f" in line and "last.ckpt" in line, line
    assert load_checkpoint_file(run_dir / "last.ckpt")["global_step"] == 2
    assert _rows(run_dir)[:2] == [0, 1]  # the earlier run's rows are kept
    after = _snapshot(run_dir)  # config.yaml is the new command's: the run had resumed
    assert [after[k] for k in ("last.ckpt", "metrics.json")] == [before[k] for k in
                                                               ("last.ckpt", "metrics.json")]
    assert run("trainer.max_steps=4").returncode == 0
    assert not list(run_dir.glob(".*.tmp"))
    assert _rows(run_dir) == [0, 1, 2, 3]


# --------------------------------------------------------------------------- history and locks


class CrashAfterCheckpoint(pl.Callback):
    """Raises right after AtomicCheckpoint saved step ``step`` (before Lightning logs it)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("killed right after the checkpoint write")


def test_rows_logged_before_a_checkpoint_survive_a_crash_after_it(tmp_path, monkeypatch):
    """Issue 13 item 4: the row of the checkpoint's last step used to be logged after the
    checkpoint and was lost for good by a crash in between."""
    cfg = load_config(None, [*TINY, f"run.root={tmp_path}", "method=simclr", "run.name=r",
                             "trainer.max_steps=6", "trainer.last_ckpt_every_n_steps=4",
                             "trainer.log_every_n_steps=2"])
    original = engine.make_trainer
    monkeypatch.setattr(engine, "make_trainer",
                        lambda c, d, cbs, lg: original(c, d, [*cbs, CrashAfterCheckpoint(4)], lg))
    with pytest.raises(RuntimeError, match="killed right after"):
        engine.pretrain(cfg, None)
    assert _rows(tmp_path / "r") == [1, 3]  # the row of step 3 is on disk with checkpoint 4
    monkeypatch.setattr(engine, "make_trainer", original)
    engine.pretrain(cfg, None)
    assert _rows(tmp_path / "r") == [1, 3, 5]


def test_a_second_process_on_a_run_directory_names_the_holder(cli, recipe, tmp_path, finished):
    lock = RunLock(finished).acquire()
    try:
        lock.write_holder()
        line = _one_line(cli(*_args(recipe, tmp_path, "run.name=r", "trainer.max_steps=3")))
    finally:
        lock.release()
    assert f"is in use by pid {os.getpid()}" in line
    assert not (finished / ".lock").exists()
    assert cli(*_args(recipe, tmp_path, "run.name=r", "trainer.max_steps=3"))[0] == 0


def test_concurrent_metrics_json_updates_lose_no_key(tmp_path):
    code = ("import sys; from ssl_diffusion.app.run_dir import update_metrics\n"
            "for i in range(40): update_metrics(sys.argv[1], {'k': {f'{sys.argv[2]}-{i}': i}})\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(p)],
                              env=subprocess_env()) for p in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    keys = json.loads((tmp_path / "metrics.json").read_text())["k"]
    assert len(keys) == 160


# --------------------------------------------------------------------------- signals


class TermDuringFinalEvaluation(pl.Callback):
    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if trainer.state.fn == "validate":  # the evaluation after training, not fit's own
            signal.raise_signal(signal.SIGTERM)


def test_sigterm_during_the_final_evaluation_exits_143(cli, recipe, tmp_path, monkeypatch):
    original = engine.make_trainer
    monkeypatch.setattr(engine, "make_trainer",
                        lambda c, d, cbs, lg: original(c, d, [*cbs, TermDuringFinalEvaluation()], lg))
    args = _args(recipe, tmp_path, "run.name=r", "eval.online_knn=true")
    line = _one_line(cli(*args), code=143)
    assert "during the final evaluation" in line and "run the same command again" in line
    run_dir = tmp_path / "runs" / "r"
    assert not (run_dir / "metrics.json").exists()
    monkeypatch.setattr(engine, "make_trainer", original)
    assert cli(*args)[0] == 0
    assert json.loads((run_dir / "metrics.json").read_text())["pretrain"]["steps"] == 2


# --------------------------------------------------------------------------- bounded resources


def test_a_fifo_checkpoint_does_not_block(tmp_path):
    """Every reader goes through load_checkpoint_file; a thread keeps a regression from hanging
    the test run (the FIFO has no writer, so opening it would block forever)."""
    fifo = tmp_path / "last.ckpt"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []
    thread = threading.Thread(target=lambda: _capture(outcome, load_checkpoint_file, fifo),
                              daemon=True)
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive(), "reading a FIFO as a checkpoint blocked"
    assert isinstance(outcome[0], UserError) and "not a regular file" in str(outcome[0])


def _capture(outcome: list, fn, *args) -> None:
    try:
        fn(*args)
    except BaseException as exc:  # noqa: BLE001 - handed to the test thread
        outcome.append(exc)


def test_shared_defaults_fragments_are_resolved_once(tmp_path, monkeypatch):
    """10 fragments per level, each level's fragments all include the next level's 10, 9 levels
    deep: 10**9 paths through the graph, 91 files."""
    from ssl_diffusion.config import loader as config

    width, depth = 10, 9
    for level in range(depth):
        for i in range(width):
            children = [f"l{level + 1}_{j}" for j in range(width)] if level + 1 < depth else []
            body = {"defaults": children, "seed": level * width + i}
            (tmp_path / f"l{level}_{i}.yaml").write_text(json.dumps(body))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(json.dumps({"defaults": [f"l0_{j}" for j in range(width)],
                                  "method": "simclr", "trainer": {"max_steps": 1}}))
    reads = []
    real = config.read_yaml
    monkeypatch.setattr(config, "read_yaml", lambda p: reads.append(p) or real(p))
    start = time.time()
    cfg = load_config(recipe, [])
    assert time.time() - start < 10
    assert len(reads) == width * depth + 1
    assert cfg.seed == width - 1  # the last fragment of level 0 wins over its defaults


@pytest.mark.parametrize("override,key", [
    ("data.num_workers=100000", "data.num_workers=100000"),
    ("trainer.devices=100000", "trainer.devices=100000"),
])
def test_resource_knobs_are_checked_against_the_machine(cli, recipe, tmp_path, override, key):
    line = _one_line(cli(*_args(recipe, tmp_path, override, "trainer.accelerator=cpu")))
    assert key in line
    assert not (tmp_path / "runs").exists()


def test_sample_count_is_bounded():
    spec = importlib.util.spec_from_file_location("main_sample", ROOT / "main_sample.py")
    main_sample = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(main_sample)
    with pytest.raises(UserError, match="at most 1,000,000"):
        main_sample._seeds(argparse.Namespace(n=10**9, seeds=None), 0)
    with pytest.raises(UserError, match="at most 1,000,000"):
        main_sample._seeds(argparse.Namespace(n=None, seeds="0-999999999"), 0)


# --------------------------------------------------------------------------- bad values, OS errors


@pytest.mark.parametrize("override,key", [
    ("optim.betas=[.nan,0.9]", "optim.betas[0]"),
    ("optim.min_lr_ratio=.nan", "optim.min_lr_ratio"),
    ("optim.lr=.inf", "optim.lr"),
])
def test_non_finite_values_are_blamed_on_their_key(cli, recipe, tmp_path, override, key):
    line = _one_line(cli(*_args(recipe, tmp_path, override)))
    assert f"`{key}`" in line and "finite" in line


def test_duplicate_yaml_keys_are_an_error(cli, tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("method: simclr\ntrainer: {max_steps: 2}\nseed: 1\ntrainer: {log_every_n_steps: 1}\n")
    line = _one_line(cli(*_args(path, tmp_path)))
    assert "duplicate key `trainer` (first given on line 2)" in line and "line 4" in line


@pytest.mark.parametrize("err,words", [
    (errno.EROFS, ["read-only file system", "run.root=", "--out"]),
    (errno.ENOSPC, ["disk is full"]),
    (errno.EFBIG, ["ulimit -f"]),
    (errno.EACCES, ["permission denied"]),
])
def test_os_errors_are_one_line_naming_the_path(capsys, err, words):
    def main(argv):
        try:
            raise OSError(err, os.strerror(err), "/some/run/last.ckpt")
        except OSError as exc:
            raise RuntimeError("wrapped by a library") from exc

    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [])
    line = _one_line((exit_info.value.code, *capsys.readouterr()))
    assert "/some/run/last.ckpt" in line and all(w in line for w in words), line


def test_wandb_online_without_a_key_fails_before_any_file(cli, recipe, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    line = _one_line(cli(*_args(recipe, tmp_path, "logger.wandb.enabled=true",
                                "logger.wandb.mode=online")))
    assert "needs a wandb API key" in line and "logger.wandb.mode=offline" in line
    assert not (tmp_path / "runs").exists()


def test_main_compare_exits_non_zero_when_a_run_failed(tmp_path, monkeypatch, capsys):
    from ssl_diffusion.app import compare

    spec = importlib.util.spec_from_file_location("main_compare", ROOT / "main_compare.py")
    main_compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(main_compare)
    runs = [{"status": "ok", "recipe": "a.yaml", "seed": 0, "error": None},
            {"status": "failed", "recipe": "b.yaml", "seed": 1, "error": "UserError: boom"}]
    monkeypatch.setattr(compare, "compare", lambda recipes, opts: {"runs": runs})
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main_compare.main, ["--recipes", "a.yaml", "b.yaml", "--out", str(tmp_path)])
    line = _one_line((exit_info.value.code, "", capsys.readouterr().err))
    assert "1 of 2 runs failed" in line and "b seed 1: UserError: boom" in line


def test_stale_temporaries_are_removed_by_the_next_run(cli, recipe, tmp_path, finished):
    (finished / ".last.ckpt.tmp").write_bytes(b"x" * 1000)
    (finished / ".config.yaml.abc123.tmp").write_text("partial")
    (finished / ".metrics.json.keep.tmp").write_text("an evaluation's, not ours")
    assert cli(*_args(recipe, tmp_path, "run.name=r", "trainer.max_steps=3"))[0] == 0
    left = sorted(p.name for p in finished.glob(".*.tmp"))
    assert left == [".metrics.json.keep.tmp"]


def test_a_decompression_bomb_is_a_one_line_error(tmp_path, monkeypatch):
    """Pillow refuses images of more than 2 x MAX_IMAGE_PIXELS pixels; lower the limit so a
    small file plays the bomb, in a training folder and as a retrieval query."""
    from PIL import Image

    from ssl_diffusion.data.imagefolder import CheckedImageFolder
    from ssl_diffusion.errors import UserError
    from ssl_diffusion.eval.retrieval import load_query_image

    for cls in ("a", "b"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        Image.new("L", (64, 64), 128).save(tmp_path / "train" / cls / "x.png")
    bomb = tmp_path / "train" / "a" / "x.png"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 // 4)  # 64x64 > 2 x limit: an error
    folder = CheckedImageFolder(tmp_path / "train", None, None)
    with pytest.raises(UserError, match=r"unreadable image .*x\.png.*decompression bomb"):
        folder[0]
    with pytest.raises(UserError, match=r"x\.png.*decompression bomb"):
        load_query_image(bomb, 1, 16)
