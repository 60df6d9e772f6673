"""Checkpoint -> method: rebuild a trained method (config and data info are stored inside)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssl_diffusion.app.checkpoint import META_KEY, load_checkpoint_file
from ssl_diffusion.config import Config, config_from_dict
from ssl_diffusion.data.info import DataInfo
from ssl_diffusion.errors import UserError
from ssl_diffusion.methods.base import SSLMethod
from ssl_diffusion.registry import METHODS


@dataclass
class LoadedMethod:
    method: SSLMethod  # in eval mode
    cfg: Config  # the config it was trained with
    info: DataInfo
    ckpt: dict[str, Any]  # the raw checkpoint (weights_only-loaded)
    path: Path


def load_method(path: str | Path, overrides: Sequence[str] = ()) -> LoadedMethod:
    """Rebuild a method from its checkpoint (config and data info are stored inside)."""
    path = Path(path)
    ckpt = load_checkpoint_file(path)
    meta = ckpt[META_KEY]
    cfg = config_from_dict(meta["config"], overrides, source=f"the config stored in {path}")
    info = DataInfo(**meta["data_info"])
    method = METHODS.get(cfg.method)(cfg, info)
    try:
        missing, unexpected = method.load_state_dict(ckpt["state_dict"], strict=False)
    except RuntimeError as exc:  # same names, other shapes (e.g. a model.* override)
        shapes = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
        raise UserError(f"checkpoint {path} does not match {meta.get('method')} as built now "
                        f"({len(shapes)} tensors differ in shape, e.g. "
                        f"{shapes[0] if shapes else str(exc).splitlines()[0]}); drop the model.* "
                        f"overrides") from None
    if unexpected or [k for k in missing if not k.startswith("online_linear")]:
        raise UserError(f"checkpoint {path} does not match {meta.get('method')} as built now "
                        f"(missing {len(missing)}, unexpected {len(unexpected)} tensors)")
    method.eval()
    return LoadedMethod(method, cfg, info, ckpt, path)


__all__ = ["LoadedMethod", "load_method"]
