"""Multi-process training (Lightning DDP, CPU, gloo).

Fast tests spawn 2 gloo processes to check the collectives against single-process references:
the gather of unequal eval shards, and the contrastive losses with negatives gathered from every
rank (value and DDP-averaged gradients equal to one process on the concatenated batch).

Slow tests run ``main_pretrain.py`` with ``trainer.strategy=ddp trainer.devices=2`` as a
subprocess (2 processes x 1 thread) and check the run directory, the global-batch accounting
and that the online kNN / linear numbers computed under DDP equal a single-process evaluation
of the same checkpoint on the same bank and val images.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import Dataset

from ssl_diffusion.data.module import PAD_LABEL, EvalShard
from tests.conftest import ROOT, TINY, run_script, subprocess_env

WORLD = 2


# --------------------------------------------------------------------------- process harness


def _worker(rank: int, init_file: str, fn: str | Callable[[int], Any], out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    try:
        result = (globals()[fn] if isinstance(fn, str) else fn)(rank)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_on_ranks(fn: str | Callable[[int], Any], tmp_path: Path) -> list:
    """Run ``fn(rank)`` (a callable, or the name of a function of this module) on 2 gloo
    processes; their return values by rank (tensors, lists, dicts: ``weights_only`` types).

    Forked, not spawned: a spawned child re-imports Lightning and the test modules (~10 s on
    a loaded 2-core machine), a forked one starts at once (and ``fn`` need not be picklable).
    """
    mp.start_processes(_worker, args=(str(tmp_path / "pg_init"), fn, str(tmp_path)),
                       nprocs=WORLD, join=True, start_method="fork")
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


# --------------------------------------------------------------------------- eval shards


class _Numbers(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[int, int]:
        return 100 + i, i % 7


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("n", [0, 1, 2, 5, 8, 23])
def test_eval_shards_are_equal_length_and_restore_the_dataset(n, world):
    base = _Numbers(n)
    shards = [EvalShard(base, r, world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1  # every rank runs the same number of batches
    assert sum(len(s) for s in shards) - n < world  # at most world - 1 padding rows
    rows = [s[i] for s in shards for i in range(len(s))]
    kept = [row for row in rows if row[1] != PAD_LABEL]
    assert kept == [base[i] for i in range(n)]


def _gather_case(rank: int) -> dict:
    from ssl_diffusion.methods.base import gather_rows

    n = 3 if rank == 0 else 1  # unequal shards
    x = torch.arange(n * 2, dtype=torch.float32).reshape(n, 2) + 10 * rank
    y = torch.full((n,), rank)
    return {"x": gather_rows(x), "y": gather_rows(y)}


def test_gather_rows_concatenates_unequal_shards_in_rank_order(tmp_path):
    expected_x = torch.cat([torch.arange(6.0).reshape(3, 2), torch.arange(2.0).reshape(1, 2) + 10])
    for out in run_on_ranks("_gather_case", tmp_path):
        assert torch.equal(out["x"], expected_x)
        assert out["y"].tolist() == [0, 0, 0, 1]


def test_datamodule_shards_the_online_eval_loaders_by_rank(tiny_cfg):
    """Under DDP each rank embeds its padded block; together they are the one-process loaders."""
    from ssl_diffusion.app.pretrain import build_datamodule, method_class
    from ssl_diffusion.data.datasets import build_splits

    cfg = tiny_cfg("method=simclr", "trainer.max_steps=1", "eval.bank_size=23", "eval.val_size=3")
    dm = build_datamodule(cfg, build_splits(cfg.data), method_class(cfg))

    def rows(world: int, rank: int) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        dm.trainer = SimpleNamespace(world_size=world, global_rank=rank) if world > 1 else None
        return [[(x, y) for x, y in loader] for loader in dm.val_dataloader()]

    single = rows(1, 0)
    ranks = [rows(WORLD, r) for r in range(WORLD)]
    dm.trainer = None
    for idx, (n, per_rank) in enumerate([(23, 12), (3, 2)]):  # bank, val
        assert [sum(len(y) for _, y in r[idx]) for r in ranks] == [per_rank] * WORLD
        x = torch.cat([x for r in ranks for x, _ in r[idx]])
        y = torch.cat([y for r in ranks for _, y in r[idx]])
        keep = y != PAD_LABEL
        assert int(keep.sum()) == n
        assert torch.equal(x[keep], torch.cat([x for x, _ in single[idx]]))
        assert torch.equal(y[keep], torch.cat([y for _, y in single[idx]]))


class _Rows(Dataset):
    """((feature, logits), label) rows standing in for the eval loaders' (image, label)."""

    def __init__(self, feats: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.feats, self.logits, self.labels = feats, logits, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[tuple[torch.Tensor, torch.Tensor], int]:
        return (self.feats[i], self.logits[i]), int(self.labels[i])


def _online_eval_data() -> list[_Rows]:
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(10, 6, generator=g)
    out = []
    for n in (23, 5):  # bank, val: odd sizes, so the shards are padded
        labels = torch.randint(0, 10, (n,), generator=g)
        feats = centers[labels] + 0.8 * torch.randn(n, 6, generator=g)
        out.append(_Rows(feats, torch.randn(n, 10, generator=g), labels))
    return out


def _online_eval_method(root: Path):
    from ssl_diffusion.app.pretrain import build_method
    from ssl_diffusion.data.datasets import build_splits
    from tests.conftest import tiny_config

    cfg = tiny_config(root, "method=simclr", "trainer.max_steps=1")
    method = build_method(cfg, build_splits(cfg.data).info)
    method.on_validation_epoch_start()
    return method


def _fill(method, datasets: list[Dataset]) -> None:
    """What validation_step collects, in batches of 2, from each eval dataset."""
    for idx, data in enumerate(datasets):
        rows = [data[i] for i in range(len(data))]
        feats = torch.stack([views[0] for views, _ in rows])
        labels = torch.tensor([label for _, label in rows])
        method._val_feats[idx] = list(feats.split(2))
        method._val_labels[idx] = list(labels.split(2))
        if idx == 1:
            method._val_logits = list(torch.stack([views[1] for views, _ in rows]).split(2))


def _online_eval_case(rank: int) -> dict:
    method = _online_eval_method(Path("runs"))  # no file is written
    _fill(method, [EvalShard(d, rank, WORLD) for d in _online_eval_data()])
    method._gather_val()
    return {"metrics": method.online_metrics(), "protocol": method.online_protocol()}


def test_online_eval_gathers_the_shards_and_matches_one_process(tmp_path):
    method = _online_eval_method(tmp_path / "runs")
    _fill(method, _online_eval_data())
    method._gather_val()
    single = {"metrics": method.online_metrics(), "protocol": method.online_protocol()}
    assert single["protocol"]["bank_size"] == 23 and single["protocol"]["val_size"] == 5
    assert 0 < single["metrics"]["knn_top1"] < 100  # a non-degenerate reference (percent)
    for out in run_on_ranks("_online_eval_case", tmp_path):
        assert out == single


# --------------------------------------------------------------------------- contrastive


def _contrastive_inputs() -> dict:
    """A global batch of 2N samples; rank r holds rows r*N:(r+1)*N."""
    g = torch.Generator().manual_seed(0)
    n, d = 4, 8
    return {
        "x1": torch.randn(WORLD * n, d, generator=g), "x2": torch.randn(WORLD * n, d, generator=g),
        "k1": torch.randn(WORLD * n, d, generator=g), "k2": torch.randn(WORLD * n, d, generator=g),
        "n": n, "d": d,
    }


def _losses(x1, x2, k1, k2, d: int) -> dict:
    """MoCo v3 symmetric InfoNCE and lightly's NT-Xent (SimCLR) with a shared linear head."""
    from lightly.loss import NTXentLoss

    from ssl_diffusion.methods.contrastive import symmetric_infonce

    torch.manual_seed(1)
    head = torch.nn.Linear(d, d)  # the same initial weights on every rank, as DDP ensures
    out = {}
    for name in ("infonce", "ntxent"):
        head.zero_grad()
        if name == "infonce":
            loss = symmetric_infonce(head(x1), head(x2), k1, k2, temperature=0.2)
        else:
            loss = NTXentLoss(temperature=0.2, gather_distributed=True)(head(x1), head(x2))
        loss.backward()
        out[name] = {"loss": loss.detach(), "grad": head.weight.grad.clone()}
    return out


def _contrastive_case(rank: int) -> dict:
    t = _contrastive_inputs()
    rows = slice(rank * t["n"], (rank + 1) * t["n"])
    out = _losses(t["x1"][rows], t["x2"][rows], t["k1"][rows], t["k2"][rows], t["d"])
    for v in out.values():  # what DDP does to parameter gradients: average over ranks
        dist.all_reduce(v["grad"])
        v["grad"] /= WORLD
    return out


def test_contrastive_losses_with_gathered_negatives_match_one_process(tmp_path):
    t = _contrastive_inputs()
    single = _losses(t["x1"], t["x2"], t["k1"], t["k2"], t["d"])  # one process, batch 2N
    ranks = run_on_ranks("_contrastive_case", tmp_path)
    for name in ("infonce", "ntxent"):
        # Each rank's loss is a mean over its N queries against all 2N keys; with equal shards
        # the mean over ranks (the objective DDP's gradient averaging optimises) is the
        # single-process mean over 2N queries.
        mean_loss = sum(r[name]["loss"] for r in ranks) / WORLD
        torch.testing.assert_close(mean_loss, single[name]["loss"], rtol=1e-5, atol=1e-6)
        for r in ranks:
            torch.testing.assert_close(r[name]["grad"], single[name]["grad"], rtol=1e-4, atol=1e-6)
    # Negatives really come from the other rank: rank 0 alone on its N samples differs.
    local = _losses(t["x1"][: t["n"]], t["x2"][: t["n"]], t["k1"][: t["n"]], t["k2"][: t["n"]],
                    t["d"])
    assert not torch.allclose(local["infonce"]["loss"], ranks[0]["infonce"]["loss"])


# --------------------------------------------------------------------------- per-rank RNG


def test_each_rank_draws_its_own_training_noise(tiny_cfg):
    """Lightning seeds every rank alike; SSLMethod.on_train_start gives each rank its stream."""
    from ssl_diffusion.app.pretrain import build_method
    from ssl_diffusion.data.datasets import build_splits

    cfg = tiny_cfg("method=simclr", "trainer.max_steps=1")
    method = build_method(cfg, build_splits(cfg.data).info)

    def draw(world: int, rank: int) -> torch.Tensor:
        torch.manual_seed(0)
        method._trainer = SimpleNamespace(world_size=world, global_rank=rank)
        method.on_train_start()
        return torch.rand(4)

    torch.manual_seed(0)
    untouched = torch.rand(4)
    assert torch.equal(draw(1, 0), untouched)  # one process: the stream is left alone
    assert not torch.equal(draw(2, 0), draw(2, 1))
    assert torch.equal(draw(2, 1), draw(2, 1))  # reproducible per rank
    method._trainer = None


# --------------------------------------------------------------------------- end to end

DDP = ["trainer.strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu"]
# Odd bank / val sizes: the eval shards are padded (12 + 11, 3 + 2) and the padding dropped.
SMALL_EVAL = ["data.fake_size=64", "eval.bank_size=23", "eval.val_size=5"]
RUNS = {
    "simclr": ("quickstart.yaml", ["method=simclr"]),
    "ddaepp": ("quickstart_ddaepp.yaml", [
        "method=ddaepp", "model.arch=dit", "model.preset=DiT-tiny", "model.patch_size=4",
        "contrastive.weight=0.5", "contrastive.proj_hidden_dim=32",
        "contrastive.proj_output_dim=16", "contrastive.pred_hidden_dim=32",
        "eval.every_n_epochs=100",  # the final validation only (keeps the test short)
    ]),
}
STEPS = 3


def _run_ddp(root: Path, recipe: str, overrides: list[str]) -> subprocess.CompletedProcess:
    root.mkdir(parents=True, exist_ok=True)
    return run_script("main_pretrain", "--config", str(ROOT / "recipes" / recipe),
                      *TINY, *SMALL_EVAL, *DDP, "trainer.deterministic=true",
                      f"trainer.max_steps={STEPS}", "trainer.ckpt_every_n_steps=2", *overrides,
                      f"run.root={root}", "run.name=r", cwd=root)


def _single_process_online(ckpt: Path) -> tuple[dict, dict]:
    """Online kNN / linear of ``ckpt`` on one process, on the bank and val images of its run."""
    from ssl_diffusion.app.loading import load_method
    from ssl_diffusion.app.pretrain import build_datamodule, method_class
    from ssl_diffusion.data.datasets import build_splits
    from ssl_diffusion.eval.online import online_knn, topk_accuracy

    loaded = load_method(ckpt)
    cfg, method = loaded.cfg, loaded.method
    dm = build_datamodule(cfg, build_splits(cfg.data), method_class(cfg))
    feats, labels = [], []
    with torch.no_grad():
        for loader in dm.val_dataloader():  # no trainer: the unsharded bank and val loaders
            xs, ys = zip(*[(method.extract_features(x).float(), y) for x, y in loader])
            feats.append(torch.cat(xs))
            labels.append(torch.cat(ys))
        metrics = online_knn(feats[0], labels[0], feats[1], labels[1], loaded.info.num_classes,
                             getattr(cfg.eval, "knn", None))
        top1, top5 = topk_accuracy(method.online_linear(feats[1]), labels[1], (1, 5))
    metrics.update({"linear_top1": top1, "linear_top5": top5})
    return metrics, {"bank_size": len(labels[0]), "val_size": len(labels[1])}


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """``ddp_run("simclr")``: the run directory of a 3-step, 2-process run (made once)."""
    done: dict[str, Path] = {}

    def get(method: str) -> Path:
        if method not in done:
            root = tmp_path_factory.mktemp(f"ddp_{method}") / "runs"
            recipe, overrides = RUNS[method]
            proc = _run_ddp(root, recipe, overrides)
            assert proc.returncode == 0, proc.stderr[-3000:]
            assert proc.stdout.count("done:") == 1, proc.stdout  # rank 0 reports, once
            done[method] = root / "r"
        return done[method]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("method", list(RUNS))
def test_ddp_pretraining_on_two_cpu_processes(ddp_run, method):
    run_dir = ddp_run(method)
    for name in ("config.yaml", "last.ckpt", "metrics.csv", "metrics.json"):
        assert (run_dir / name).is_file(), name
    leftovers = [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    assert not leftovers, leftovers

    pretrain = json.loads((run_dir / "metrics.json").read_text())["pretrain"]
    assert pretrain["method"] == method and pretrain["steps"] == STEPS
    assert pretrain["images_seen"] == STEPS * 8 * 2  # steps x per-device batch x world size
    # 57 train images / 2 ranks -> 28 per rank -> 3 full batches of 8 per epoch
    assert pretrain["epochs"] == 1
    online = pretrain["online"]
    assert set(online) == {"knn_top1", "knn_top5", "linear_top1", "linear_top5"}
    assert all(0.0 <= v <= 100.0 for v in online.values())  # percent

    # The numbers computed under DDP (sharded, gathered, evaluated once) are the ones one
    # process gets from the same checkpoint on the same images.
    reference, sizes = _single_process_online(run_dir / "last.ckpt")
    assert sizes == {"bank_size": 23, "val_size": 5}
    protocol = pretrain["online_protocol"]
    assert (protocol["bank_size"], protocol["val_size"]) == (23, 5)
    assert online == pytest.approx(reference, abs=1e-6)
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/knn_top1", "val/linear_top1", "train/loss"} <= set(header)


@pytest.mark.slow
def test_ddp_resume_continues_every_ranks_random_stream(ddp_run, tmp_path):
    """Resuming the unbroken run's step-2 checkpoint (mid-epoch) ends on its step-3 weights.

    ddaepp draws noise levels, noise and views from the global RNG on every rank; the resumed
    run must continue each rank's own stream (saved per rank in the checkpoint), not rank 0's.
    Same max_steps in both legs: the momentum and LR schedules are stretched over max_steps.
    """
    import shutil

    from ssl_diffusion.app.checkpoint import load_checkpoint_file

    unbroken_dir = ddp_run("ddaepp")
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    shutil.copy(unbroken_dir / "config.yaml", run_dir / "config.yaml")
    shutil.copy(unbroken_dir / "step-0000002.ckpt", run_dir / "last.ckpt")
    assert len(load_checkpoint_file(run_dir / "last.ckpt")["callbacks"]["AtomicCheckpoint"]
               ["rng_per_rank"]) == WORLD
    recipe, overrides = RUNS["ddaepp"]
    proc = _run_ddp(tmp_path / "runs", recipe, overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    unbroken = load_checkpoint_file(unbroken_dir / "last.ckpt")
    resumed = load_checkpoint_file(run_dir / "last.ckpt")
    assert resumed["global_step"] == unbroken["global_step"] == STEPS
    differ = [k for k, v in unbroken["state_dict"].items()
              if not torch.equal(v, resumed["state_dict"][k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


@pytest.mark.slow
def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    """SIGINT reaches rank 0 only (``kill -INT <pid>``): the ranks agree at the step end, both
    save and stop (exit 130), and nobody waits forever in a collective the other skipped."""
    import signal
    import time

    from ssl_diffusion.app.checkpoint import load_checkpoint_file

    root = tmp_path / "runs"
    root.mkdir()
    cmd = [sys.executable, str(ROOT / "main_pretrain.py"),
           "--config", str(ROOT / "recipes" / "quickstart.yaml"), *TINY, *SMALL_EVAL, *DDP,
           "method=simclr", "trainer.max_steps=200", "trainer.last_ckpt_every_n_steps=1",
           "eval.online_knn=false", "eval.online_linear=false", f"run.root={root}", "run.name=r"]
    # Own session: on failure the whole group (both ranks) is killed, not only rank 0.
    proc = subprocess.Popen(cmd, env=subprocess_env(), cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not (root / "r" / "last.ckpt").exists() and proc.poll() is None:
            assert time.time() < deadline, "training did not start"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        # The pipes close when every rank has exited (the other rank inherited them).
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-3000:]
    # Both ranks report on the shared stderr (their lines may interleave), at the same step.
    stops = re.findall(r"error: interrupted at step (\d+);", err)
    assert len(stops) == WORLD and len(set(stops)) == 1, err[-3000:]
    step = int(stops[0])
    assert 0 < step < 200
    assert load_checkpoint_file(root / "r" / "last.ckpt")["global_step"] == step
