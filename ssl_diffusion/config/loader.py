"""Recipes -> typed config: YAML composition, ``key=value`` overrides, strict validation.

Order of precedence (later wins): dataclass defaults < ``defaults:`` fragments (in list order,
each resolved recursively) < the recipe body < command-line ``key=value`` overrides.

Every key is checked against the typed schema (``ssl_diffusion.config.root``): an unknown or mistyped
key is a ``UserError`` naming the key, the file it came from and the closest valid key, e.g.
``unknown key `optim.lrr` in recipes/x.yaml — did you mean `optim.lr`?``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from ssl_diffusion.config.root import Config, root_schema
from ssl_diffusion.errors import UserError, did_you_mean

CONFIGS_DIRNAME = "configs"  # fragments that recipes pull in with `defaults:`


# --------------------------------------------------------------------------- schema helpers


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _resolved_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def valid_keys(cls: type, prefix: str = "") -> list[str]:
    """All dotted leaf and section keys of a dataclass schema (for did-you-mean)."""
    keys = []
    for name, tp in _resolved_hints(cls).items():
        key = f"{prefix}{name}"
        keys.append(key)
        if dataclasses.is_dataclass(tp):
            keys.extend(valid_keys(tp, key + "."))
    return keys


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted (int -> float only)."""

    def fail(extra: str = "") -> UserError:
        return UserError(
            f"wrong type for `{key}` in {source}: expected {_type_name(tp)}, got "
            f"{_describe(value)}{extra}"
        )

    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise fail()
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key, source)
            except UserError as exc:
                errors.append(exc)
        raise errors[0] if len(errors) == 1 else fail()
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices and type(value) is type(choices[choices.index(value)]):
            return value
        raise UserError(
            f"invalid value {value!r} for `{key}` in {source}: choose one of "
            f"{', '.join(repr(c) for c in choices)}{did_you_mean(str(value), map(str, choices))}"
        )
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise fail()
        return [coerce(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail(" (use true or false)")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail()
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # PyYAML reads `3e-4` (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise fail()
        if not math.isfinite(number):  # .nan / .inf would surface later under another key
            raise UserError(f"invalid value {value!r} for `{key}` in {source}: must be a finite "
                            f"number")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. a layer name given as `4`
        raise fail()
    if tp is Any:
        return value
    raise TypeError(f"unsupported config annotation {tp!r} for `{key}`")


def check_mapping(data: Any, cls: type, source: str, prefix: str = "", root: type | None = None) -> dict:
    """Validate a (partial) nested dict against dataclass ``cls``; return it with coerced values."""
    root = root or cls
    if not isinstance(data, dict):
        where = f"`{prefix[:-1]}`" if prefix else "the top level"
        raise UserError(f"{where} in {source} must be a mapping of keys, got {_describe(data)}")
    hints = _resolved_hints(cls)
    out = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in hints:
            raise UserError(
                f"unknown key `{key}` in {source}{did_you_mean(key, valid_keys(root))}"
            )
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            out[name] = check_mapping(value, tp, source, key + ".", root)
        else:
            out[name] = coerce(value, tp, key, source)
    return out


def build(cls: type, data: dict) -> Any:
    """Instantiate dataclass ``cls`` from a validated nested dict (missing keys = defaults)."""
    hints = _resolved_hints(cls)
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        kwargs[name] = build(tp, value) if dataclasses.is_dataclass(tp) else value
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    """A config (or one section) as a plain nested dict."""
    return dataclasses.asdict(cfg)


def deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"cannot set `{key}`: `{part}` is not a section")
    node[parts[-1]] = value


def get_dotted(cfg: Any, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


# --------------------------------------------------------------------------- YAML loading


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one
    silently, so a second `trainer:` section would replace the first as a whole)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the base class reports it
                break
            if duplicate:
                first = seen[key]
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key `{key}` (first given on line {first.line + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def load_yaml_text(text: str, source: str) -> Any:
    """Parse YAML (safe, duplicate keys refused); errors are one line naming ``source``."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: safe
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        kind = "" if "duplicate key" in problem else "YAML syntax error in "
        prefix = f"{kind}{source}" if kind else f"{source}"
        raise UserError(f"{prefix}{where}: {problem}") from None


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"recipe file not found: {path} (check the path passed to --config)")
    try:
        data = load_yaml_text(path.read_text(), _display(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read recipe {_display(path)}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{_display(path)} must contain a mapping of keys, got {_describe(data)}")
    return data


def _find_fragment(entry: str, recipe: Path) -> Path:
    """Resolve a `defaults:` entry: next to the recipe, then in the nearest `configs/` above."""
    name = entry if entry.endswith((".yaml", ".yml")) else entry + ".yaml"
    candidates = [recipe.parent / name]
    for parent in recipe.resolve().parents:
        candidates.append(parent / CONFIGS_DIRNAME / name)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise UserError(
        f"`defaults:` entry `{entry}` in {_display(recipe)} not found; looked in "
        f"{_display(recipe.parent)} and every `{CONFIGS_DIRNAME}/` folder above it"
    )


def compose(path: Path, schema: type, _stack: tuple[Path, ...] = (),
            _done: dict[Path, dict] | None = None) -> dict:
    """Load a recipe/fragment with its `defaults:` chain; every file is validated on its own.

    Each file is read and resolved once per call (``_done``): fragments shared by several
    branches of the `defaults:` graph cost one expansion, not one per path to them.
    """
    path = Path(path)
    resolved = path.resolve()
    if resolved in _stack:
        chain = " -> ".join(_display(p) for p in (*_stack, resolved))
        raise UserError(f"`defaults:` cycle: {chain}")
    _done = {} if _done is None else _done
    if resolved in _done:
        return _done[resolved]
    data = read_yaml(path)
    defaults = data.pop("defaults", [])
    if isinstance(defaults, str):
        defaults = [defaults]
    if not isinstance(defaults, list) or not all(isinstance(d, str) for d in defaults):
        raise UserError(f"`defaults` in {_display(path)} must be a list of fragment names")
    merged: dict = {}
    for entry in defaults:
        fragment = _find_fragment(entry, path)
        merged = deep_merge(merged, compose(fragment, schema, (*_stack, resolved), _done))
    body = check_mapping(data, schema, _display(path))
    _done[resolved] = deep_merge(merged, body)
    return _done[resolved]


def parse_override(text: str, schema: type) -> dict:
    """``key=value`` (value parsed as YAML) -> a checked nested mapping ``{section: {key: v}}``."""
    if "=" not in text or text.startswith("="):
        raise UserError(
            f"bad override `{text}`: expected key=value with a dotted key, e.g. optim.lr=3e-4"
        )
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    nested: dict = {}
    set_dotted(nested, key, value)
    return check_mapping(nested, schema, "the command line")


def apply_overrides(data: dict, overrides: Sequence[str], schema: type) -> dict:
    """Merge command-line ``key=value`` overrides (in order, later wins) into a config mapping."""
    for text in overrides:
        data = deep_merge(data, parse_override(text, schema))
    return data


def config_from_dict(data: dict, overrides: Sequence[str] = (), schema: type | None = None,
                     source: str = "the config") -> Config:
    """A checked, validated config from a nested mapping (e.g. the one stored in a checkpoint)."""
    schema = schema or root_schema()
    data = apply_overrides(check_mapping(data, schema, source), overrides, schema)
    cfg = build(schema, data)
    cfg.validate()
    return cfg


def load_config(recipe: str | Path | None, overrides: Sequence[str] = (),
                schema: type | None = None) -> Config:
    """Resolve a recipe and overrides into a validated config (``Config`` or a plugin subclass)."""
    schema = schema or root_schema()
    data = compose(Path(recipe), schema) if recipe is not None else {}
    return config_from_dict(data, overrides, schema, "the recipe")


class _Dumper(yaml.SafeDumper):
    """Block-style sections with short lists kept inline: `k: [10, 20, 100, 200]`."""


_Dumper.add_representer(
    list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True)
)


def dump_config(cfg: Config) -> str:
    return yaml.dump(to_dict(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=False)
