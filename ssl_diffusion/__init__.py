"""ssl_diffusion: diffusion models as first-class self-supervised learners (DDAE++)."""

__version__ = "0.1.0"
