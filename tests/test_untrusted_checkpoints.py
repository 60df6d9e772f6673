"""Checkpoints from elsewhere: a file carrying pickled Python objects is refused before any of
its code can run, and a checkpoint of another method or architecture is refused with a message
naming both; in every case the file is left byte for byte (and mtime) as it was.

The refusals are checked where users meet them: ``load_checkpoint_file`` / ``load_method`` (the
evaluation CLIs) and ``main_pretrain`` resuming from a ``last.ckpt`` in its run directory.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from ssl_diffusion.app.checkpoint import META_KEY, load_checkpoint_file
from ssl_diffusion.app.loading import load_method
from ssl_diffusion.app.pretrain import pretrain
from ssl_diffusion.errors import UserError
from tests.conftest import TINY, tiny_config


class RunsCodeWhenUnpickled:
    """Unpickling this calls ``os.makedirs(marker)``: a stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (str(self.marker),)


@dataclass
class CustomObject:
    note: str = "any class outside torch's allow-list"


def _payloads(marker: Path) -> dict:
    return {
        "code": RunsCodeWhenUnpickled(marker),
        "instance": CustomObject(),
        "function": os.getcwd,
    }


PAYLOADS = ["code", "instance", "function"]


def _poisoned(src: Path, dst: Path, payload: object) -> Path:
    """A genuine checkpoint with one extra entry holding ``payload``, saved with torch.save."""
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"] = {"extra": payload}
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, dst)
    return dst


def _stamp(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def _one_line_user_error(result) -> str:
    code, out, err = result
    assert code == 2, (code, out, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture
def recipe(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text("method: simclr\ntrainer: {max_steps: 3}\n")
    return path


# --------------------------------------------------------------------------- pickled payloads


@pytest.mark.parametrize("kind", PAYLOADS)
def test_pickled_payload_is_refused_by_the_loaders(trained_run, tmp_path, kind):
    marker = tmp_path / "code_ran"
    src = Path(trained_run("simclr")["run_dir"]) / "last.ckpt"
    bad = _poisoned(src, tmp_path / "bad.ckpt", _payloads(marker)[kind])
    before = _stamp(bad)
    for load in (load_checkpoint_file, load_method):
        with pytest.raises(UserError) as exc:
            load(bad)
        message = str(exc.value)
        assert "\n" not in message
        assert message.startswith(f"refusing to load {bad}") and "unsafe" in message
    assert not marker.exists(), "the payload's code ran"
    assert _stamp(bad) == before


@pytest.mark.parametrize("kind", PAYLOADS)
def test_pickled_payload_is_refused_on_resume(cli, trained_run, tmp_path, recipe, kind):
    marker = tmp_path / "code_ran"
    run_dir = tmp_path / "runs" / "r"
    src = Path(trained_run("simclr")["run_dir"]) / "last.ckpt"
    bad = _poisoned(src, run_dir / "last.ckpt", _payloads(marker)[kind])
    before = _stamp(bad)
    line = _one_line_user_error(
        cli("--config", str(recipe), *TINY, f"run.root={tmp_path / 'runs'}", "run.name=r")
    )
    assert line.startswith(f"error: refusing to load {bad}") and "unsafe" in line
    assert not marker.exists(), "the payload's code ran"
    assert _stamp(bad) == before
    # refused before the run directory is prepared: not even config.yaml is written
    assert sorted(p.name for p in run_dir.iterdir()) == ["last.ckpt"]


# --------------------------------------------------------------------------- foreign checkpoints

DIT = ["model.arch=dit", "model.preset=DiT-tiny", "model.patch_size=4"]
UNET = ["model.arch=unet", "model.preset=UNet-tiny", "model.patch_size=null"]
DIFFUSION = ["diffusion.objective=flow", "eval.online_knn=false", "eval.online_linear=false"]


@pytest.fixture(scope="module")
def ddae_dit_ckpt(tmp_path_factory) -> Path:
    """last.ckpt of a 1-step ddae DiT-tiny run."""
    root = tmp_path_factory.mktemp("ddae_dit")
    cfg = tiny_config(root, "method=ddae", *DIT, *DIFFUSION, "trainer.max_steps=1")
    return Path(pretrain(cfg, None)["run_dir"]) / "last.ckpt"


def _resume_into(cli, tmp_path: Path, foreign: Path, *overrides: str) -> tuple[str, Path]:
    """Place ``foreign`` as last.ckpt of a fresh run directory and run that run's command."""
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    target = run_dir / "last.ckpt"
    shutil.copy2(foreign, target)
    before = _stamp(target)
    recipe = tmp_path / "run.yaml"
    recipe.write_text("trainer: {max_steps: 3}\n")
    line = _one_line_user_error(cli("--config", str(recipe), *TINY, *overrides,
                                    f"run.root={tmp_path / 'runs'}", "run.name=r"))
    assert _stamp(target) == before, "the foreign checkpoint must not be touched"
    assert not (run_dir / "metrics.json").exists()
    return line, target


def test_checkpoint_of_another_method_is_refused(cli, trained_run, tmp_path):
    src = Path(trained_run("simclr")["run_dir"]) / "last.ckpt"
    before = _stamp(src)
    line, target = _resume_into(cli, tmp_path, src, "method=ddaepp", *DIT, *DIFFUSION)
    assert line == (
        f"error: checkpoint {target} is from method `simclr` (vit_micro), but this run is "
        f"method `ddaepp` (dit:DiT-tiny); use a checkpoint of the same method/architecture or "
        f"another run.name"
    )
    assert _stamp(src) == before


def test_checkpoint_of_another_architecture_is_refused(cli, ddae_dit_ckpt, tmp_path):
    assert load_checkpoint_file(ddae_dit_ckpt)[META_KEY]["arch"] == "dit:DiT-tiny"
    before = _stamp(ddae_dit_ckpt)
    line, target = _resume_into(cli, tmp_path, ddae_dit_ckpt, "method=ddae", *UNET, *DIFFUSION)
    assert f"checkpoint {target} is from method `ddae` (dit:DiT-tiny)" in line
    assert "but this run is method `ddae` (unet:UNet-tiny)" in line
    assert _stamp(ddae_dit_ckpt) == before
