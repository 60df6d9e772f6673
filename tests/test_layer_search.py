"""main_layer_search: the baseline arm, several paired seeds and differences to the baseline."""

from __future__ import annotations

import csv
import json

import pytest

from ssl_diffusion.app.cli import run_cli
from ssl_diffusion.app.layer_search import tail_loss


@pytest.mark.slow
def test_layer_search_pairs_every_candidate_with_the_baseline_per_seed(tmp_path, capsys):
    import main_layer_search

    argv = ["--config", "recipes/quickstart_ddaepp.yaml", "--layers", "block0,block2", "--steps",
            "4", "run.root=" + str(tmp_path), "run.name=ls", "logger.wandb.enabled=false",
            "trainer.progress_bar=false", "trainer.log_every_n_steps=1", "data.train_subset=64",
            "data.batch_size=16", "data.num_workers=0", "--seeds", "0", "1"]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main_layer_search.main, argv)
    assert exit_info.value.code == 0
    out = tmp_path / "ls-layer-search"
    summary = json.loads((out / "metrics.json").read_text())["layer_search"]
    assert summary["seeds"] == [0, 1]
    by_name = {r["source_layer"]: r for r in summary["candidates"]}
    assert set(by_name) == {"none", "block0", "block2"}
    for name in ("block0", "block2"):  # recomputed from each run's own metrics.csv
        per_seed = [tail_loss(out / f"{name}-s{s}" / "metrics.csv") for s in (0, 1)]
        base = [tail_loss(out / f"none-s{s}" / "metrics.csv") for s in (0, 1)]
        d = by_name[name]["vs_baseline"]
        assert d["diffs"] == pytest.approx([a - b for a, b in zip(per_seed, base)])
        assert d["n"] == 2 and d["ci_low"] <= d["mean"] <= d["ci_high"]
    chosen = min(("block0", "block2"), key=lambda n: by_name[n]["mean_tail_loss"])
    assert summary["chosen"] == chosen
    with open(out / "layer_search.csv") as f:
        assert len(list(csv.DictReader(f))) == 6  # 3 arms x 2 seeds
    assert "vs baseline" in (out / "layer_search.md").read_text()
