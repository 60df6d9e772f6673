"""In-training FID: the engine adds the callback, it logs val/fid and records the final result."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from ssl_diffusion.app.pretrain import pretrain
from ssl_diffusion.config import load_config
from ssl_diffusion.errors import UserError
from tests.generation.helpers import TINY


def _fid(root: Path, weights: str, *extra: str) -> list[str]:
    return ["eval.fid.enabled=true", "eval.fid.n=4", "eval.fid.ref_n=6", f"eval.fid.weights={weights}",
            f"eval.fid.cache_dir={root / 'cache'}", "eval.fid.kid_subset_size=4", f"run.root={root}",
            *extra]


def test_fid_every_epoch_logged_and_final_result_recorded(tmp_path, stand_in_weights):
    # 16 training images, batch 8: 2 steps per epoch; 3 steps end inside epoch 1.
    cfg = load_config(None, [*TINY, "trainer.max_steps=3", "data.train_subset=16", "run.name=cb",
                             *_fid(tmp_path, stand_in_weights, "eval.fid.every_n_epochs=1",
                                   "eval.fid.steps=3")])
    run_dir = Path(pretrain(cfg)["run_dir"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    fid = metrics["fid"]
    assert metrics["pretrain"]["steps"] == 3  # the engine's own record is kept beside it
    assert (fid["step"], fid["n"], fid["n_ref"], fid["steps"], fid["sampler"]) == (3, 4, 6, 3, "euler")
    assert fid["fid"] > 0 and fid["weights"] == "ema" and fid["world_size"] == 1
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/fid")]
    assert [int(r["step"]) for r in rows] == [2, 3]  # end of epoch 0, then the last (partial) one
    assert float(rows[-1]["val/fid"]) == pytest.approx(fid["fid"], rel=1e-6)
    assert rows[-1]["val/kid"] != ""


@pytest.mark.parametrize(("extra", "match"), [
    (["method=simclr", "backbone.name=vit_tiny"], "method simclr cannot generate"),
    (["eval.fid.weights=/nonexistent.pt"], "eval.fid.weights"),
    (["eval.fid.n=1"], "eval.fid.n=1"),
    (["eval.fid.sampler=hune"], "did you mean `heun`"),
])
def test_bad_fid_setup_fails_before_the_run_directory_exists(tmp_path, stand_in_weights, extra,
                                                             match):
    with pytest.raises(UserError, match=match):  # at config load (eval.fid.n) or at pretrain
        pretrain(load_config(None, [*TINY, "run.name=bad", *_fid(tmp_path, stand_in_weights),
                                    *extra]))
    assert not (tmp_path / "bad").exists()
