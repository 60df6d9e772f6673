"""The offline evaluation CLIs (main_knn / main_linear / main_sweep / main_retrieval) end to end
on tiny checkpoints: results land in metrics.json beside the pretraining entry, and bad input
gives one ``error:`` line with exit code 2.

Most cases run ``main`` in-process through ``run_cli`` (the scripts' own code path); two real
subprocesses check the scripts as installed entry points.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.conftest import ROOT, run_script
from tests.eval.helpers import copy_run, trained_checkpoint

CLIS = ("main_knn", "main_linear", "main_sweep", "main_retrieval")


@pytest.fixture(scope="module")
def clis():
    out = {}
    for name in CLIS:
        spec = importlib.util.spec_from_file_location(name, ROOT / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        out[name] = module
    return out


@pytest.fixture
def run(clis, capsys):
    """``run("main_knn", "--ckpt", ...)`` -> (exit code, stdout, stderr), in-process."""
    from ssl_diffusion.app.cli import run_cli

    def call(name: str, *argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            run_cli(clis[name].main, [*argv, "--quiet"])
        out, err = capsys.readouterr()
        return exc.value.code, out, err

    return call


@pytest.fixture
def ckpt(tmp_path_factory, tmp_path):
    """``ckpt("ddaepp")`` -> this test's private copy of the tiny run (copied on first use)."""
    base = tmp_path_factory.getbasetemp() / "eval_runs"
    copies = {}

    def get(method: str):
        if method not in copies:
            copies[method] = copy_run(trained_checkpoint(method, base), tmp_path / method)
        return copies[method]

    return get


def _one_error_line(result) -> str:
    code, out, err = result
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_every_cli_on_a_diffusion_checkpoint(run, ckpt):
    path = str(ckpt("ddaepp"))
    code, out, _ = run("main_knn", "--ckpt", path)
    assert code == 0 and out.startswith("knn (k=5, T=0.07, bank 36): val top-1"), out
    code, out, _ = run("main_linear", "--ckpt", path, "eval.linear.epochs=2")
    assert code == 0 and out.startswith("linear (2 epochs, sgd, train 36)"), out
    code, out, _ = run("main_sweep", "--ckpt", path, "--layers", "block0,block2",
                       "--noises", "0.05,0.3", "--metric", "both", "--probe-epochs", "2")
    assert code == 0 and "chosen on val (linear top-1" in out and "knn test top-1" in out, out
    code, out, _ = run("main_retrieval", "--ckpt", path, "--query", "5", "--split", "train",
                       "--k", "3")
    assert code == 0 and "1. train[5]" in out, out
    metrics = json.loads((ckpt("ddaepp").parent / "metrics.json").read_text())
    assert {"pretrain", "knn", "linear", "sweep"} <= set(metrics)
    assert metrics["linear"]["protocol"]["epochs"] == 2
    assert metrics["knn"]["protocol"]["checkpoint"]["step"] == 2
    assert metrics["sweep"]["chosen"]["layer"] in ("block0", "block2")
    assert metrics["sweep"]["layers"] == ["block0", "block2"]
    chosen = metrics["sweep"]["chosen"]
    assert {"test_knn_top1", "test_linear_top1", "val_linear_top1"} <= set(chosen)
    assert metrics["knn"]["test"]["knn_top1"] == metrics["knn"]["test_top1"]
    assert set(metrics["knn"]["val"]) >= {"knn_top1@k3", "knn_top1@k5", "knn_top5@k5"}


def test_knn_and_linear_on_a_simclr_checkpoint(run, ckpt):
    path = str(ckpt("simclr"))
    code, out, _ = run("main_knn", "--ckpt", path, "eval.features.layer=block0")
    assert code == 0 and "test top-1" in out
    code, out, _ = run("main_linear", "--ckpt", path, "--limit", "20")
    assert code == 0 and "train 20" in out
    metrics = json.loads((ckpt("simclr").parent / "metrics.json").read_text())
    assert "does not apply" in metrics["knn"]["protocol"]["features"]["source"]
    assert metrics["linear"]["protocol"]["split_sizes"] == {"train": 20, "val": 4, "test": 16}


def test_bad_inputs_are_one_line_errors(run, ckpt, tmp_path):
    good = str(ckpt("ddaepp"))
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"PK\x03\x04 truncated")
    unreadable = tmp_path / "image.png"
    unreadable.write_text("not an image")
    cases = [
        (("main_knn", "--ckpt", str(tmp_path / "missing.ckpt")), "checkpoint not found"),
        (("main_linear", "--ckpt", str(corrupt)), "is corrupt or truncated"),
        (("main_knn", "--ckpt", good, "eval.knn.k=[100]", "eval.knn.report_k=100"),
         "asks for 100 neighbours but the bank has 36 rows"),
        (("main_knn", "--ckpt", good, "eval.knn.kk=3"), "unknown key `eval.knn.kk`"),
        (("main_sweep", "--ckpt", good, "--layers", "block7"), "unknown layer `block7`"),
        (("main_sweep", "--ckpt", good, "--noises", "0.1,5000"), r"noise 5000 \(sigma\)"),
        (("main_sweep", "--ckpt", good, "--noises", "0.1,abc"), "`abc` is not a number"),
        (("main_sweep", "--ckpt", good, "--metric", "lin"), "unknown sweep metric `lin`"),
        (("main_retrieval", "--ckpt", good, "--query", "0", "--k", "99"),
         "--k 99 is larger than the train gallery"),
        (("main_retrieval", "--ckpt", good, "--query", str(unreadable)), "cannot read image"),
        (("main_knn", "--ckpt", good, "--batch-size", "0"), "--batch-size 0 must be >= 1"),
    ]
    for argv, expected in cases:
        line = _one_error_line(run(*argv))
        assert __import__("re").search(expected, line), (argv, line)


def test_scripts_in_real_subprocesses(ckpt, tmp_path):
    path = ckpt("simclr")
    proc = run_script("main_knn", "--ckpt", str(path), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("knn (k=5"), proc.stdout
    assert "knn" in json.loads((path.parent / "metrics.json").read_text())
    # Option errors are reported before torch is even imported.
    proc = run_script("main_linear", "--ckpt", str(path), "--limit", "0", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == ["error: --limit 0 must be >= 1"]
