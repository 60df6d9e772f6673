"""``FeatureSpec``: which features of a method an evaluator asks for (a method resolves it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FeatureSpec:
    """Which features: a diffusion tap (layer, sigma, weights) or the method's own encoder."""

    layer: str | None  # tapped layer; None = the method's encoder output (SimCLR / DINO)
    sigma: float | None  # VE noise level of the tap; None when noise does not apply
    use_ema: bool | None  # EMA (True) or raw (False) weights; None when not applicable

    @property
    def tag(self) -> str:
        """Short readable name used in cache file names."""
        if self.layer is None:
            return "encoder"
        return f"{self.layer}-sigma{self.sigma:.4g}-{'ema' if self.use_ema else 'raw'}"
