"""Model tests run single-threaded: tiny tensors gain nothing from threads, and on a shared
2-core machine intra-op thread spinning made single forwards up to ~100x slower."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
