"""Helpers of the solo-learn plugin tests: where the solo-learn snapshot is, and solo's scripts
run in a subprocess on CPU (the synthetic PNG folder is ``tests.helpers_imagefolder``'s)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "solo"


def solo_snapshot() -> Path | None:
    """``<shared>/vendor/solo-learn``: ``$SSL_DIFFUSION_SHARED`` or the checkout's ``../shared``."""
    shared = Path(os.environ.get("SSL_DIFFUSION_SHARED", ROOT.parent / "shared"))
    path = shared / "vendor" / "solo-learn"
    return path if (path / "main_pretrain.py").is_file() else None


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
