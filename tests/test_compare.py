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
    assert exit_info.value.code == 2  # a run failed: one line, exit 2 (issue 13), report kept
    assert "1 of 1 runs failed" in capsys.readouterr().err
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


def _fake_run(root, name, pred, labels, feats, keys, ref_path, values):
    import numpy as np

    run = root / name
    (run / "predictions").mkdir(parents=True)
    np.savez(run / "predictions" / "sweep.npz", test_linear_pred=pred, test_linear_label=labels,
             test_knn_pred=pred, test_knn_label=labels)
    np.savez(run / "fid_features.npz", features=feats, key=keys)
    (run / "metrics.json").write_text(json.dumps(
        {"fid": {"fid": values["fid"], "kid_subset_size": 20, "reference": {"cache": str(ref_path)}}}))
    return str(run)


def test_paired_analysis_pairs_by_seed_and_tests_within_each_seed(tmp_path):
    """B - A across seeds (t-interval) and within a seed (McNemar from the saved predictions,
    checked against a brute-force count; a bootstrap over the generated images)."""
    import numpy as np

    from ssl_diffusion.app.paired import markdown, paired_analysis

    rng = np.random.default_rng(0)
    ref = tmp_path / "ref.npz"
    ref_feats = rng.normal(size=(60, 8)).astype(np.float32)
    np.savez(ref, mu=ref_feats.mean(0).astype(np.float64), sigma=np.cov(ref_feats, rowvar=False),
             n=60, kid_features=ref_feats, key="k")
    labels = rng.integers(0, 3, 50)
    keys = rng.permutation(40).astype(np.uint64)
    records = []
    for seed in (0, 1):
        pred_a = np.where(rng.random(50) < 0.7, labels, (labels + 1) % 3)
        pred_b = np.where(rng.random(50) < 0.8, labels, (labels + 1) % 3)
        feats_a = rng.normal(size=(40, 8)).astype(np.float32)
        feats_b = (feats_a + 0.3).astype(np.float32)  # B's images are shifted: worse FID
        for recipe, pred, feats, lin in (("a.yaml", pred_a, feats_a, 70.0 + seed),
                                         ("b.yaml", pred_b, feats_b, 72.0 + 2 * seed)):
            run = _fake_run(tmp_path, f"{recipe[0]}-s{seed}", pred, labels, feats, keys, ref,
                            {"fid": 1.0})
            records.append(RunRecord(recipe, seed, run, "ddae", "ok", metrics={
                "sweep_linear_top1": lin, "sweep_knn_top1": lin - 5, "fid": 10.0 + lin,
                "kid": 0.01}))
            if recipe == "a.yaml" and seed == 0:
                brute_a = pred
            if recipe == "b.yaml" and seed == 0:
                brute_b = pred
    out = paired_analysis(records, "a.yaml", resamples=20)
    e = out["comparisons"]["b.yaml"]
    assert e["seeds"] == [0, 1]
    lin = e["across_seeds"]["linear_top1"]
    assert lin["diffs"] == [2.0, 3.0] and lin["mean"] == 2.5 and lin["n"] == 2
    m = e["within_seed"]["0"]["linear_top1"]
    ok_a, ok_b = brute_a == labels, brute_b == labels
    assert (m["b"], m["c"]) == (int((ok_a & ~ok_b).sum()), int((~ok_a & ok_b).sum()))
    gen = e["within_seed"]["0"]["generation"]
    assert gen["fid"]["point"] > 0 and gen["fid"]["resamples"] == 20 and gen["n_a"] == 40
    md = "\n".join(markdown(out))
    assert "Paired differences (B - A)" in md and "McNemar" in md and "bootstrap FID" in md
    # a run whose predictions are missing is skipped, not an error
    (tmp_path / "b-s1" / "predictions" / "sweep.npz").unlink()
    assert "linear_top1" not in paired_analysis(records, "a.yaml", 5)["comparisons"]["b.yaml"][
        "within_seed"]["1"]
