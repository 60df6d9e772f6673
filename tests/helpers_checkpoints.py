"""Comparing two checkpoints tensor by tensor (resume and fault-injection tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ssl_diffusion.app.checkpoint import load_checkpoint_file


def flat_tensors(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in a nested checkpoint entry (dicts, lists, tuples), keyed by its path."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else []
    out: dict[str, torch.Tensor] = {}
    for k, v in items:
        out.update(flat_tensors(v, f"{prefix}/{k}"))
    return out


def assert_same_checkpoints(a: Path, b: Path, steps: int,
                            entries: tuple[str, ...] = ("state_dict", "optimizer_states"),
                            context: str = "") -> tuple[dict, dict]:
    """Both checkpoints are at ``steps`` and every tensor of ``entries`` is bit-equal; returns
    the two loaded checkpoints for further checks."""
    ca, cb = load_checkpoint_file(a), load_checkpoint_file(b)
    assert ca["global_step"] == cb["global_step"] == steps
    for entry in entries:
        ta, tb = flat_tensors(ca[entry]), flat_tensors(cb[entry])
        assert ta.keys() == tb.keys()
        differ = [k for k in ta if not torch.equal(ta[k], tb[k])]
        assert not differ, f"{entry}: {len(differ)}/{len(ta)} tensors differ, e.g. {differ[:5]}{context}"
    return ca, cb
