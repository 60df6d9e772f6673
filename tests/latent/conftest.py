"""Latent-path tests need diffusers (the optional extra [latent]); they skip cleanly without it."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")


@pytest.fixture(autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
