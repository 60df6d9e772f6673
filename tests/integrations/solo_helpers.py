"""Helpers of the solo-learn plugin tests: where the solo-learn snapshot is, a synthetic PNG
folder, and solo's scripts run in a subprocess on CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "solo"


def solo_snapshot() -> Path | None:
    """``<shared>/vendor/solo-learn``: ``$SSL_DIFFUSION_SHARED`` or the checkout's ``../shared``."""
    shared = Path(os.environ.get("SSL_DIFFUSION_SHARED", ROOT.parent / "shared"))
    path = shared / "vendor" / "solo-learn"
    return path if (path / "main_pretrain.py").is_file() else None


def make_png_folder(root: Path, classes: int = 5, train_per_class: int = 8, val_per_class: int = 3,
                    size: int = 16, seed: int = 0) -> Path:
    """root/train/<class>/*.png and root/val/<class>/*.png: class k is a bright square at a
    class-specific place and colour on a noisy background, so neighbours of the same class are
    the nearest ones (a kNN has something to find)."""
    rng = np.random.default_rng(seed)
    half = size // 2
    corners = [(0, 0), (0, half), (half, 0), (half, half), (half // 2, half // 2)]
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for k in range(classes):
            folder = root / split / f"class{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 60, size=(size, size, 3)).astype(np.uint8)  # (H, W, 3)
                r, c = corners[k % len(corners)]
                colour = np.array([255 * (k % 2), 255 * ((k // 2) % 2), 200], dtype=np.uint8)
                img[r:r + half, c:c + half] = colour
                Image.fromarray(img).save(folder / f"{i}.png")
    return root


def run_solo(script: str, config: str, cwd: Path, *overrides: str, timeout: int = 1200) -> str:
    """Run solo-learn's ``script`` (main_pretrain.py / main_linear.py) with a config of
    configs/solo on CPU in ``cwd``; returns its output, fails with it on a non-zero exit.
    The timeout only catches a hang: each run needs ~10 s of CPU, but minutes of wall time on a
    heavily shared machine."""
    snapshot = solo_snapshot()
    assert snapshot is not None
    cmd = [sys.executable, str(snapshot / script), "--config-path", str(CONFIGS),
           "--config-name", config, "accelerator=cpu", "++strategy=auto", "devices='1'",
           "precision=32", "data.num_workers=0", *overrides]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, check=False, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{script} failed ({proc.returncode}):\n{out[-4000:]}"
    return out
