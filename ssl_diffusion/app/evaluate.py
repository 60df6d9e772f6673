"""Offline evaluation of a checkpoint: kNN, linear probe and the layer x noise sweep.

The entry points shared by the CLIs (``main_knn.py``, ``main_linear.py``, ``main_sweep.py``) and
by Python callers. Each loads the checkpoint with its stored config plus typed ``key=value``
overrides, extracts (cached) frozen features, evaluates, and merges one entry into the run's
``metrics.json`` (``knn``, ``linear`` or ``sweep``; other entries are kept), with the protocol
that produced the numbers. Accuracies are in percent.

Protocol (both evaluators): fit on the **train** split (the training images minus the held-out
validation split), report **val** (for model selection) and **test** (the number to quote).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssl_diffusion.app.loading import LoadedMethod, load_method
from ssl_diffusion.app.os_errors import check_writable
from ssl_diffusion.app.pretrain import quiet_lightning
from ssl_diffusion.app.recipe_edit import write_feature_recipe
from ssl_diffusion.app.run_dir import read_metrics, store_metrics_entry
from ssl_diffusion.atomic import atomic_write, atomic_write_text
from ssl_diffusion.config import Config
from ssl_diffusion.data.datasets import build_splits
from ssl_diffusion.data.transforms import eval_transform
from ssl_diffusion.errors import UserError, did_you_mean
from ssl_diffusion.eval import sweep as sw
from ssl_diffusion.eval.config import KNNConfig, LinearConfig
from ssl_diffusion.eval.features import FeatureExtractor, FeatureSet, describe_spec, is_rank_zero
from ssl_diffusion.eval.knn import KNNEvaluator
from ssl_diffusion.eval.linear import train_linear_probe
from ssl_diffusion.eval.spec import FeatureSpec

Checkpoint = str | Path | LoadedMethod  # a checkpoint path, or one already loaded
QUERY_SPLITS = ("val", "test")


# --------------------------------------------------------------------------- loading and storing


def load(ckpt: Checkpoint, overrides: Sequence[str] = ()) -> LoadedMethod:
    """``engine.load_method(ckpt, overrides)``; a ``LoadedMethod`` passes through unchanged."""
    if isinstance(ckpt, LoadedMethod):
        if overrides:
            raise UserError("overrides apply when loading; pass a checkpoint path with them")
        return ckpt
    quiet_lightning()
    return load_method(ckpt, list(overrides))


def check_metrics_writable(run_dir: Path) -> None:
    """metrics.json can be written into ``run_dir`` and the one there is valid JSON."""
    check_writable(run_dir, "metrics.json",
                   "copy the checkpoint to a writable folder and evaluate that copy")
    read_metrics(run_dir)


def run_dir_of(loaded: LoadedMethod) -> Path:
    """The run directory of a checkpoint: the folder holding it (``runs/<name>/last.ckpt``)."""
    return Path(loaded.path).resolve().parent


def store(run_dir: Path, key: str, entry: dict) -> None:
    """``metrics.json[key] = entry`` on rank 0 (``run_dir.store_metrics_entry``)."""
    if is_rank_zero():
        store_metrics_entry(run_dir, key, entry)


def save_predictions(run_dir: Path, name: str, predictions: dict[str, np.ndarray],
                     labels: dict[str, np.ndarray]) -> str | None:
    """``<run_dir>/predictions/<name>.npz``: per split the predicted and true class of every
    query, in split order (for paired tests such as McNemar's between two runs); rank 0 only."""
    if not is_rank_zero():
        return None
    arrays = {}
    for split, pred in predictions.items():
        arrays[f"{split}_pred"] = np.asarray(pred, dtype=np.int64)
        arrays[f"{split}_label"] = np.asarray(labels[split], dtype=np.int64)
    path = Path(run_dir) / "predictions" / f"{name}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))
    return str(path)


def checkpoint_info(loaded: LoadedMethod, extractor: FeatureExtractor) -> dict:
    return {"path": str(loaded.path), "sha1": extractor.checkpoint_sha1,
            "step": int(loaded.ckpt.get("global_step", 0)),
            "epoch": int(loaded.ckpt.get("epoch", 0))}


def _check_splits(splits: Sequence[str]) -> list[str]:
    splits = list(dict.fromkeys(splits))
    if not splits:
        raise UserError(f"no evaluation splits given; choose from {', '.join(QUERY_SPLITS)}")
    for s in splits:
        if s not in QUERY_SPLITS:
            raise UserError(f"unknown evaluation split `{s}`; choose from "
                            f"{', '.join(QUERY_SPLITS)} (train is the kNN bank / probe training "
                            f"set){did_you_mean(s, QUERY_SPLITS)}")
    return splits


def _extractor(loaded: LoadedMethod, progress: bool, batch_size: int | None, device: str | None,
               cache: bool | str | Path) -> FeatureExtractor:
    cache_dir = False if cache is False else (None if cache is True else cache)
    return FeatureExtractor(loaded, cache_dir=cache_dir, batch_size=batch_size, device=device,
                            progress=progress)


def _sizes(extractor: FeatureExtractor, limit: int | None) -> dict[str, int]:
    return {s: len(extractor.dataset(s, limit)) for s in ("train", "val", "test")}


# --------------------------------------------------------------------------- evaluators on features


def knn_on_features(train: FeatureSet, queries: dict[str, FeatureSet], num_classes: int,
                    knn_cfg: KNNConfig, device: torch.device | str | None = None) -> dict:
    """kNN with ``train`` as the bank (the torch backend searches on ``device``; None = CPU).

    Returns ``<split>_top1`` / ``<split>_top5`` (at ``report_k``) and, per split, the
    evaluator's full output ``<split>: {"knn_top1", "knn_top5", "knn_top1@k<k>", ...}``.
    """
    evaluator = KNNEvaluator(knn_cfg)
    out: dict[str, Any] = {}
    protocol: dict[str, Any] = {}
    bank = torch.as_tensor(train.feats).to(device or "cpu")
    for split, fs in queries.items():
        res = evaluator.evaluate(bank, train.labels, fs.feats, fs.labels, num_classes)
        protocol = res.pop("protocol")
        out.setdefault("predictions", {})[split] = res.pop("predictions")
        out[f"{split}_top1"], out[f"{split}_top5"] = res["knn_top1"], res["knn_top5"]
        out[split] = res
    protocol.pop("num_queries", None)
    protocol.pop("num_exact_fallback", None)
    return {**out, "protocol": protocol}


def linear_on_features(train: FeatureSet, evals: dict[str, FeatureSet], num_classes: int,
                       linear_cfg: LinearConfig, device: torch.device) -> dict:
    """Linear probe trained on ``train``: ``<split>_top1``, ``<split>_top5``, ``train_loss``."""
    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(device)

    return train_linear_probe(t(train.feats), t(train.labels),
                              {s: (t(fs.feats), t(fs.labels)) for s, fs in evals.items()},
                              num_classes, linear_cfg)


def raw_pixel_scores(cfg: Config, *, limit: int | None = None, linear: bool = True) -> dict:
    """kNN and linear probe on raw pixels ([-1, 1], flattened) under ``cfg``'s protocol: the same
    splits, gallery, k, T and probe settings as every learned representation."""
    splits = build_splits(cfg.data)
    tf = eval_transform(splits.info, "symmetric")

    def pixels(dataset: Any) -> FeatureSet:
        n = len(dataset) if limit is None else min(limit, len(dataset))
        xs, ys = zip(*(dataset[i] for i in range(n)))
        feats = np.stack([tf(x).flatten().numpy() for x in xs]).astype(np.float32)
        return FeatureSet(feats, np.asarray(ys, dtype=np.int64))

    train = pixels(splits.train)
    evals = {"val": pixels(splits.val), "test": pixels(splits.test)}
    knn = knn_on_features(train, evals, splits.info.num_classes, cfg.eval.knn)
    probe = linear_on_features(train, evals, splits.info.num_classes, cfg.eval.linear,
                               torch.device("cpu")) if linear else {}
    return {"knn_top1": knn["test_top1"], "knn_val_top1": knn["val_top1"],
            "linear_top1": probe.get("test_top1"), "linear_val_top1": probe.get("val_top1"),
            "protocol": {"features": "raw pixels in [-1, 1], flattened", "dataset": cfg.data.name,
                         "train_size": len(train), "limit": limit, "knn": knn["protocol"]}}


# --------------------------------------------------------------------------- kNN and linear


def _evaluate(kind: str, ckpt: Checkpoint, overrides: Sequence[str], splits: Sequence[str],
              progress: bool, batch_size: int | None, device: str | None, limit: int | None,
              cache: bool | str | Path, write_metrics: bool) -> dict:
    start = time.time()
    loaded = load(ckpt, overrides)
    splits = _check_splits(splits)
    cfg = loaded.cfg
    if write_metrics:  # a result that cannot be stored is found before the slow work
        check_metrics_writable(run_dir_of(loaded))
    ex = _extractor(loaded, progress, batch_size, device, cache)
    # The evaluators' own checks, before the (slow, cached) feature extraction.
    if kind == "linear":
        cfg.eval.linear.validate()
    else:
        cfg.eval.knn.validate()
        bank = len(ex.dataset("train", limit))
        if max(cfg.eval.knn.k) > bank:
            raise UserError(f"knn.k={cfg.eval.knn.k} asks for {max(cfg.eval.knn.k)} neighbours "
                            f"but the bank has {bank} rows; drop the larger k values or use a "
                            f"larger bank")
    spec = ex.spec()
    train = ex.extract("train", spec, limit=limit)
    evals = {s: ex.extract(s, spec, limit=limit) for s in splits}
    n_cls = loaded.info.num_classes
    if kind == "knn":
        result = knn_on_features(train, evals, n_cls, cfg.eval.knn, ex.device)
        protocol = {"bank": "train", "bank_size": len(train), **result.pop("protocol")}
    else:
        result = linear_on_features(train, evals, n_cls, cfg.eval.linear, ex.device)
        protocol = {"train_split": "train", **result.pop("protocol")}
    protocol.update({
        "queries": splits, "selection_split": "val", "reported_split": "test",
        "split_sizes": {s: len(fs) for s, fs in [("train", train), *evals.items()]},
        "limit": limit, "dataset": cfg.data.name, "features": describe_spec(spec, loaded.method),
        "checkpoint": checkpoint_info(loaded, ex), "overrides": list(overrides),
        "features_from_cache": all(fs.from_cache for fs in [train, *evals.values()]),
    })
    predictions = result.pop("predictions")
    entry = {**result, "protocol": protocol, "wall_time_s": round(time.time() - start, 2)}
    if write_metrics:
        run_dir = run_dir_of(loaded)
        entry["predictions_file"] = save_predictions(
            run_dir, kind, predictions, {split: fs.labels for split, fs in evals.items()})
        store(run_dir, kind, entry)
    return entry


def run_knn(ckpt: Checkpoint, overrides: Sequence[str] = (), *, splits: Sequence[str] = QUERY_SPLITS,
            progress: bool = True, batch_size: int | None = None, device: str | None = None,
            limit: int | None = None, cache: bool | str | Path = True,
            write_metrics: bool = True) -> dict:
    """Weighted kNN (DINO protocol, ``eval.knn``) of ``splits`` against the train-split bank.

    Args:
        ckpt: checkpoint path (or an ``engine.LoadedMethod``).
        overrides: ``key=value`` config overrides, e.g. ``["eval.knn.k=[20]"]``.
        splits: query splits, ``val`` (selection) and/or ``test`` (reported).
        progress: tqdm bars during feature extraction.
        batch_size, device: extraction batch (default ``data.batch_size``) and device.
        limit: use only the first ``limit`` images of every split (quick checks).
        cache: True = ``<run_dir>/features``; a folder; False = no feature cache.
        write_metrics: merge the result into ``<run_dir>/metrics.json`` as ``knn``.

    Returns:
        ``{"<split>_top1", "<split>_top5"`` (percent, at ``eval.knn.report_k``), ``"<split>":
        {"knn_top1", "knn_top5", "knn_top1@k<k>", "knn_top5@k<k>", ...}`` (every k),
        ``"protocol", "wall_time_s"}``.
    """
    return _evaluate("knn", ckpt, overrides, splits, progress, batch_size, device, limit, cache,
                     write_metrics)


def run_linear(ckpt: Checkpoint, overrides: Sequence[str] = (), *, splits: Sequence[str] = QUERY_SPLITS,
               progress: bool = True, batch_size: int | None = None, device: str | None = None,
               limit: int | None = None, cache: bool | str | Path = True,
               write_metrics: bool = True) -> dict:
    """Linear probe (``eval.linear``: BN without affine + Linear, MAE recipe) trained on the
    train split's frozen features, reported on ``splits``. Arguments as :func:`run_knn`.

    Returns:
        ``{"<split>_top1", "<split>_top5", "train_loss", "protocol", "wall_time_s"}`` (percent).
    """
    return _evaluate("linear", ckpt, overrides, splits, progress, batch_size, device, limit,
                     cache, write_metrics)


# --------------------------------------------------------------------------- the sweep


def run_sweep(ckpt: Checkpoint, overrides: Sequence[str] = (), *, layers: Sequence[str] | None = None,
              noises: Sequence[float] | None = None, metric: str = "knn",
              probe_epochs: int | None = None, write_recipe: str | Path | None = None,
              select_by: str | None = None, progress: bool = True,
              batch_size: int | None = None, device: str | None = None, limit: int | None = None,
              cache: bool | str | Path = True, write_metrics: bool = True) -> dict:
    """Layer x noise grid on validation; the val-best cell alone is evaluated on test.

    Args:
        ckpt, overrides: as :func:`run_knn`; ``eval.features.noise_unit`` sets the unit of
            ``noises`` and ``eval.features.use_ema`` the weights.
        layers: layer names; None = every layer (<= 8) or 6 evenly spaced + the default tap.
        noises: noise levels (sigma or logSNR); None = 5 log-spaced sigmas in [0.01, 1] within
            the objective's range.
        metric: ``knn`` | ``linear`` | ``both`` (evaluated on every cell).
        probe_epochs: linear-probe epochs in the sweep (default ``eval.linear.epochs``).
        write_recipe: YAML path that receives ``eval.features.{layer, noise, noise_unit}``.
        select_by: metric that picks the cell; default ``metric`` (``linear`` for ``both``).

    Returns:
        ``{"grid": [val rows], "chosen": {layer, noise, noise_unit, sigma, select_by,
        val_<metric>_top1/top5, test_<metric>_top1/top5, noise_at_grid_edge},
        "layers", "noises", "protocol", "files", "wall_time_s"}``; also writes ``sweep.csv`` and
        ``sweep.png`` into the run directory and ``metrics.json["sweep"]``.
    """
    start = time.time()
    sw.check_metric(metric)
    select_by = select_by or ("linear" if metric == "both" else metric)
    if select_by not in sw.metrics_of(metric):
        raise UserError(f"select_by=`{select_by}` is not among the swept metrics "
                        f"{sw.metrics_of(metric)}")
    loaded = load(ckpt, overrides)
    cfg, method = loaded.cfg, loaded.method
    if not method.generative:
        raise UserError(f"the layer x noise sweep needs a diffusion method (ddae, ddaepp); "
                        f"`{cfg.method}` features have no layer or noise level — use main_knn.py "
                        f"or main_linear.py")
    unit = cfg.eval.features.noise_unit
    layers = list(dict.fromkeys(layers)) if layers else sw.default_layers(method.net)
    for name in layers:
        method.net.check_layer(name)
    noises = list(dict.fromkeys(noises)) if noises else sw.default_noises(method.objective, unit)
    sigmas = [method.feature_spec(noise=n, unit=unit).sigma for n in noises]
    linear_cfg = cfg.eval.linear
    if probe_epochs is not None:
        if probe_epochs < 1:
            raise UserError(f"--probe-epochs {probe_epochs} must be >= 1")
        linear_cfg = dataclasses.replace(
            linear_cfg, epochs=probe_epochs, warmup_epochs=min(linear_cfg.warmup_epochs,
                                                               probe_epochs // 9))
    if "linear" in sw.metrics_of(metric):
        linear_cfg.validate()
    if write_recipe is not None:  # refuse a bad recipe path before the sweep, not after it
        write_feature_recipe(write_recipe, {}, cfg.method, check_only=True)
    if write_metrics:  # a result that cannot be stored is found before the slow work
        check_metrics_writable(run_dir_of(loaded))
    ex = _extractor(loaded, progress, batch_size, device, cache)
    use_ema = method.feature_spec().use_ema
    n_cls = loaded.info.num_classes
    rows: list[dict] = []
    for noise, sigma in zip(noises, sigmas):
        train = ex.extract_layers("train", layers, sigma, use_ema, limit=limit)
        val = ex.extract_layers("val", layers, sigma, use_ema, limit=limit)
        for name in layers:
            for m in sw.metrics_of(metric):
                if m == "knn":
                    res = knn_on_features(train[name], {"val": val[name]}, n_cls, cfg.eval.knn,
                                          ex.device)
                else:
                    res = linear_on_features(train[name], {"val": val[name]}, n_cls, linear_cfg,
                                             ex.device)
                rows.append({"metric": m, "layer": name, "noise": noise, "sigma": sigma,
                             "val_top1": res["val_top1"], "val_top5": res["val_top5"]})
        if progress:
            best = max(r["val_top1"] for r in rows if r["sigma"] == sigma)
            print(f"sweep: noise {noise:g} ({unit}): best val top-1 {best:.2f}% over "
                  f"{len(layers)} layers", flush=True)

    chosen_predictions: dict[str, np.ndarray] = {}  # metric -> test predictions of the chosen cell
    chosen_labels: dict[str, np.ndarray] = {}

    def test_of(cell: dict) -> dict:
        spec = FeatureSpec(cell["layer"], cell["sigma"], use_ema)
        train, test = ex.extract("train", spec, limit=limit), ex.extract("test", spec, limit=limit)
        out = {}
        for m in sw.metrics_of(metric):
            if m == "knn":
                res = knn_on_features(train, {"test": test}, n_cls, cfg.eval.knn, ex.device)
            else:
                res = linear_on_features(train, {"test": test}, n_cls, linear_cfg, ex.device)
            out[m] = {"test_top1": res["test_top1"], "test_top5": res["test_top5"]}
            chosen_predictions[m] = res["predictions"]["test"]
        chosen_labels.update({f"test_{m}": test.labels for m in chosen_predictions})
        return out

    chosen = sw.summarize(rows, select_by, test_of)
    chosen["noise_unit"] = unit
    # The best noise level on the border of the grid suggests the optimum lies outside it.
    chosen["noise_at_grid_edge"] = len(noises) > 1 and chosen["noise"] in (min(noises),
                                                                           max(noises))
    run_dir = run_dir_of(loaded)
    files = {"csv": str(run_dir / "sweep.csv"), "png": str(run_dir / "sweep.png")}
    spec = FeatureSpec(chosen["layer"], chosen["sigma"], use_ema)
    protocol = {
        "selection": f"best val top-1 of `{select_by}` over the grid; test evaluated for the "
                     f"chosen cell only",
        "metric": metric, "select_by": select_by, "noise_unit": unit,
        "use_ema": spec.use_ema, "seed": cfg.eval.features.seed,
        "knn": dataclasses.asdict(cfg.eval.knn) if metric != "linear" else None,
        "linear": dataclasses.asdict(linear_cfg) if metric != "knn" else None,
        "split_sizes": _sizes(ex, limit), "limit": limit, "dataset": cfg.data.name,
        "chosen_features": describe_spec(spec, loaded.method),
        "checkpoint": checkpoint_info(loaded, ex), "overrides": list(overrides),
    }
    entry = {"grid": rows, "chosen": chosen, "layers": layers, "noises": noises,
             "protocol": protocol, "files": files}
    if write_recipe is not None:
        values = {"layer": chosen["layer"], "noise": chosen["noise"], "noise_unit": unit}
        action = write_feature_recipe(write_recipe, values, cfg.method)
        entry["recipe"] = {"path": str(write_recipe), "action": action}
    if is_rank_zero():
        atomic_write_text(run_dir / "sweep.csv", sw.grid_csv(rows, unit, chosen))
        title = (f"{cfg.method} step {protocol['checkpoint']['step']}: chosen "
                 f"{chosen['layer']} @ {chosen['noise']:g} ({unit}) by val {select_by}")
        png = sw.plot_grid(rows, layers, noises, unit, chosen, title)
        atomic_write(run_dir / "sweep.png", lambda f: f.write(png))
    entry["wall_time_s"] = round(time.time() - start, 2)
    if write_metrics:
        files["predictions"] = save_predictions(
            run_dir, "sweep", {f"test_{m}": p for m, p in chosen_predictions.items()},
            chosen_labels)
        store(run_dir, "sweep", entry)
    return entry


__all__ = [
    "knn_on_features",
    "linear_on_features",
    "load",
    "raw_pixel_scores",
    "read_metrics",
    "run_dir_of",
    "run_knn",
    "run_linear",
    "run_sweep",
    "save_predictions",
    "store",
]
