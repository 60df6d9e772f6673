"""Registries: decorator registration, helpful lookup errors, and entry-point plugins."""

from __future__ import annotations

import importlib
import sys
import types
import uuid

import pytest

from ssl_diffusion.errors import UserError
from ssl_diffusion.registry import BACKBONES, DATASETS, METHODS, Registry


def test_decorator_registers_and_returns_the_object():
    reg = Registry("widget")

    @reg.register("round")
    class Round:
        pass

    assert reg.get("round") is Round
    assert "round" in reg and "square" not in reg
    assert reg.names() == ["round"] and list(reg) == ["round"]
    reg.register("round")(Round)  # registering the same object again is harmless


def test_duplicate_name_is_refused():
    reg = Registry("widget")
    reg.register("round")(object())
    with pytest.raises(ValueError, match="`round` is already registered"):
        reg.register("round")(object())


def test_lookup_error_lists_names_and_suggests():
    reg = Registry("widget")
    for name in ("alpha", "beta", "gamma"):
        reg.register(name)(object())
    with pytest.raises(UserError) as exc:
        reg.get("betta")
    assert (
        str(exc.value)
        == "unknown widget `betta`; available: alpha, beta, gamma — did you mean `beta`?"
    )
    with pytest.raises(UserError) as exc:
        reg.get("zzz")
    assert "did you mean" not in str(exc.value) and "available: alpha, beta, gamma" in str(
        exc.value
    )


def test_builtin_registries():
    assert {"simclr", "dino"} <= set(METHODS.names())
    assert {"resnet18", "resnet50", "vit_micro", "vit_tiny", "vit_small"} <= set(BACKBONES.names())
    assert {"digits", "fake", "cifar10", "imagefolder"} <= set(DATASETS.names())
    with pytest.raises(UserError, match=r"unknown backbone `resnet19`.*did you mean `resnet18`"):
        BACKBONES.get("resnet19")


def _fake_distribution(root, group: str, entry: str, module: str, source: str) -> None:
    """A minimal installed distribution: <name>.dist-info/{METADATA,entry_points.txt} + module."""
    dist = root / f"{module}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{group}]\n{entry} = {module}\n")
    (root / f"{module}.py").write_text(source)


@pytest.fixture
def plugin_target(monkeypatch):
    """A module the plugin can import to reach the fresh registry under test."""
    name = f"_registry_target_{uuid.uuid4().hex[:8]}"
    target = types.ModuleType(name)
    monkeypatch.setitem(sys.modules, name, target)
    return target


def test_entry_point_plugin_is_found(tmp_path, monkeypatch, plugin_target):
    module = f"toy_plugin_{uuid.uuid4().hex[:8]}"
    source = (
        f"from {plugin_target.__name__} import REG\n"
        "@REG.register('toy')\n"
        "class ToyMethod:\n"
        "    pass\n"
    )
    _fake_distribution(tmp_path, "ssl_diffusion.methods", "toy", module, source)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    reg = Registry("method", entry_point_group="ssl_diffusion.methods")
    plugin_target.REG = reg
    reg.register("builtin")(object())
    assert reg.names() == ["builtin", "toy"]
    assert reg.get("toy").__name__ == "ToyMethod"
    assert module in sys.modules
    sys.modules.pop(module, None)


def test_broken_plugin_names_the_entry_point(tmp_path, monkeypatch):
    module = f"broken_plugin_{uuid.uuid4().hex[:8]}"
    _fake_distribution(
        tmp_path,
        "ssl_diffusion_test.methods",
        "broken",
        module,
        "raise ImportError('needs torch 9')\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    reg = Registry("method", entry_point_group="ssl_diffusion_test.methods")
    assert reg.names() == ["broken"]  # names come from metadata, without importing the plugin
    with pytest.raises(UserError) as exc:
        reg.get("broken")
    message = str(exc.value)
    assert "`broken`" in message and module in message and "needs torch 9" in message


@pytest.mark.parametrize("registry", [METHODS, BACKBONES, DATASETS], ids=lambda r: r.kind)
def test_declared_builtin_names_are_exactly_what_their_modules_register(registry):
    for name in registry._builtins:
        assert registry.get(name) is not None
    assert set(registry._items) == set(registry._builtins)
