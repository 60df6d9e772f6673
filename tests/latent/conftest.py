"""Latent-path tests need diffusers (the optional extra [latent]); they skip cleanly without it.

(Single-threaded torch comes from the session-wide fixture in tests/conftest.py.)"""

from __future__ import annotations

import pytest

pytest.importorskip("diffusers")
