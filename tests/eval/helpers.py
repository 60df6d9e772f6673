"""Tiny trained checkpoints shared by the offline-evaluation tests (trained once per session).

``ddaepp``: DiT-tiny (patch 4) on grey 16 px FakeData; ``simclr``: vit_micro on RGB FakeData.
The stored configs already use kNN k=5 and a 3-epoch probe, so the CLIs need no overrides
(the tiny train split has 36 images).
"""

from __future__ import annotations

import shutil
from pathlib import Path

EVAL = ["trainer.max_steps=2", "eval.online_knn=false", "eval.online_linear=false",
        "eval.knn.k=[3,5]", "eval.knn.report_k=5", "eval.linear.epochs=3",
        "eval.linear.warmup_epochs=0", "eval.linear.batch_size=16"]
EXTRA = {
    "ddaepp": ["model.preset=DiT-tiny", "model.patch_size=4", "diffusion.objective=flow",
               "data.fake_channels=1"],
    "simclr": [],
}
_TRAINED: dict[str, Path] = {}


def trained_checkpoint(method: str, root: Path) -> Path:
    """``last.ckpt`` of a 2-step tiny run of ``method`` (trained on first use, under ``root``)."""
    if method not in _TRAINED:
        from ssl_diffusion.app.pretrain import pretrain
        from tests.conftest import tiny_config

        cfg = tiny_config(root, f"method={method}", f"run.name={method}", *EVAL, *EXTRA[method])
        _TRAINED[method] = Path(pretrain(cfg, None)["run_dir"]) / "last.ckpt"
    return _TRAINED[method]


def copy_run(ckpt: Path, dst: Path) -> Path:
    """A private copy of a run directory (checkpoint, config, metrics); returns its checkpoint."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("last.ckpt", "config.yaml", "metrics.json"):
        if (ckpt.parent / name).exists():
            shutil.copy2(ckpt.parent / name, dst / name)
    return dst / "last.ckpt"
