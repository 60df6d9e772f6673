"""benchmarks/quickstart_transfer.py end to end on a tiny synthetic ImageFolder (no ../shared).

Checks what the report's numbers rest on: the time-equal DDAE++ budget is SimCLR's wall time
divided by the recipe run's seconds per step; the per-seed gaps are the kNN differences of the
runs; the pooled mean and 95% interval match a Student-t interval computed here from the
per-seed values (scipy); both recipes resize a 28 px folder to their 16 px quickstart resolution;
and a finished seed is skipped, not retrained, on a re-run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from benchmarks import quickstart_transfer as qt
from ssl_diffusion.app.loading import load_method
from tests.helpers_imagefolder import make_png_folder

pytestmark = pytest.mark.slow


def test_benchmark_budget_gaps_pooled_interval_and_resume(tmp_path, capsys):
    make_png_folder(tmp_path / "fashion_mnist_folder", classes=4, train_per_class=60,
                    val_per_class=10, size=28)
    args = ["--out", str(tmp_path), "--seeds", "0", "1", "--simclr", "trainer.max_steps=2",
            "--ddaepp", "trainer.max_steps=3"]
    assert qt.main(args) == 0
    report = json.loads((tmp_path / "quickstart_transfer.json").read_text())
    assert report["seeds"] == [0, 1]

    gaps = []
    for seed in report["per_seed"]:
        runs = seed["runs"]
        recipe, simclr, equal = runs["ddaepp_recipe"], runs["simclr"], runs["ddaepp_equal"]
        per_step = recipe["train_wall_time_s"] / recipe["steps"]
        assert recipe["steps"] == 3 and simclr["steps"] == 2
        assert equal["steps"] == max(1, round(simclr["train_wall_time_s"] / per_step))
        gap = simclr["knn_test_top1"] - equal["knn_test_top1"]
        assert seed["gap_test_points"]["ddaepp_equal"] == round(gap, 2)
        gaps.append(gap)
        assert Path(equal["samples_png"]).is_file()
        for arm in ("simclr", "ddaepp_equal"):
            loaded = load_method(Path(runs[arm]["run_dir"]) / "last.ckpt")
            assert loaded.info.image_size == 16  # the recipes' quickstart resolution, not 28
        assert loaded.method.net.grid == 4  # DiT patch 4 at 16 px: 4 x 4 tokens

    d = report["paired"]["ddaepp_equal/test"]
    mean, sd = float(np.mean(gaps)), float(np.std(gaps, ddof=1))
    half = scipy.stats.t.ppf(0.975, len(gaps) - 1) * sd / math.sqrt(len(gaps))
    assert d["mean"] == pytest.approx(mean)
    assert (d["ci_low"], d["ci_high"]) == pytest.approx((mean - half, mean + half))
    assert report["ddaepp_equal_every_seed_within"] == (max(gaps) <= qt.THRESHOLD + 1e-9)

    # a finished seed is reported again, not retrained
    before = (tmp_path / "seed0.json").read_text()
    ckpt = Path(report["per_seed"][0]["runs"]["simclr"]["run_dir"]) / "last.ckpt"
    mtime = ckpt.stat().st_mtime_ns
    capsys.readouterr()
    assert qt.main(["--out", str(tmp_path), "--seeds", "0"]) == 0
    assert "seed 0: done" in capsys.readouterr().out
    assert (tmp_path / "seed0.json").read_text() == before and ckpt.stat().st_mtime_ns == mtime
