"""Simulates a node without some packages; imported at interpreter start as ``sitecustomize``.

Active only when ``SSL_DIFFUSION_ABSENT_PACKAGES`` names top-level packages (comma-separated); the
node simulation test puts this folder first on ``PYTHONPATH`` of its subprocess. Each named package
then looks uninstalled, as on a machine that never had it: ``import`` raises
``ModuleNotFoundError``, ``importlib.util.find_spec`` returns None and ``importlib.metadata`` finds
no distribution of that name. Every attempt is logged to ``SSL_DIFFUSION_ABSENT_LOG`` (one line
per refused import), so the test can show the guard was active and what was asked for.
"""

from __future__ import annotations

import importlib.abc
import importlib.metadata
import os
import re
import sys

_ABSENT = {n.strip() for n in os.environ.get("SSL_DIFFUSION_ABSENT_PACKAGES", "").split(",")
           if n.strip()}
_LOG = os.environ.get("SSL_DIFFUSION_ABSENT_LOG")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


# distribution names (importlib.metadata) of the absent packages, e.g. faiss -> faiss-cpu
_ABSENT_DISTS = {_norm(n) + suffix for n in _ABSENT for suffix in ("", "_cpu", "_gpu")}


def _log(line: str) -> None:
    if _LOG:
        with open(_LOG, "a") as f:
            f.write(line + "\n")


class _Hide(importlib.abc.MetaPathFinder):
    """First on ``sys.meta_path``: claims the absent names and finds nothing for them, so no
    later finder is asked (that is what makes them look uninstalled)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in _ABSENT:
            _log(f"refused import {fullname}")
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)


def _install() -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec

    def find_spec(name, package=None):
        if name.split(".")[0] in _ABSENT:
            _log(f"find_spec {name} -> None")
            return None
        return real_find_spec(name, package)

    importlib.util.find_spec = find_spec
    sys.meta_path.insert(0, _Hide())
    discover = importlib.metadata.Distribution.discover.__func__

    @classmethod
    def discover_present(cls, **kwargs):
        return (d for d in discover(cls, **kwargs)
                if _norm(d.metadata["Name"] or "") not in _ABSENT_DISTS)

    importlib.metadata.Distribution.discover = discover_present
    _log(f"loaded pid {os.getpid()} absent {sorted(_ABSENT)}")


if _ABSENT:
    _install()
