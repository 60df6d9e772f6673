"""The layer x noise sweep: selection on validation only, default grids, outputs, recipes."""

from __future__ import annotations

import csv
import itertools
import json
import math

import pytest
import yaml

from ssl_diffusion.app.recipe_edit import write_feature_recipe
from ssl_diffusion.errors import UserError
from ssl_diffusion.eval.sweep import default_layers, default_noises, select_cell, summarize


def _row(layer, noise, val1, val5=90.0, metric="knn"):
    return {"metric": metric, "layer": layer, "noise": noise, "sigma": noise, "val_top1": val1,
            "val_top5": val5}


def test_selection_uses_validation_and_tests_only_the_chosen_cell():
    # Validation prefers (block1, 0.1); test would prefer (block0, 0.5).
    rows = [_row("block0", 0.1, 60.0), _row("block0", 0.5, 70.0), _row("block1", 0.1, 80.0),
            _row("block1", 0.5, 75.0)]
    test_acc = {("block0", 0.1): 50.0, ("block0", 0.5): 95.0, ("block1", 0.1): 72.0,
                ("block1", 0.5): 80.0}
    asked = []

    def test_of(cell):
        asked.append((cell["layer"], cell["noise"]))
        return {"knn": {"test_top1": test_acc[asked[-1]], "test_top5": 99.0}}

    report = summarize(rows, "knn", test_of)
    assert asked == [("block1", 0.1)]  # test evaluated once, for the val-best cell
    assert (report["layer"], report["noise"]) == ("block1", 0.1)
    assert report == {"layer": "block1", "noise": 0.1, "sigma": 0.1, "select_by": "knn",
                      "val_knn_top1": 80.0, "val_knn_top5": 90.0, "test_knn_top1": 72.0,
                      "test_knn_top5": 99.0}
    assert max(test_acc, key=test_acc.get) != asked[0]


def test_selection_breaks_ties_by_top5_then_grid_order():
    rows = [_row("a", 0.1, 50.0, 80.0), _row("b", 0.1, 50.0, 85.0), _row("c", 0.1, 50.0, 85.0),
            _row("d", 0.1, 99.0, 99.0, metric="linear")]
    assert select_cell(rows, "knn")["layer"] == "b"
    assert select_cell(rows, "linear")["layer"] == "d"


@pytest.mark.parametrize("objective", ["flow", "edm", "ddpm"])
def test_default_noises_are_log_spaced_inside_the_schedule(objective):
    from ssl_diffusion.config import load_config
    from ssl_diffusion.diffusion import build_objective

    obj = build_objective(load_config(None, [f"diffusion.objective={objective}",
                                             "trainer.max_steps=1"]).diffusion)
    sigmas = default_noises(obj, "sigma")
    assert len(sigmas) == 5 and sigmas == sorted(sigmas)
    assert all(obj.sigma_min <= s <= obj.sigma_max for s in sigmas)
    ratios = [math.log(b / a) for a, b in itertools.pairwise(sigmas)]
    assert max(ratios) - min(ratios) < 1e-3  # log-spaced (values rounded to 4 digits)
    logsnrs = default_noises(obj, "logsnr")
    assert [math.exp(-v / 2) for v in logsnrs] == pytest.approx(sigmas, rel=1e-3)


def test_default_layers_subsample_deep_models():
    class Net:
        def __init__(self, depth: int) -> None:
            self.layer_names = [f"block{i}" for i in range(depth)]
            self.default_feature_layer = "block13"

    picked = default_layers(Net(28))
    assert picked[0] == "block0" and picked[-1] == "block27" and "block13" in picked
    assert len(picked) == 7
    assert default_layers(Net(3)) == ["block0", "block1", "block2"]


def test_sweep_end_to_end_writes_grid_plot_metrics_and_recipe(run_copy, tmp_path):
    from ssl_diffusion.app.evaluate import run_sweep

    ckpt = run_copy("ddaepp")
    run_dir = ckpt.parent
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("# my recipe\nmethod: ddaepp\neval:\n  every_n_epochs: 2  # keep\n")
    result = run_sweep(ckpt, layers=["block1", "block3"], noises=[0.05, 0.4], metric="knn",
                       write_recipe=recipe, progress=False)
    chosen = result["chosen"]
    with open(run_dir / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["layer"] for r in rows} == {"block1", "block3"}
    assert sum(int(r["chosen"]) for r in rows) == 1
    best = max(result["grid"], key=lambda r: (r["val_top1"], r["val_top5"]))
    assert (chosen["layer"], chosen["noise"]) == (best["layer"], best["noise"])
    assert {"test_knn_top1", "test_knn_top5", "val_knn_top1"} <= set(chosen)
    assert not any(k.startswith("test_linear") for k in chosen)
    assert all("test_top1" not in r for r in result["grid"])  # no test numbers for other cells
    assert (run_dir / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "pretrain" in metrics  # other entries kept
    assert metrics["sweep"]["chosen"]["layer"] == chosen["layer"]
    assert metrics["sweep"]["chosen"]["noise_unit"] == "sigma"
    text = recipe.read_text()
    assert "# my recipe" in text and "# keep" in text
    assert yaml.safe_load(text)["eval"] == {
        "every_n_epochs": 2,
        "features": {"layer": chosen["layer"], "noise": chosen["noise"], "noise_unit": "sigma"}}


def test_sweep_refuses_non_diffusion_methods_and_bad_cells(run_copy, loaded):
    from ssl_diffusion.app.evaluate import run_sweep

    with pytest.raises(UserError, match="needs a diffusion method"):
        run_sweep(loaded("simclr"), progress=False, write_metrics=False)
    with pytest.raises(UserError, match="unknown layer `block9`"):
        run_sweep(loaded("ddaepp"), layers=["block9"], progress=False, write_metrics=False)
    with pytest.raises(UserError, match=r"noise 2000 \(sigma\)"):
        run_sweep(loaded("ddaepp"), noises=[2000.0], progress=False, write_metrics=False)
    with pytest.raises(UserError, match="unknown sweep metric `knnn`"):
        run_sweep(loaded("ddaepp"), metric="knnn", progress=False, write_metrics=False)


def test_recipe_writer_creates_merges_and_refuses(tmp_path):
    values = {"layer": "block2", "noise": -1.5, "noise_unit": "logsnr"}
    new = tmp_path / "new.yaml"
    assert write_feature_recipe(new, values, "ddaepp") == "created"
    assert yaml.safe_load(new.read_text()) == {"eval": {"features": values}}
    flow = tmp_path / "flow.yaml"
    flow.write_text("method: ddaepp  # m\neval: {every_n_epochs: 5, features: {layer: auto, "
                    "use_ema: false}}\ntrainer: {max_steps: 3}\n")
    assert write_feature_recipe(flow, values, "ddaepp") == "updated"
    data = yaml.safe_load(flow.read_text())
    assert data["eval"]["features"] == {**values, "use_ema": False}
    assert data["trainer"] == {"max_steps": 3} and "# m" in flow.read_text()
    for text, match in [("- a\n", "mapping"), ("eval: 3\n", "not a mapping"),
                        ("method: simclr\n", "method `simclr`"), ("a: [\n", "not valid YAML")]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(UserError, match=match):
            write_feature_recipe(bad, values, "ddaepp")
        assert bad.read_text() == text  # untouched
