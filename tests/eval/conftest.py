"""Fixtures of the offline-evaluation tests: tiny trained checkpoints, loaded once."""

from __future__ import annotations

import pytest

from tests.eval.helpers import copy_run, trained_checkpoint


@pytest.fixture(scope="session")
def trained_ckpt(tmp_path_factory):
    """``trained_ckpt("ddaepp")`` -> the session's shared checkpoint (do not write beside it)."""
    return lambda method: trained_checkpoint(method, tmp_path_factory.getbasetemp() / "eval_runs")


@pytest.fixture
def run_copy(trained_ckpt, tmp_path):
    """``run_copy("simclr")`` -> a checkpoint in a private run directory (safe to write into)."""
    return lambda method: copy_run(trained_ckpt(method), tmp_path / method)


_LOADED: dict = {}


@pytest.fixture(scope="session")
def loaded(trained_ckpt):
    """``loaded("ddaepp")`` -> the session's LoadedMethod (read-only use)."""
    from ssl_diffusion.app.loading import load_method

    def get(method: str):
        if method not in _LOADED:
            _LOADED[method] = load_method(trained_ckpt(method))
        return _LOADED[method]

    return get
