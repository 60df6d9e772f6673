"""ssl_diffusion: diffusion models as first-class self-supervised learners (DDAE++).

The package root is a facade: ``ssl_diffusion.load_encoder`` (a checkpoint as a frozen feature
extractor) and ``__version__``. Layers and where each concept lives: docs/architecture.md.
"""

from typing import Any

from ssl_diffusion.version import __version__


def __getattr__(name: str) -> Any:
    # Lazy on purpose: `import ssl_diffusion` stays torch-free (configs, --dry-run); the
    # orchestration layer (and torch) load on first use of load_encoder.
    if name == "load_encoder":
        from ssl_diffusion.app.encoder import load_encoder

        return load_encoder
    raise AttributeError(f"module 'ssl_diffusion' has no attribute {name!r}")


__all__ = ["__version__", "load_encoder"]
