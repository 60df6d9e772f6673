"""ssl_diffusion: diffusion models as first-class self-supervised learners (DDAE++)."""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy: `import ssl_diffusion` stays torch-free (configs, --dry-run); torch loads on use.
    if name == "load_encoder":
        from ssl_diffusion.encoder import load_encoder

        return load_encoder
    raise AttributeError(f"module 'ssl_diffusion' has no attribute {name!r}")
