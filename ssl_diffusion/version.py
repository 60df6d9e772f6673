"""The package version (stored in checkpoints and reports); a leaf module importable by every layer."""

__version__ = "0.1.0"
