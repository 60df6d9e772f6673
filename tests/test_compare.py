"""main_compare.py end to end on the two quickstart recipes (one seed, a few steps), plus the
report's aggregation and failure isolation."""

from __future__ import annotations

import json

import pytest

from ssl_diffusion.app.cli import run_cli
from ssl_diffusion.app.compare import RunRecord, aggregate, mean_std, parse_recipe_spec
from ssl_diffusion.errors import UserError

TINY = ["trainer.max_steps=2", "logger.wandb.enabled=false", "trainer.progress_bar=false",
        "eval.linear.epochs=2", "eval.linear.warmup_epochs=0", "backbone.name=vit_micro",
        "eval.knn.k=[5,10]", "eval.knn.report_k=5"]


@pytest.mark.slow
def test_compare_two_quickstart_recipes_end_to_end(tmp_path, capsys):
    import main_compare

    out = tmp_path / "cmp"
    argv = ["--recipes", "recipes/quickstart.yaml", "recipes/quickstart_ddaepp.yaml", "--seeds", "0",
            "--out", str(out), "--fid-n", "4", "--fid-ref-n", "4", "--sweep-layers", "block1,block3",
            "--sweep-noises", "0.05,0.2", *TINY]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main_compare.main, argv)
    assert exit_info.value.code == 0
    report = json.loads((out / "comparison.json").read_text())
    runs = {r["run_dir"].split("/")[-1]: r for r in report["runs"]}
    assert set(runs) == {"quickstart-s0", "quickstart_ddaepp-s0"}
    assert all(r["status"] == "ok" for r in runs.values()), runs
    diff = runs["quickstart_ddaepp-s0"]["metrics"]
    for key in ("knn_top1", "linear_top1", "sweep_knn_top1", "sweep_linear_top1", "fid", "kid", "images_per_s"):
        assert key in diff, key
    assert "fid" not in runs["quickstart-s0"]["metrics"]  # SimCLR cannot generate
    assert 0 <= report["raw_pixels"]["knn_top1"] <= 100
    md = (out / "comparison.md").read_text()
    assert "raw pixels" in md and "quickstart_ddaepp" in md and "ddaepp" in md and "| KID |" in md
    assert (out / "comparison.png").stat().st_size > 1000
    # a second invocation trains and evaluates nothing again
    mtime = (out / "quickstart-s0" / "last.ckpt").stat().st_mtime_ns
    with pytest.raises(SystemExit):
        run_cli(main_compare.main, argv)
    assert (out / "quickstart-s0" / "last.ckpt").stat().st_mtime_ns == mtime


def test_a_failing_run_does_not_lose_the_others(tmp_path, capsys):
    import main_compare

    bad = tmp_path / "bad.yaml"
    bad.write_text("method: simclr\noptim: {lrr: 1}\n")  # unknown key: fails at the config stage
    argv = ["--recipes", str(bad), "--seeds", "0", "--out", str(tmp_path / "c"), "--no-fid",
            "--no-raw-pixels", *TINY]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main_compare.main, argv)
    assert exit_info.value.code == 1  # every run failed
    md = (tmp_path / "c" / "comparison.md").read_text()
    assert "Failed runs" in md and "optim.lrr" in md


def test_aggregate_mean_and_sample_std():
    records = [RunRecord("r.yaml", s, f"/x/r-s{s}", "ddae", "ok", metrics={"knn_top1": v})
               for s, v in enumerate([70.0, 72.0, 74.0])]
    records.append(RunRecord("r.yaml", 3, "/x/r-s3", "ddae", "failed", "boom", "train", {}))
    row = aggregate(records)["r.yaml"]
    assert row["knn_top1"] == {"mean": 72.0, "std": 2.0, "n": 3}
    assert row["failed"] == [3]
    assert mean_std([5.0]) == (5.0, None)


def test_recipe_spec_with_seeds():
    assert parse_recipe_spec("a.yaml", [0, 1, 2]) == ("a.yaml", [0, 1, 2])
    assert parse_recipe_spec("a.yaml@0,2", [0, 1, 2]) == ("a.yaml", [0, 2])
    with pytest.raises(UserError, match="RECIPE@SEED"):
        parse_recipe_spec("a.yaml@x", [0])


def test_a_zero_accuracy_is_reported_not_dropped(tmp_path):
    from ssl_diffusion.app.compare import _collect

    run = tmp_path / "r-s0"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"linear": {"test_top1": 0.0, "val_top1": 10.0},
                                                  "knn": {"test": {"knn_top1": 0.0}}}))
    record = _collect(RunRecord("r.yaml", 0, str(run), "ddae"))
    assert record.metrics["linear_top1"] == 0.0 and record.metrics["knn_top1"] == 0.0
    assert aggregate([record])["r.yaml"]["linear_top1"] == {"mean": 0.0, "std": None, "n": 1}


@pytest.mark.slow
def test_gpu_compare_script_runs_end_to_end_on_cpu(tmp_path):
    """benchmarks/gpu_compare.py --tiny: the GPU replication script's whole path (fake data)."""
    from tests.conftest import run_script

    out = tmp_path / "gpu"
    proc = run_script("benchmarks/gpu_compare", "--tiny", "--out", str(out), cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "comparison.json").read_text())
    assert len(report["runs"]) == 4 and all(r["status"] == "ok" for r in report["runs"])
    assert all(r["metrics"]["images_per_s"] > 0 for r in report["runs"])
    assert "train images/s" in proc.stdout


def test_an_interrupt_stops_the_comparison_instead_of_moving_on(tmp_path):
    from ssl_diffusion.app.compare import _stage
    from ssl_diffusion.app.signals import RunInterrupted

    def interrupted():
        raise RunInterrupted("interrupted at step 3; run the same command again to resume", 15)

    record = RunRecord("r.yaml", 0, str(tmp_path / "r-s0"), "ddae")
    with pytest.raises(RunInterrupted):
        _stage(record, "train", interrupted)
    assert record.status == "pending"
    assert not _stage(record, "knn", lambda: 1 / 0) and record.status == "failed"
    assert record.failed_stage == "knn" and "ZeroDivisionError" in record.error


def test_plot_draws_non_generative_methods_as_lines(tmp_path, monkeypatch):
    import matplotlib.axes

    from ssl_diffusion.app.compare import write_plot

    calls = {"scatter": [], "axhline": []}
    for name in calls:
        original = getattr(matplotlib.axes.Axes, name)

        def spy(self, *args, _name=name, _original=original, **kwargs):
            calls[_name].append(args)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(matplotlib.axes.Axes, name, spy)
    records = [RunRecord("ddae.yaml", 0, "/x/ddae-s0", "ddae", "ok", metrics={"sweep_linear_top1": 80.0, "fid": 200.0}),
               RunRecord("simclr.yaml", 0, "/x/simclr-s0", "simclr", "ok", metrics={"linear_top1": 75.0})]
    write_plot(tmp_path / "c.png", records)
    assert calls["scatter"] == [(200.0, 80.0)] and calls["axhline"] == [(75.0,)]
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
