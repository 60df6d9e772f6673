"""main_sample.py end to end on a tiny trained checkpoint (in-process through ``run_cli``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_diffusion.app.cli import run_cli
from ssl_diffusion.eval.fid import ReferenceKey, compute_fid
from ssl_diffusion.eval.fid_config import FIDConfig
from ssl_diffusion.eval.inception import load_inception

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from main_sample import main


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        run_cli(main, [*argv, "--quiet"])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_grid_npz_and_png_folder(tiny_run, capsys):
    code, out, _ = cli(["--ckpt", str(tiny_run / "last.ckpt"), "--n", "10", "--npz", "--png-dir",
                        "--batch-size", "4"], capsys)
    assert code == 0 and out.startswith("10 images (euler, 2 steps, NFE 2, EMA, seeds 0-9)")
    grid = Image.open(tiny_run / "samples.png")
    # 10 tiles: 4 x 3 with 2 px padding (74 x 56 px), enlarged 7x to be >= 512 px wide
    assert grid.mode == "L" and grid.size == (7 * (4 * 18 + 2), 7 * (3 * 18 + 2))
    with np.load(tiny_run / "samples.npz") as z:
        arr = z["arr_0"]
    assert arr.dtype == np.uint8 and arr.shape == (10, 16, 16, 3)
    pngs = sorted(os.listdir(tiny_run / "samples"))
    assert pngs == [f"{i:06d}.png" for i in range(10)]
    for i in (0, 9):  # the same bytes in every output
        png = np.asarray(Image.open(tiny_run / "samples" / pngs[i]))
        np.testing.assert_array_equal(arr[i], np.repeat(png[..., None], 3, axis=2))
    small = np.asarray(grid)[::7, ::7]  # undo the nearest-neighbour enlargement
    tile = small[2 + 18 * 2 : 18 + 18 * 2, 2 + 18 : 18 + 18]  # image 9: row 2, col 1
    np.testing.assert_array_equal(tile, arr[9, ..., 0])


def test_images_do_not_depend_on_batch_size(tiny_run, capsys):
    ckpt = str(tiny_run / "last.ckpt")
    for bs in ("1", "8"):
        code, _, _ = cli(["--ckpt", ckpt, "--seeds", "3-10", "--batch-size", bs, "--npz",
                          "--out", str(tiny_run / f"bs{bs}")], capsys)
        assert code == 0
    code, _, _ = cli(["--ckpt", ckpt, "--seeds", "7", "--npz", "--out", str(tiny_run / "one")], capsys)
    a, b, one = (np.load(tiny_run / d / "samples.npz")["arr_0"] for d in ("bs1", "bs8", "one"))
    # Batched matmuls may round differently in the last float bit; a pixel may then move by
    # 1/255, but essentially every pixel must be identical.
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1 and (a != b).mean() < 1e-3
    assert np.abs(a[4].astype(int) - one[0].astype(int)).max() <= 1  # seed 7 alone
    assert a.std() > 10  # real images, not a constant


def test_fid_is_merged_into_metrics_with_its_protocol(tiny_run, stand_in_weights, tmp_path, capsys):
    ckpt, cache = str(tiny_run / "last.ckpt"), f"eval.fid.cache_dir={tmp_path / 'cache'}"
    code, out, _ = cli(["--ckpt", ckpt, "--fid", "--n", "16", "--ref-n", "16", "--npz",
                        "--fid-weights", stand_in_weights, cache], capsys)
    assert code == 0 and "FID" in out and "small n" in out
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["pretrain"]["steps"] == 2  # earlier keys kept
    fid = metrics["fid"]
    assert {"fid", "kid_mean", "is_note", "n", "n_gen", "n_ref", "ref_n", "ref_split", "sampler",
            "steps", "nfe", "eta", "cfg", "shift", "seeds", "weights", "feature_net", "resize",
            "warning", "checkpoint_step"} <= set(fid)
    assert (fid["n"], fid["n_gen"], fid["n_ref"], fid["ref_n"]) == (16, 16, 16, 16)
    assert (fid["sampler"], fid["steps"], fid["seeds"], fid["weights"]) == ("euler", 2, "0-15", "ema")
    assert fid["ref_split"] == "train" and fid["checkpoint_step"] == 2 and fid["cfg"] == 1.0
    assert fid["feature_net"].startswith("inception-2015-12-05-pool3-user-torchscript")
    assert "biased upward" in fid["warning"] and not fid["reference"]["from_cache"]

    # The FID is that of exactly the images written to samples.npz (independent recomputation).
    from ssl_diffusion.app.generation import reference_batches
    from ssl_diffusion.app.loading import load_method

    loaded = load_method(ckpt)
    images = torch.from_numpy(np.load(tiny_run / "samples.npz")["arr_0"]).permute(0, 3, 1, 2)
    cfg = FIDConfig(n=16, ref_n=16, cache_dir=None)
    ref = compute_fid(iter([images[:, :1]]), ReferenceKey("digits", "train", 16, 16),
                      lambda: reference_batches(loaded.cfg, "train", 16), cfg,
                      net=load_inception(stand_in_weights))
    assert ref["fid"] == pytest.approx(fid["fid"], rel=1e-9)

    code, _, _ = cli(["--ckpt", ckpt, "--fid", "--n", "16", "--ref-n", "16", "--sampler", "heun",
                      "--steps", "3", "--raw", "--fid-weights", stand_in_weights, cache], capsys)
    again = json.loads((tiny_run / "metrics.json").read_text())
    assert code == 0 and again["fid"]["reference"]["from_cache"] and "pretrain" in again
    assert (again["fid"]["sampler"], again["fid"]["nfe"], again["fid"]["weights"]) == ("heun", 5, "raw")


def test_simclr_checkpoint_is_refused(simclr_ckpt, capsys):
    code, _, err = cli(["--ckpt", str(simclr_ckpt), "--n", "4"], capsys)
    assert code == 2
    assert err.strip() == ("error: checkpoint is method simclr which cannot generate; use a "
                           "ddae/ddaepp checkpoint")


@pytest.mark.parametrize(("args", "match"), [
    (["--n", "0"], "--n 0"),
    (["--seeds", "5-3"], "bad seeds"),
    (["--n", "4", "--seeds", "0-9"], "gives 10 seeds"),
    (["--n", "2", "--cfg", "1.5"], "cfg=1.5 needs a class-conditional"),
    (["--n", "2", "--class-label", "3"], "class-conditional"),
    (["--n", "2", "--sampler", "hune"], "did you mean `heun`"),
    (["--n", "4", "--fid", "--fid-weights", "/nonexistent/inception.pt"], "eval.fid.weights"),
    (["--n", "4", "--fid", "eval.fid.ref_split=tset"], "ref_split"),
])
def test_bad_input_is_one_line_and_leaves_files_alone(tiny_run, capsys, args, match):
    (tiny_run / "samples.png").write_bytes(b"earlier grid")
    before = {p.name: p.read_bytes() for p in tiny_run.iterdir()}
    code, _, err = cli(["--ckpt", str(tiny_run / "last.ckpt"), *args], capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and match in err
    assert {p.name: p.read_bytes() for p in tiny_run.iterdir()} == before


def test_missing_checkpoint_exits_2_from_the_command_line(tmp_path):
    argv = [sys.executable, str(REPO / "main_sample.py"), "--ckpt", str(tmp_path / "nope.ckpt"),
            "--n", "4"]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"error: checkpoint not found: {tmp_path / 'nope.ckpt'}"
