"""The generation stage: seeds -> uint8 images -> PNG grid / ``.npz`` / PNG folder, and FID.

* Image ``i`` of a request is drawn from ``seeds[i]`` alone (per-sample generators, NVlabs/edm2
  style), so a seed gives the same image whatever the batch size, the shard or the GPU count.
* Images leave the model in [-1, 1] and are quantised once, ``round(127.5 x + 127.5)``, to uint8
  (N, C, H, W); everything downstream (files, Inception) sees exactly those bytes, as it sees the
  dataset's own uint8 pixels for the reference set.
* ``FIDStage`` runs the protocol of ``eval.fid``: reference statistics of a dataset split
  (cached on disk and in memory), generated statistics sharded over DDP ranks (rank r takes
  seeds r, r + W, ... and the float64 sums are all-reduced), FID/KID/IS, and a result that
  names every knob that produced it. ``run_fid`` is the one-call version that also merges the
  result into ``metrics.json`` under ``fid``.

Image files (``image_files.py``) are written to a temporary name and renamed, so an interrupted
run never leaves a partial ``samples.npz`` or PNG, and nothing is ever deleted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ssl_diffusion.app.image_files import NpzWriter, save_grid, save_npz, save_png_folder
from ssl_diffusion.app.loading import load_method
from ssl_diffusion.app.run_dir import update_metrics
from ssl_diffusion.atomic import atomic_write
from ssl_diffusion.config import Config
from ssl_diffusion.config.sections import DataConfig
from ssl_diffusion.data.datasets import build_splits
from ssl_diffusion.diffusion.config import SamplerConfig
from ssl_diffusion.diffusion.generate import check_sampler_config
from ssl_diffusion.errors import UserError
from ssl_diffusion.eval.fid import (
    ExtractedStats,
    ReferenceKey,
    ReferenceStats,
    extract_stats,
    fid_metrics,
    reference_stats,
)
from ssl_diffusion.eval.fid_config import FIDConfig, check_ref_split
from ssl_diffusion.eval.inception import InceptionFeatureNet, load_inception
from ssl_diffusion.methods.base import SSLMethod

GRID_MAX = 64  # images shown in samples.png
GRID_MIN_WIDTH = 512  # samples.png is enlarged (nearest neighbour) to at least this width
REF_ORDER_SEED = 0  # fixed shuffle of the reference split: ref_n is a uniform subset, and the
# cached statistics (keyed without a seed) always describe the same images
_SEED_PART = re.compile(r"^(\d+)(?:-(\d+))?$")


# ----------------------------------------------------------------------------- seeds
MAX_IMAGES = 1_000_000  # per call (20x FID-50k): seeds, grids and .npz are held in memory


def parse_seeds(text: str) -> list[int]:
    """``"0-63"``, ``"0,5,9"`` or ``"0-9,20-29"`` -> seeds in the given order (inclusive ranges).

    Seeds are non-negative and distinct: a repeated seed repeats an image and biases FID.
    """
    parts = [p.strip() for p in str(text).split(",")]
    seeds: list[int] = []
    for part in parts:
        m = _SEED_PART.match(part)
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise UserError(f"bad seeds `{text}` (part `{part}`); use a range like 0-63, a list "
                            f"like 0,5,9, or both: 0-9,20-29 (non-negative, ranges low-high)")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if len(seeds) + hi - lo + 1 > MAX_IMAGES:
            raise UserError(f"seeds `{text}` ask for more images than one call generates (at "
                            f"most {MAX_IMAGES:,}); split the job into several seed ranges")
        seeds.extend(range(lo, hi + 1))
    if len(set(seeds)) != len(seeds):
        dup = next(s for i, s in enumerate(seeds) if s in seeds[:i])
        raise UserError(f"bad seeds `{text}`: seed {dup} appears twice; each seed is one image")
    return seeds


def format_seeds(seeds: Sequence[int]) -> str:
    """The inverse of ``parse_seeds``: consecutive runs written as ranges (``0-9,20-29``)."""
    out: list[str] = []
    i = 0
    while i < len(seeds):
        j = i
        while j + 1 < len(seeds) and seeds[j + 1] == seeds[j] + 1:
            j += 1
        out.append(str(seeds[i]) if i == j else f"{seeds[i]}-{seeds[j]}")
        i = j + 1
    return ",".join(out)


# ----------------------------------------------------------------------------- sampler / model
def require_generator(method: SSLMethod) -> None:
    if not method.generative:
        raise UserError(f"checkpoint is method {method.cfg.method} which cannot generate; use a "
                        f"ddae/ddaepp checkpoint")


def sampler_config(base: SamplerConfig, *, sampler: str | None = None, steps: int | None = None,
                   eta: float | None = None, cfg: float | None = None,
                   shift: float | None = None) -> SamplerConfig:
    """A checked copy of ``base`` with the given fields replaced (None keeps the field)."""
    given = {"sampler": sampler, "steps": steps, "eta": eta, "cfg": cfg, "shift": shift}
    out = dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})
    check_sampler_config(out)
    return out


def layered_sampler_config(cfg: Config, *, fid: bool = False, sampler: str | None = None,
                           steps: int | None = None, eta: float | None = None,
                           guidance: float | None = None,
                           shift: float | None = None) -> SamplerConfig:
    """The sampler of a run, layered: the recipe's ``sampler`` < ``eval.fid``'s overrides (for
    FID) < explicit arguments (CLI flags); None keeps the layer below."""
    base = cfg.sampler
    if fid:
        f = cfg.eval.fid
        base = sampler_config(base, sampler=f.sampler, steps=f.steps, cfg=f.cfg)
    return sampler_config(base, sampler=sampler, steps=steps, eta=eta, cfg=guidance, shift=shift)


def sampler_nfe(cfg: SamplerConfig) -> int:
    """Denoiser evaluations per image: Heun's last step is Euler (2 steps - 1), others 1/step.

    With guidance (cfg != 1) each evaluation runs the network on a 2N batch (cond + uncond).
    """
    return 2 * cfg.steps - 1 if cfg.sampler == "heun" else cfg.steps


def is_conditional(method: SSLMethod) -> bool:
    return method.class_conditional


def class_labels_for(method: SSLMethod, seeds: Sequence[int], classes: int | str | None) -> Tensor | None:
    """Labels for ``seeds``: ``None`` (unconditional; ``"all"`` for a conditional model), an int
    (one class for every image) or ``"all"`` (seed s gets class s mod K: balanced over a range of
    seeds and, like the image, a function of the seed only)."""
    k = method.info.num_classes
    if not is_conditional(method):
        if classes is not None:
            raise UserError(f"class labels ({classes}) need a class-conditional model; this one "
                            f"was trained with ddae.class_conditional=false: drop --class-label/"
                            f"--classes")
        return None
    if classes is None or classes == "all":
        return torch.tensor([s % k for s in seeds], dtype=torch.long)
    if not isinstance(classes, int) or not 0 <= classes < k:
        raise UserError(f"class label {classes} is out of range; choose 0..{k - 1} or 'all'")
    return torch.full((len(seeds),), classes, dtype=torch.long)


def check_guidance(method: SSLMethod, cfg: SamplerConfig) -> None:
    if cfg.cfg != 1.0 and not is_conditional(method):
        raise UserError(f"guidance scale cfg={cfg.cfg} needs a class-conditional model; this one "
                        f"is unconditional: use --cfg 1 (sampler.cfg=1)")


def to_uint8(images: Tensor) -> Tensor:
    """[-1, 1] float (N, C, H, W) -> uint8 (N, C, H, W), round(127.5 x + 127.5)."""
    return (images.float() * 127.5 + 127.5).round().clamp(0, 255).to(torch.uint8)


def generate_uint8(method: SSLMethod, seeds: Sequence[int], sampler_cfg: SamplerConfig,
                   batch_size: int = 64, use_ema: bool = True,
                   class_labels: Tensor | None = None, progress: bool = True) -> Iterator[Tensor]:
    """uint8 (B, C, H, W) CPU batches of ``method.generate`` for ``seeds`` in order.

    ``class_labels`` (N,) are aligned with ``seeds``. The image of a seed does not depend on
    ``batch_size`` (up to float rounding in batched matmuls, which can move a pixel by 1/255).
    """
    seeds = [int(s) for s in seeds]
    if batch_size < 1:
        raise UserError(f"batch size {batch_size} is invalid; it must be >= 1")
    if class_labels is not None and len(class_labels) != len(seeds):
        raise ValueError(f"{len(class_labels)} class labels for {len(seeds)} seeds")
    bar = tqdm(total=len(seeds), unit="img", desc=f"generating ({sampler_cfg.sampler})",
               disable=not progress, dynamic_ncols=True)
    try:
        for start in range(0, len(seeds), batch_size):
            chunk = seeds[start : start + batch_size]
            labels = None if class_labels is None else class_labels[start : start + len(chunk)]
            images = method.generate(chunk, sampler_cfg, class_labels=labels, use_ema=use_ema)
            yield to_uint8(images).cpu()  # (B, C, H, W)
            bar.update(len(chunk))
    finally:
        bar.close()


# ----------------------------------------------------------------------------- reference data
def reference_dataset_id(data_cfg: DataConfig) -> str:
    """The dataset part of the reference-cache key: the name, plus what else fixes the images
    (the folder of an imagefolder dataset, the shape of the fake dataset)."""
    if data_cfg.name == "imagefolder":
        root = os.path.abspath(os.path.expanduser(data_cfg.root))
        return f"imagefolder@{hashlib.sha1(root.encode()).hexdigest()[:8]}"
    if data_cfg.name == "fake":
        return f"fake-{data_cfg.fake_channels}c-{data_cfg.fake_size}"
    return data_cfg.name


def reference_split(splits: Any, split: str) -> Any:
    """``train`` is the dataset's whole official training split (train + val, before
    ``data.train_subset``), as in published FIDs; ``val`` the held-out part; ``test`` the test."""
    check_ref_split(split)
    if split == "train":
        return getattr(splits.train, "dataset", splits.train)
    return getattr(splits, split)


def reference_batches(cfg: Config, split: str, n: int | None, seed: int = REF_ORDER_SEED,
                      batch_size: int = 200, splits: Any = None) -> Iterator[Tensor]:
    """uint8 (B, C, H, W) batches of a dataset split (raw pixels, no normalisation), in a
    ``seed``-shuffled order, so the first ``n`` images are a uniform random subset."""
    splits = splits if splits is not None else build_splits(cfg.data)
    dataset = reference_split(splits, split)
    mode = "L" if splits.info.channels == 1 else "RGB"
    order = np.random.default_rng(seed).permutation(len(dataset))
    if n is not None:
        order = order[:n]
    for start in range(0, len(order), batch_size):
        arrays = [np.asarray(dataset[int(i)][0].convert(mode)) for i in order[start : start + batch_size]]
        x = torch.from_numpy(np.stack(arrays))  # (B, H, W) or (B, H, W, 3)
        yield x[:, None] if x.dim() == 3 else x.permute(0, 3, 1, 2).contiguous()


# ----------------------------------------------------------------------------- FID stage
class FIDStage:
    """The ``eval.fid`` protocol for one config: Inception net and reference statistics are
    loaded once and reused across evaluations (in-training FID calls ``evaluate`` repeatedly).

    DDP: pass ``rank``/``world`` and a ``barrier`` callable; rank 0 computes (and caches) the
    reference statistics first, the other ranks then read the cache.
    """

    def __init__(self, cfg: Config, fid_cfg: FIDConfig | None = None, *, splits: Any = None,
                 net: InceptionFeatureNet | None = None, device: str | torch.device = "cpu"):
        self.cfg = cfg
        self.fid_cfg = fid_cfg if fid_cfg is not None else cfg.eval.fid
        check_ref_split(self.fid_cfg.ref_split)
        self.splits = splits
        self.net = net if net is not None else load_inception(self.fid_cfg.weights, device=device)
        self._ref: ReferenceStats | None = None
        self.last_generated: ExtractedStats | None = None

    def reference_key(self, image_size: int) -> ReferenceKey:
        f = self.fid_cfg
        return ReferenceKey(reference_dataset_id(self.cfg.data), f.ref_split, image_size, f.ref_n)

    def _ref_batches(self) -> Iterator[Tensor]:
        return reference_batches(self.cfg, self.fid_cfg.ref_split, self.fid_cfg.ref_n,
                                 batch_size=self.fid_cfg.batch_size, splits=self.splits)

    def reference(self, key: ReferenceKey, rank: int = 0,
                  barrier: Callable[[], None] | None = None) -> ReferenceStats:
        if self._ref is None:
            f = self.fid_cfg

            def compute() -> ReferenceStats:
                return reference_stats(self._ref_batches, key, self.net, cache_dir=f.cache_dir,
                                       batch_size=f.batch_size, kid_max_n=f.kid_max_n)

            if barrier is None:
                self._ref = compute()
            else:  # rank 0 fills the cache; the others wait, then load it
                if rank == 0:
                    self._ref = compute()
                barrier()
                if rank != 0:
                    self._ref = compute()
        return self._ref

    def generated_stats(self, method: SSLMethod, seeds: Sequence[int], sampler_cfg: SamplerConfig, *,
                        batch_size: int = 64, use_ema: bool = True,
                        class_labels: Tensor | None = None, rank: int = 0, world: int = 1,
                        progress: bool = True,
                        tap: Callable[[Tensor, list[int]], None] | None = None) -> ExtractedStats:
        """Inception statistics of ``seeds``: this rank generates ``seeds[rank::world]`` (global
        indices rank, rank + W, ...) and the sums of all ranks are all-reduced (a no-op outside
        torch.distributed). ``tap(batch, seeds)`` sees every generated batch (to save it)."""
        shard = [int(s) for s in seeds][rank::world]
        labels = None if class_labels is None else class_labels[rank::world]
        batches: Iterable[Tensor] = generate_uint8(method, shard, sampler_cfg, batch_size,
                                                   use_ema, labels, progress)
        if tap is not None:
            batches = _tapped(batches, shard, tap)
        f = self.fid_cfg
        gen = extract_stats(batches, self.net, batch_size=f.batch_size, kid_max_n=f.kid_max_n,
                            is_splits=f.is_splits, first_index=rank, index_stride=world)
        gen.features.all_reduce_()
        if gen.logits is not None:
            gen.logits.all_reduce_()
        return gen

    def evaluate(self, method: SSLMethod, seeds: Sequence[int], sampler_cfg: SamplerConfig, *,
                 batch_size: int = 64, use_ema: bool = True, class_labels: Tensor | None = None,
                 rank: int = 0, world: int = 1, barrier: Callable[[], None] | None = None,
                 progress: bool = True,
                 tap: Callable[[Tensor, list[int]], None] | None = None) -> dict:
        """FID / KID / IS of the images of ``seeds`` with the protocol that produced them."""
        seeds = [int(s) for s in seeds]
        t0 = time.time()
        key = self.reference_key(method.info.image_size)
        ref = self.reference(key, rank, barrier)
        t_ref = time.time() - t0
        gen = self.generated_stats(method, seeds, sampler_cfg, batch_size=batch_size,
                                   use_ema=use_ema, class_labels=class_labels, rank=rank,
                                   world=world, progress=progress, tap=tap)
        f = self.fid_cfg
        self.last_generated = gen  # kept features, for paired bootstraps (save_generated_features)
        result = fid_metrics(gen, ref, key, f, self.net)
        result.update(generation_protocol(method, seeds, sampler_cfg, use_ema, class_labels))
        result.update({"ref_n": f.ref_n, "ref_split": f.ref_split, "world_size": world,
                       "reference_time_s": round(t_ref, 2),
                       "time_s": round(time.time() - t0, 2)})
        return result


def _tapped(batches: Iterable[Tensor], seeds: list[int],
            tap: Callable[[Tensor, list[int]], None]) -> Iterator[Tensor]:
    done = 0
    for batch in batches:
        tap(batch, seeds[done : done + len(batch)])
        done += len(batch)
        yield batch


def generation_protocol(method: SSLMethod, seeds: Sequence[int], sampler_cfg: SamplerConfig,
                        use_ema: bool, class_labels: Tensor | None) -> dict:
    """The knobs that decide the generated images, in the form stored in metrics.json."""
    weights = "ema" if use_ema and getattr(method, "ema", None) is not None else "raw"
    labels: str | int | None = None
    if class_labels is not None:
        k = method.info.num_classes
        values = [int(c) for c in class_labels]
        if values == [s % k for s in seeds]:
            labels = "all (seed mod classes)"
        else:
            labels = values[0] if len(set(values)) == 1 else "per-seed (given)"
    return {
        "n": len(seeds), "seeds": format_seeds(list(seeds)), "sampler": sampler_cfg.sampler,
        "steps": sampler_cfg.steps, "nfe": sampler_nfe(sampler_cfg), "eta": sampler_cfg.eta,
        "cfg": sampler_cfg.cfg, "cfg_max_sigma": sampler_cfg.cfg_max_sigma,
        "shift": sampler_cfg.shift, "clip_x0": sampler_cfg.clip_x0,
        "weights": weights, "class_labels": labels, "objective": method.cfg.diffusion.objective,
    }


def write_sample_grid(method: SSLMethod, cfg: Config, path: str | Path,
                      progress: bool = True) -> Path:
    """``samples.png``: GRID_MAX images from seeds 0.. with ``cfg``'s sampler (EMA weights unless
    the method says otherwise), enlarged to at least GRID_MIN_WIDTH pixels."""
    seeds = list(range(GRID_MAX))
    images = torch.cat(list(generate_uint8(  # (GRID_MAX, C, H, W) uint8
        method, seeds, layered_sampler_config(cfg),
        class_labels=class_labels_for(method, seeds, None), progress=progress)))
    return save_grid(images, path, min_width=GRID_MIN_WIDTH)


def run_fid(method: SSLMethod, cfg: Config, run_dir: str | Path | None, n: int,
            sampler_cfg: SamplerConfig, *, seeds: Sequence[int] | None = None,
            batch_size: int = 64, use_ema: bool = True, class_labels: Tensor | None = None,
            fid_cfg: FIDConfig | None = None, stage: FIDStage | None = None,
            progress: bool = True, tap: Callable[[Tensor, list[int]], None] | None = None,
            extra: dict | None = None) -> dict:
    """FID of ``n`` images (seeds ``fid.seed + i`` unless given) against ``cfg``'s dataset;
    merges the result (with ``extra``) into ``run_dir/metrics.json`` under ``fid``."""
    require_generator(method)
    fid_cfg = fid_cfg if fid_cfg is not None else cfg.eval.fid
    seeds = list(seeds) if seeds is not None else list(range(fid_cfg.seed, fid_cfg.seed + n))
    if len(seeds) != n:
        raise UserError(f"n={n} but {len(seeds)} seeds were given; make them agree")
    stage = stage if stage is not None else FIDStage(cfg, fid_cfg, device=method.device)
    result = stage.evaluate(method, seeds, sampler_cfg, batch_size=batch_size, use_ema=use_ema,
                            class_labels=class_labels, progress=progress, tap=tap)
    result.update(extra or {})
    if run_dir is not None:
        saved = save_generated_features(Path(run_dir), stage.last_generated)
        if saved is not None:
            result["features_file"] = saved
        update_metrics(Path(run_dir), {"fid": result})
    return result


def save_generated_features(run_dir: Path, gen: ExtractedStats | None) -> str | None:
    """``<run_dir>/fid_features.npz``: the Inception features of every generated image with its
    sample key (a hash of the image index, the same for every model at the same seeds), so two
    runs' images can be paired for a bootstrap of the FID / KID difference. Written only when
    every image's features were kept (n <= eval.fid.kid_max_n)."""
    if gen is None or len(gen.features.kept_features) != gen.features.count:
        return None
    path = run_dir / "fid_features.npz"
    f = gen.features
    atomic_write(path, lambda fh: np.savez_compressed(fh, features=f.kept_features,
                                                      key=f.kept_priority))
    return str(path)


