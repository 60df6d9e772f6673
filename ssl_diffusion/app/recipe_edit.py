"""Write the sweep's chosen feature cell into a recipe YAML without clobbering the rest of it.

``eval.features.{layer, noise, noise_unit}`` is merged into the file: a missing file is created;
an existing one is edited in place as text (its comments, key order and every other key survive),
and the edit is re-parsed and compared with the intended merge before it replaces the file. A
file that is not a YAML mapping, whose ``eval`` / ``eval.features`` is not a mapping, or whose
``method`` differs from the checkpoint's, is refused.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from ssl_diffusion.atomic import atomic_write_text
from ssl_diffusion.errors import UserError


def _flow(value: dict) -> str:
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10**6).strip()


def _end(node: yaml.Node) -> int:
    """Text index just past a node's last character (block mappings: their last leaf)."""
    while isinstance(node, yaml.MappingNode) and not node.flow_style and node.value:
        node = node.value[-1][1]
    while isinstance(node, yaml.SequenceNode) and not node.flow_style and node.value:
        node = node.value[-1]
    return node.end_mark.index


def _child(node: yaml.MappingNode, key: str) -> yaml.Node | None:
    for k, v in node.value:
        if isinstance(k, yaml.ScalarNode) and k.value == key:
            return v
    return None


def _edited(text: str, merged_eval: dict, features: dict) -> str:
    """``text`` with ``eval.features`` (or ``eval``) replaced by the merged values."""
    root = yaml.compose(text)
    suffix = "" if not text or text.endswith("\n") else "\n"
    addition = f"eval:\n  features: {_flow(features)}\n"
    if root is None or _child(root, "eval") is None:
        return text + suffix + addition
    ev = _child(root, "eval")
    if not isinstance(ev, yaml.MappingNode):  # `eval:` with no value
        return text[: ev.start_mark.index] + _flow(merged_eval) + text[_end(ev):]
    feats = _child(ev, "features")
    if feats is not None:
        return text[: feats.start_mark.index] + _flow(features) + text[_end(feats):]
    if ev.flow_style or not ev.value:
        return text[: ev.start_mark.index] + _flow(merged_eval) + text[_end(ev):]
    indent = ev.value[0][0].start_mark.column
    at = _end(ev)
    return text[:at] + "\n" + " " * indent + f"features: {_flow(features)}" + text[at:]


def write_feature_recipe(path: str | Path, values: dict[str, Any], method: str,
                         check_only: bool = False) -> str:
    """Merge ``values`` into ``eval.features`` of the recipe at ``path``; returns what was done
    (``created`` / ``updated``). ``check_only``: only raise the errors a later write would raise
    for this file (so a sweep can refuse a bad path before its work), writing nothing."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"--write-recipe {path} is a directory; pass a .yaml file path")
    if check_only and not path.exists():
        return "checked"
    if not path.exists():
        header = "# eval.features chosen by the layer x noise sweep (main_sweep.py)\n"
        atomic_write_text(path, header + f"eval:\n  features: {_flow(values)}\n")
        return "created"
    try:
        text = path.read_text()
        data = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read recipe {path}: {exc}") from None
    except yaml.YAMLError:
        raise UserError(f"{path} is not valid YAML; refusing to rewrite it — fix it or pass "
                        f"another --write-recipe path") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a mapping of config keys; refusing to rewrite it")
    if data.get("method", method) != method:
        raise UserError(f"{path} is a recipe for method `{data['method']}` but the sweep ran on "
                        f"a `{method}` checkpoint; pass a recipe of the same method")
    ev = data.get("eval")
    if ev is not None and not isinstance(ev, dict):
        raise UserError(f"`eval` in {path} is not a mapping; refusing to overwrite it")
    feats = (ev or {}).get("features")
    if feats is not None and not isinstance(feats, dict):
        raise UserError(f"`eval.features` in {path} is not a mapping; refusing to overwrite it")
    if check_only:
        return "checked"
    expected = copy.deepcopy(data)
    merged_eval = expected["eval"] = dict(ev or {})
    merged_feats = merged_eval["features"] = {**(feats or {}), **values}
    new_text = _edited(text, merged_eval, merged_feats)
    try:
        ok = yaml.safe_load(new_text) == expected
    except yaml.YAMLError:
        ok = False
    if not ok:
        raise UserError(f"cannot update eval.features in {path} without disturbing its layout; "
                        f"set eval.features: {_flow(values)} by hand")
    atomic_write_text(path, new_text)
    return "updated"


__all__ = ["write_feature_recipe"]
