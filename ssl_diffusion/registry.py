"""Name -> builder registries for methods, backbones, datasets and denoisers.

A third-party package adds a method without editing ours by exposing an entry point in the
``ssl_diffusion.methods`` group (``[project.entry-points."ssl_diffusion.methods"]`` in its
pyproject): the entry point names a module or object whose import registers the method with
``@METHODS.register("name")``. Entry points are loaded lazily, the first time a registry is read.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from ssl_diffusion.errors import UserError, did_you_mean

T = TypeVar("T")


class Registry:
    """A named collection of builders with helpful lookup errors.

    Built-in entries are declared by name with the module that registers them
    (``add_builtin``), so names can be listed and checked without importing anything (config
    loading and ``--dry-run`` stay torch-free); a module is imported the first time one of its
    names is looked up. Plugins come from entry points: their names are known from the package
    metadata, and their modules load on lookup or ``load_plugins()``.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind  # e.g. "method"; used in error messages
        self.entry_point_group = entry_point_group
        self._items: dict[str, Any] = {}
        self._builtins: dict[str, str] = {}  # name -> module whose import registers it
        self._plugins_loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@METHODS.register("simclr") class SimCLR(...)``."""

        def decorator(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} `{name}` is already registered by {self._items[name]}")
            self._items[name] = obj
            return obj

        return decorator

    def add_builtin(self, module: str, *names: str) -> None:
        """Declare built-in ``names`` registered by importing ``module`` (imported on lookup)."""
        for name in names:
            self._builtins[name] = module

    def _entry_points(self) -> list[importlib.metadata.EntryPoint]:
        if not self.entry_point_group:
            return []
        return list(importlib.metadata.entry_points(group=self.entry_point_group))

    def load_plugins(self) -> None:
        """Import every entry-point plugin of this registry (once)."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in self._entry_points():
            try:
                ep.load()
            except Exception as exc:  # a broken plugin must not hide the built-ins
                raise UserError(
                    f"could not load {self.kind} plugin `{ep.name}` ({ep.value}) from entry "
                    f"point group `{self.entry_point_group}`: {exc}"
                ) from exc

    def names(self) -> list[str]:
        """Every known name (built-in, registered, entry point) without importing anything."""
        return sorted({*self._builtins, *self._items, *(ep.name for ep in self._entry_points())})

    def check_name(self, name: str) -> None:
        """Raise the one-line error for an unknown name (torch-free)."""
        known = self.names()
        if name not in known:
            raise UserError(
                f"unknown {self.kind} `{name}`; available: {', '.join(known)}"
                f"{did_you_mean(name, known)}"
            )

    def get(self, name: str) -> Any:
        if name not in self._items and name in self._builtins:
            importlib.import_module(self._builtins[name])
        if name not in self._items:
            self.load_plugins()
        if name not in self._items:
            self.check_name(name)  # unknown: the one-line error
            raise UserError(f"{self.kind} `{name}` is declared but its module did not register it")
        return self._items[name]

    def __contains__(self, name: str) -> bool:
        return name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


METHODS = Registry("method", entry_point_group="ssl_diffusion.methods")
BACKBONES = Registry("backbone", entry_point_group="ssl_diffusion.methods.backbones")
DATASETS = Registry("dataset", entry_point_group="ssl_diffusion.datasets")

METHODS.add_builtin("ssl_diffusion.methods.simclr", "simclr")
METHODS.add_builtin("ssl_diffusion.methods.dino", "dino")
METHODS.add_builtin("ssl_diffusion.methods.ddae", "ddae", "ddaepp")
BACKBONES.add_builtin("ssl_diffusion.methods.backbones", "resnet18", "resnet50", "vit_tiny",
                      "vit_small", "vit_micro")
DATASETS.add_builtin("ssl_diffusion.data.datasets", "fashion_mnist", "mnist", "cifar10",
                     "cifar100", "stl10", "digits", "fake", "imagefolder")
DATASETS.add_builtin("ssl_diffusion.data.latents", "latents")
