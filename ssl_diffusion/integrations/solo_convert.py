"""solo-learn checkpoint (written through the plugin) -> this project's checkpoint format.

    python -m ssl_diffusion.integrations.solo_convert --ckpt trained_models/ddaepp/<id>/x.ckpt \
        --out runs/solo_ddaepp/last.ckpt [key=value ...]

The plugin keeps the whole method under ``backbone.method.`` and this project's metadata
(method, architecture, config, data info) in the checkpoint, so conversion strips the prefix,
drops solo's heads (online classifier, kNN state, optimiser) and applies ``key=value`` overrides
to the stored config (e.g. ``data.root=/data`` where this project's tools should find the data).
The result loads with the same check as every checkpoint (no missing or unexpected tensors), so
``main_sample.py``, ``main_knn.py``, ``main_linear.py``, ``main_sweep.py`` and ``load_encoder``
work on it; the converter verifies that before it returns. Needs torch only, not solo-learn.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ssl_diffusion.app.checkpoint import read_checkpoint_file
from ssl_diffusion.app.cli import run_cli
from ssl_diffusion.app.loading import load_method
from ssl_diffusion.atomic import atomic_write
from ssl_diffusion.config import config_from_dict, to_dict
from ssl_diffusion.errors import UserError
from ssl_diffusion.integrations.solo_backbone import SOLO_META
from ssl_diffusion.methods.base import META_KEY

METHOD_PREFIX = "backbone.method."  # where the plugin keeps the method inside solo's module


@dataclass
class ConvertedCheckpoint:
    path: Path  # the written checkpoint
    method: str
    tensors: int  # tensors of the method carried over
    dropped: int  # solo-side tensors left behind (online classifier, ...)
    global_step: int


def _config_with(config: dict, overrides: Sequence[str], source: str) -> dict:
    return to_dict(config_from_dict(config, overrides, source=f"the config stored in {source}"))


def convert_solo_checkpoint(src: str | Path, dst: str | Path,
                            overrides: Sequence[str] = ()) -> ConvertedCheckpoint:
    """Write ``dst`` in this project's format from the solo-learn checkpoint ``src``."""
    src, dst = Path(src), Path(dst)
    ckpt = read_checkpoint_file(src)
    meta = dict(ckpt.get(META_KEY) or {})
    solo = meta.pop(SOLO_META, None)
    if solo is None:
        raise UserError(f"{src} was not written by ssl_diffusion's solo-learn plugin (no "
                        f"`{SOLO_META}` metadata); a checkpoint of main_pretrain.py is loaded "
                        f"directly, without conversion")
    state = {k[len(METHOD_PREFIX):]: v for k, v in ckpt["state_dict"].items()
             if k.startswith(METHOD_PREFIX)}
    if not state:
        raise UserError(f"{src} holds no `{METHOD_PREFIX}*` tensors; it is not a checkpoint of "
                        f"the plugin's backbone")
    meta["config"] = _config_with(meta["config"], overrides, str(src))
    meta["converted_from"] = {"path": str(src), "solo": solo}
    out: dict[str, Any] = {"state_dict": state, META_KEY: meta,
                           "global_step": int(ckpt.get("global_step", 0)),
                           "epoch": int(ckpt.get("epoch", 0))}
    dst.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(dst, lambda f: torch.save(out, f))
    load_method(dst)  # the same completeness check every tool applies (raises on a mismatch)
    return ConvertedCheckpoint(dst, meta["method"], len(state),
                               len(ckpt["state_dict"]) - len(state), out["global_step"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="solo-learn checkpoint of a ddae/ddaepp run")
    p.add_argument("--out", required=True, help="where to write it, e.g. runs/solo_ddaepp/last.ckpt")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the stored config")
    args = p.parse_args(argv)
    res = convert_solo_checkpoint(args.ckpt, args.out, args.overrides)
    print(f"wrote {res.path}: method {res.method}, {res.tensors} tensors at step "
          f"{res.global_step} ({res.dropped} solo-side tensors dropped)")
    return 0


if __name__ == "__main__":
    run_cli(main)
