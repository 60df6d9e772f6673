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
    """A named collection of builders with helpful lookup errors."""

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind  # e.g. "method"; used in error messages
        self.entry_point_group = entry_point_group
        self._items: dict[str, Any] = {}
        self._builtins_loaded = False
        self._builtin_modules: list[str] = []

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@METHODS.register("simclr") class SimCLR(...)``."""

        def decorator(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} `{name}` is already registered by {self._items[name]}")
            self._items[name] = obj
            return obj

        return decorator

    def add_builtin_modules(self, *modules: str) -> None:
        """Modules imported on first lookup; their import registers the built-in entries."""
        self._builtin_modules.extend(modules)

    def _load(self) -> None:
        if self._builtins_loaded:
            return
        self._builtins_loaded = True
        for module in self._builtin_modules:
            importlib.import_module(module)
        if self.entry_point_group:
            for ep in importlib.metadata.entry_points(group=self.entry_point_group):
                try:
                    ep.load()
                except Exception as exc:  # a broken plugin must not hide the built-ins
                    raise UserError(
                        f"could not load {self.kind} plugin `{ep.name}` ({ep.value}) from entry "
                        f"point group `{self.entry_point_group}`: {exc}"
                    ) from exc

    def get(self, name: str) -> Any:
        self._load()
        if name not in self._items:
            raise UserError(
                f"unknown {self.kind} `{name}`; available: {', '.join(self.names())}"
                f"{did_you_mean(name, self._items)}"
            )
        return self._items[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


METHODS = Registry("method", entry_point_group="ssl_diffusion.methods")
BACKBONES = Registry("backbone", entry_point_group="ssl_diffusion.backbones")
DATASETS = Registry("dataset", entry_point_group="ssl_diffusion.datasets")

METHODS.add_builtin_modules(
    "ssl_diffusion.methods.simclr", "ssl_diffusion.methods.dino", "ssl_diffusion.methods.ddae"
)
BACKBONES.add_builtin_modules("ssl_diffusion.backbones")
DATASETS.add_builtin_modules("ssl_diffusion.data.datasets", "ssl_diffusion.data.latents")