def run_fid_from_checkpoint(ckpt: str | Path, *, n: int, ref_n: int | None = None,
                            sampler: str | None = None, steps: int | None = None,
                            overrides: Sequence[str] = (), batch_size: int = 64,
                            device: str | None = None, progress: bool = True) -> dict:
    """FID of a checkpoint with its recipe's ``eval.fid``/``sampler`` settings (the arguments
    override them); merged into the checkpoint run's metrics.json. Used by the comparison tool."""
    loaded = load_method(ckpt, list(overrides))
    method, cfg = loaded.method, loaded.cfg
    require_generator(method)
    fid_cfg = dataclasses.replace(cfg.eval.fid, n=n, **({"ref_n": ref_n} if ref_n is not None else {}))
    scfg = layered_sampler_config(cfg, fid=True, sampler=sampler, steps=steps)
    check_guidance(method, scfg)
    seeds = list(range(fid_cfg.seed, fid_cfg.seed + n))
    labels = class_labels_for(method, seeds, None)
    method.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    extra = {"checkpoint": str(loaded.path), "checkpoint_step": int(loaded.ckpt.get("global_step", 0))}
    return run_fid(method, cfg, loaded.path.parent, n, scfg, seeds=seeds, batch_size=batch_size,
                   class_labels=labels, fid_cfg=fid_cfg, progress=progress, extra=extra)


__all__ = [
    "GRID_MIN_WIDTH",
    "FIDStage",
    "NpzWriter",
    "class_labels_for",
    "fid_metrics",
    "format_seeds",
    "generate_uint8",
    "layered_sampler_config",
    "parse_seeds",
    "reference_batches",
    "run_fid",
    "run_fid_from_checkpoint",
    "sampler_config",
    "sampler_nfe",
    "save_grid",
    "save_npz",
    "save_png_folder",
    "to_uint8",
    "write_sample_grid",
]
